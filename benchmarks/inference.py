"""Inference benchmark: tokens per second and memory per generated token against sequence length, for the
student RNN (constant state), the Transformer teacher with a KV cache (a growing cache; and the recipe's sliding
window, a bounded one) and the teacher without a cache (the whole sequence re-encoded per token).

Models: the text-bytes-tiny recipe's shapes (jobs/recipes.py: teacher d=64, 4 heads, 2 encoder and 2 decoder
blocks, K=4 memory tokens, the 'attend' memory head with span 32; the student's mlp updater, depth 2, hidden
512; byte vocabulary 256), untrained (speed and memory do not depend on the weights), batch 1, float32, CPU,
one torch thread. Each variant runs in its own process (so its RSS is its own) and generates real tokens
(readout, sampling at temperature 1, update) from length 0 to the longest length; at each length L it times
`--timed` tokens generated after the first L. The teacher's prompt up to L is prefilled in chunks of 512 (its
tokens do not change the cost); the student reads every token one by one, as an RNN must. Memory: the state
carried from one token to the next (the student's memory m_t, Z floats; the teacher's cached keys and values),
the process's peak RSS above its size after building the model, and tracemalloc's peak (Python objects only:
torch allocates tensors outside it). The no-cache teacher stops at the first length whose token takes longer
than --recompute-limit seconds (the longer ones read 'n/a (why)').

    python benchmarks/inference.py [--max-len 65536] [--timed 64] [--recompute-limit 3] [--quick]

About 4-6 minutes on 2 shared CPUs (--quick: 1k-4k, seconds). Denormals are flushed (the result files say so).
Writes benchmarks/results/inference.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import stamp

OUT = Path(__file__).resolve().parent / "results"
RECIPE = "text-bytes-tiny"
VARIANTS = {
    "student": "student RNN (mlp updater + readout)",
    "teacher_kv": "teacher, KV cache, full context",
    "teacher_kv_window": "teacher, KV cache, the recipe's window (64)",
    "teacher_recompute": "teacher, no cache (re-encodes every token), full context",
}
PREFILL = 512
REPEATS = 3


def models(variant: str):
    """(teacher config, student) of the recipe's shapes; the full-context variants drop the window."""
    from dataclasses import replace

    import torch

    from jobs.recipes import load_recipe
    from models.student_rnn import Student
    from models.teacher import Teacher
    from models.updaters import matched_updater

    rc = load_recipe(RECIPE)
    cfg = replace(rc.pretrain.teacher, vocab_size=256)
    if variant in ("teacher_kv", "teacher_recompute"):
        cfg = replace(cfg, window=None)
    torch.manual_seed(0)
    teacher = Teacher(cfg).eval()
    student = Student.from_teacher(teacher, matched_updater(cfg, rc.student.updater)).eval()
    return teacher, student


def rss() -> tuple[int, int]:
    """(current, peak) resident set size of this process in bytes (/proc/self/status)."""
    vals = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":")
            vals[k] = int(v.split()[0]) * 1024
    return vals["VmRSS"], vals["VmHWM"]


