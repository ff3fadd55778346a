"""The paper's headline, measured: SMT->DMT against BPTT as sequences grow (issue 22).

Task: faithful retrieval (`retrieval:T=..,vocab=8`: the reference's needle, always in the first half, so every
instance needs at least T/2 steps of credit). Both methods climb the SAME length curriculum 16 -> 32 -> ... ->
T_max, advancing once the valid accuracy reaches 0.95 (read on the valid split only):
- BPTT advances on its rolled-out RNN (full BPTT, the same updater, its own readout and learned m_0).
- SMT advances on its teacher (joint SMT pretraining of the teacher and the updater). Each time the teacher
  passes a stage of length >= 64, a DMT copy of the jointly trained updater (online DMT, fresh AdamW at lr 1e-4,
  cosine) trains until the ROLLED-OUT student reaches 0.95 valid accuracy at that length; its sequences and CPU
  are charged to SMT. Pretraining then continues from where it was (the copy never feeds back).
Per stage and method: cumulative training sequences (the primary axis, DMT included), optimiser steps,
CPU-seconds and sequential steps per update, and test accuracy on 1024 test sequences at the stage's end; for
DMT the lowest rolled-out valid accuracy of each phase (the dip). After the run: BPTT's gradient norm
||dL/dm_t|| against t at T=512 (at initialisation and at the end) and every final model at 2x T_max.

Every run is capped (`--cap`, CPU-seconds on the process clock, one torch thread per run; evaluation off the
clock) and says where it hit its cap. Runs go 2 at a time in subprocesses.

Usage: python benchmarks/length_scaling.py [--max-T 512] [--seeds 0 1] [--cap 1200] [--jobs 2]
Writes benchmarks/results/length_scaling.{json,md,png}.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.device import flush_denormals
from models.teacher import TeacherConfig
from models.updaters import UpdaterConfig
from pipeline.corpora import held_out, load_corpus
from trainers.bptt import BPTTConfig, train_bptt
from trainers.common import OptimConfig
from trainers.dmt import OnlineDMTConfig, dmt_online
from trainers.evaluate import evaluate_student, evaluate_teacher
from trainers.loop import Callbacks
from trainers.losses import masked_ce
from trainers.pretrain import PretrainConfig, pretrain

SPEC = "retrieval:T={T},vocab=8"
TEACHER = {"d_model": 64, "n_heads": 4, "encoder_depth": 2, "decoder_depth": 2, "mem_tokens": 4}
BATCH, VALID, TEST, ADVANCE = 32, 256, 1024, 0.95
SMT_LR, DMT_LR, BPTT_LR = 1e-3, 1e-4, 3e-4
DMT_FROM = 64  # stages of this length and longer need the rolled-out student to pass too
RESULTS = Path(__file__).resolve().parent / "results"


class CapReached(Exception):
    """The run's CPU cap is spent: stop where it is and report what it reached."""


def lengths(max_T: int) -> list[int]:
    out, L = [], 16
    while L <= max_T:
        out.append(L)
        L *= 2
    return out


def _test(T: int, n: int = TEST, seed: int = 0):
    x, y = held_out(load_corpus(SPEC.format(T=T)), "test", n, seed)
    return torch.as_tensor(x), torch.as_tensor(y)


@torch.no_grad()
def _student_acc(student, x, y, chunk: int = 256) -> float:
    accs = [evaluate_student(student, x[i:i + chunk], y[i:i + chunk])["acc"] * len(x[i:i + chunk])
            for i in range(0, len(x), chunk)]
    return sum(accs) / len(x)


@torch.no_grad()
def _teacher_acc(teacher, x, y, chunk: int = 128) -> float:
    accs = [evaluate_teacher(teacher, x[i:i + chunk], y[i:i + chunk])["acc"] * len(x[i:i + chunk])
            for i in range(0, len(x), chunk)]
    return sum(accs) / len(x)


