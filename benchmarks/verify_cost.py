"""What verifying every fetch costs: read_shard_raw of one local shard (Z=4096 float16, S=16, 48 segments, the
storage benchmark's shape) with verify="never" vs "first" (sha256 of every fetch), best of 9 in CPU time (this process, all threads: other jobs on the machine cannot inflate it), and the metadata
check alone. `python benchmarks/verify_cost.py` (a few seconds)."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's storage/, not benchmarks/storage.py
from storage.bucket import Bucket
from storage.codec import expected_columns
from storage.formats import check_zarr_store, unzip_store
from storage.manifest import commit
from storage.reader import TargetSet
from storage.schema import Segments
from storage.writer import write_shard

rng = np.random.default_rng(0)
n, S, Z = 48, 16, 4096
segs = Segments(states=rng.standard_normal((n, S + 1, Z)).astype(np.float16), tokens=rng.integers(0, 1000, (n, S)),
                y=rng.integers(0, 1000, (n, S)), seq=np.arange(n), pos0=np.zeros(n, dtype=np.int64))
with tempfile.TemporaryDirectory() as d:
    b = Bucket.from_url(d)
    for fmt in ("zarr", "wds"):
        e = write_shard(b, segs, index=0 if fmt == "zarr" else 1, round=0, fmt=fmt, dtype="float16", teacher_fingerprint="fp")
        commit(b, [e], teacher_fingerprint="fp", teacher_config={}, corpus_id="c", corpus_params={})
        res = {}
        for mode in ("never", "first"):
            ts = TargetSet.open(b, "fp", verify=mode)
            best = 1e9
            for _ in range(15):
                t = time.process_time(); ts.read_shard_raw(e); best = min(best, time.process_time() - t)
            res[mode] = best
        line = (f"{fmt}: shard {e.bytes / 1e6:.1f} MB; read_shard_raw never {res['never'] * 1e3:.1f} CPU-ms, "
                f"first/always {res['first'] * 1e3:.1f} CPU-ms (x{res['first'] / res['never']:.2f})")
        if fmt == "zarr":
            store = unzip_store(b.read_bytes(e.path)); exp = expected_columns("segments", "float16", S, Z, n)
            best = 1e9
            for _ in range(50):
                t = time.process_time(); check_zarr_store(store, *exp); best = min(best, time.process_time() - t)
            line += f"; metadata check {best * 1e6:.0f} CPU-us"
        print(line)
