"""Storage settings that several configs share, each declared once (configs and jobs inherit them).

Kept apart from `storage/bucket.py` and `storage/formats.py` so a command's config (and `smt --help`) does
not import fsspec or zarr.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class AtEndpoint:
    """The `endpoint_url` field of every config whose URLs may be s3://."""

    endpoint_url: str | None = None
    """S3 endpoint of every s3:// URL this reads or writes, weights and teachers included (default:
    AWS_ENDPOINT_URL)."""


@dataclass(kw_only=True)
class ShardEncoding:
    """How a stage that writes shards (labeling, relabeling, the DMT actor) encodes them."""

    format: str = "zarr"
    """Shard format: zarr or wds (tar)."""
    dtype: str = "float16"
    """Stored state dtype: float32, float16, bfloat16 or int8."""
