"""`smt inspect URL`: summarise (and optionally verify) target sets and the student runs' DMT rounds on them.

URL is a target set folder (one holding manifest/), a bucket root (the target sets under targets/*/*/
are found by listing — acceptable in this admin tool, never in readers) or a student run (one holding
rounds/manifest/). Under each target set (round 0, shared) it shows every run that keeps DMT rounds on it
(found through the set's `runs/` registry, which the relabel stage writes): the run's rounds generation,
the target-set generation it pins, and its rounds.
Exit status: 0 fine, 1 some shard failed --verify (each is named on stderr), 2 user error.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Annotated

import tyro

from jobs.cli_common import job_main
from storage.bucket import Bucket
from storage.errors import ShardError, StorageError
from storage.manifest import LATEST, TARGET_SET_MANIFESTS, gen_path, newest_generation
from storage.reader import TargetSet
from storage.rounds import RUNS, rounds_bucket
from storage.settings import AtEndpoint


@dataclass(kw_only=True)
class InspectJob(AtEndpoint):
    url: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="URL")]
    """Target set folder (holding manifest/), bucket root or student run (local path, file://, s3://, memory://)."""
    json: bool = False
    """Print one JSON document instead of text."""
    verify: bool = False
    """Fetch every shard, check its sha256 and decode it."""
    generation: int | None = None
    """Generation to inspect (default: newest)."""

    def execute(self) -> int:
        summaries, bad = inspect(self)
        print(json.dumps({"target_sets": summaries}, indent=1) if self.json else "\n".join(map(_text, summaries)))
        for msg in bad:
            print(f"smt inspect: BAD {msg}", file=sys.stderr)
        return 1 if bad else 0


def find_target_sets(bucket: Bucket) -> list[Bucket]:
    """The bucket itself if it is a target set folder, else every targets/*/*/ holding a manifest."""
    if bucket.exists(gen_path(1)) or bucket.exists(LATEST):
        return [bucket]
    found = bucket.glob(TARGET_SET_MANIFESTS)
    return [bucket.child(rel.rsplit("/", 1)[0]) for rel in found]


def find_runs(target: Bucket) -> list[Bucket]:
    """The runs registered on a target set (their rounds folders), by listing its `runs/` registry."""
    out = []
    for rel in target.glob(f"{RUNS}/*.json"):
        try:
            out.append(rounds_bucket(json.loads(target.read_bytes(rel))["run"], target.endpoint_url))
        except (ValueError, KeyError, TypeError) as e:
            raise StorageError(f"{target.url(rel)} is not a run registry entry ({e}); remove it") from e
    return out


def _per_round(shards) -> dict[str, dict[str, int]]:
    per_round: dict[int, dict[str, int]] = {}
    for e in shards:
        r = per_round.setdefault(e.round, {"shards": 0, "records": 0, "bytes": 0})
        r["shards"] += 1
        r["records"] += e.records
        r["bytes"] += e.bytes
    return {str(k): v for k, v in sorted(per_round.items())}


def summarise_run(rounds: Bucket, verify: bool) -> dict:
    """A run's DMT rounds: newest rounds generation, the target-set generation it pins, per round sizes."""
    run = rounds.url().rsplit("/", 1)[0]
    n = newest_generation(rounds)
    if not n:
        return {"run": run, "generation": 0, "base": None, "rounds": {}, "records": 0}
    ts = TargetSet.open(rounds, None, generation=n, verify="always")
    s = {"run": run, "generation": n, "base": ts.manifest.base, "records": ts.num_records,
         "rounds": _per_round(ts.shards)}
    if verify:
        s["verify"] = verify_all(ts)
    return s


def summarise(ts: TargetSet, newest: int) -> dict:
    shards = ts.shards
    return {"url": ts.bucket.url(), "generation": ts.generation, "newest_generation": newest,
            "created": ts.manifest.created, "fingerprint": ts.fingerprint, "corpus_id": ts.manifest.corpus_id,
            "shards": len(shards), "records": ts.num_records, "bytes": sum(e.bytes for e in shards),
            "dtypes": dict(Counter(e.dtype for e in shards)), "formats": dict(Counter(e.format for e in shards)),
            "layouts": dict(Counter(e.layout for e in shards)), "z": sorted({e.z for e in shards}),
            "rounds": _per_round(shards)}


def verify_all(ts: TargetSet) -> list[str]:
    """Messages for every shard that fails its checksum or does not decode."""
    bad = []
    for e in ts.shards:
        try:
            ts.read_shard_raw(e)
        except ShardError as err:
            bad.append(str(err))
    return bad


def _text(s: dict) -> str:
    lines = [f"{s['url']}",
             f"  generation {s['generation']} (newest {s['newest_generation']}, created {s['created']})",
             f"  teacher fingerprint {s['fingerprint']}  corpus {s['corpus_id']}",
             (f"  {s['shards']} shards, {s['records']} records, {s['bytes'] / 1e6:.2f} MB; "
              f"dtype {s['dtypes']}, format {s['formats']}, layout {s['layouts']}, Z {s['z']}")]
    for r, v in s["rounds"].items():
        lines.append(f"  round {int(r):3d}: {v['shards']} shards, {v['records']} records, {v['bytes'] / 1e6:.2f} MB")
    if "verify" in s:
        lines.append(f"  verify: {'OK' if not s['verify'] else str(len(s['verify'])) + ' bad shard(s)'}")
    for run in s.get("runs", []):
        base = (run["base"] or {}).get("generation")
        lines.append(f"  run {run['run']}: rounds generation {run['generation']}"
                     + (f" on target-set generation {base}" if base else " (no DMT rounds yet)"))
        for r, v in run["rounds"].items():
            lines.append(f"    round {int(r):3d}: {v['shards']} shards, {v['records']} records, {v['bytes'] / 1e6:.2f} MB")
        if "verify" in run:
            lines.append(f"    verify: {'OK' if not run['verify'] else str(len(run['verify'])) + ' bad shard(s)'}")
    return "\n".join(lines)


def inspect(job: InspectJob) -> tuple[list[dict], list[str]]:
    """The summaries of the target sets at job.url (and their runs), and the messages of shards failing --verify."""
    root = Bucket.from_url(job.url, endpoint_url=job.endpoint_url)
    sets = find_target_sets(root)
    if not sets and rounds_bucket(root).exists(gen_path(1)):  # a student run: its target set, then it
        pin = TargetSet.open(rounds_bucket(root), None).manifest.base or {}
        if not pin.get("url"):
            raise StorageError(f"run {root.url()} has rounds but no pinned target set URL")
        sets = [Bucket.from_url(pin["url"], endpoint_url=job.endpoint_url)]
    if not sets:
        raise StorageError(f"no target set at {root.url()}: expected manifest/ there or "
                           "targets/<fingerprint>/<corpus-id>/manifest below it")
    summaries, bad = [], []
    for b in sets:
        newest = newest_generation(b)
        ts = TargetSet.open(b, None, generation=job.generation, verify="always")
        s = summarise(ts, newest)
        if job.verify:
            s["verify"] = verify_all(ts)
            bad += s["verify"]
        s["runs"] = [summarise_run(r, job.verify) for r in find_runs(b)]
        bad += [m for r in s["runs"] for m in r.get("verify", [])]
        summaries.append(s)
    return summaries, bad


main = job_main("inspect", InspectJob, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
