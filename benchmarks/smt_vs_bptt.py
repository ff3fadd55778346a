"""SMT->DMT against BPTT on the retrieval task: the same updater, the same treatment, equal CPU budgets, one run.

Protocol (issue 12): every method trains on the train split, makes every choice on the valid split and is
reported on the test split.
- Methods: `smt-causal-curr` (all-position causal teacher with a length curriculum 16, 32, .. T/2, then
  DMT), `smt-causal` (no curriculum), `smt-register-curr` (the reference register teacher), `bptt` (full
  BPTT of the same updater with its own readout and learned m_0) and `bptt-curr` (BPTT with the SAME
  curriculum rule: move on once the rolled-out valid accuracy reaches 0.95).
- Same stopping rule: stop once the valid accuracy at the full length reaches 0.99 (SMT: the teacher in
  pretraining, the rolled-out updater in DMT; BPTT: the rolled-out model).
- Same lr sweep: every method runs at each of --lrs (3e-4, 1e-3, 3e-3; SMT: the pretraining lr, DMT keeps
  3e-4); the lr whose final valid accuracy is highest (ties: earlier valid 95%) is chosen, on valid only.
- Reported: the chosen run's updater rolled out ALONE from m_0 on 1024 test sequences (a fixed set of the
  test split, whose seeds are disjoint from train and valid), evaluated off the training clock after
  every evaluation; `t95_s` = training seconds at the first such evaluation >= 0.95 INSIDE the budget.
  A figure that does not exist (a curriculum that never reached the full length) is null / "n/a (reason)".
Methods are interleaved per (T, arch, seed) so background load hits them alike; budgets are on the
process clock (`--clock process`: the run's own CPU seconds) with one torch thread per run.

Usage: python benchmarks/smt_vs_bptt.py [--T 64] [--archs mlp gru] [--seeds 0] [--budget 60] [--jobs 2]
Writes benchmarks/results/smt_vs_bptt.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import stamp
from models.student_rnn import Student
from models.teacher import Teacher, TeacherConfig
from models.updaters import UpdaterConfig, matched_updater
from pipeline.corpora import held_out, load_corpus
from trainers.bptt import BPTTConfig, bptt_loss, train_bptt
from trainers.common import OptimConfig
from trainers.dmt import OnlineDMTConfig, dmt_online
from trainers.evaluate import evaluate_student
from trainers.loop import Callbacks
from trainers.pretrain import PretrainConfig, pretrain
from trainers.report import markdown_table
from trainers.smt import SMTConfig, smt_losses

METHODS = ("smt-causal-curr", "smt-causal", "smt-register-curr", "bptt", "bptt-curr")
TEACHER = {"d_model": 64, "n_heads": 4, "encoder_depth": 2, "decoder_depth": 2, "mem_tokens": 4}
LRS, DMT_LR, BATCH, VALID, TEST = (3e-4, 1e-3, 3e-3), 3e-4, 32, 256, 1024
STOP_AT, CURR_ACC = 0.99, 0.95
SPEC = "retrieval:T={T},vocab=8"


def curriculum(T: int) -> tuple[int, ...]:
    out, L = [], 16
    while L < T:
        out.append(L)
        L *= 2
    return tuple(out)


def t_reach(timeline: list, budget: float, level: float = 0.95) -> float | None:
    """First time <= budget at which the figure reaches `level` (None: not within the budget)."""
    return next((t for t, a in timeline if a is not None and a >= level and t <= budget), None)


def _reporter(corpus, test: tuple[torch.Tensor, torch.Tensor]):
    """Test accuracy of the updater rolled out alone, at the full length only (None below it)."""
    def report(student, row: dict) -> dict:
        if row.get("T", corpus.seq_len) != corpus.seq_len:
            return {"test_acc": None}
        return {"test_acc": evaluate_student(student, *test)["acc"]}
    return report


def run_smt(corpus, test, arch: str, encoder: str, curr: bool, lr: float, budget: float, seed: int,
            clock: str) -> dict:
    teacher = TeacherConfig(encoder=encoder, **TEACHER)
    rep = _reporter(corpus, test)
    pt = pretrain(corpus, PretrainConfig(
        teacher=teacher, updater=UpdaterConfig(arch=arch), optim=OptimConfig(lr=lr, warmup_steps=20),
        steps=10**6, seconds=0.75 * budget, batch_size=BATCH, curriculum=curriculum(corpus.seq_len) if curr else (),
        curriculum_acc=CURR_ACC, stop_at_acc=STOP_AT, eval_every=25, eval_size=VALID, seed=seed, clock=clock),
        quiet=True, callbacks=Callbacks(reporter=rep))
    full = [r for r in pt["history"] if r["T"] == corpus.seq_len]
    tl = [[r["time"], r["test_acc"]] for r in pt["history"]]
    vtl = [[r["time"], r["smt_acc"] if r["T"] == corpus.seq_len else None] for r in pt["history"]]
    valid_final = full[-1]["smt_acc"] if pt["final"].get("T") == corpus.seq_len else None
    left = budget - pt["seconds"]
    dmt_steps, missing = 0, None
    if pt["final"].get("T") != corpus.seq_len:
        missing = f"the curriculum never reached T={corpus.seq_len} (stopped at T={pt['final'].get('T')})"
    elif left > 1:
        dm = dmt_online(pt["student"], pt["teacher"], corpus, OnlineDMTConfig(
            optim=OptimConfig(lr=DMT_LR, schedule="cosine", warmup_steps=10), steps=400, seconds=left,
            batch_size=BATCH, stop_at_acc=STOP_AT, eval_every=10, eval_size=VALID, seed=seed, clock=clock),
            quiet=True, callbacks=Callbacks(reporter=rep))
        tl += [[pt["seconds"] + r["time"], r["test_acc"]] for r in dm["history"][1:]]
        vtl += [[pt["seconds"] + r["time"], r["dmt_acc"]] for r in dm["history"][1:]]
        valid_final = dm["final"]["dmt_acc"]
        dmt_steps = dm["steps"]
    return {"timeline": tl, "valid_timeline": vtl, "valid_final_acc": valid_final,
            "test_final_acc": tl[-1][1] if tl and missing is None else None, "missing": missing,
            "teacher_valid_acc": pt["final"].get("teacher_acc"), "final_T": pt["final"].get("T"),
            "pretrain_seconds": pt["seconds"], "pretrain_steps": pt["steps"], "dmt_steps": dmt_steps,
            "seconds": pt["seconds"] + (dm["seconds"] if dmt_steps else 0.0)}


def run_bptt(corpus, test, arch: str, curr: bool, lr: float, budget: float, seed: int, clock: str) -> dict:
    b = train_bptt(corpus, BPTTConfig(updater=UpdaterConfig(arch=arch), shape=TeacherConfig(**TEACHER),
                                      optim=OptimConfig(lr=lr, warmup_steps=20), steps=10**6, seconds=budget,
                                      batch_size=BATCH, eval_every=25, eval_size=VALID, seed=seed, clock=clock,
                                      curriculum=curriculum(corpus.seq_len) if curr else (), curriculum_acc=CURR_ACC,
                                      stop_at_acc=STOP_AT),
                   quiet=True, callbacks=Callbacks(reporter=_reporter(corpus, test)))
    at_full = b["final"].get("T") == corpus.seq_len
    return {"timeline": [[r["time"], r["test_acc"]] for r in b["history"]],
            "valid_timeline": [[r["time"], r["bptt_acc"] if r["T"] == corpus.seq_len else None] for r in b["history"]],
            "valid_final_acc": b["final"]["bptt_acc"] if at_full else None,
            "test_final_acc": b["final"]["test_acc"] if at_full else None,
            "missing": None if at_full else
            f"the curriculum never reached T={corpus.seq_len} (stopped at T={b['final'].get('T')})",
            "final_T": b["final"].get("T"), "steps": b["steps"], "seconds": b["seconds"]}


def derive(r: dict) -> dict:
    """Figures computed from a run's curves: test t95 inside the budget, valid t95 (for lr selection)."""
    return {"t95_s": t_reach(r["timeline"], r["budget"]),
            "valid_t95_s": t_reach(r.get("valid_timeline", []), r["budget"])}