# ---- SMT -> DMT ---------------------------------------------------------------------------------------------
def run_smt(task: dict) -> dict:
    Ls, cap, seed, arch = task["lengths"], task["cap"], task["seed"], task["arch"]
    corpus = load_corpus(SPEC.format(T=Ls[-1]))
    stages: list[dict] = []
    dmt = {"seconds": 0.0, "steps": 0, "sequences": 0}
    last = {"student": None, "teacher": None}
    warm = task.get("dmt_warm", False)  # DMT starts from the previous stage's DMT student's updater
    t0 = time.process_time()

    def on_eval(row: dict) -> None:
        if row["time"] + dmt["seconds"] >= cap:
            raise CapReached()

    def on_stage_end(teacher, student, stage_corpus, row: dict) -> None:
        T = stage_corpus.seq_len
        x, y = _test(T)
        rec = {"T": T, "pretrain_steps": row["step"], "pretrain_sequences": row["step"] * BATCH,
               "pretrain_cpu_s": round(row["time"], 2), "teacher_valid_acc": row["teacher_acc"],
               "teacher_test_acc": _teacher_acc(teacher, x, y), "smt_valid_acc": row["smt_acc"],
               "smt_test_acc": _student_acc(student, x, y)}
        last["teacher"] = copy.deepcopy(teacher)
        if T >= task["dmt_from"]:
            left = cap - row["time"] - dmt["seconds"]
            s, t = copy.deepcopy(student), copy.deepcopy(teacher)
            if warm and last["student"] is not None:
                s.updater.load_state_dict(last["student"].updater.state_dict())
            if left <= 1:
                rec.update(dmt_passed=False, dmt_note="no CPU left under the cap")
            else:
                d = dmt_online(s, t, stage_corpus, OnlineDMTConfig(
                    optim=OptimConfig(lr=DMT_LR, schedule="cosine", warmup_steps=5), steps=task["dmt_steps"],
                    seconds=left, batch_size=BATCH, stop_at_acc=ADVANCE, eval_every=task.get("dmt_eval_every", 10),
                    eval_size=VALID,
                    seed=seed, clock="process"), quiet=True)
                accs = [h["dmt_acc"] for h in d["history"]]
                dmt["seconds"] += d["seconds"]
                dmt["steps"] += d["steps"]
                dmt["sequences"] += d["steps"] * BATCH
                passed = d["final"]["dmt_acc"] >= ADVANCE
                rec.update(dmt_steps=d["steps"], dmt_sequences=d["steps"] * BATCH, dmt_cpu_s=round(d["seconds"], 2),
                           dmt_start_valid_acc=accs[0], dmt_lowest_valid_acc=min(accs),
                           dmt_lowest_after_start=min(accs[1:]) if len(accs) > 1 else None,
                           dmt_valid_acc=d["final"]["dmt_acc"], dmt_passed=passed,
                           dmt_test_acc=_student_acc(d["student"], x, y),
                           **({} if passed else {"dmt_note": "DMT stopped below 0.95 valid (cap or step limit)"}))
                last["student"] = d["student"]
        rec.update(cum_sequences=row["step"] * BATCH + dmt["sequences"], cum_steps=row["step"] + dmt["steps"],
                   cum_cpu_s=round(row["time"] + dmt["seconds"], 2),
                   passed=bool(rec.get("dmt_passed", True)))
        stages.append(rec)
        print(f"[smt seed={seed}] T={T} teacher={rec['teacher_test_acc']:.3f} smt={rec['smt_test_acc']:.3f} "
              f"dmt={rec.get('dmt_test_acc', float('nan')):.3f} seq={rec['cum_sequences']} cpu={rec['cum_cpu_s']}",
              flush=True)

    cfg = PretrainConfig(teacher=TeacherConfig(encoder="causal", **TEACHER), updater=UpdaterConfig(arch=arch),
                         optim=OptimConfig(lr=SMT_LR, warmup_steps=20), steps=10**6, seconds=cap, batch_size=BATCH,
                         curriculum=tuple(Ls[:-1]), curriculum_acc=ADVANCE, stop_at_acc=ADVANCE, eval_every=25,
                         eval_size=VALID, seed=seed, clock="process")
    capped = False
    try:
        r = pretrain(corpus, cfg, quiet=True, callbacks=Callbacks(on_eval=on_eval, on_stage_end=on_stage_end))
        capped = r["seconds"] >= cap
        final_T = r["final"].get("T")
    except CapReached:
        capped, final_T = True, None
    reached = stages[-1]["T"] if stages else None
    out = {**task, "method": "smt-dmt", "stages": stages, "capped": capped, "last_stage_T": final_T,
           "passed_up_to": _passed_up_to(stages, Ls), "total_cpu_s_wall_process": round(time.process_time() - t0, 1),
           "dmt_total": dmt, "sequential_steps_per_update": {"pretrain": 1, "dmt": "T forward steps, no backward"}}
    if capped:
        out["cap_note"] = (f"hit its {cap:g} CPU-s cap after passing T={reached}" if reached
                           else f"hit its {cap:g} CPU-s cap before passing any stage")
    gen = 2 * Ls[-1]
    if last["student"] is not None:
        x, y = _test(gen, n=task["gen_n"])
        out["generalisation"] = {"T": gen, "student_test_acc": _student_acc(last["student"], x, y),
                                 "student_trained_T": max(s["T"] for s in stages if "dmt_test_acc" in s),
                                 "teacher_test_acc": _teacher_acc(last["teacher"], x, y)}
    return out


