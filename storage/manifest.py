"""Manifest generations: the one place a target set's contents are recorded.

`manifest/gen-000007.json` lists every shard of the target set (its relative path, format, layout,
dtype, sizes, record count and sha256) plus the teacher fingerprint and config and the corpus id and
params. Generation N+1 = generation N's shards + new entries, created with create-if-absent; a writer
that loses the race re-reads the newest generation and tries the next number, so concurrent commits
all land and nothing is lost. Generations are contiguous from 1, so the newest is found by probing
existence (galloping from the advisory `manifest/LATEST` hint, then bisecting) without listing.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from storage.bucket import Bucket, check_relpath
from storage.codec import STATE_DTYPES
from storage.errors import BucketError, FingerprintMismatch, ManifestError, ObjectNotFound, one_line
from storage.formats import FORMATS, shard_format
from storage.schema import LAYOUTS, SCHEMA_VERSION

log = logging.getLogger(__name__)
LATEST = "manifest/LATEST"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VARIANT = re.compile(r"-[0-9a-f]{12}$")


def gen_path(n: int) -> str:
    return f"manifest/gen-{n:06d}.json"


def shard_path(round: int, index: int, fmt: str) -> str:
    """Deterministic shard path inside a target set folder."""
    return f"round-{int(round):03d}/shard-{int(index):05d}{shard_format(fmt).suffix}"


def target_set_path(fingerprint: str, corpus_id: str) -> str:
    """`targets/<fingerprint>/<corpus-id>`, relative to a bucket root."""
    for what, v in (("teacher fingerprint", fingerprint), ("corpus id", corpus_id)):
        if not isinstance(v, str) or not _NAME.match(v):
            raise ValueError(f"{what} {v!r} must match {_NAME.pattern} (it names a folder)")
    return f"targets/{fingerprint}/{corpus_id}"


TARGET_SET_MANIFESTS = "targets/*/*/manifest"
"""Glob, relative to a bucket root, of the manifest folder of every target set (`target_set_path`)."""


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest records it."""

    round: int
    path: str          # relative to the target set folder
    format: str        # "zarr" | "wds"
    layout: str        # "segments" | "pairs"
    dtype: str         # stored state dtype
    z: int
    s: int             # segment length S (0 for pairs)
    rows: int          # segments or pairs
    records: int       # transitions
    bytes: int
    sha256: str
    files: dict[str, int] = field(default_factory=dict)  # {} (one object) or, for zarr folder shards
    # written before the zip layout, file name -> size (read, never written)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def check_paths(self) -> None:
        """ValueError unless its path and file names are safe relative paths (none escapes the target set)."""
        check_relpath(self.path, "shard path")
        for name in self.files:
            check_relpath(name, "shard file name")

    @classmethod
    def from_json(cls, d: Any, where: str) -> ShardEntry:
        try:
            e = cls(round=int(d["round"]), path=str(d["path"]), format=d["format"], layout=d["layout"],
                    dtype=d["dtype"], z=int(d["z"]), s=int(d["s"]), rows=int(d["rows"]),
                    records=int(d["records"]), bytes=int(d["bytes"]), sha256=str(d["sha256"]),
                    files={str(k): int(v) for k, v in dict(d.get("files", {})).items()})
        except (KeyError, TypeError, ValueError) as err:
            raise ManifestError(f"{where}: malformed shard entry {str(d)[:120]!r} ({err})") from err
        try:
            e.check_paths()
        except ValueError as err:
            raise ManifestError(f"{where}: refusing shard entry: {err}") from err
        if e.format not in FORMATS or e.layout not in LAYOUTS or e.dtype not in STATE_DTYPES:
            raise ManifestError(f"{where}: shard {e.path} has unknown format/layout/dtype "
                                f"{e.format}/{e.layout}/{e.dtype}")
        try:
            shard_format(e.format).verify(e.path, e.files)
        except ValueError as err:
            raise ManifestError(f"{where}: shard {e.path}: {err}") from err
        return e


def fetch_shard(bucket: Bucket, entry: ShardEntry) -> dict[str, bytes]:
    """The shard's objects as `ShardFormat.read` takes them: `{"": bytes}`, or a folder shard's listed files
    (fetched by name, never listed). A missing object raises ObjectNotFound."""
    if not entry.files:
        return {"": bucket.read_bytes(entry.path)}
    got = bucket.read_many(f"{entry.path}/{name}" for name in sorted(entry.files))
    return {k[len(entry.path) + 1:]: v for k, v in got.items()}