def step_times(T: int, arch: str, encoders=("causal",), reps: int = 3, clock: str = "wall") -> dict:
    """Seconds per optimiser step (forward + backward) for each method at length T."""
    corpus = load_corpus(SPEC.format(T=T))
    x, y = (torch.as_tensor(a) for a in corpus.sample(BATCH, np.random.default_rng(0)))
    out = {}
    for enc in encoders:
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
    """One benchmark cell: a training run {"T", "arch", "seed", "method", "lr"} or a step-time cell."""
    T, arch = task["T"], task["arch"]
    if "method" not in task:
        return {**task, "step_seconds": step_times(T, arch, task.get("encoders", ("causal",)),
                                                   clock=task.get("clock", "wall"))}
    corpus = load_corpus(SPEC.format(T=T))
    test = tuple(torch.as_tensor(a) for a in held_out(corpus, "test", TEST, seed=0))
    m, seed, lr, budget, clock = task["method"], task["seed"], task["lr"], task["budget"], task.get("clock", "wall")
    t0 = time.perf_counter()
    if m.startswith("bptt"):
        r = run_bptt(corpus, test, arch, m.endswith("-curr"), lr, budget, seed, clock)
    else:
        r = run_smt(corpus, test, arch, m.split("-")[1], m.endswith("-curr"), lr, budget, seed, clock)
    r.update(task, corpus=corpus.spec, valid_split=corpus.with_split("valid").spec,
             test_split=corpus.with_split("test").spec, test_sequences=int(test[0].shape[0]),
             wall=time.perf_counter() - t0)
    r.update(derive(r))
    return r