def _passed_up_to(stages: list[dict], Ls: list[int]) -> int | None:
    """The longest T such that every stage up to it passed."""
    best = None
    for L in Ls:
        s = next((s for s in stages if s["T"] == L), None)
        if s is None or not s["passed"]:
            break
        best = L
    return best


# ---- BPTT ---------------------------------------------------------------------------------------------------
def run_bptt(task: dict) -> dict:
    Ls, cap, seed, arch = task["lengths"], task["cap"], task["seed"], task["arch"]
    corpus = load_corpus(SPEC.format(T=Ls[-1]))
    stages: list[dict] = []
    tests = {}

    def reporter(student, row: dict) -> dict:
        if row["bptt_acc"] >= ADVANCE and not any(s["T"] == row["T"] for s in stages):
            T = row["T"]
            tests.setdefault(T, _test(T))
            stages.append({"T": T, "steps": row["step"], "cum_sequences": row["step"] * BATCH, "cum_steps": row["step"],
                           "cum_cpu_s": round(row["time"], 2), "valid_acc": row["bptt_acc"],
                           "test_acc": _student_acc(student, *tests[T]), "passed": True})
            s = stages[-1]
            print(f"[bptt-{arch} seed={seed}] T={T} test={s['test_acc']:.3f} seq={s['cum_sequences']} "
                  f"cpu={s['cum_cpu_s']}", flush=True)
        return {}

    init_grads = None
    if Ls[-1] >= 64:
        torch.manual_seed(seed)
        from models.student_rnn import Student
        from models.updaters import matched_updater
        shape = TeacherConfig(vocab_size=corpus.vocab_size, **TEACHER)
        init_grads = grad_norms(Student(matched_updater(shape, UpdaterConfig(arch=arch)), shape), Ls[-1], seed)
    b = train_bptt(corpus, BPTTConfig(updater=UpdaterConfig(arch=arch), shape=TeacherConfig(**TEACHER),
                                      optim=OptimConfig(lr=task["lr"], warmup_steps=20), steps=10**6, seconds=cap,
                                      batch_size=BATCH, eval_every=25, eval_size=VALID, seed=seed, clock="process",
                                      curriculum=tuple(Ls[:-1]), curriculum_acc=ADVANCE, stop_at_acc=ADVANCE),
                   quiet=True, callbacks=Callbacks(reporter=reporter))
    f = b["final"]
    capped = b["seconds"] >= cap
    out = {**task, "method": f"bptt-{arch}", "stages": stages, "capped": capped, "last_stage_T": f.get("T"),
           "last_valid_acc": f.get("bptt_acc"), "steps": b["steps"], "cpu_s": round(b["seconds"], 2),
           "passed_up_to": _passed_up_to(stages, Ls), "sequential_steps_per_update": "2T (forward + backward)"}
    if capped:
        out["cap_note"] = (f"hit its {cap:g} CPU-s cap at the T={f.get('T')} stage (valid accuracy there "
                           f"{f.get('bptt_acc', float('nan')):.3f})")
    if Ls[-1] >= 64:
        out["grad_norms"] = {"T": Ls[-1], "init": init_grads, "final": grad_norms(b["student"], Ls[-1], seed)}
    x, y = _test(2 * Ls[-1], n=task["gen_n"])
    out["generalisation"] = {"T": 2 * Ls[-1], "student_test_acc": _student_acc(b["student"], x, y),
                             "student_trained_T": f.get("T")}
    return out


