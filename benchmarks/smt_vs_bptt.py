"""SMT->DMT against BPTT on the retrieval task, the same updater, equal wall-clock budgets, one run.

For each sequence length T, updater architecture and seed, every method gets the same training budget
(evaluation excluded) on this machine:
- `smt-causal-curr`: all-position causal teacher with a length curriculum (16, 32, .. T/2), then DMT;
- `smt-causal`: the causal teacher without curriculum, then DMT;
- `smt-register-curr`: the reference register teacher with the curriculum, then DMT;
- `bptt`: full BPTT of the same updater with its own readout and a learned initial memory.
The figure of merit is the accuracy of the updater rolled out ALONE from m_0 (teacher-forced inputs) on
held-out sequences, and the training time at which it first reaches 95%. Step times against T are
measured separately for each method. Methods are interleaved per (T, arch, seed) so that background load
hits them alike.

Usage: python benchmarks/smt_vs_bptt.py [--T 64 128 256] [--archs mlp gru] [--seeds 0 1] [--budget 60]
Writes benchmarks/results/smt_vs_bptt.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.student import Student
from models.teacher import Teacher, TeacherConfig
from models.updaters import UpdaterConfig
from pipeline.corpora import load_corpus
from trainers.bptt import BPTTConfig, bptt_loss, train_bptt
from trainers.common import OptimConfig
from trainers.dmt import DMTConfig, dmt_online
from trainers.pretrain import PretrainConfig, matched_updater, pretrain
from trainers.report import markdown_table
from trainers.smt import SMTConfig, smt_losses

METHODS = ("smt-causal-curr", "smt-causal", "smt-register-curr", "bptt")
TEACHER = {"d_model": 64, "n_heads": 4, "encoder_depth": 2, "decoder_depth": 2, "mem_tokens": 4}
LR, DMT_LR, BATCH, EVAL = 1e-3, 3e-4, 32, 128


def curriculum(T: int) -> tuple[int, ...]:
    out, L = [], 16
    while L < T:
        out.append(L)
        L *= 2
    return tuple(out)


def t_reach(timeline: list[tuple[float, float]], level: float = 0.95) -> float | None:
    return next((t for t, a in timeline if a >= level), None)


def run_smt(corpus, arch: str, encoder: str, curr: bool, budget: float, seed: int, clock: str = "wall") -> dict:
    teacher = TeacherConfig(encoder=encoder, **TEACHER)
    pt = pretrain(corpus, PretrainConfig(
        teacher=teacher, updater=UpdaterConfig(arch=arch), optim=OptimConfig(lr=LR, warmup_steps=20),
        steps=10**6, seconds=0.75 * budget, batch_size=BATCH, curriculum=curriculum(corpus.seq_len) if curr else (),
        stop_at_acc=0.99, eval_every=25, eval_size=EVAL, seed=seed, clock=clock), quiet=True)
    # only the final-length evaluations count as the updater's accuracy on this task
    tl = [(r["time"], r["smt_acc"] if r["T"] == corpus.seq_len else 0.0) for r in pt["history"]]
    left = budget - pt["seconds"]
    dmt_steps = 0
    if left > 1 and pt["final"].get("T") == corpus.seq_len:
        dm = dmt_online(pt["student"], pt["teacher"], corpus, DMTConfig(
            optim=OptimConfig(lr=DMT_LR, schedule="cosine", warmup_steps=10), steps=400, seconds=left,
            batch_size=BATCH, stop_at_acc=0.99, eval_every=10, eval_size=EVAL, seed=seed, clock=clock), quiet=True)
        tl += [(pt["seconds"] + r["time"], r["dmt_acc"]) for r in dm["history"][1:]]
        dmt_steps = dm["steps"]
    return {"timeline": tl, "teacher_acc": pt["final"].get("teacher_acc"), "teacher_T": pt["final"].get("T"),
            "pretrain_seconds": pt["seconds"], "pretrain_steps": pt["steps"], "dmt_steps": dmt_steps}


def run_bptt(corpus, arch: str, budget: float, seed: int, clock: str = "wall") -> dict:
    b = train_bptt(corpus, BPTTConfig(updater=UpdaterConfig(arch=arch), shape=TeacherConfig(**TEACHER),
                                      optim=OptimConfig(lr=LR, warmup_steps=20), steps=10**6, seconds=budget,
                                      batch_size=BATCH, eval_every=25, eval_size=EVAL, seed=seed, clock=clock),
                   quiet=True)
    return {"timeline": [(r["time"], r["bptt_acc"]) for r in b["history"]], "steps": b["steps"]}


def step_times(T: int, arch: str, reps: int = 3, clock: str = "wall") -> dict:
    """Seconds per optimiser step (forward + backward) for each method at length T."""
    corpus = load_corpus(f"retrieval:T={T},vocab=8")
    x, y = (torch.as_tensor(a) for a in corpus.sample(BATCH, np.random.default_rng(0)))
    out = {}
    for enc in ("causal", "register"):
        t = Teacher(TeacherConfig(vocab_size=corpus.vocab_size, encoder=enc, **TEACHER))
        s = Student.from_teacher(t, matched_updater(t.cfg, UpdaterConfig(arch=arch)))
        g = torch.Generator().manual_seed(0)
        out[f"smt-{enc}"] = _time(lambda t=t, s=s, g=g: smt_losses(t, s.updater, x, y, SMTConfig(), g)["loss"].backward(),
                                  reps, clock)
    s = Student(matched_updater(TeacherConfig(vocab_size=corpus.vocab_size, **TEACHER), UpdaterConfig(arch=arch)),
                TeacherConfig(vocab_size=corpus.vocab_size, **TEACHER))
    out["bptt"] = _time(lambda: bptt_loss(s, x, y).backward(), reps, clock)
    return out


def _time(fn, reps: int, clock: str = "wall") -> float:
    now = time.process_time if clock == "process" else time.perf_counter
    fn()
    t0 = now()
    for _ in range(reps):
        fn()
    return (now() - t0) / reps


def run_task(task: dict) -> dict:
    """One benchmark cell: a training run {"T", "arch", "seed", "method"} or a step-time cell {"T", "arch"}."""
    T, arch = task["T"], task["arch"]
    if "method" not in task:
        return {**task, "step_seconds": step_times(T, arch, clock=task.get("clock", "wall"))}
    corpus = load_corpus(f"retrieval:T={T},vocab=8")
    m, seed, budget, clock = task["method"], task["seed"], task["budget"], task.get("clock", "wall")
    t0 = time.perf_counter()
    if m == "bptt":
        r = run_bptt(corpus, arch, budget, seed, clock)
    else:
        r = run_smt(corpus, arch, m.split("-")[1], m.endswith("-curr"), budget, seed, clock)
    r.update(T=T, arch=arch, seed=seed, method=m, t95=t_reach(r["timeline"]),
             final_acc=r["timeline"][-1][1] if r["timeline"] else 0.0,
             best_acc=max((a for _, a in r["timeline"]), default=0.0), wall=time.perf_counter() - t0)
    return r


def run_parallel(tasks: list[dict], jobs: int, cores_per_job: int, partial: Path | None = None,
                 first_core: int = 0) -> list[dict]:
    """Run tasks in `jobs` subprocesses at a time, each pinned to its own `cores_per_job` cores, so every
    run sees the same 2-core machine whatever the host has."""
    import subprocess
    import tempfile

    ncpu = os.cpu_count() or 1
    c0 = first_core
    slots = [list(range(c0 + i * cores_per_job, c0 + (i + 1) * cores_per_job))
             for i in range(min(jobs, (ncpu - c0) // cores_per_job))]
    free, running, results = list(range(len(slots))), {}, [None] * len(tasks)
    tmp = Path(tempfile.mkdtemp(prefix="svb"))
    queue = list(enumerate(tasks))
    while queue or running:
        while queue and free:
            i, task = queue.pop(0)
            slot = free.pop(0)
            out = tmp / f"{i}.json"
            cmd = [sys.executable, __file__, "--one", json.dumps(task), "--one-out", str(out),
                   "--cpus", ",".join(map(str, slots[slot]))]
            running[i] = (subprocess.Popen(cmd), slot, out)
        for i, (proc, slot, out) in list(running.items()):
            if proc.poll() is not None:
                del running[i]
                free.append(slot)
                results[i] = json.loads(out.read_text()) if proc.returncode == 0 and out.exists() else \
                    {**tasks[i], "error": f"exit {proc.returncode}"}
                print(f"[{sum(r is not None for r in results)}/{len(tasks)}] {_line(results[i])}", flush=True)
                if partial:  # survives a run that is cut short
                    with partial.open("a") as f:
                        f.write(json.dumps(results[i]) + "\n")
        time.sleep(0.5)
    return results


def _line(r: dict) -> str:
    if "step_seconds" in r:
        return f"step times T={r['T']} {r['arch']}: " + ", ".join(f"{k}={v * 1000:.0f}ms" for k, v in r["step_seconds"].items())
    if "error" in r:
        return f"T={r['T']} {r['arch']} seed={r.get('seed')} {r.get('method')}: {r['error']}"
    return (f"T={r['T']} {r['arch']} seed={r['seed']} {r['method']:<18} t95={r['t95']} final={r['final_acc']:.3f} "
            f"best={r['best_acc']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--archs", nargs="+", default=["mlp", "gru"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--budget", type=float, default=60.0, help="training seconds per run (evaluation excluded)")
    ap.add_argument("--clock", choices=["wall", "process"], default="wall",
                    help="budget clock: wall seconds, or CPU seconds of the run's process (robust to other load)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (sequential mode)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time, each pinned to --cores-per-job cores")
    ap.add_argument("--cores-per-job", type=int, default=2)
    ap.add_argument("--first-core", type=int, default=0, help="leave cores below this to other work")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "smt_vs_bptt"))
    ap.add_argument("--step-times-only", action="store_true", help="only the step-time cells")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--one-out", help=argparse.SUPPRESS)
    ap.add_argument("--cpus", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:  # a child process: one pinned cell
        if args.cpus:
            cpus = [int(c) for c in args.cpus.split(",")]
            os.sched_setaffinity(0, cpus)
            torch.set_num_threads(len(cpus))
        Path(args.one_out).write_text(json.dumps(run_task(json.loads(args.one))))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [{"T": T, "arch": arch, "seed": seed, "method": m, "budget": args.budget, "clock": args.clock}
             for T in args.T for arch in args.archs for seed in args.seeds for m in args.methods]
    tasks += [{"T": T, "arch": arch, "clock": args.clock} for T in args.T for arch in args.archs]
    if args.step_times_only:
        tasks = [t for t in tasks if "method" not in t]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1:
        results = run_parallel(tasks, args.jobs, args.cores_per_job, out.with_suffix(".partial.jsonl"),
                               args.first_core)
        threads = args.cores_per_job
    else:
        results = []
        for t in tasks:
            results.append(run_task(t))
            print(_line(results[-1]), flush=True)
        threads = torch.get_num_threads()
    runs = [r for r in results if "method" in r and "error" not in r]
    steps = {f"{r['T']}/{r['arch']}": r["step_seconds"] for r in results if "step_seconds" in r}
    summary = summarise(runs, args)
    res = {"budget_seconds": args.budget, "clock": args.clock, "machine": {"threads_per_run": threads, "cpu_count": os.cpu_count(),
                                                      "parallel_runs": args.jobs, "platform": platform.platform(),
                                                      "python": platform.python_version(), "torch": torch.__version__},
           "task": "retrieval vocab=8", "teacher": TEACHER, "batch_size": BATCH, "summary": summary,
           "step_seconds": steps, "runs": runs, "errors": [r for r in results if "error" in r]}
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    write_md(out, res, args)
    return 0


def summarise(runs: list[dict], args) -> list[dict]:
    rows = []
    for T in args.T:
        for arch in args.archs:
            for m in args.methods:
                rs = [r for r in runs if r["T"] == T and r["arch"] == arch and r["method"] == m]
                if not rs:
                    continue
                reached = [r["t95"] for r in rs if r["t95"] is not None]
                rows.append({"T": T, "arch": arch, "method": m, "reached_95": f"{len(reached)}/{len(rs)}",
                             "median_t95_s": round(statistics.median(reached), 1) if reached else "-",
                             "final_acc_mean": round(statistics.mean(r["final_acc"] for r in rs), 3),
                             "best_acc_mean": round(statistics.mean(r["best_acc"] for r in rs), 3)})
    return rows


def plot_runs(path: Path, res: dict, seed: int, clock: str) -> None:
    """One panel per T: rolled-out accuracy against training time, one line per (method, arch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ts = sorted({r["T"] for r in res["runs"]})
    fig, axes = plt.subplots(1, len(Ts), figsize=(4.2 * len(Ts), 3.6), dpi=110, squeeze=False, sharey=True)
    colors = {"smt-causal-curr": "tab:blue", "smt-causal": "tab:cyan", "smt-register-curr": "tab:green",
              "bptt": "tab:red"}
    for ax, T in zip(axes[0], Ts):
        for r in res["runs"]:
            if r["T"] == T and r["seed"] == seed:
                ts, accs = zip(*r["timeline"]) if r["timeline"] else ((), ())
                ax.plot(ts, accs, color=colors.get(r["method"], "k"), linestyle="-" if r["arch"] == "mlp" else "--",
                        linewidth=1.4, label=f"{r['method']} / {r['arch']}")
        ax.axhline(1 / 8, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"T = {T}")
        ax.set_xlabel(f"training seconds ({clock} clock)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("rolled-out answer accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"retrieval, vocabulary 8: SMT->DMT vs BPTT (seed {seed}; solid mlp, dashed gru; dotted = chance)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_md(out: Path, res: dict, args) -> None:
    plot_runs(out.with_suffix(".png"), res, args.seeds[0], args.clock)
    st = [{"T/arch": k, **{m: round(v * 1000, 1) for m, v in d.items()}} for k, d in res["step_seconds"].items()]
    md = f"""# SMT->DMT vs BPTT on retrieval (vocabulary 8)

Command: `python benchmarks/smt_vs_bptt.py {' '.join(sys.argv[1:])}`. Each run: {args.budget:g} s of training on the
`{args.clock}` clock (evaluation excluded; `process` = the run's own CPU seconds, so other load on the shared
machine does not eat the budget), {res['machine']['threads_per_run']} threads per run ({res['machine']['parallel_runs']} runs in
parallel, each pinned to its own cores, on a {res['machine']['cpu_count']}-CPU host), batch {BATCH}, teacher d=64, K=4,
2+2 layers. Accuracy = the updater rolled out alone from m_0 on {EVAL} held-out sequences; chance 0.125.
`median_t95_s`: median training seconds to first reach 95% over the seeds that reached it.

{markdown_table(res['summary'], ['T', 'arch', 'method', 'reached_95', 'median_t95_s', 'final_acc_mean', 'best_acc_mean'])}

Step time (ms per optimiser step on the `{args.clock}` clock, batch {BATCH}; SMT = one joint teacher+updater step):

{markdown_table(st, ['T/arch', 'smt-causal', 'smt-register', 'bptt'])}

![accuracy against training time]({out.with_suffix('.png').name})
"""
    out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    raise SystemExit(main())