def worker(variant: str, lengths: list[int], timed: int, limit: float) -> list[dict]:
    """One variant in this process: a row per length (tokens/s by wall clock and by CPU time, state bytes, RSS
    and tracemalloc peaks)."""
    import torch

    from models.device import flush_denormals
    from models.sampling import draw

    flush_denormals()
    torch.set_num_threads(1)
    teacher, student = models(variant)
    gen = torch.Generator().manual_seed(0)

    def prompt(n: int) -> torch.Tensor:  # the context's tokens do not change the cost
        return torch.randint(0, 256, (1, n), generator=gen)

    if variant == "student":
        m = student.start(1)

        def advance(n: int) -> None:  # an RNN reads its context token by token (no readout needed)
            nonlocal m
            for c in range(0, n, PREFILL):  # drawn in chunks like the teacher's, so no L-sized tensor is held
                x = prompt(min(PREFILL, n - c))
                for i in range(x.shape[1]):  # by index: iterating a tensor would hold a view of every token at once
                    m = student.step(m, x[:, i])

        def generate_one() -> None:
            nonlocal m
            m = student.step(m, draw(student.readout(m), 1.0, gen))

        def state() -> tuple[int, int]:
            return m.numel() * m.element_size(), m.numel() * m.element_size()
    elif variant.startswith("teacher_kv"):
        inc = teacher.incremental(1)

        def advance(n: int) -> None:
            for i in range(0, n, PREFILL):
                inc.feed(prompt(min(PREFILL, n - i)))

        def generate_one() -> None:
            inc.feed(draw(teacher.readout(inc.memory), 1.0, gen)[:, None])

        def state() -> tuple[int, int]:
            caches = [*inc.caches, *([inc.head] if inc.head is not None else [])]
            return inc.nbytes, sum(c.allocated_bytes for c in caches)
    else:
        seq = prompt(0)

        def advance(n: int) -> None:
            nonlocal seq
            seq = torch.cat([seq, prompt(n)], 1)

        def generate_one() -> None:
            nonlocal seq
            seq = torch.cat([seq, draw(teacher.readout(teacher.memory_after(seq)), 1.0, gen)[:, None]], 1)

        def state() -> tuple[int, int]:  # it carries the tokens only, and recomputes the rest per token
            return seq.numel() * seq.element_size(), seq.numel() * seq.element_size()

    rows: list[dict] = []
    with torch.inference_mode():
        for _ in range(4):  # warm up every kernel, then take the baseline
            if variant == "teacher_recompute":
                teacher.readout(teacher.memory_after(prompt(64)))
            else:
                generate_one()
        base_rss, _ = rss()
        pos, stopped = 0, None
        for L in lengths:
            if stopped:
                rows.append({"length": L, "tokens_per_s": None, "note": stopped})
                continue
            advance(L - pos)
            recompute = variant == "teacher_recompute"
            blocks = []  # (tokens, wall s, cpu s) of each timed block; the best is kept (a shared machine)
            for _ in range(1 if recompute else REPEATS):
                n = 4 if recompute else timed
                t0, c0 = time.perf_counter(), time.process_time()
                for i in range(n):
                    generate_one()
                    if time.perf_counter() - t0 > 2 * limit:
                        n = i + 1
                        break
                blocks.append((n, time.perf_counter() - t0, time.process_time() - c0))
            n = sum(b[0] for b in blocks)
            best = min(blocks, key=lambda b: b[2] / b[0])
            dt, cpu = best[1] / best[0], best[2] / best[0]  # seconds per token of the best block
            carried, allocated = state()
            tracemalloc.start()  # a separate, untimed window: tracing slows every Python allocation
            for _ in range(2 if variant == "teacher_recompute" else 8):
                generate_one()
            _, py_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            pos = L + n + (2 if recompute else 8)
            cur, peak = rss()
            rows.append({"length": L, "tokens_per_s": 1 / dt, "tokens_per_cpu_s": 1 / cpu, "timed_tokens": n,
                         "timed_blocks": len(blocks), "seconds_per_token": dt, "state_bytes": carried,
                         "state_allocated_bytes": allocated, "rss_growth_bytes": cur - base_rss,
                         "peak_rss_growth_bytes": peak - base_rss, "tracemalloc_peak_bytes": py_peak})
            if recompute and dt > limit:
                stopped = f"not run: a token took {dt:.1f} s at L={L}, over the {limit:g} s limit"
            print(json.dumps({"variant": variant, **rows[-1]}), file=sys.stderr, flush=True)
    return rows


def crossover(rows_a: list[dict], rows_b: list[dict], key: str, a_wins) -> int | None:
    """The smallest length where `a_wins(a[key], b[key])` holds and keeps holding at every longer one measured."""
    pairs = [(a["length"], a.get(key), b.get(key)) for a, b in zip(rows_a, rows_b, strict=True)]
    pairs = [(L, x, y) for L, x, y in pairs if x is not None and y is not None]
    for i, (L, _, _) in enumerate(pairs):
        if all(a_wins(x, y) for _, x, y in pairs[i:]):
            return L
    return None


def kv_bytes_per_position(cfg) -> int:
    """Keys + values one position adds to the cache of every encoder block (float32)."""
    return cfg.encoder_depth * 2 * cfg.d_model * 4