@dataclass(frozen=True)
class Generation:
    number: int
    parent: int | None
    created: str
    teacher_fingerprint: str
    teacher_config: dict
    corpus_id: str
    corpus_params: dict
    shards: tuple[ShardEntry, ...]
    schema_version: int = SCHEMA_VERSION
    base: dict | None = None  # a run's rounds: {"generation": n, "url": ...} of the target set it builds on

    @property
    def num_records(self) -> int:
        return sum(e.records for e in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "generation": self.number, "parent": self.parent,
                "created": self.created,
                "teacher": {"fingerprint": self.teacher_fingerprint, "config": self.teacher_config},
                "corpus": {"id": self.corpus_id, "params": self.corpus_params},
                "records": self.num_records, "shards": [e.to_json() for e in self.shards],
                **({"base": self.base} if self.base is not None else {})}

    @classmethod
    def from_json(cls, d: Any, where: str) -> Generation:
        if not isinstance(d, dict):
            raise ManifestError(f"{where}: not a JSON object")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(f"{where}: unknown schema version {version!r} (this reader knows "
                                f"{SCHEMA_VERSION}); upgrade smt-pipeline or relabel")
        try:
            return cls(number=int(d["generation"]), parent=d.get("parent"), created=str(d["created"]),
                       teacher_fingerprint=str(d["teacher"]["fingerprint"]),
                       teacher_config=dict(d["teacher"].get("config") or {}),
                       corpus_id=str(d["corpus"]["id"]), corpus_params=dict(d["corpus"].get("params") or {}),
                       shards=tuple(ShardEntry.from_json(s, where) for s in d["shards"]),
                       base=_base(d.get("base"), where))
        except (KeyError, TypeError, ValueError) as err:
            raise ManifestError(f"{where}: malformed generation ({err})") from err


def _base(b: Any, where: str) -> dict | None:
    if b is None:
        return None
    if not isinstance(b, dict) or not isinstance(b.get("generation"), int) or b["generation"] < 1:
        raise ManifestError(f"{where}: malformed base pin {str(b)[:120]!r} (want {{'generation': n >= 1, ...}})")
    return dict(b)


class TornGeneration(ManifestError):
    """A generation file that is empty or not JSON: torn by a crash (power loss) while it was written."""


def read_generation(bucket: Bucket, n: int) -> Generation:
    """Read and validate generation `n`."""
    rel = gen_path(n)
    try:
        raw = bucket.read_bytes(rel)
    except ObjectNotFound as e:
        raise ManifestError(f"no generation {n} at {bucket.url(rel)}; is this a target set folder "
                            "(containing manifest/)?") from e
    try:
        d = json.loads(raw)
    except ValueError as e:
        raise TornGeneration(f"{bucket.url(rel)} is empty or truncated ({len(raw)} bytes, {one_line(e, 80)}): a "
                             f"crash while writing it? The next commit skips it; meanwhile read generation "
                             f"{n - 1}") from e
    g = Generation.from_json(d, bucket.url(rel))
    if g.number != n:
        raise ManifestError(f"{bucket.url(rel)} says it is generation {g.number}")
    return g


def newest_generation(bucket: Bucket, start: int = 0) -> int:
    """Number of the newest generation (0 if none), by existence probes only: no listing."""
    lo = start
    if lo == 0:
        try:
            hint = int(bucket.read_bytes(LATEST).decode().strip())
            lo = hint if hint > 0 and bucket.exists(gen_path(hint)) else 0
        except (ObjectNotFound, ValueError, UnicodeDecodeError):
            lo = 0  # the hint is advisory: absent or garbage means probe from the start
    step = 1
    while bucket.exists(gen_path(lo + step)):
        lo, step = lo + step, step * 2
    hi = lo + step  # lo exists (or is 0), hi does not: bisect between them (generations are contiguous)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if bucket.exists(gen_path(mid)) else (lo, mid)
    return lo


def shard_key(path: str) -> str:
    """`round-000/shard-00042` for any format (.tar, .zarr.zip, a .zarr folder) or content-named variant
    (`shard-00042-<sha12>.tar`): one record range, which a target set holds once."""
    folder, _, name = path.rpartition("/")
    return f"{folder}/{_VARIANT.sub('', name.split('.', 1)[0])}"


