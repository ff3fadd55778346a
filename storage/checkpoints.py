"""Checkpoint folders (weights.safetensors + config.json, `models/checkpoint.py`) read and written through a
`Bucket`, so a checkpoint gets what every other object gets: one endpoint for the whole run (`endpoint_url`,
not the process environment), retries with backoff, and durable writes (temp file + fsync + rename on a
local folder; one PUT on an object store). Weights go first and config.json last: a folder without
config.json is not a checkpoint, and a torn weights file is refused by its fingerprint.

Every function takes `where`: a URL or local path (opened with `endpoint_url`), or a `Bucket` rooted at the
checkpoint folder (its endpoint and retries apply: `RunDir` hands these out). The bucket layout of teachers
(`teachers/<fingerprint>`) is defined here, once.
"""
from __future__ import annotations

import json

import torch

from models.checkpoint import (
    CONFIG,
    LEGACY_TEACHER,
    WEIGHTS,
    CheckpointError,
    build_student,
    build_teacher,
    decode_config,
    decode_weights,
    encode,
    fingerprint,
    student_model,
    teacher_config,
    teacher_model,
)
from storage.bucket import Bucket
from storage.errors import ObjectNotFound

__all__ = [
    "CONFIG",
    "LEGACY_TEACHER",
    "WEIGHTS",
    "CheckpointError",
    "at",
    "fingerprint",
    "has_checkpoint",
    "load_checkpoint",
    "load_student",
    "load_teacher",
    "publish_teacher",
    "read_config",
    "save_checkpoint",
    "save_student",
    "save_teacher",
    "teacher_config",
    "teacher_home",
]


def at(where: str | Bucket, endpoint_url: str | None = None) -> Bucket:
    """The bucket rooted at a checkpoint folder."""
    return where if isinstance(where, Bucket) else Bucket.from_url(str(where), endpoint_url=endpoint_url)


def save_checkpoint(where: str | Bucket, kind: str, model: dict, tensors: dict[str, torch.Tensor],
                    meta: dict | None = None, *, endpoint_url: str | None = None) -> str:
    """Write weights, then config.json (each durable before the next starts); returns the fingerprint."""
    b = at(where, endpoint_url)
    files, fp = encode(kind, model, tensors, meta)
    b.write_bytes(WEIGHTS, files[WEIGHTS])
    b.write_bytes(CONFIG, files[CONFIG])
    return fp


def read_config(where: str | Bucket, kind: str | tuple[str, ...] | None = None, *,
                endpoint_url: str | None = None) -> dict:
    """The checkpoint's config JSON only (kind, model, fingerprint, meta): a cheap check before heavy work."""
    b = at(where, endpoint_url)
    try:
        data = b.read_bytes(CONFIG)
    except ObjectNotFound:
        raise CheckpointError(f"no checkpoint at {b.url()} (missing {CONFIG}): check the path or create one "
                              "with `smt pretrain`") from None
    return decode_config(data, b.url(), kind)


def load_checkpoint(where: str | Bucket, kind: str | tuple[str, ...] | None = None, *,
                    endpoint_url: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read and verify a checkpoint; returns (config, tensors)."""
    b = at(where, endpoint_url)
    cfg = read_config(b, kind)
    try:
        data = b.read_bytes(WEIGHTS)
    except ObjectNotFound:
        raise CheckpointError(f"checkpoint {b.url()} has no {WEIGHTS}: re-create the checkpoint") from None
    return cfg, decode_weights(cfg, data, b.url())


def has_checkpoint(where: str | Bucket, *, endpoint_url: str | None = None) -> bool:
    return at(where, endpoint_url).exists(CONFIG)


def save_teacher(where: str | Bucket, teacher, meta: dict | None = None, *, endpoint_url: str | None = None) -> str:
    return save_checkpoint(where, "teacher", teacher_model(teacher), teacher.state_dict(), meta,
                           endpoint_url=endpoint_url)


def load_teacher(where: str | Bucket, device: str | torch.device = "cpu", *, endpoint_url: str | None = None):
    """Returns (teacher in eval mode, fingerprint, config dict)."""
    b = at(where, endpoint_url)
    cfg, tensors = load_checkpoint(b, "teacher")
    return build_teacher(cfg, tensors, b.url()).to(device), cfg["fingerprint"], cfg


def save_student(where: str | Bucket, student, teacher_fingerprint: str | None, meta: dict | None = None, *,
                 endpoint_url: str | None = None) -> str:
    return save_checkpoint(where, "student", student_model(student, teacher_fingerprint), student.state_dict(),
                           meta, endpoint_url=endpoint_url)


def load_student(where: str | Bucket, device: str | torch.device = "cpu", *, endpoint_url: str | None = None):
    """Returns (student in eval mode, teacher fingerprint it was trained against (or None), config dict)."""
    b = at(where, endpoint_url)
    cfg, tensors = load_checkpoint(b, "student")
    return build_student(cfg, tensors, b.url()).to(device), cfg["model"].get("teacher_fingerprint"), cfg


# ---- publishing: where the pipeline looks for a target set's teacher ------------------------------------
def teacher_home(fingerprint: str) -> str:
    """`teachers/<fingerprint>`, relative to a bucket root: the teacher of its `targets/<fingerprint>/...`."""
    return f"teachers/{fingerprint}"


def publish_teacher(src: str | Bucket, bucket: Bucket) -> str:
    """Copy the teacher checkpoint at `src` into `bucket` at `teacher_home(fp)`, weights first and config.json
    last, and return its URL, so that `smt train` and `smt dmt` find it from a target set alone. `src` (a URL:
    opened with the bucket's endpoint) is verified first; a copy already there whose config names the same
    fingerprint is kept, so publishing again (a rerun, a second labeling) is harmless."""
    cfg, tensors = load_checkpoint(src, "teacher", endpoint_url=bucket.endpoint_url)
    home = bucket.child(teacher_home(cfg["fingerprint"]))
    if home.exists(CONFIG):
        try:
            if json.loads(home.read_bytes(CONFIG)).get("fingerprint") == cfg["fingerprint"]:
                return home.url()
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # a damaged copy: replace it
    save_checkpoint(home, "teacher", cfg["model"], tensors, cfg["meta"])
    return home.url()