def grad_norms(student, T: int, seed: int, n: int = 64) -> list[float]:
    """||dL/dm_t|| (mean over n test sequences) for t = 0..T, L the answer's cross-entropy at the last step."""
    x, y = _test(T, n=n, seed=seed)
    student = student.train()
    m = student.start(x.shape[0])
    ms = []
    for t in range(T):
        m.retain_grad()
        ms.append(m)
        m = student.step(m, x[:, t])
    m.retain_grad()
    ms.append(m)
    loss = masked_ce(student.readout(m)[:, None], y[:, -1:])
    loss.backward()
    norms = [float(v.grad.norm(dim=-1).mean()) if v.grad is not None else 0.0 for v in ms]
    student.zero_grad(set_to_none=True)
    return norms


# ---- driver -------------------------------------------------------------------------------------------------
def run_one(task: dict) -> dict:
    torch.set_num_threads(1)
    flush_denormals()
    t0 = time.perf_counter()
    r = run_smt(task) if task["method"] == "smt-dmt" else run_bptt(task)
    r["wall_s"] = round(time.perf_counter() - t0, 1)
    return r


def run_parallel(tasks: list[dict], jobs: int) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="lenscale"))
    print(f"per-run outputs and logs in {tmp}", flush=True)
    queue, running, results = list(enumerate(tasks)), {}, [None] * len(tasks)
    while queue or running:
        while queue and len(running) < jobs:
            i, task = queue.pop(0)
            out = tmp / f"{i}.json"
            log = (tmp / f"{i}.log").open("w")  # closed when the run ends, below
            running[i] = (subprocess.Popen([sys.executable, __file__, "--one", json.dumps(task), "--one-out", str(out)],
                                           stdout=log, stderr=subprocess.STDOUT), out, log)
        for i, (proc, out, log) in list(running.items()):
            if proc.poll() is not None:
                del running[i]
                log.close()
                results[i] = json.loads(out.read_text()) if proc.returncode == 0 and out.exists() else \
                    {**tasks[i], "error": f"exit {proc.returncode} (log {tmp / f'{i}.log'})"}
                print(f"done: {tasks[i]['method']} seed={tasks[i]['seed']}: passed up to "
                      f"{results[i].get('passed_up_to')}", flush=True)
        time.sleep(1.0)
    return results


