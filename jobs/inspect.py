"""`smt inspect BUCKET_URL`: summarise (and optionally verify) target sets in a bucket.

BUCKET_URL is a target set folder (one holding manifest/) or a bucket root, in which case the target
sets under targets/*/*/ are found by listing — acceptable in this admin tool, never in readers.
Exit status: 0 fine, 1 some shard failed --verify (each is named on stderr), 2 user error.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from storage.bucket import Bucket
from storage.errors import ShardError, StorageError
from storage.manifest import LATEST, gen_path, newest_generation
from storage.reader import TargetSet


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smt inspect", description=__doc__.splitlines()[0])
    p.add_argument("bucket_url", metavar="BUCKET_URL",
                   help="target set folder (holding manifest/) or bucket root (local path, file://, s3://, memory://)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--verify", action="store_true", help="fetch every shard, check its sha256 and decode it")
    p.add_argument("--generation", type=int, default=None, help="generation to inspect (default: newest)")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL / AWS config)")
    return p


def find_target_sets(bucket: Bucket) -> list[Bucket]:
    """The bucket itself if it is a target set folder, else every targets/*/*/ holding a manifest."""
    if bucket.exists(gen_path(1)) or bucket.exists(LATEST):
        return [bucket]
    found = bucket.glob("targets/*/*/manifest")
    return [bucket.child(rel.rsplit("/", 1)[0]) for rel in found]


def summarise(ts: TargetSet, newest: int) -> dict:
    shards = ts.shards
    per_round: dict[int, dict[str, int]] = {}
    for e in shards:
        r = per_round.setdefault(e.round, {"shards": 0, "records": 0, "bytes": 0})
        r["shards"] += 1
        r["records"] += e.records
        r["bytes"] += e.bytes
    return {"url": ts.bucket.url(), "generation": ts.generation, "newest_generation": newest,
            "created": ts.manifest.created, "fingerprint": ts.fingerprint, "corpus_id": ts.manifest.corpus_id,
            "shards": len(shards), "records": ts.num_records, "bytes": sum(e.bytes for e in shards),
            "dtypes": dict(Counter(e.dtype for e in shards)), "formats": dict(Counter(e.format for e in shards)),
            "layouts": dict(Counter(e.layout for e in shards)), "z": sorted({e.z for e in shards}),
            "rounds": {str(k): v for k, v in sorted(per_round.items())}}


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
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed its one-line complaint
        return int(e.code or 0)
    try:
        root = Bucket.from_url(args.bucket_url, endpoint_url=args.endpoint_url)
        sets = find_target_sets(root)
        if not sets:
            raise StorageError(f"no target set at {root.url()}: expected manifest/ there or "
                               "targets/<fingerprint>/<corpus-id>/manifest below it")
        summaries, bad = [], []
        for b in sets:
            newest = newest_generation(b)
            ts = TargetSet.open(b, None, generation=args.generation, verify="always")
            s = summarise(ts, newest)
            if args.verify:
                s["verify"] = verify_all(ts)
                bad += s["verify"]
            summaries.append(s)
    except StorageError as e:
        print(f"smt inspect: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"target_sets": summaries}, indent=1))
    else:
        print("\n".join(_text(s) for s in summaries))
    for msg in bad:
        print(f"smt inspect: BAD {msg}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
