"""What verifying every fetch costs: `read_shard_raw` of one local shard (Z=4096 float16, S=16, 48 segments, the
storage benchmark's shape) with verify="never" against "first" (which now hashes every fetch, re-fetches too),
side by side in one run, best of 15 in CPU time of this process (other jobs on the machine cannot inflate it),
plus the metadata check alone. Writes benchmarks/results/verify_cost.{json,md}.

    python benchmarks/verify_cost.py          (a few seconds)
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's storage/, not benchmarks/storage.py
from benchmarks import stamp
from storage.bucket import Bucket
from storage.codec import expected_columns
from storage.formats import check_zarr_store, unzip_store
from storage.manifest import commit
from storage.reader import TargetSet
from storage.schema import Segments
from storage.writer import write_shard

OUT = Path(__file__).resolve().parent / "results"
N, S, Z, REPEATS = 48, 16, 4096, 15


def best_cpu(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def measure() -> list[dict]:
    rng = np.random.default_rng(0)
    segs = Segments(states=rng.standard_normal((N, S + 1, Z)).astype(np.float16), tokens=rng.integers(0, 1000, (N, S)),
                    y=rng.integers(0, 1000, (N, S)), seq=np.arange(N), pos0=np.zeros(N, dtype=np.int64))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        b = Bucket.from_url(d)
        for i, fmt in enumerate(("zarr", "wds")):
            e = write_shard(b, segs, index=i, round=0, fmt=fmt, dtype="float16", teacher_fingerprint="fp")
            commit(b, [e], teacher_fingerprint="fp", teacher_config={}, corpus_id="c", corpus_params={})
            cost = {}
            for mode in ("never", "first"):
                ts = TargetSet.open(b, "fp", verify=mode)
                cost[mode] = best_cpu(lambda ts=ts, e=e: ts.read_shard_raw(e), REPEATS)
            row = {"format": fmt, "shard_mb": round(e.bytes / 1e6, 2), "never_cpu_ms": round(cost["never"] * 1e3, 2),
                   "verified_cpu_ms": round(cost["first"] * 1e3, 2),
                   "ratio": round(cost["first"] / cost["never"], 2), "metadata_check_cpu_us": None,
                   "metadata_check_note": "n/a (the tar check runs inside the read)"}
            if fmt == "zarr":
                store, exp = unzip_store(b.read_bytes(e.path)), expected_columns("segments", "float16", S, Z, N)
                row["metadata_check_cpu_us"] = round(best_cpu(lambda s=store, x=exp: check_zarr_store(s, *x), 50) * 1e6, 1)
                row.pop("metadata_check_note")
            rows.append(row)
    return rows


def main() -> None:
    flushed = stamp.start()
    rows = measure()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "verify_cost.json").write_text(json.dumps({"shard": {"segments": N, "S": S, "Z": Z, "dtype": "float16"},
                                                      "repeats": REPEATS, "clock": "process CPU, best of repeats",
                                                      "rows": rows}, indent=2))
    md = ["# Verifying every fetch: what the sha256 costs", "",
          (f"One local shard ({N} segments, S={S}, Z={Z}, float16); `read_shard_raw` best of {REPEATS} in process "
           "CPU time, side by side in one run. `python benchmarks/verify_cost.py`."), "",
          "| format | shard MB | verify=never CPU-ms | hash every fetch CPU-ms | ratio | metadata check CPU-us |",
          "|---|---|---|---|---|---|"]
    for r in rows:
        meta = r["metadata_check_cpu_us"] if r["metadata_check_cpu_us"] is not None else r["metadata_check_note"]
        md.append(f"| {r['format']} | {r['shard_mb']} | {r['never_cpu_ms']} | {r['verified_cpu_ms']} | "
                  f"x{r['ratio']} | {meta} |")
    (OUT / "verify_cost.md").write_text("\n".join(md) + "\n")
    stamp.stamp(OUT / "verify_cost", flushed)
    print("\n".join(md))


if __name__ == "__main__":
    main()