def choose(runs: list[dict]) -> dict:
    """The lr choice, on valid only: the run furthest along the curriculum (the full length first), then the
    highest final valid accuracy; ties go to the earlier valid 95%."""
    def key(r):
        v = r["valid_final_acc"]
        return (r.get("final_T") or 0, -1.0 if v is None else v,
                -(r["valid_t95_s"] if r["valid_t95_s"] is not None else float("inf")))
    return max(runs, key=key)


def run_parallel(tasks: list[dict], jobs: int, cores_per_job: int, first_core: int = 0) -> list[dict]:
    """Run tasks in `jobs` subprocesses at a time, each pinned to its own `cores_per_job` cores, so every
    run sees the same 2-core machine whatever the host has. Finished cells are appended to a scratch file
    (printed at the start) so a run that is cut short leaves its results behind, outside the repository."""
    import subprocess

    ncpu = os.cpu_count() or 1
    c0 = first_core
    slots = [list(range(c0 + i * cores_per_job, c0 + (i + 1) * cores_per_job))
             for i in range(min(jobs, (ncpu - c0) // cores_per_job))]
    free, running, results = list(range(len(slots))), {}, [None] * len(tasks)
    tmp = Path(tempfile.mkdtemp(prefix="svb"))
    partial = tmp / "partial.jsonl"
    print(f"finished cells are appended to {partial}", flush=True)
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
                with partial.open("a") as f:
                    f.write(json.dumps(results[i]) + "\n")
        time.sleep(0.5)
    return results


def _line(r: dict) -> str:
    if "step_seconds" in r:
        return f"step times T={r['T']} {r['arch']}: " + ", ".join(f"{k}={v * 1000:.0f}ms" for k, v in r["step_seconds"].items())
    if "error" in r:
        return f"T={r['T']} {r['arch']} seed={r.get('seed')} {r.get('method')}: {r['error']}"
    return (f"T={r['T']} {r['arch']} seed={r['seed']} lr={r['lr']:g} {r['method']:<18} t95={r['t95_s']} "
            f"valid={_fmt(r['valid_final_acc'], r.get('missing'))} test={_fmt(r['test_final_acc'], r.get('missing'))}")


def main(argv=None) -> int:
    flushed = stamp.start()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[64])
    ap.add_argument("--archs", nargs="+", default=["mlp", "gru"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=["smt-causal-curr", "bptt", "bptt-curr"], choices=METHODS)
    ap.add_argument("--lrs", type=float, nargs="+", default=list(LRS), help="lr sweep, chosen on valid")
    ap.add_argument("--budget", type=float, default=60.0, help="training seconds per run (evaluation excluded)")
    ap.add_argument("--clock", choices=["wall", "process"], default="process",
                    help="budget clock: wall seconds, or CPU seconds of the run's process (robust to other load)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (sequential mode)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time, each pinned to --cores-per-job cores")
    ap.add_argument("--cores-per-job", type=int, default=1)
    ap.add_argument("--first-core", type=int, default=0, help="leave cores below this to other work")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "smt_vs_bptt"))
    ap.add_argument("--from-partial", help="write the results from a finished-cells file of a run cut short")
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
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    # interleaved: every (method, lr) of one (T, arch, seed) before the next, so load drifts hit all alike
    tasks = [{"T": T, "arch": arch, "seed": seed, "method": m, "lr": lr, "budget": args.budget, "clock": args.clock}
             for T in args.T for arch in args.archs for seed in args.seeds for lr in args.lrs for m in args.methods]
    encoders = tuple(sorted({m.split("-")[1] for m in args.methods if m.startswith("smt")}))
    tasks += [{"T": T, "arch": arch, "clock": args.clock, "encoders": encoders} for T in args.T for arch in args.archs]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.from_partial:
        results = [json.loads(ln) for ln in Path(args.from_partial).read_text().splitlines() if ln.strip()]
        results = [r for r in results if r["T"] in args.T and r["arch"] in args.archs and  # the grid asked for
                   ("method" not in r or (r["method"] in args.methods and r["lr"] in args.lrs))]
        threads = args.cores_per_job if args.jobs > 1 else args.threads
    elif args.jobs > 1:
        results = run_parallel(tasks, args.jobs, args.cores_per_job, args.first_core)
        threads = args.cores_per_job
    else:
        results = []
        for t in tasks:
            results.append(run_task(t))
            print(_line(results[-1]), flush=True)
        threads = torch.get_num_threads()
    runs = [r for r in results if "method" in r and "error" not in r]
    unfinished = []
    if args.from_partial:  # an lr choice over part of the sweep is no choice: leave such groups out, say so
        groups = _groups(runs)
        unfinished = sorted(f"T={k[0]} {k[1]} seed={k[2]} {k[3]}" for k, g in groups.items()
                            if {r["lr"] for r in g} != set(args.lrs))
        runs = [r for k, g in groups.items() if {r["lr"] for r in g} == set(args.lrs) for r in g]
    for group in _groups(runs).values():
        pick = choose(group)
        for r in group:
            r["chosen"] = r is pick
    steps = {f"{r['T']}/{r['arch']}": r["step_seconds"] for r in results if "step_seconds" in r}
    res = {"protocol": "train on train, choose on valid (stopping, curriculum, lr), report on test",
           "budget_seconds": args.budget, "clock": args.clock, "lrs": args.lrs, "stop_at_acc": STOP_AT,
           "curriculum_acc": CURR_ACC, "valid_sequences": VALID, "test_sequences": TEST,
           "machine": {"threads_per_run": threads, "cpu_count": os.cpu_count(), "parallel_runs": args.jobs,
                       "platform": platform.platform(), "python": platform.python_version(),
                       "torch": torch.__version__},
           "wall_seconds": None if args.from_partial else round(time.perf_counter() - t_start, 1),
           "task": "retrieval vocab=8", "teacher": TEACHER, "batch_size": BATCH, "summary": summarise(runs),
           "step_seconds": steps, "runs": runs, "errors": [r for r in results if "error" in r],
           "unfinished": unfinished}
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    write_md(out, res, args)
    stamp.stamp(out.with_suffix(""), flushed)
    return 0


def _groups(runs: list[dict]) -> dict:
    g: dict = {}
    for r in runs:
        g.setdefault((r["T"], r["arch"], r["seed"], r["method"]), []).append(r)
    return g


def _median(vals: list) -> float | None:
    vals = [v for v in vals if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (T, arch, method): the lr chosen on valid per seed, and its test figures (medians over
    seeds; None when no seed has the figure, with the reason)."""
    rows = []
    keys = sorted({(r["T"], r["arch"], r["method"]) for r in runs}, key=lambda k: (k[0], k[1], METHODS.index(k[2])))
    for T, arch, m in keys:
        by_seed = {}
        for r in runs:
            if (r["T"], r["arch"], r["method"]) == (T, arch, m):
                by_seed.setdefault(r["seed"], []).append(r)
        chosen = [next((r for r in g if r.get("chosen")), None) or choose(g) for g in by_seed.values()]
        reached = [r["t95_s"] for r in chosen if r["t95_s"] is not None]
        missing = next((r["missing"] for r in chosen if r.get("missing")), None)
        acc = _median([r["test_final_acc"] for r in chosen])
        rows.append({"T": T, "arch": arch, "method": m, "lr_chosen": [r["lr"] for r in chosen],
                     "valid_final_acc_median": _median([r["valid_final_acc"] for r in chosen]),
                     "test_final_acc_median": acc, "reached_95": f"{len(reached)}/{len(chosen)}",
                     "median_t95_s": round(statistics.median(reached), 1) if reached else None,
                     "why_missing": {"test_final_acc_median": missing} if acc is None else {},
                     "all_lrs": [{"lr": r["lr"], "seed": r["seed"], "valid_final_acc": r["valid_final_acc"],
                                  "test_final_acc": r["test_final_acc"], "t95_s": r["t95_s"]}
                                 for g in by_seed.values() for r in g]})
    return rows


def _fmt(v, reason: str | None = None) -> str:
    if v is None:
        return f"n/a ({reason or 'not measured'})"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def fmt_table(rows: list[dict]) -> str:
    """The summary as a Markdown table; a missing figure prints as n/a with its reason."""
    view = []
    for r in rows:
        why = r.get("why_missing", {})
        view.append({"T": r["T"], "arch": r["arch"], "method": r["method"],
                     "lr (chosen on valid)": ", ".join(f"{x:g}" for x in r["lr_chosen"]),
                     "valid acc": _fmt(r["valid_final_acc_median"], why.get("test_final_acc_median")),
                     "test acc": _fmt(r["test_final_acc_median"], why.get("test_final_acc_median")),
                     "reached 95% (test)": r["reached_95"],
                     "median t95 s": _fmt(r["median_t95_s"], "no chosen run reached 95% on test within the budget")})
    return markdown_table(view, list(view[0])) if view else "(no runs)"


def _unfinished(res: dict) -> str:
    if not res.get("unfinished"):
        return ""
    return ("\nNot finished when the run was stopped (their lr sweep is incomplete, so they are left out): "
            + "; ".join(res["unfinished"]) + ".\n")


def plot_runs(path: Path, res: dict, seed: int, clock: str) -> None:
    """One panel per T: test accuracy of the chosen runs against training time, one line per (method, arch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ts = sorted({r["T"] for r in res["runs"]})
    fig, axes = plt.subplots(1, max(1, len(Ts)), figsize=(5.5 * max(1, len(Ts)), 4.0), dpi=110, squeeze=False,
                             sharey=True)
    colors = {"smt-causal-curr": "tab:blue", "smt-causal": "tab:cyan", "smt-register-curr": "tab:green",
              "bptt": "tab:red", "bptt-curr": "tab:orange"}
    for ax, T in zip(axes[0], Ts):
        for r in res["runs"]:
            if r["T"] == T and r["seed"] == seed and r.get("chosen"):
                pts = [(t, a) for t, a in r["timeline"] if a is not None]
                ts, accs = zip(*pts) if pts else ((), ())
                ax.plot(ts, accs, color=colors.get(r["method"], "k"), linestyle="-" if r["arch"] == "mlp" else "--",
                        marker=".", markersize=3, linewidth=1.4, label=f"{r['method']} / {r['arch']} (lr {r['lr']:g})")
        ax.axhline(1 / 8, color="grey", linestyle=":", linewidth=1)
        ax.axvline(res["budget_seconds"], color="grey", linestyle="-.", linewidth=0.8)
        ax.set_title(f"T = {T}")
        ax.set_xlabel(f"training seconds ({clock} clock; dash-dot = budget)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy, updater rolled out alone")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.suptitle(f"retrieval, vocabulary 8: SMT->DMT vs BPTT, lr chosen on valid (seed {seed}; solid mlp, dashed gru;"
                 " dotted = chance)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_md(out: Path, res: dict, args) -> None:
    plot_runs(out.with_suffix(".png"), res, args.seeds[0], args.clock)
    st = [{"T/arch": k, **{m: round(v * 1000, 1) for m, v in d.items()}} for k, d in res["step_seconds"].items()]
    per_lr = [{"T": r["T"], "arch": r["arch"], "method": r["method"], "seed": r["seed"], "lr": f"{r['lr']:g}",
               "chosen": "yes" if r.get("chosen") else "",
               "valid acc": _fmt(r["valid_final_acc"], r.get("missing")),
               "test acc": _fmt(r["test_final_acc"], r.get("missing")),
               "t95 s": _fmt(r["t95_s"], "not within the budget"), "trained s": round(r["seconds"], 1)}
              for r in sorted(res["runs"], key=lambda r: (r["T"], r["arch"], METHODS.index(r["method"]), r["seed"], r["lr"]))]
    argv = " ".join(a for a in sys.argv[1:] if not (args.from_partial and a in (args.from_partial, "--from-partial")))
    wall = ("wall time: n/a (written from the finished cells of a run cut short)" if res["wall_seconds"] is None
            else f"{res['wall_seconds'] / 60:.0f} min wall")
    md = f"""# SMT->DMT vs BPTT on retrieval (vocabulary 8), held-out protocol

Command: `python benchmarks/smt_vs_bptt.py {argv}` ({wall} on a shared 2-core machine).
Protocol: train on the train split; every choice on the valid split ({VALID} sequences: the length
curriculum steps at {CURR_ACC} and the stop at {STOP_AT} valid accuracy, the same rule for SMT and BPTT, and the lr
from {', '.join(f'{x:g}' for x in res['lrs'])} for every method); every figure below on the test split
({TEST} fixed sequences, generated from seeds disjoint from train and valid). Accuracy = the updater rolled out
ALONE from m_0, answer accuracy, chance 0.125. Each run: {args.budget:g} s of training on the `{args.clock}`
clock (evaluation excluded), {res['machine']['threads_per_run']} torch thread(s) per run, {res['machine']['parallel_runs']}
run(s) at a time; batch {BATCH}; teacher d=64, K=4, 2+2 layers; DMT lr {DMT_LR:g} in the last quarter of the SMT budget.
`median t95 s`: training seconds at the first test evaluation >= 0.95 that lies inside the budget (a run stops
at the first step that ends past the budget, so its last evaluation can lie just after it: that one does not count).
SMT's split of the budget: pretraining gets 75% and DMT the rest; a curriculum that has not reached the full length
when its 75% is spent stops there (no DMT; the last quarter goes unused: "trained s" shows it).

Scope, plainly: sized to the shared machine, this run covers T = {', '.join(map(str, args.T))}, archs
{', '.join(args.archs)}, seed(s) {', '.join(map(str, args.seeds))}, methods {', '.join(args.methods)}.
The earlier T = 128/256 cells, the 2-seed medians and the teacher comparison (smt-causal, smt-register-curr)
were not rerun under this protocol.

{fmt_table(res['summary'])}
{_unfinished(res)}
Every run of the sweep (the chosen lr per method is marked):

{markdown_table(per_lr, list(per_lr[0])) if per_lr else '(no runs)'}

Step time (ms per optimiser step on the `{args.clock}` clock, batch {BATCH}; SMT = one joint teacher+updater step):

{markdown_table(st, list(st[0])) if st else '(not measured)'}

![test accuracy against training time]({out.with_suffix('.png').name})
"""
    out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    raise SystemExit(main())
