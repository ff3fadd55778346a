"""Reading a target set: one manifest generation, then shards by the relative paths it lists.

    ts = TargetSet.open("s3://bucket/targets/<fp>/<corpus>", fingerprint=fp)
    for entry in ts.shards:
        tr = ts.read_shard(entry)   # Transitions, states as float32

The reader never lists: it finds the newest generation by existence probes, and fetches exactly the
objects a shard entry names. Every failure names the shard and raises a typed error: `ShardError` for
missing/truncated/corrupt/unsafe data or data that disagrees with its manifest entry (shape, dtype,
teacher fingerprint, schema version, NaN/inf states), `FingerprintMismatch` for the wrong teacher.
"""
from __future__ import annotations

from collections.abc import Iterator

from storage.bucket import Bucket
from storage.codec import check_columns, expected_columns, from_columns
from storage.errors import FingerprintMismatch, ManifestError, ObjectNotFound, ShardError, one_line
from storage.formats import LayoutMismatch, shard_format, shard_sha256
from storage.manifest import Generation, ShardEntry, fetch_shard, gen_path, newest_generation, read_generation
from storage.schema import SCHEMA_VERSION, Pairs, Segments, Transitions

VERIFY_MODES = ("always", "first", "never")
"""When `read_shard` hashes the fetched bytes (sha256) against the manifest: "always" and "first" (the
default) on every fetch, re-fetches included (a stream re-fetches what its cache evicted; a replaced
object of the same size would otherwise decode unchecked), "never" not at all. Sizes and the shard's own
metadata (shapes, dtypes, chunks, codecs) are checked against the manifest in every mode. "first" once
meant "only a shard's first fetch"; the name is kept so saved configs still load."""


class TargetSet:
    """One generation of a target set, opened for reading."""

    def __init__(self, bucket: Bucket, generation: Generation, verify: str = "first") -> None:
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify={verify!r}; choose one of {VERIFY_MODES}")
        self.bucket = bucket
        self.manifest = generation
        self.verify = verify

    @classmethod
    def open(cls, bucket_or_url: Bucket | str, fingerprint: str | None, generation: int | None = None,
             verify: str = "first", *, endpoint_url: str | None = None) -> TargetSet:
        """Open generation `generation` (default: the newest) of the target set folder given.

        `fingerprint` is the teacher the caller expects; None skips the check (admin tools only).
        """
        bucket = (Bucket.from_url(bucket_or_url, endpoint_url=endpoint_url)
                  if isinstance(bucket_or_url, str) else bucket_or_url)
        n = newest_generation(bucket) if generation is None else int(generation)
        if n <= 0:
            raise ManifestError(f"no manifest generation at {bucket.url(gen_path(1))}; is {bucket.url()} "
                                "a target set folder (targets/<fingerprint>/<corpus-id>)?")
        gen = read_generation(bucket, n)
        if fingerprint is not None and gen.teacher_fingerprint != fingerprint:
            raise FingerprintMismatch(fingerprint, gen.teacher_fingerprint, bucket.url(gen_path(n)))
        return cls(bucket, gen, verify)

    # ---- what the generation holds ------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self.manifest.number

    @property
    def fingerprint(self) -> str:
        return self.manifest.teacher_fingerprint

    @property
    def shards(self) -> tuple[ShardEntry, ...]:
        return self.manifest.shards

    @property
    def num_records(self) -> int:
        return self.manifest.num_records

    @property
    def rounds(self) -> list[int]:
        return sorted({e.round for e in self.shards})

    def __iter__(self) -> Iterator[Transitions]:
        for entry in self.shards:
            yield self.read_shard(entry)

    # ---- reading one shard --------------------------------------------------------------------
    def read_shard(self, entry: ShardEntry) -> Transitions:
        """The shard's records as uniform transitions (states float32)."""
        return self.read_shard_raw(entry).to_transitions(round=entry.round)

    def read_shard_raw(self, entry: ShardEntry) -> Segments | Pairs:
        """The shard in its stored layout (float16/float32 states as stored; bf16/int8 decoded to float32)."""
        files = self._fetch(entry)
        where = self._where(entry)
        if self._should_verify(entry):
            self._check_sha(entry, files)
        try:  # the shard's own metadata is checked against the entry before anything is decoded
            cols, header = shard_format(entry.format).read(
                files, *expected_columns(entry.layout, entry.dtype, entry.s, entry.z, entry.rows))
        except LayoutMismatch as e:
            raise ShardError(f"shard {where} disagrees with its manifest entry: {one_line(e)}") from e
        except Exception as e:
            raise ShardError(f"shard {where} is corrupt or unreadable: {type(e).__name__}: "
                             f"{one_line(e)}; rewrite it (verify with `smt inspect --verify`)") from e
        self._check_header(entry, header, where)
        try:
            check_columns(cols, entry.layout, entry.dtype, entry.s, entry.z, entry.rows)
            return from_columns(cols, entry.layout, entry.dtype)
        except ValueError as e:
            raise ShardError(f"shard {where} disagrees with its manifest entry: {one_line(e)}") from e

    def verify_shard(self, entry: ShardEntry) -> None:
        """Fetch the shard and check sizes and sha256 against the manifest; raise ShardError if not."""
        self._check_sha(entry, self._fetch(entry))

    # ---- internals ----------------------------------------------------------------------------
    def _where(self, entry: ShardEntry) -> str:
        try:
            return self.bucket.url(entry.path)
        except ValueError:
            return repr(entry.path)

    def _fetch(self, entry: ShardEntry) -> dict[str, bytes]:
        try:
            entry.check_paths()
        except ValueError as e:
            raise ShardError(f"refusing to open shard: {e}") from e
        where = self._where(entry)
        try:
            files = fetch_shard(self.bucket, entry)
            expected = entry.files or {"": entry.bytes}
        except ObjectNotFound as e:
            raise ShardError(f"shard {where} is missing a file: {one_line(e)}; rewrite the shard") from e
        for name, size in expected.items():
            if len(files[name]) != size:
                raise ShardError(f"shard {where}{'/' + name if name else ''} is truncated or resized: "
                                 f"{len(files[name])} bytes, manifest says {size}; rewrite the shard")
        return files

    def _should_verify(self, entry: ShardEntry) -> bool:
        return self.verify != "never"

    def _check_sha(self, entry: ShardEntry, files: dict[str, bytes]) -> None:
        sha = shard_sha256(files)
        if sha != entry.sha256:
            raise ShardError(f"shard {self._where(entry)} fails its checksum (sha256 {sha[:12]}, manifest "
                             f"{entry.sha256[:12]}): the data is corrupt; rewrite the shard")

    def _check_header(self, entry: ShardEntry, header: dict, where: str) -> None:
        if header.get("schema_version") != SCHEMA_VERSION:
            raise ShardError(f"shard {where} has unknown schema version {header.get('schema_version')!r} "
                             f"(this reader knows {SCHEMA_VERSION}); upgrade smt-pipeline or relabel")
        if header.get("teacher_fingerprint") != self.fingerprint:
            raise ShardError(f"shard {where} was labelled by teacher {header.get('teacher_fingerprint')!r}, "
                             f"the manifest says {self.fingerprint!r}; refusing it")
        want = {"layout": entry.layout, "dtype": entry.dtype, "z": entry.z, "s": entry.s, "rows": entry.rows}
        got = {k: header.get(k) for k in want}
        if got != want:
            raise ShardError(f"shard {where} header {got} disagrees with its manifest entry {want}")
