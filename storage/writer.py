"""Writing a target set: write-once shards first, one manifest generation last.

    with TargetSetWriter(bucket, teacher_fingerprint=fp, teacher_config=cfg, corpus_id="c4-en",
                         corpus_params={...}, round=0, encoding=ShardEncoding(format="zarr")) as w:
        w.write_segments(42, segs)        # -> round-000/shard-00042.zarr.zip
    # leaving the block normally commits manifest/gen-<n+1>.json; an exception commits nothing.

Shard bytes are a pure function of (data, dtype, format), so a retried writer usually produces the same
sha256, and if the shard already exists with it the write is skipped. A retry may still compute other
bytes (another GPU, bf16 kernels) after an attempt that wrote its shard and died before reporting it:
then the canonical name is taken by an uncommitted orphan, and the shard is written under a
content-named variant (`shard-00042-<sha12>.zarr.zip`) instead. Nothing is ever overwritten; the manifest
entry names the copy that counts, and a commit refuses a second copy of the same (round, index).
A distributed labeler calls `write_shard` in its workers and `commit` once in the driver.
"""
from __future__ import annotations

from dataclasses import replace
from types import TracebackType

from storage.bucket import Bucket
from storage.codec import check_dtype, to_columns
from storage.errors import ManifestError, ObjectNotFound, ShardError
from storage.formats import CHUNK_BYTES, FORMATS, shard_format, shard_sha256
from storage.manifest import Generation, ShardEntry, commit, fetch_shard, shard_path, target_set_path
from storage.schema import SCHEMA_VERSION, Pairs, Segments
from storage.settings import ShardEncoding


def write_shard(bucket: Bucket, obj: Segments | Pairs, *, index: int, round: int, fmt: str, dtype: str,
                teacher_fingerprint: str, chunk_bytes: int = CHUNK_BYTES) -> ShardEntry:
    """Encode and publish one shard under the target set `bucket`; returns its manifest entry."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not a shard format; choose one of {tuple(FORMATS)}")
    check_dtype(dtype)
    if not isinstance(obj, (Segments, Pairs)):
        raise TypeError(f"write_shard needs Segments or Pairs, got {type(obj).__name__}")
    if obj.n == 0:
        raise ValueError(f"shard {index} of round {round} is empty; refusing to write an empty shard")
    if int(index) < 0 or int(round) < 0:
        raise ValueError(f"shard index and round must be >= 0, got index={index}, round={round}")
    path = shard_path(round, index, fmt)
    cols = to_columns(obj, dtype)
    header = {"schema_version": SCHEMA_VERSION, "teacher_fingerprint": teacher_fingerprint,
              "layout": obj.layout, "dtype": dtype, "z": obj.Z, "s": obj.S, "rows": obj.n,
              "round": int(round)}
    files = shard_format(fmt).write(cols, header, chunk_bytes)  # one object
    entry = ShardEntry(round=int(round), path=path, format=fmt, layout=obj.layout, dtype=dtype, z=obj.Z,
                       s=obj.S, rows=obj.n, records=obj.num_records, bytes=sum(map(len, files.values())),
                       sha256=shard_sha256(files), files={k: len(v) for k, v in files.items() if k})
    if _publish(bucket, entry, files):
        return entry
    # The name holds other bytes (an earlier attempt's orphan): publish under the content-named variant,
    # which can only ever hold these bytes.
    folder, _, name = path.rpartition("/")
    base, _, suffix = name.partition(".")
    variant = replace(entry, path=f"{folder}/{base}-{entry.sha256[:12]}.{suffix}")
    if not _publish(bucket, variant, files):
        raise ShardError(f"shard {bucket.url(variant.path)} is named by its sha256 but holds other bytes: "
                         "the bucket is corrupt; remove that object and rerun")
    return variant


def _publish(bucket: Bucket, entry: ShardEntry, files: dict[str, bytes]) -> bool:
    """Create-if-absent (local: exclusive link of a complete temp file; S3: If-None-Match: *), so a shard
    is either absent or whole. False if its name already holds other (or incomplete) bytes."""
    return bucket.create_exclusive(entry.path, files[""]) or _same_bytes(bucket, entry)


def _same_bytes(bucket: Bucket, entry: ShardEntry) -> bool:
    try:
        found = fetch_shard(bucket, entry)
    except ObjectNotFound:
        return False  # incomplete: not these bytes
    return shard_sha256(found) == entry.sha256


class TargetSetWriter:
    """Context manager that writes shards and commits them as one new manifest generation."""

    def __init__(self, bucket: Bucket | str, *, teacher_fingerprint: str, teacher_config: dict,
                 corpus_id: str, corpus_params: dict | None = None, round: int = 0,
                 encoding: ShardEncoding | None = None, chunk_bytes: int = CHUNK_BYTES) -> None:
        target_set_path(teacher_fingerprint, corpus_id)  # validates both as folder names
        encoding = encoding or ShardEncoding()
        fmt, dtype = encoding.format, encoding.dtype
        if fmt not in FORMATS:
            raise ValueError(f"encoding format={fmt!r} is not a shard format; choose one of {tuple(FORMATS)}")
        self.bucket = Bucket.from_url(bucket) if isinstance(bucket, str) else bucket
        self.teacher_fingerprint = teacher_fingerprint
        self.teacher_config = dict(teacher_config)
        self.corpus_id = corpus_id
        self.corpus_params = dict(corpus_params or {})
        self.round = int(round)
        self.fmt = fmt
        self.dtype = check_dtype(dtype)
        self.chunk_bytes = chunk_bytes
        self.entries: list[ShardEntry] = []
        self.generation: Generation | None = None

    def write_shard(self, index: int, obj: Segments | Pairs) -> ShardEntry:
        if self.generation is not None:
            raise ManifestError("this writer has already committed; open a new TargetSetWriter")
        entry = write_shard(self.bucket, obj, index=index, round=self.round, fmt=self.fmt, dtype=self.dtype,
                            teacher_fingerprint=self.teacher_fingerprint, chunk_bytes=self.chunk_bytes)
        self.entries.append(entry)
        return entry

    def write_segments(self, index: int, segs: Segments) -> ShardEntry:
        if not isinstance(segs, Segments):
            raise TypeError(f"write_segments needs Segments, got {type(segs).__name__}")
        return self.write_shard(index, segs)

    def write_pairs(self, index: int, pairs: Pairs) -> ShardEntry:
        if not isinstance(pairs, Pairs):
            raise TypeError(f"write_pairs needs Pairs, got {type(pairs).__name__}")
        return self.write_shard(index, pairs)

    def commit(self, entries: list[ShardEntry] | None = None) -> Generation:
        """Commit `entries` (default: the shards written through this writer) as a new generation."""
        entries = self.entries if entries is None else list(entries)
        if not entries:
            raise ManifestError(f"nothing to commit to {self.bucket.url('manifest')}: no shards were "
                                "written (empty input?)")
        self.generation = commit(self.bucket, entries, teacher_fingerprint=self.teacher_fingerprint,
                                 teacher_config=self.teacher_config, corpus_id=self.corpus_id,
                                 corpus_params=self.corpus_params)
        return self.generation

    def __enter__(self) -> TargetSetWriter:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None and self.generation is None:
            self.commit()