def _merge(prev: Generation | None, entries: list[ShardEntry], where: str) -> tuple[ShardEntry, ...]:
    merged = {e.path: e for e in (prev.shards if prev else ())}
    stems = {shard_key(e.path): e for e in merged.values()}
    out = list(prev.shards) if prev else []
    for e in entries:
        twin = stems.get(shard_key(e.path))
        if twin is not None and twin.path != e.path:  # the same records in another format or attempt
            raise ManifestError(f"{where}: shard {e.path} would duplicate the records of committed shard "
                                f"{twin.path} ({twin.format}/{twin.dtype}); a target set holds each record once: "
                                "keep its format and dtype, or write to another bucket")
        old = merged.get(e.path)
        if old is not None:
            if old.sha256 != e.sha256:
                raise ManifestError(f"{where}: shard {e.path} is already committed with sha256 "
                                    f"{old.sha256[:12]}, new entry has {e.sha256[:12]}; shards are "
                                    "write-once: use a new round or shard index")
            continue  # an idempotent retry of a committed shard
        merged[e.path] = stems[shard_key(e.path)] = e
        out.append(e)
    return tuple(out)


def commit(bucket: Bucket, entries: list[ShardEntry], *, teacher_fingerprint: str, teacher_config: dict,
           corpus_id: str, corpus_params: dict, base: dict | None = None, max_attempts: int = 64) -> Generation:
    """Create the next generation = newest generation's shards + `entries`; returns it. `base` pins the
    target-set generation a run's rounds build on (storage/rounds.py); target sets have none."""
    n = newest_generation(bucket)
    for _ in range(max_attempts):
        prev = latest_readable(bucket, n)
        if prev is not None:
            if prev.teacher_fingerprint != teacher_fingerprint:
                raise FingerprintMismatch(teacher_fingerprint, prev.teacher_fingerprint,
                                          bucket.url(gen_path(prev.number)))
            if prev.corpus_id != corpus_id:
                raise ManifestError(f"{bucket.url(gen_path(prev.number))} is corpus {prev.corpus_id!r}, writer has "
                                    f"{corpus_id!r}; write each corpus to its own target set folder")
        gen = Generation(number=n + 1, parent=prev.number if prev else None,
                         created=datetime.now(UTC).isoformat(timespec="seconds"),
                         teacher_fingerprint=teacher_fingerprint, teacher_config=dict(teacher_config),
                         corpus_id=corpus_id, corpus_params=dict(corpus_params),
                         shards=_merge(prev, entries, bucket.url(gen_path(n + 1))), base=base)
        data = json.dumps(gen.to_json(), indent=1, sort_keys=False).encode()
        if bucket.create_exclusive(gen_path(n + 1), data) or _holds(bucket, gen_path(n + 1), data):
            # (the second test: the store applied our create but its reply was lost, and the client's
            # retry found our own generation; a rival's differs at least in its shards or `created`)
            _advance_hint(bucket, n + 1)
            return gen
        n = newest_generation(bucket, start=n + 1)  # lost the race: build on the winner's generation
    raise ManifestError(f"could not commit to {bucket.url('manifest')} after {max_attempts} attempts "
                        "(too many concurrent writers?); retry the commit")


def _holds(bucket: Bucket, rel: str, data: bytes) -> bool:
    """Whether `rel` holds exactly `data` (False when it is absent)."""
    try:
        return bucket.read_bytes(rel) == data
    except ObjectNotFound:
        return False


def latest_readable(bucket: Bucket, n: int) -> Generation | None:
    """Generation n, or the newest one below it when the newest are torn (a file left empty or cut short
    by a power loss before it was synced): a torn generation was never durably committed, so later
    commits build on the last readable one (keeping the torn number, which stays taken) instead of
    failing forever."""
    while n:
        try:
            return read_generation(bucket, n)
        except TornGeneration as e:
            log.warning("skipping torn generation: %s", e)
            n -= 1
    return None


def _advance_hint(bucket: Bucket, n: int) -> None:
    # Advisory only (readers verify it and probe past it), so a failure is logged, not raised:
    # the generation itself is already committed.
    try:
        try:
            current = int(bucket.read_bytes(LATEST).decode().strip())
        except (ObjectNotFound, ValueError, UnicodeDecodeError):
            current = 0
        if n > current:
            bucket.write_bytes(LATEST, str(n).encode())
    except BucketError as e:
        log.warning("committed generation %d but could not update %s: %s", n, bucket.url(LATEST), e)