def markdown(res: dict) -> str:
    from trainers.report import markdown_table

    v, lengths = res["variants"], res["lengths"]

    def ks(L: int) -> str:
        return f"{L // 1024}k" if L % 1024 == 0 else str(L)

    def cell(r: dict, key: str, fmt) -> str:
        return fmt(r[key]) if r.get(key) is not None else f"n/a ({r.get('note', 'not measured')})"

    def mib(b: float) -> str:
        return f"{b / 2**20:.2f} MiB" if abs(b) >= 2**20 else f"{b / 1024:.1f} KiB"

    def rate(x: float) -> str:
        return f"{x:,.0f}" if x >= 10 else f"{x:.2f}"

    speed, cpu, state, peak = [], [], [], []
    for name, label in VARIANTS.items():
        rows = {r["length"]: r for r in v[name]}
        speed.append({"model": label, **{ks(L): cell(rows[L], "tokens_per_s", rate) for L in lengths}})
        cpu.append({"model": label, **{ks(L): cell(rows[L], "tokens_per_cpu_s", rate) for L in lengths}})
        state.append({"model": label, **{ks(L): cell(rows[L], "state_bytes", mib) for L in lengths}})
        peak.append({"model": label, **{ks(L): cell(rows[L], "peak_rss_growth_bytes", mib) for L in lengths}})
    cols = ["model", *map(ks, lengths)]
    c = res["crossovers"]
    s, t = res["student_state_bytes"], res["teacher_kv_bytes_per_position"]
    lines = [
        "# Inference: the student RNN against the Transformer teacher, per generated token", "",
        (f"Command: `{res['command']}` ({res['total_seconds']:.0f} s). Machine: {res['machine']['cpus']} CPUs "
        f"(shared; load average {res['machine']['load_avg'][0]:.1f} at the start), {res['machine']['platform']}, torch "
        f"{res['machine']['torch']}, one torch thread, float32, batch 1."), "",
        (f"Models: the `{RECIPE}` recipe's shapes, untrained (speed and memory do not depend on the weights): "
        f"{res['shapes']}. Each row is its own process; each generates real tokens (readout, sampling at "
        f"temperature 1, update) at length L in {REPEATS} timed blocks of {res['timed']} tokens, keeping the fastest "
        "block by CPU time (the machine is shared); the no-cache teacher times up to 4 tokens once. The context up to "
        f"L is random bytes (they do not change the cost): the teacher prefills it in chunks of {PREFILL}, the "
        "student reads it token by token with its updater, as an RNN must."), "",
        "## The answer", "",
        (f"- **State carried per token**: the student carries its memory m_t, {s:,} bytes "
        f"({res['shapes_z']} floats), at every length. The teacher's KV cache adds {t:,} bytes per position "
        f"({res['shapes_depth']} blocks x keys and values x d={res['shapes_d']} x 4 bytes) plus its memory head's "
        f"last {res['head_span'] - 1} positions; with the full context it holds {mib(res['teacher_kv_state_at_max'])} "
        f"at L={ks(lengths[-1])}. **Crossover: the teacher's cache is larger than the student's whole state from "
        f"{'the first token on' if res['state_crossover_tokens'] == 0 else 'L=' + str(res['state_crossover_tokens'])}"
        f"** (computed from the shapes; measured: {mib(res['teacher_kv_state_at_first'])} against {mib(s)} at "
        f"L={ks(lengths[0])}, {res['state_ratio_at_max']:,.0f}x at L={ks(lengths[-1])}). The recipe's window (64) "
        "bounds the cache at "
        f"{mib(res['window_state'])}, still {res['window_state'] / s:.0f}x the student's state."),
        (f"- **Process memory** (peak RSS above the process's size after building the model): the student's stays "
        f"flat ({mib(res['student_peak_rss_max'])} at most, at every length); the full-context teacher's grows with "
        f"the cache to {mib(res['teacher_kv_peak_rss_at_max'])} at L={ks(lengths[-1])}. The RSS crossover (the "
        f"teacher's growth above the student's at this and every longer length): "
        f"{ks(c['peak_rss']) if c['peak_rss'] else 'none measured'}."),
        f"- **Speed** (per CPU-second of the process, which the other jobs on this shared machine disturb less than "
        f"the wall clock): the student generates {res['student_cpu_speed_range']} tokens/s at every length; the "
        f"full-context KV-cache teacher {res['teacher_kv_cpu_speed_first']:,.0f} tokens/s at L={ks(lengths[0])} and "
        f"{res['teacher_kv_cpu_speed_last']:,.0f} at L={ks(lengths[-1])}. Throughput crossover (the student faster at "
        "this and every longer length): "
        + (f"L={ks(c['cpu_speed'])}" if c["cpu_speed"] else "none in the lengths measured")
        + " per CPU-second, "
        + (f"L={ks(c['speed'])}" if c["speed"] else "none in the lengths measured") + " by the wall clock"
        + (" (the student is faster at every length measured: its token costs an updater step and a readout of K "
           "memory tokens, the teacher's a pass of its encoder over the new token, attention over the cache, "
           "its memory head and the same readout)" if c["cpu_speed"] == lengths[0] else "")
        + f". Without a cache the teacher re-encodes the whole sequence per token: {res['recompute_summary']}.", "",
        "## Tokens per second (wall clock)", "", markdown_table(speed, cols), "",
        "## Tokens per CPU-second of the process", "", markdown_table(cpu, cols), "",
        "## State carried from one token to the next (bytes of m_t, or of the cached keys and values)", "",
        markdown_table(state, cols), "",
        ("The no-cache teacher carries only the tokens (8 bytes each) and recomputes everything else per token. The "
        "cache's storage grows by doubling, so up to twice these bytes are allocated (`state_allocated_bytes` in "
        f"`inference.json`: {mib(res['teacher_kv_allocated_at_max'])} at L={ks(lengths[-1])}); the rest of the "
        "full-context teacher's RSS growth below is transient: the prefill's attention over the cache (up to "
        f"{PREFILL} x L scores per head, freed after each chunk) and memory the allocator keeps after freeing it."), "",
        "## Peak process RSS above the size after building the model", "", markdown_table(peak, cols), "",
        ("tracemalloc's peak (Python objects only; torch's tensors are allocated outside it, so it stays near zero for "
        f"every model): at most {mib(res['tracemalloc_max'])} in any row (`inference.json`)."), "",
        (f"At the reference scale (`tinystories-bytes`: d=256, 8 encoder blocks, K=16, computed, not measured) the "
        f"student's state is {res['reference']['student_state_bytes'] // 1024} KiB and a full-context cache grows "
        f"by {res['reference']['kv_bytes_per_position'] // 1024} KiB per token: "
        f"{res['reference']['kv_at_64k'] / 2**30:.1f} GiB at 64k (the recipe's window of 256 bounds it at "
        f"{res['reference']['kv_window'] / 2**20:.1f} MiB)."), "",
        "![tokens per second and memory against length](inference.png)", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path:
    from trainers.report import plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for name, label in VARIANTS.items():
        rows = [r for r in res["variants"][name] if r.get("tokens_per_s") is not None]
        xs = [r["length"] for r in rows]
        line, = a.plot(xs, [r["tokens_per_cpu_s"] for r in rows], marker="o", label=f"{label} (per CPU-s)")
        a.plot(xs, [r["tokens_per_s"] for r in rows], marker=".", linestyle=":", color=line.get_color(),
               label=f"{label} (wall)")
        if name != "teacher_recompute":
            b.plot(xs, [r["state_bytes"] for r in rows], marker="o", color=line.get_color(), label=f"{label}: state")
            b.plot(xs, [max(r["peak_rss_growth_bytes"], 1) for r in rows], marker="x", linestyle=":",
                   color=line.get_color(), label=f"{label}: peak RSS growth")
    for ax, title, ylabel in ((a, "generation speed", "tokens / s"), (b, "memory per generated token", "bytes")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    b.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> int:
    flushed = stamp.start()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-len", type=int, default=65536, help="longest length (powers of 2 from 1024)")
    ap.add_argument("--timed", type=int, default=64, help="tokens timed at each length")
    ap.add_argument("--recompute-limit", type=float, default=3.0, help="seconds per token that stop the no-cache teacher")
    ap.add_argument("--quick", action="store_true", help="1k-4k, 16 timed tokens: checks the script runs")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--lengths", type=int, nargs="+", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.lengths, args.timed, args.recompute_limit)))
        return 0
    max_len, timed = (4096, 16) if args.quick else (args.max_len, args.timed)
    lengths = [2**i for i in range(10, 30) if 2**i <= max_len]
    t_all = time.perf_counter()
    res: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
                 "command": "python benchmarks/inference.py " + " ".join(sys.argv[1:]), "recipe": RECIPE,
                 "lengths": lengths, "timed": timed, "variants": {}}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--worker", name, "--timed", str(timed), "--recompute-limit",
               str(args.recompute_limit), "--lengths", *map(str, lengths)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode:
            raise SystemExit(f"inference benchmark: the {name} worker failed: {proc.stderr.strip().splitlines()[-1]}")
        res["variants"][name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name}: done", flush=True)
    import torch

    res["machine"]["torch"] = torch.__version__
    summarise(res)
    res["total_seconds"] = time.perf_counter() - t_all
    OUT.mkdir(exist_ok=True)
    name = "inference-quick" if args.quick else "inference"
    (OUT / f"{name}.json").write_text(json.dumps(res, indent=1))
    plot(res, OUT / f"{name}.png")
    md = markdown(res).replace("(inference.png)", f"({name}.png)")
    (OUT / f"{name}.md").write_text(md)
    stamp.stamp(OUT / name, flushed)
    print(md)
    return 0


def summarise(res: dict) -> None:
    """The headline numbers the Markdown states, computed from the rows."""
    from jobs.recipes import load_recipe

    teacher, student = models("teacher_kv")
    cfg = teacher.cfg
    v = res["variants"]
    st, kv, kvw, rc = v["student"], v["teacher_kv"], v["teacher_kv_window"], v["teacher_recompute"]
    res["shapes"] = (f"teacher d={cfg.d_model}, {cfg.n_heads} heads, {cfg.encoder_depth} encoder and "
                     f"{cfg.decoder_depth} decoder blocks, K={cfg.mem_tokens}, memory head '{cfg.mem_head}' span "
                     f"{cfg.mem_span}; student {student.updater_cfg.arch} updater depth {student.updater_cfg.depth} "
                     f"hidden {student.updater_cfg.hidden}; "
                     f"{sum(p.numel() for p in teacher.parameters()):,} teacher and "
                     f"{sum(p.numel() for p in student.parameters()):,} student parameters")
    res["shapes_z"], res["shapes_depth"], res["shapes_d"] = cfg.Z, cfg.encoder_depth, cfg.d_model
    res["head_span"] = cfg.mem_span
    res["student_state_bytes"] = st[0]["state_bytes"]
    res["teacher_kv_bytes_per_position"] = kv_bytes_per_position(cfg)
    head = 2 * cfg.d_model * 4  # the memory head's key and value of one position (one head of width d)
    res["state_crossover_tokens"] = next(  # tokens read (the start token is a position too) when the cache passes m_t
        n for n in range(10**6) if (n + 1) * kv_bytes_per_position(cfg) + min(n + 1, cfg.mem_span - 1) * head
        > res["student_state_bytes"])
    res["teacher_kv_state_at_first"], res["teacher_kv_state_at_max"] = kv[0]["state_bytes"], kv[-1]["state_bytes"]
    res["teacher_kv_allocated_at_max"] = kv[-1]["state_allocated_bytes"]
    res["state_ratio_at_max"] = kv[-1]["state_bytes"] / st[-1]["state_bytes"]
    res["window_state"] = kvw[-1]["state_bytes"]
    res["student_peak_rss_max"] = max(r["peak_rss_growth_bytes"] for r in st)
    res["teacher_kv_peak_rss_at_max"] = kv[-1]["peak_rss_growth_bytes"]
    speeds = [r["tokens_per_cpu_s"] for r in st]
    res["student_cpu_speed_range"] = f"{min(speeds):,.0f}-{max(speeds):,.0f}"
    res["teacher_kv_cpu_speed_first"] = kv[0]["tokens_per_cpu_s"]
    res["teacher_kv_cpu_speed_last"] = kv[-1]["tokens_per_cpu_s"]
    res["tracemalloc_max"] = max(r.get("tracemalloc_peak_bytes", 0) for rows in v.values() for r in rows)
    res["crossovers"] = {
        "state": crossover(kv, st, "state_bytes", lambda a, b: a > b),
        "peak_rss": crossover(kv, st, "peak_rss_growth_bytes", lambda a, b: a > b),
        "speed": crossover(st, kv, "tokens_per_s", lambda a, b: a > b),
        "cpu_speed": crossover(st, kv, "tokens_per_cpu_s", lambda a, b: a > b)}
    done = [r for r in rc if r.get("tokens_per_s") is not None]
    res["recompute_summary"] = (", ".join(f"{r['tokens_per_cpu_s']:.2f} tokens/CPU-s at L={r['length']}" for r in done)
                                + (f"; {rc[len(done)]['note']}" if len(done) < len(rc) else ""))
    ref = load_recipe("tinystories-bytes").pretrain.teacher
    res["reference"] = {"student_state_bytes": ref.Z * 4, "kv_bytes_per_position": kv_bytes_per_position(ref),
                        "kv_at_64k": kv_bytes_per_position(ref) * 65536,
                        "kv_window": kv_bytes_per_position(ref) * (ref.window - 1)}


if __name__ == "__main__":
    raise SystemExit(main())
