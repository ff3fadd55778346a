"""Memory benchmark: does the shard stream's memory stay flat as a run goes on and its epochs grow?

    python benchmarks/memory.py [--generations 48] [--batches 2400] [--every 200]

Two measurements (issue 23 item 10):
- the epoch plan against epoch size: the bytes a materialised plan takes (`epoch_plan`: int32 shard + int64
  record per position, 12 bytes a record; the stream used to cache two) against the bytes an `EpochPlan` holds
  after it is built (tracemalloc: per shard a generator state and counts, plus 1 bit a record with round
  weights), and against one shuffle window's permutations;
- the RSS of this process while one stream reads a target set whose generations grow as lockstep DMT's do (one
  new shard per generation, `follow="steps"` every 4 batches, round weights 1:2 as the recipes' DMT phase): a row
  every `--every` batches with records read, the stream's generation, generations and plans it holds, and RSS.
Writes benchmarks/results/memory.json and memory.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import stamp
from storage.manifest import ShardEntry
from storage.reader import TargetSet
from storage.schema import Segments
from storage.settings import ShardEncoding
from storage.stream import EpochPlan, ShardStream
from storage.writer import TargetSetWriter
from trainers.dmt.mixing import StreamConfig, epoch_plan

OUT = Path(__file__).resolve().parent / "results"
S, Z = 16, 16  # segment length, state size (float16 states)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def entries(n_shards: int, records: int) -> tuple[ShardEntry, ...]:
    return tuple(ShardEntry(round=0 if i < n_shards // 2 else 1, path=f"s/{i}.zarr.zip", format="zarr",
                            layout="pairs", dtype="float16", z=Z, s=0, rows=records, records=records, bytes=1,
                            sha256="0" * 64) for i in range(n_shards))


def plan_rows() -> list[dict]:
    rows = []
    EpochPlan(entries(4, 1000), 0, 0, None)  # first-use allocations (numpy, the generator) are not the plan's
    for n_shards in (10, 40, 160):
        for weights in (None, {"0": 1.0, "dmt": 2.0}):
            es = entries(n_shards, 100_000)
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            plan = EpochPlan(es, 0, 0, weights, mix_shards=8)
            held = tracemalloc.get_traced_memory()[0] - base
            plan.slice(len(plan) // 2, len(plan) // 2 + 8192)
            window = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            full = sum(a.nbytes for a in epoch_plan(es, 0, 0, weights, mix_shards=8)) if n_shards <= 40 else \
                12 * len(plan)  # 12 bytes a record (int32 + int64), not built at 16M records
            rows.append({"records": len(plan), "shards": n_shards, "round_weights": weights,
                         "materialised_bytes": int(full), "materialised_bytes_two_cached": int(2 * full),
                         "plan_bytes": int(held), "plan_bytes_per_record": round(held / len(plan), 4),
                         "plan_plus_one_window_bytes": int(window)})
    return rows


def write_generation(url: str, g: int, segments: int) -> None:
    """Commit one more generation: shard g, as a DMT round would add it."""
    rng = np.random.default_rng(g)
    with TargetSetWriter(url, teacher_fingerprint="bench", teacher_config={}, corpus_id="bench",
                         encoding=ShardEncoding(dtype="float16")) as w:
        w.write_segments(g, Segments(states=rng.standard_normal((segments, S + 1, Z), dtype=np.float32),
                                     tokens=rng.integers(0, 8, (segments, S)), y=rng.integers(0, 8, (segments, S)),
                                     seq=np.arange(segments) + g * segments, pos0=np.zeros(segments, np.int64)))


def rss_rows(generations: int, batches: int, every: int, segments: int) -> tuple[list[dict], dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        url = os.path.join(tmp, "targets")
        write_generation(url, 0, segments)
        cfg = StreamConfig(batch_size=256, follow="steps", follow_every=4, round_weights={"0": 1.0, "dmt": 2.0},
                           mix_shards=8, cache_shards=16)
        stream = ShardStream(TargetSet.open(url, "bench", generation=1), cfg)
        it = iter(stream)
        grow = max(1, batches // generations)
        t0, written = time.perf_counter(), 1
        for b in range(1, batches + 1):
            next(it)
            if b % grow == 0 and written < generations:  # the run goes on, its target set grows
                write_generation(url, written, segments)
                written += 1
            if b % every == 0 or b == 1:
                epoch = len(stream.plan(stream.generation, stream.cursors[0].epoch))
                rows.append({"batches": b, "records": b * cfg.batch_size, "generation": stream.generation,
                             "epoch_records": epoch, "old_plans_bytes": 2 * 12 * epoch,
                             "generations_held": len(stream._sets), "plans_held": len(stream._plans),
                             "rss_mb": rss_mb()})
        secs = time.perf_counter() - t0
        stream.close()
        info = {"generations": generations, "records_per_generation": segments * S, "batches": batches,
                "records_per_s_with_writes": round(batches * cfg.batch_size / secs), "stream": {
                    "batch_size": cfg.batch_size, "follow_every": cfg.follow_every, "mix_shards": cfg.mix_shards,
                    "cache_shards": cfg.cache_shards, "round_weights": cfg.round_weights}}
    return rows, info


def main() -> None:
    flushed = stamp.start()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generations", type=int, default=48)
    ap.add_argument("--batches", type=int, default=2400)
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--segments", type=int, default=2048, help="segments per generation's shard")
    args = ap.parse_args()
    t0 = time.perf_counter()
    plans = plan_rows()
    rss, info = rss_rows(args.generations, args.batches, args.every, args.segments)
    half = [r for r in rss if r["batches"] >= args.batches // 2]  # the decoded-shard cache is full by then
    res = {"plans": plans, "rss": rss, "stream_run": info,
           "second_half": {"rss_mb_min": min(r["rss_mb"] for r in half), "rss_mb_max": max(r["rss_mb"] for r in half),
                           "epoch_records": [half[0]["epoch_records"], half[-1]["epoch_records"]],
                           "old_plans_mb_growth": round((half[-1]["old_plans_bytes"] - half[0]["old_plans_bytes"])
                                                        / 2**20, 1)},
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
           "seconds": round(time.perf_counter() - t0, 1),
           "command": "python benchmarks/memory.py " + " ".join(sys.argv[1:])}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "memory.json").write_text(json.dumps(res, indent=1))
    (OUT / "memory.md").write_text(report(res))
    stamp.stamp(OUT / "memory", flushed)
    print(report(res))


def report(r: dict) -> str:
    i = r["stream_run"]
    lines = ["# Memory benchmark: the stream's memory does not grow with the run", "",
             f"Command: `{r['command'].strip()}`; {r['machine']['cpus']} CPUs, {r['seconds']} s total.", "",
             "## The epoch plan", "",
             ("Materialised: the arrays `epoch_plan` returns (12 bytes a record; the stream cached two). `EpochPlan`: "
             "what the stream holds now, measured with tracemalloc after it is built, and after one 8192-record "
             "window (the permutations of the shards it touched, re-drawn from saved generator states)."), "",
             "| records | shards | round weights | materialised | two cached | EpochPlan | per record | + one window |",
             "|---|---|---|---|---|---|---|---|"]
    for p in r["plans"]:
        lines.append(f"| {p['records']:,} | {p['shards']} | {p['round_weights'] or 'none'} | "
                     f"{p['materialised_bytes'] / 2**20:.1f} MiB | {p['materialised_bytes_two_cached'] / 2**20:.1f} MiB | "
                     f"{p['plan_bytes'] / 2**10:.1f} KiB | {p['plan_bytes_per_record']} B | "
                     f"{p['plan_plus_one_window_bytes'] / 2**20:.2f} MiB |")
    lines += ["", "## RSS while the generations grow", "",
              (f"One stream reads a target set that grows while it runs: a new generation adding one shard of "
               f"{i['records_per_generation']:,} records (float16, Z={Z}) every {i['batches'] // i['generations']} "
               f"batches, up to {i['generations']}, as DMT rounds arrive; the stream follows them every "
               f"{i['stream']['follow_every']} batches of {i['stream']['batch_size']} (round weights "
               f"{i['stream']['round_weights']}, mix_shards {i['stream']['mix_shards']}, cache_shards "
               f"{i['stream']['cache_shards']}); {i['records_per_s_with_writes']:,} records/s, commits included. "
               "'old plans' is what the two materialised plans the stream used to cache would take at that epoch "
               "size (computed, 2 x 12 bytes a record)."), "",
              ("| batches | records read | generation | epoch records | old plans MiB | generations held | plans held "
              "| RSS MiB |"), "|---|---|---|---|---|---|---|---|"]
    for x in r["rss"]:
        lines.append(f"| {x['batches']} | {x['records']:,} | {x['generation']} | {x['epoch_records']:,} | "
                     f"{x['old_plans_bytes'] / 2**20:.1f} | {x['generations_held']} | {x['plans_held']} | {x['rss_mb']} |")
    h = r["second_half"]
    lines += ["", (f"RSS first grows while the decoded-shard cache ({i['stream']['cache_shards']} shards) and the "
                   f"allocator's pools fill; over the second half of the run it stays between {h['rss_mb_min']} and "
                   f"{h['rss_mb_max']} MiB while an epoch grows from {h['epoch_records'][0]:,} to "
                   f"{h['epoch_records'][1]:,} records (the two materialised plans would have grown by "
                   f"{h['old_plans_mb_growth']} MiB over that span). Held: generations an LRU of num_workers + 2, two "
                   "plans of O(shards) each, `cache_shards` decoded shards."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
