"""Labeling benchmark: teacher states labeled per second, end to end (corpus -> teacher -> shards on a
local folder, commit included).

  A. Segment reuse, register teacher, prefix corpus: the label stage (serial and a 2-actor Ray pool)
     against a naive per-transition labeler that, like the reference code, encodes ctx_t and ctx_{t+1}
     for every transition and stores (state_in, state_out) pairs. Compared in transitions (records)/s.
  B. Causal vs register teacher at the same width and depth on a stream corpus, Tc = 64 and 256
     (windows of T = 2*Tc tokens, so Tc+1 states per window), serial, I/O included. Compared in states/s
     (best of --repeats alternating runs) and in CPU time per state. The causal teacher's memory head is
     the config default (--mem-head attend, --mem-span 32); --mem-head linear measures the head before
     issue 22 on the same machine.

    python benchmarks/labeling.py [--quick] [--parts A,B] [--mem-head attend|linear] [--mem-span N|None]

--parts B is the short run (about 30 s on 2 shared CPUs; the whole run about 80 s). Denormals are flushed
to zero (the result files say so).

Writes benchmarks/results/labeling.json and labeling.md. Teachers are untrained (speed does not depend
on the weights).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.teacher import Teacher, TeacherConfig
from pipeline.corpora import load_corpus
from pipeline.executors import RayActorPool, SerialExecutor, init_ray
from pipeline.label import LabelConfig, label
from storage.bucket import Bucket
from storage.checkpoints import load_teacher, save_teacher
from storage.schema import Pairs
from storage.writer import write_shard

OUT = Path(__file__).resolve().parent / "results"
WIDTH = {"d_model": 64, "n_heads": 4, "encoder_depth": 2, "decoder_depth": 1, "mem_tokens": 4, "vocab_size": 16}


def make_teacher(root: Path, encoder: str, window: int | None = None) -> str:
    torch.manual_seed(0)
    path = str(root / f"teacher-{encoder}-{window}")
    save_teacher(path, Teacher(TeacherConfig(encoder=encoder, window=window, **WIDTH, **HEAD)))
    return path


ARGS = argparse.Namespace(device="auto", format="zarr", scale=1)
HEAD: dict = {}  # the causal teacher's memory head (mem_head, mem_span); ignored by the register teacher


def run_stage(teacher: str, spec: str, out: Path, executor, Tc: int | None = None, per_shard: int = 8) -> dict:
    per_shard *= ARGS.scale
    cfg = LabelConfig(teacher=teacher, corpus=spec, out=str(out), Tc=Tc, shard_sequences=per_shard,
                      batch_size=per_shard, device=ARGS.device, format=ARGS.format)
    t0, c0 = time.perf_counter(), time.process_time()
    rep = label(cfg, executor, quiet=True)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"cpu_seconds": round(cpu, 3), "records": rep.records, "states": rep.states, "shards": rep.shards, "seconds": round(dt, 3),
            "records_per_s": rep.records / dt, "states_per_s": rep.states / dt,
            "busy_seconds": round(rep.busy_seconds, 3), "busy_records_per_s": rep.records / rep.busy_seconds}


def naive_label(teacher_path: str, spec: str, out: Path, per_shard: int = 8) -> dict:
    """The reference way: two register passes per transition (ctx_t and ctx_{t+1}), stored as pairs."""
    from models.device import autocast, pick_device

    device = pick_device(ARGS.device)
    teacher, fp, _ = load_teacher(teacher_path, device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the stage's workers (num_cpus=1)
    corpus = load_corpus(spec)
    bucket = Bucket.from_url(str(out))
    T, records, t0, c0 = corpus.seq_len, 0, time.perf_counter(), time.process_time()
    for shard, start in enumerate(range(0, corpus.num_sequences, per_shard)):
        idx = np.arange(start, min(start + per_shard, corpus.num_sequences))
        x, y = corpus.get(idx)
        xt = torch.from_numpy(x).to(device)
        B = len(idx)
        ctx = torch.full((2, T, B, T), -1, dtype=xt.dtype, device=device)  # [in/out, t, b, left-padded context]
        for t in range(T):
            if t:
                ctx[0, t, :, T - t:] = xt[:, :t]
            ctx[1, t, :, T - t - 1:] = xt[:, :t + 1]
        flat = ctx.reshape(-1, T)
        with torch.inference_mode(), autocast(device):
            mem = torch.cat([teacher.encode(flat[i:i + 4096]) for i in range(0, flat.shape[0], 4096)]).float()
        mem = mem.view(2, T, B, -1).transpose(1, 2).reshape(2, B * T, -1)
        pairs = Pairs(state_in=mem[0], tokens=x.reshape(-1), state_out=mem[1], y=y.reshape(-1),
                      seq=np.repeat(idx, T), pos=np.tile(np.arange(T), B))
        records += write_shard(bucket, pairs, index=shard, round=0, fmt=ARGS.format, dtype="float16",
                               teacher_fingerprint=fp).records
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    torch.set_num_threads(threads)
    return {"cpu_seconds": round(cpu, 3), "records": records, "encoder_passes": 2 * records, "seconds": round(dt, 3),
            "records_per_s": records / dt}


def main() -> None:
    torch.set_flush_denormal(True)  # subnormal floats in untrained nets would make CPU timings erratic
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    ap.add_argument("--device", default="auto", help="teacher device (auto: cuda if available)")
    ap.add_argument("--format", default="zarr", choices=["zarr", "wds"], help="shard format")
    ap.add_argument("--scale", type=int, default=1, help="multiply sequences and batch sizes (GPU runs)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of naive and serial (best kept)")
    ap.add_argument("--no-ray", action="store_true", help="skip the 2-actor pool (no Ray on this machine)")
    ap.add_argument("--name", default=None, help="result file name (default: labeling[-quick])")
    ap.add_argument("--parts", default="A,B", help="which parts to run: A, B or A,B")
    ap.add_argument("--mem-head", default=TeacherConfig.mem_head, choices=["attend", "linear"],
                    help="the causal teacher's memory head (linear: the head before issue 22)")
    ap.add_argument("--mem-span", default=TeacherConfig.mem_span,
                    type=lambda v: None if v == "None" else int(v),
                    help="the attend head's span (None: the whole window)")
    args = ap.parse_args()
    parts = set(args.parts.upper().split(","))
    ARGS.__dict__.update(device=args.device, format=args.format, scale=args.scale)
    HEAD.update(mem_head=args.mem_head, mem_span=args.mem_span)
    n_a, T_a = (8, 16) if args.quick else (48 * args.scale, 64)
    tcs = (16, 32) if args.quick else (64, 256)
    res: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "torch": torch.__version__, "load_avg": os.getloadavg()},
                 "teacher": WIDTH, "causal_head": dict(HEAD), "denormals_flushed": True, "dtype": "float16",
                 "format": args.format, "scale": args.scale,
                 "device": str(torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu"
                               else "cpu"),
                 "command": "python benchmarks/labeling.py " + " ".join(sys.argv[1:])}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reg = make_teacher(root, "register")
        spec = f"retrieval:T={T_a},vocab=8,n={n_a}"
        a = {"corpus": spec, "repeats": args.repeats}
        if "A" in parts:
            res["A_segment_reuse"] = part_a(a, reg, spec, root, args)
        if "B" in parts:
            res["B_causal_vs_register"] = part_b(root, tcs, args)
    res["total_seconds"] = round(time.perf_counter() - t_all, 1)
    OUT.mkdir(exist_ok=True)
    name = args.name or ("labeling-quick" if args.quick else "labeling")
    (OUT / f"{name}.json").write_text(json.dumps(res, indent=1, default=float))
    (OUT / f"{name}.md").write_text(markdown(res))
    print(markdown(res))


def part_a(a: dict, reg: str, spec: str, root: Path, args) -> dict:
    # The machine is shared: alternate the two labelers and keep each one's best wall time, and
    # record process CPU time too (both run single-threaded in this process).
    runs: dict[str, list[dict]] = {"naive_pairs": [], "stage_serial": []}
    for r in range(args.repeats):
        runs["naive_pairs"].append(naive_label(reg, spec, root / f"naive{r}", 8 * args.scale))
        runs["stage_serial"].append(run_stage(reg, spec, root / f"serial{r}", SerialExecutor()))
    for k, rs in runs.items():
        a[k] = min(rs, key=lambda v: v["seconds"])
        a[k]["all_seconds"] = [v["seconds"] for v in rs]
    a["segment_reuse_speedup"] = a["stage_serial"]["records_per_s"] / a["naive_pairs"]["records_per_s"]
    a["segment_reuse_speedup_cpu_time"] = a["naive_pairs"]["cpu_seconds"] / a["stage_serial"]["cpu_seconds"]
    if not args.no_ray:
        init_ray()
        a["stage_ray_2_actors"] = run_stage(reg, spec, root / "ray", RayActorPool(num_actors=2))
        a["ray2_vs_serial"] = a["stage_ray_2_actors"]["records_per_s"] / a["stage_serial"]["records_per_s"]
    return a


def part_b(root: Path, tcs: tuple[int, ...], args) -> dict:
    """Causal vs register at each Tc; the labelers alternate `repeats` times and each keeps its best wall
    time (the machine is shared), with its process CPU time alongside."""
    b = {}
    for Tc in tcs:
        T = 2 * Tc
        np.save(root / f"ids{Tc}.npy", np.random.default_rng(Tc).integers(0, 16, 64 * args.scale * T).astype(np.int32))
        n_reg = 2 if args.quick else max(2, 1024 // Tc) * args.scale
        n_cau = 16 if args.quick else max(16, 8192 // Tc) * args.scale
        row: dict = {"T": T}
        specs = {}
        for enc, n in (("register", n_reg), ("causal", n_cau)):
            sub = np.load(root / f"ids{Tc}.npy")[: n * T]
            np.save(root / f"ids{Tc}-{enc}.npy", sub)
            specs[enc] = (make_teacher(root, enc, Tc if enc == "causal" else None),
                          f"tokens:{root / f'ids{Tc}-{enc}.npy'}|T={T},stride={T},vocab=16")
        runs: dict[str, list[dict]] = {"register": [], "causal": []}
        for r in range(args.repeats):
            for enc, (teacher, cspec) in specs.items():
                runs[enc].append(run_stage(teacher, cspec, root / f"b-{enc}-{Tc}-{r}", SerialExecutor(),
                                           Tc=Tc, per_shard=4 if enc == "register" else 16))
        for enc, rs in runs.items():
            row[enc] = min(rs, key=lambda v: v["seconds"])
            row[enc]["all_seconds"] = [v["seconds"] for v in rs]
        row["causal_vs_register"] = row["causal"]["states_per_s"] / row["register"]["states_per_s"]
        row["causal_vs_register_cpu_time"] = ((row["register"]["cpu_seconds"] / row["register"]["states"])
                                              / (row["causal"]["cpu_seconds"] / row["causal"]["states"]))
        b[f"Tc={Tc}"] = row
    return b


def markdown(r: dict) -> str:
    head = r.get("causal_head") or {"mem_head": "linear"}
    head_txt = (f"causal memory head `{head['mem_head']}`"
                + (f" (mem_span={head.get('mem_span')})" if head["mem_head"] == "attend" else ""))
    lines = ["# Labeling benchmark", "",
             (f"Command: `{r['command'].strip()}`; device {r['device']}; {r['machine']['cpus']} CPUs (shared; load average at start "
             f"{r['machine']['load_avg'][0]:.1f}), torch {r['machine']['torch']}, teacher d_model="
             f"{r['teacher']['d_model']} depth={r['teacher']['encoder_depth']} K={r['teacher']['mem_tokens']}, "
             f"{head_txt}, float16 {r['format']} shards on a local folder, I/O and commit included; "
             f"{r['total_seconds']} s total."), "",
             f"denormals flushed: {'yes' if r.get('denormals_flushed') else 'no'}", ""]
    if "A_segment_reuse" in r:
        lines += markdown_a(r["A_segment_reuse"])
    if "B_causal_vs_register" in r:
        lines += markdown_b(r["B_causal_vs_register"])
    return "\n".join(lines) + "\n"


def markdown_a(a: dict) -> list[str]:
    lines = [f"## A. Segment reuse (register teacher, `{a['corpus']}`)", "",
             "| labeler | records | best seconds (all) | records/s | records/s while busy | CPU s |",
             "|---|---|---|---|---|---|"]
    for k in ("naive_pairs", "stage_serial", "stage_ray_2_actors"):
        if k not in a:
            continue
        v = a[k]
        busy = f"{v['busy_records_per_s']:.0f}" if "busy_records_per_s" in v else "-"
        runs = ", ".join(f"{x:.1f}" for x in v.get("all_seconds", [v["seconds"]]))
        cpu = "-" if k == "stage_ray_2_actors" else f"{v['cpu_seconds']:.1f}"  # actors' CPU is not ours
        lines.append(f"| {k} | {v['records']} | {v['seconds']:.2f} ({runs}) | {v['records_per_s']:.0f} | {busy} | "
                     f"{cpu} |")
    ray_line = ("" if "ray2_vs_serial" not in a else
                f" 2 actors vs serial: {a['ray2_vs_serial']:.2f}x end to end (actor start-up included); "
                "'while busy' = records / the busiest worker's summed item time.")
    return lines + ["", (f"Segment reuse vs naive per-transition (2 encoder passes per transition): "
                         f"**{a['segment_reuse_speedup']:.2f}x** by best wall time, "
                         f"**{a['segment_reuse_speedup_cpu_time']:.2f}x** by CPU time (target >= 1.9x).{ray_line}"), ""]


def markdown_b(b: dict) -> list[str]:
    lines = ["## B. Causal vs register teacher (stream corpus, windows of T = 2*Tc)", "",
             "| Tc | teacher | states | best seconds (all) | states/s | CPU s |", "|---|---|---|---|---|---|"]
    for key, row in b.items():
        for enc in ("register", "causal"):
            v = row[enc]
            runs = ", ".join(f"{x:.2f}" for x in v.get("all_seconds", [v["seconds"]]))
            lines.append(f"| {key[3:]} | {enc} | {v['states']} | {v['seconds']:.2f} ({runs}) | "
                         f"{v['states_per_s']:.0f} | {v['cpu_seconds']:.2f} |")
    lines += [""] + [f"- {k}: causal/register = **{row['causal_vs_register']:.1f}x** by best wall time"
                     + (f", {row['causal_vs_register_cpu_time']:.1f}x by CPU time per state"
                        if "causal_vs_register_cpu_time" in row else "") for k, row in b.items()]
    return lines + ["", "Target: >= 100x at Tc=256 (issue 22; was >= 30x)."]


if __name__ == "__main__":
    main()