def _fmt(v, missing: str | None = None, digits: int = 3) -> str:
    if v is None:
        return f"n/a ({missing})" if missing else "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def analyse(runs: list[dict], Ls: list[int]) -> dict:
    """The issue's questions, answered from the runs."""
    ans: dict = {"per_seed": []}
    smt = [r for r in runs if r["method"] == "smt-dmt" and "error" not in r]
    bptt = [r for r in runs if r["method"] == "bptt-mlp" and "error" not in r]
    lo, hi = (64 if 64 in Ls and 64 < Ls[-1] else Ls[0]), Ls[-1]
    for s in smt:
        b = next((r for r in bptt if r["seed"] == s["seed"]), None)
        row = {"seed": s["seed"], "smt_passes_every_stage": s["passed_up_to"] == hi,
               "smt_passed_up_to": s["passed_up_to"], "bptt_passed_up_to": b["passed_up_to"] if b else None}
        row["smt_stage_sequences"] = stage_sequences(s)
        row["smt_growth_lo_hi"] = _ratio(stage_sequences(s, passed_only=True), lo, hi)
        # a stage is recorded when the teacher passes it
        row["teacher_passed_up_to"] = max((x["T"] for x in s["stages"]), default=None)
        row["teacher_pretrain_sequences"] = max((x.get("pretrain_sequences", 0) for x in s["stages"]), default=None)
        if b:
            row["bptt_stage_sequences"] = stage_sequences(b)
            row["bptt_growth_lo_hi"] = _ratio(stage_sequences(b, passed_only=True), lo, hi)
            row["bptt_fails_a_stage"] = b["passed_up_to"] != hi
            g_s, g_b = row["smt_growth_lo_hi"], row["bptt_growth_lo_hi"]
            row["bptt_grows_2x_faster"] = (g_s is not None and g_b is not None and g_b >= 2 * g_s)
            row["cpu_crossover_T"] = crossover(s, b, Ls)
        row["smt_growth_at_most_2x"] = row["smt_growth_lo_hi"] is not None and row["smt_growth_lo_hi"] <= 2.0
        ans["per_seed"].append(row)
    ans["gru"] = [{"seed": g["seed"], "passed_up_to": g["passed_up_to"], "last_stage_T": g.get("last_stage_T"),
                   "cap_note": g.get("cap_note")} for g in runs if g["method"] == "bptt-gru" and "error" not in g]
    ans["lengths"], ans["growth_from"], ans["growth_to"] = Ls, lo, hi
    return ans


def stage_sequences(run: dict, passed_only: bool = False) -> dict:
    """Sequences spent on each stage (its share of the cumulative count): {T: n}; `passed_only` leaves out a
    stage the method did not pass (its count is what the cap allowed, not what passing took)."""
    out, prev = {}, 0
    for s in sorted(run["stages"], key=lambda s: s["T"]):
        if s["passed"] or not passed_only:
            out[str(s["T"])] = s["cum_sequences"] - prev
        prev = s["cum_sequences"]
    return out


def _ratio(per: dict, lo: int, hi: int):
    a, b = per.get(str(lo)), per.get(str(hi))
    return round(b / a, 2) if a and b else None


def crossover(smt: dict, bptt: dict, Ls: list[int]):
    """The shortest stage T from which on SMT's cumulative CPU-s (DMT included) stays below BPTT's at every stage
    SMT passed (a stage BPTT never passed counts as BPTT above any SMT figure); None if there is none."""
    below = {}
    for L in Ls:
        s = next((x for x in smt["stages"] if x["T"] == L and x["passed"]), None)
        if s is None:
            break
        b = next((x for x in bptt["stages"] if x["T"] == L), None)
        below[L] = b is None or s["cum_cpu_s"] < b["cum_cpu_s"]
    out = None
    for L in reversed(list(below)):
        if not below[L]:
            break
        out = L
    return out


def write(runs: list[dict], args, Ls: list[int]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    ans = analyse(runs, Ls)
    meta = {"task": SPEC.format(T="<T>") + " (faithful needle: always in the first half, the reference's)",
            "lengths": Ls, "advance_at_valid_acc": ADVANCE, "cap_cpu_s_per_run": args.cap, "batch": BATCH,
            "teacher": TEACHER, "lrs": {"smt_pretrain": SMT_LR, "dmt": DMT_LR, "bptt": args.bptt_lr},
            "dmt_from_T": args.dmt_from, "dmt_warm_start": args.dmt_warm, "dmt_eval_every": args.dmt_eval_every, "test_sequences": TEST, "valid_sequences": VALID,
            "denormals_flushed": True, "clock": "process (CPU-s of each run, 1 torch thread, evaluation excluded)",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "differences_from_reference": [
                "tiny teacher (d=64, 2+2 layers, K=4) and mlp/gru updaters, not the reference's transformer sizes",
                "online DMT in-process (the same one-step relabeled loss) instead of the pipeline's lockstep rounds",
                "joint SMT pretraining of teacher and updater (this project's stage 1), as in the pipeline",
                (f"one lr per method, not a sweep: SMT pretraining {SMT_LR:g} (the retrieval-demo recipe's), DMT "
                 f"{DMT_LR:g} (the project default), BPTT {args.bptt_lr:g} (chosen on valid by every earlier BPTT "
                 "sweep on retrieval; a sweep would triple the CPU)")]}
    if args.dmt_warm:
        meta["differences_from_reference"].append(
            "variant: each stage's DMT copy starts from the previous stage's DMT student's updater (warm start), not "
            "from the jointly trained updater; the readout and m_0 are the current teacher's")
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": meta, "answers": ans, "runs": runs}, indent=1))
    (RESULTS / f"{args.name}.md").write_text(markdown(runs, ans, meta, Ls))
    try:
        plot(runs, Ls, RESULTS / f"{args.name}.png")
    except Exception as e:  # noqa: BLE001 - the figure is optional, the tables are not
        print(f"no plot: {e}")


def _growth(v) -> str:
    return f"{v:.2f}x" if v is not None else "n/a (a stage was not passed)"


def markdown(runs, ans, meta, Ls) -> str:
    lines = ["# Length scaling: SMT->DMT against BPTT on faithful retrieval (issue 22)", "",
             (f"Task `{meta['task']}`; curriculum {' -> '.join(map(str, Ls))}, advance at {ADVANCE} valid accuracy; "
              f"each run capped at {meta['cap_cpu_s_per_run']:g} CPU-s (process clock, 1 thread); "
              f"test accuracy on {TEST} test sequences; denormals flushed: yes. Command: `{meta.get('command', '')}`."),
             "", "## Answers", ""]
    for a in ans["per_seed"]:
        if "bptt_stage_sequences" not in a:  # an SMT-only run (--no-bptt)
            lines.append(f"- seed {a['seed']}: SMT->DMT passed every stage up to T={Ls[-1]}: "
                         f"**{'yes' if a['smt_passes_every_stage'] else 'no'}** (passed up to "
                         f"{_fmt(a['smt_passed_up_to'])}); no BPTT arm in this run (see length_scaling.md).")
            continue
        lines.append(
            f"- seed {a['seed']}: SMT->DMT passed every stage up to T={Ls[-1]}: "
            f"**{'yes' if a['smt_passes_every_stage'] else 'no'}** (passed up to {_fmt(a['smt_passed_up_to'])}); "
            f"its sequences-to-pass grew {_growth(a['smt_growth_lo_hi'])} from T={ans['growth_from']} "
            f"to T={ans['growth_to']} (at most ~2x: {'yes' if a['smt_growth_at_most_2x'] else 'no'}); BPTT-mlp passed up "
            f"to {_fmt(a.get('bptt_passed_up_to'))}, fails a stage: {'yes' if a.get('bptt_fails_a_stage') else 'no'}, "
            f"grew {_growth(a.get('bptt_growth_lo_hi'))} (>= 2x SMT's: "
            f"{'yes' if a.get('bptt_grows_2x_faster') else 'no'}); CPU crossover (SMT's cumulative CPU-s below "
            f"BPTT's): {_fmt(a.get('cpu_crossover_T'), 'none')}.")
    for g in ans.get("gru", []):
        lines.append(f"- GRU-BPTT (seed {g['seed']}), the strong baseline: passed up to {_fmt(g['passed_up_to'])}"
                     + (f"; {g['cap_note']}" if g.get("cap_note") else "") + ".")
    for a in ans["per_seed"]:
        lines.append(f"- SMT's teacher (seed {a['seed']}) passed every stage up to T={_fmt(a.get('teacher_passed_up_to'))} "
                     f"in {_fmt(a.get('teacher_pretrain_sequences'))} pretraining sequences.")
    if meta.get("reading"):
        lines += ["", "## Reading", ""] + [meta["reading"]]
    lines += ["", "## Per stage", "",
              ("| method | seed | T | stage sequences | cum. sequences | cum. steps | cum. CPU-s | test acc (student) "
               "| teacher test | DMT lowest valid | passed |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['seed']} | error: {r['error']} | | | | | | | | |")
            continue
        per = stage_sequences(r)
        for s in sorted(r["stages"], key=lambda s: s["T"]):
            acc = s.get("dmt_test_acc", s.get("smt_test_acc")) if r["method"] == "smt-dmt" else s["test_acc"]
            lines.append(f"| {r['method']} | {r['seed']} | {s['T']} | {per[str(s['T'])]} | {s['cum_sequences']} | "
                         f"{s['cum_steps']} | {s['cum_cpu_s']:.0f} | {_fmt(acc)} | {_fmt(s.get('teacher_test_acc'), '-')} | "
                         f"{_fmt(s.get('dmt_lowest_valid_acc'), '-')} | {'yes' if s['passed'] else 'no'} |")
        if r.get("cap_note"):
            lines.append(f"| {r['method']} | {r['seed']} | cap | {r['cap_note']} | | | | | | | |")
    lines += ["", "## Length generalisation (final models at 2x the longest training length)", "",
              "| method | seed | trained up to T | test T | student acc | teacher acc |", "|---|---|---|---|---|---|"]
    for r in runs:
        g = r.get("generalisation")
        if g:
            lines.append(f"| {r['method']} | {r['seed']} | {_fmt(g.get('student_trained_T'))} | {g['T']} | "
                         f"{_fmt(g['student_test_acc'])} | {_fmt(g.get('teacher_test_acc'), '-')} |")
    lines += ["", "## BPTT gradient norm ||dL/dm_t|| at the longest T (mean over 64 test sequences)", "",
              "| method | seed | when | t=0 | t=T/4 | t=T/2 | t=3T/4 | t=T |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        g = r.get("grad_norms")
        if g:
            for when in ("init", "final"):
                v = g[when]
                n = len(v) - 1
                lines.append(f"| {r['method']} | {r['seed']} | {when} | " + " | ".join(
                    f"{v[i]:.2e}" for i in (0, n // 4, n // 2, 3 * n // 4, n)) + " |")
    lines += ["", "## Deliberate differences from the reference", ""] + [f"- {d}" for d in meta["differences_from_reference"]]
    lines += ["", ("Sequential steps per update: SMT pretraining 1 (the teacher is parallel in time, the updater takes "
                   "one step), DMT T forward steps without a backward pass, BPTT 2T (forward and backward through time)."), ""]
    return "\n".join(lines)


def plot(runs, Ls, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        if "error" in r:
            continue
        per = stage_sequences(r, passed_only=True)
        xs = sorted(int(k) for k in per)
        lab = f"{r['method']} s{r['seed']}"
        ax[0].plot(xs, [per[str(k)] for k in xs], marker="o", label=lab)
        acc = [(s["T"], s.get("dmt_test_acc", s.get("smt_test_acc")) if r["method"] == "smt-dmt" else s["test_acc"])
               for s in sorted(r["stages"], key=lambda s: s["T"])]
        reached = {T for T, _ in acc}
        ax[1].plot([T for T, _ in acc] + [T for T in Ls if T not in reached and T > max(reached, default=0)],
                   [a for _, a in acc] + [0.125 for T in Ls if T not in reached and T > max(reached, default=0)],
                   marker="o", label=lab)
    for a in ax:
        a.set_xscale("log", base=2)
        a.set_xlabel("sequence length T")
        a.legend(fontsize=7)
    ax[0].set_yscale("log")
    ax[0].set_ylabel("training sequences to pass the stage (passed stages)")
    ax[1].set_ylabel("test acc at stage end (SMT: after DMT from T=64; 0.125 = not reached)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-T", type=int, default=512)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--cap", type=float, default=1200.0, help="CPU-seconds per run (process clock)")
    ap.add_argument("--dmt-steps", type=int, default=2000, help="most DMT steps per stage")
    ap.add_argument("--bptt-lr", type=float, default=BPTT_LR)
    ap.add_argument("--gru", action=argparse.BooleanOptionalAction, default=True, help="the GRU-BPTT arm (first seed)")
    ap.add_argument("--gen-n", type=int, default=512, help="test sequences at 2x max-T")
    ap.add_argument("--dmt-from", type=int, default=DMT_FROM, help="stages this long and longer need the student to pass")
    ap.add_argument("--dmt-warm", action="store_true",
                    help="each stage's DMT copy starts from the previous stage's DMT student's updater")
    ap.add_argument("--dmt-eval-every", type=int, default=10, help="DMT evaluates (valid) every N steps")
    ap.add_argument("--no-bptt", action="store_true", help="only the SMT->DMT arms")
    ap.add_argument("--name", default="length_scaling", help="result file stem under benchmarks/results/")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rewrite", action="store_true", help="rewrite the .md and .png from the existing .json (no run)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--one-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        Path(args.one_out).write_text(json.dumps(run_one(json.loads(args.one))))
        return 0
    if args.rewrite:
        data = json.loads((RESULTS / f"{args.name}.json").read_text())
        Ls = data["meta"]["lengths"]
        data["answers"] = analyse(data["runs"], Ls)
        (RESULTS / f"{args.name}.json").write_text(json.dumps(data, indent=1))
        (RESULTS / f"{args.name}.md").write_text(markdown(data["runs"], data["answers"], data["meta"], Ls))
        plot(data["runs"], Ls, RESULTS / f"{args.name}.png")
        return 0
    flush_denormals()
    Ls = lengths(args.max_T)
    base = {"lengths": Ls, "cap": args.cap, "dmt_from": args.dmt_from, "dmt_warm": args.dmt_warm,
            "dmt_eval_every": args.dmt_eval_every, "dmt_steps": args.dmt_steps, "gen_n": args.gen_n}
    tasks = []
    for seed in args.seeds:
        tasks.append({**base, "method": "smt-dmt", "arch": "mlp", "seed": seed, "lr": SMT_LR})
        if not args.no_bptt:
            tasks.append({**base, "method": "bptt", "arch": "mlp", "seed": seed, "lr": args.bptt_lr})
    if args.gru and not args.no_bptt:
        tasks.append({**base, "method": "bptt", "arch": "gru", "seed": args.seeds[0], "lr": args.bptt_lr})
    runs = run_parallel(tasks, args.jobs)
    args_cmd = "python benchmarks/length_scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write(runs, args, Ls)
    meta_path = RESULTS / f"{args.name}.json"
    data = json.loads(meta_path.read_text())
    data["meta"]["command"] = args_cmd.strip()
    meta_path.write_text(json.dumps(data, indent=1))
    (RESULTS / f"{args.name}.md").write_text(markdown(runs, data["answers"], data["meta"], Ls))
    print((RESULTS / f"{args.name}.md").read_text())
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
