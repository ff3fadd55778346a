"""SMT -> DMT against BPTT on real corpora: held-out bits against CPU-seconds, one teacher for three students.

Corpora: the `text-bytes-tiny` recipe (byte-level English: Python's own `pydoc_data.topics` text) and the
`digits-pixels-tiny` recipe (scikit-learn's 8x8 digits, 64 raster-order pixels of 17 grey levels), with the
recipes' model shapes. For each corpus and seed, everything runs in one process with one torch thread, and
every cost is CPU-seconds of that process (`time.process_time`), evaluations excluded:
1. the teacher is pretrained (joint SMT) for `--teacher-seconds`;
2. it labels the train split (serial executor, in process; its CPU cost is measured, its wall time noted);
3. from that ONE target set, a student per updater (mlp, gru, transformer) is trained by SMT for
   `--student-steps` steps at each lr of `--lrs` (3e-4, 1e-3, 3e-3); the lr with the lowest valid bits is
   kept (`choose_lr`), scored on test, then trained by online DMT (fixed lr) for `--dmt-seconds` (scored);
4. BPTT trains each updater with its own readout at each lr of the same sweep, each for the per-student
   budget: teacher + labeling + that student's SMT and DMT; the lr is chosen on the valid bits of the final
   model, and only that run's probes (snapshots taken along the way, clock paused) are scored on test, so the
   same run also gives BPTT at the amortised budget, where the teacher and labels are shared by the students.
The teacher is trained once per corpus and seed at the recipe's fixed lr. Valid is read only by the lr
choices; every reported figure is test.
Every figure is test bits per token (byte, pixel) on the same test sequences and targets for every model
(`trainers/heldout.py`); students are scored rolled out from the teacher's memory of the prompt (text only,
the paper's protocol) and from their own m_0 (a standalone RNN).

Every bits figure is shown beside the count baselines (unigram / bigram / trigram fitted on train, on the same test
targets: `trainers/ngram.py`); `--counts` recomputes them into an existing .json without running any model.
Usage: python benchmarks/real_corpora.py [--corpora text digits] [--seeds 0 1 2] [--jobs 2] | --counts
Writes benchmarks/results/real_corpora.{json,md,png}; finished (corpus, seed) runs are kept in
benchmarks/results/real_corpora.partial.jsonl, so a rerun resumes (--fresh starts over).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARCHS = ("mlp", "gru", "transformer")
RECIPES = {"text": "text-bytes-tiny", "digits": "digits-pixels-tiny"}
RESULTS = Path(__file__).resolve().parent / "results"
LRS = (3e-4, 1e-3, 3e-3)  # the sweep, the same for SMT students and BPTT


def choose_lr(sweep: list[dict]) -> int:
    """Index of the sweep entry with the lowest `valid_bits` (the only key read: test figures, if a caller keeps
    any in the entries, never count). A missing or non-finite figure (a diverged run) never wins; ties go to
    the first entry."""
    ok = [(e["valid_bits"], i) for i, e in enumerate(sweep)
          if e.get("valid_bits") is not None and math.isfinite(e["valid_bits"])]
    if not ok:
        raise ValueError(f"lr sweep {[e.get('lr') for e in sweep]}: no run has a finite valid figure "
                         "(all diverged): lower the learning rates")
    return min(ok)[1]


@dataclasses.dataclass(kw_only=True)
class Budgets:
    teacher_seconds: dict
    """Teacher pretraining budget per corpus, CPU-seconds."""
    text_stride: int
    """Window stride of the text corpus (the recipe's 48 doubles the labeling work for little at these budgets)."""
    student_steps: int
    """SMT steps of each student from the shards (batch 512 transitions)."""
    dmt_seconds: float
    """Online DMT budget of each student, CPU-seconds."""
    dmt_lr: float
    """Online DMT learning rate (constant after 5 warm-up steps)."""
    lrs: tuple
    """Learning rates swept for each SMT student and each BPTT run (AdamW, 20 warm-up steps, constant)."""
    eval_size: int
    """Test sequences scored (the whole test split when it has fewer)."""
    bptt_eval_every: int
    """BPTT steps between probes of its test bits."""


def run_one(corpus_name: str, seed: int, archs: tuple[str, ...], b: Budgets) -> dict:
    """One corpus and seed: teacher, labels, a student per arch, BPTT per arch. CPU-seconds of this process."""
    import torch

    torch.set_num_threads(1)
    from jobs.recipes import load_recipe
    from models.updaters import UpdaterConfig
    from pipeline.corpora import load_corpus, spec_with
    from pipeline.executors import make_executor
    from pipeline.label import LabelConfig, label
    from storage.checkpoints import load_student, save_teacher
    from storage.run_dir import RunDir
    from trainers.bptt import BPTTConfig, train_bptt
    from trainers.common import OptimConfig
    from trainers.dmt import OnlineDMTConfig, dmt_online
    from trainers.dmt.mixing import StreamConfig
    from trainers.evaluate import eval_batch, evaluate_student, evaluate_teacher
    from trainers.heldout import score_models
    from trainers.loop import Callbacks
    from trainers.pretrain import pretrain
    from trainers.student import StudentRun, StudentTrainConfig, run_training

    rc = load_recipe(RECIPES[corpus_name])
    corpus = load_corpus(spec_with(rc.corpus, stride=b.text_stride) if corpus_name == "text" else rc.corpus)
    prompt = rc.pretrain.smt.Tc if corpus.streaming else 0
    work = Path(tempfile.mkdtemp(prefix=f"real-{corpus_name}-{seed}-"))
    cpu = time.process_time

    def score(students: dict, bptt=None) -> dict:  # test: reported figures, never read by a choice
        return score_models(corpus, b.eval_size, prompt, teacher, students, bptt)

    vx, vy = eval_batch(corpus, b.eval_size, 0, "valid")  # the same valid sample for every choice

    def valid_bits(model) -> float:  # valid bits, rolled out from the model's own m_0: what every lr choice reads
        return evaluate_student(model, vx, vy, teacher, prompt, from_m0=True)["bits_per_token"]

    ptc = dataclasses.replace(rc.pretrain, seconds=b.teacher_seconds[corpus_name], steps=10**6, clock="process",
                              seed=seed, eval_every=100, eval_size=64)
    pt = pretrain(corpus, ptc, out=work / "pretrain", quiet=True)
    teacher = pt["teacher"].cpu().eval()
    teacher_url = str(work / "bucket" / "teachers" / pt["fingerprint"])
    save_teacher(teacher_url, teacher, {"corpus": corpus.spec})
    test = score({})
    out: dict = {"corpus": corpus_name, "seed": seed, "spec": _public(corpus.spec), "prompt": prompt,
                 "test_sequences": test["sequences"], "test_targets": test["targets"], "scored": test["scored"],
                 "teacher": {"seconds": pt["seconds"], "steps": pt["steps"], "bits": test["teacher"]["bits"]}}
    c0, w0 = cpu(), time.perf_counter()
    rep = label(LabelConfig(teacher=teacher_url, corpus=corpus.spec, out=str(work / "bucket"), shard_sequences=512,
                            Tc=prompt or None), make_executor(0), quiet=True)
    out["label"] = {"seconds": cpu() - c0, "wall_seconds": time.perf_counter() - w0, "records": rep.records}
    shared = out["teacher"]["seconds"] + out["label"]["seconds"]
    out["teacher"]["valid_bits"] = evaluate_teacher(teacher, vx, vy, prompt)["bits_per_token"]
    out["students"], out["bptt"] = {}, {}
    for arch in archs:
        # SMT: one student per lr from the same target set; the lr is chosen on valid bits (own m_0 rollout, the
        # standalone RNN, defined on both corpora); only the chosen student goes on to DMT and is scored on test
        sweep, models = [], []
        for lr in b.lrs:
            run_url = str(work / f"student-{arch}-{lr:g}")
            cfg = StudentTrainConfig(updater=UpdaterConfig(arch=arch, depth=rc.student.updater.depth), seed=seed,
                                     optim=OptimConfig(lr=lr, warmup_steps=20), steps=b.student_steps,
                                     stream=StreamConfig(batch_size=rc.student.stream.batch_size),
                                     checkpoint_every=b.student_steps)
            c0 = cpu()
            run_training(StudentRun(rep.target_url, teacher_url, run_url), cfg, quiet=True)
            smt_cost = cpu() - c0
            student = load_student(f"{run_url}/{RunDir(run_url).latest()['path']}/student")[0]
            sweep.append({"lr": lr, "own_seconds": smt_cost, "valid_bits": valid_bits(student)})
            models.append(student)
        pick = choose_lr(sweep)
        student, smt_cost = models[pick], sweep[pick]["own_seconds"]
        points = [{"stage": "smt", "own_seconds": smt_cost, **_bits(score({"s": student})["s"])}]
        dcfg = OnlineDMTConfig(optim=OptimConfig(lr=b.dmt_lr, warmup_steps=5), steps=10**6, seconds=b.dmt_seconds,
                         batch_size=rc.online.batch_size, start=prompt, eval_every=10**9, eval_size=16, seed=seed,
                         clock="process")
        d = dmt_online(student, teacher, corpus, dcfg, quiet=True)
        own = smt_cost + d["seconds"]  # the chosen student's own cost (the sweep's other two lrs are not charged)
        points.append({"stage": "dmt", "own_seconds": own, "dmt_steps": d["steps"],
                       **_bits(score({"s": d["student"]})["s"])})
        out["students"][arch] = {"points": points, "own_seconds": own, "lr": sweep[pick]["lr"], "sweep": sweep,
                                 "sweep_cost_seconds": sum(x["own_seconds"] for x in sweep)}
        budget = shared + own  # the per-student view: this student paid for the whole teacher and labels
        # BPTT: one run per lr, each for the whole budget; probes snapshot the model (off the clock), the lr is
        # chosen on the valid bits of the final model, and only the chosen run's snapshots are scored on test
        bsweep, snaps = [], []
        for lr in b.lrs:
            shots: list = []

            def probe(s, row, shots=shots) -> dict:  # off the training clock
                shots.append(copy.deepcopy(s).cpu().eval())
                return {}

            bp = train_bptt(corpus, BPTTConfig(updater=UpdaterConfig(arch=arch, depth=rc.student.updater.depth),
                                               shape=rc.pretrain.teacher, optim=OptimConfig(lr=lr, warmup_steps=20),
                                               steps=10**7, seconds=budget, eval_every=b.bptt_eval_every,
                                               eval_size=16, batch_size=rc.pretrain.batch_size, seed=seed,
                                               clock="process"), quiet=True, callbacks=Callbacks(reporter=probe))
            vb = valid_bits(shots[-1])
            bsweep.append({"lr": lr, "seconds": bp["seconds"], "steps": bp["steps"], "valid_bits": vb,
                           "probes": [{"seconds": row["time"], "step": row["step"]} for row in bp["history"]]})
            snaps.append(shots)
        pick = choose_lr(bsweep)
        curve = [{**_bits(score({}, s)["bptt"]), **row} for s, row in zip(snaps[pick], bsweep[pick]["probes"])]
        out["bptt"][arch] = {"budget": budget, "seconds": bsweep[pick]["seconds"], "steps": bsweep[pick]["steps"],
                             "lr": bsweep[pick]["lr"], "curve": curve,
                             "sweep": [{k: v for k, v in x.items() if k != "probes"} for x in bsweep]}
        print(f"{corpus_name} seed {seed} {arch}: student lr {out['students'][arch]['lr']:g} {points[-1]} | "
              f"bptt lr {bsweep[pick]['lr']:g} {curve[-1]}", flush=True)
    return out


def count_figures(corpus_name: str, b: Budgets, prompt: int) -> dict:
    """The count baselines (unigram / bigram / trigram fitted on train: `trainers/ngram.py`) on the test sequences
    and targets every model of `corpus_name` is scored on (`score_models`: eval_size sequences, y[:, prompt:])."""
    from jobs.recipes import load_recipe
    from pipeline.corpora import load_corpus, spec_with
    from trainers.ngram import count_baselines

    rc = load_recipe(RECIPES[corpus_name])
    corpus = load_corpus(spec_with(rc.corpus, stride=b.text_stride) if corpus_name == "text" else rc.corpus)
    return count_baselines(corpus, b.eval_size, prompt)


def add_counts(res: dict) -> dict:
    """res["counts"][corpus]: the count baselines of each corpus of the runs (no model is run); refuses when their
    targets are not the runs' scored targets."""
    b = Budgets(**{**res["budgets"], "lrs": tuple(res["budgets"]["lrs"])})
    res["counts"] = {}
    for corpus in [c for c in RECIPES if any(r["corpus"] == c for r in res["runs"])]:
        run = next(r for r in res["runs"] if r["corpus"] == corpus)
        c = count_figures(corpus, b, run["prompt"])
        if c["targets"] != run["test_targets"]:
            raise SystemExit(f"{corpus}: the count baselines score {c['targets']} targets, the runs {run['test_targets']}: "
                             "the corpus or the recipe changed since the runs")
        res["counts"][corpus] = c
    return res


def counts_cell(res: dict, corpus: str) -> str:
    c = (res.get("counts") or {}).get(corpus)
    return " / ".join(f"{c[k]:.2f}" for k in ("unigram", "bigram", "trigram")) if c else "n/a (not computed)"


def _bits(fig: dict) -> dict:
    """Bits (and accuracy) of one model's figure, per rollout mode."""
    return {mode: {"bits": f["bits"], "acc": f["acc"]} if f else None for mode, f in fig.items()}


def _public(spec: str) -> str:
    """The spec without this machine's path to the pydoc text."""
    if spec.startswith("text:") and "pydoc-topics" in spec:
        return "text:{pydoc}|" + spec.rpartition("|")[2]
    return spec


# ------------------------------------------------------------------------------------------- summary


def _median(v: list[float]) -> float | None:
    import statistics

    return statistics.median(v) if v else None


def _at(curve: list[dict], seconds: float) -> float | None:
    """BPTT's test bits at the last probe within `seconds` (None when no probe came that early)."""
    inside = [c for c in curve if c["seconds"] <= seconds * 1.02]  # a probe fires one step after the mark
    return inside[-1]["from_m0"]["bits"] if inside else None


def summarise(runs: list[dict], archs: tuple[str, ...]) -> list[dict]:
    """Per corpus and arch: median [min, max] over seeds of every method's test bits, at the per-student and the
    amortised budgets, and the costs."""
    rows = []
    for corpus in sorted({r["corpus"] for r in runs}, key=list(RECIPES).index):
        rs = [r for r in runs if r["corpus"] == corpus]
        for arch in archs:
            rr = [r for r in rs if arch in r["students"]]
            if not rr:
                continue
            k = len(rr[0]["students"])
            vals: dict[str, list[float]] = {}

            def add(key, v, vals=vals):  # bound now: one dict per arch
                if v is not None:
                    vals.setdefault(key, []).append(v)

            for r in rr:
                last = r["students"][arch]["points"][-1]
                smt = r["students"][arch]["points"][0]
                shared = r["teacher"]["seconds"] + r["label"]["seconds"]
                own = r["students"][arch]["own_seconds"]
                add("teacher", r["teacher"]["bits"])
                add("smt_prompt", (smt.get("from_teacher_prompt") or {}).get("bits"))
                add("smt_m0", smt["from_m0"]["bits"])
                add("dmt_prompt", (last.get("from_teacher_prompt") or {}).get("bits"))
                add("dmt_m0", last["from_m0"]["bits"])
                add("bptt_full", r["bptt"][arch]["curve"][-1]["from_m0"]["bits"])
                add("bptt_amortised", _at(r["bptt"][arch]["curve"], shared / k + own))
                add("bptt_first", r["bptt"][arch]["curve"][0]["from_m0"]["bits"])
                add("bptt_first_seconds", r["bptt"][arch]["curve"][0]["seconds"])
                add("budget", shared + own)
                add("amortised_budget", shared / k + own)
                add("bptt_steps", r["bptt"][arch]["steps"])
            rows.append({"corpus": corpus, "arch": arch, "seeds": len(rr), "students_per_teacher": k,
                         **{key: {"median": _median(v), "min": min(v), "max": max(v), "n": len(v)}
                            for key, v in vals.items()}})
    return rows


def fmt(cell: dict | None, what: str = "") -> str:
    """median [min-max], or n/a (reason)."""
    if not cell or cell.get("median") is None:
        return f"n/a ({what or 'not measured'})"
    if cell["n"] == 1:
        return f"{cell['median']:.3f}"
    return f"{cell['median']:.3f} [{cell['min']:.3f}-{cell['max']:.3f}]"


def totals(runs: list[dict]) -> list[dict]:
    """The total view per corpus and seed: one teacher + labels + every student vs one BPTT run per arch."""
    out = []
    for r in runs:
        shared = r["teacher"]["seconds"] + r["label"]["seconds"]
        smt = shared + sum(s["own_seconds"] for s in r["students"].values())
        bptt = sum(b["seconds"] for b in r["bptt"].values())
        out.append({"corpus": r["corpus"], "seed": r["seed"], "teacher_s": r["teacher"]["seconds"],
                    "label_s": r["label"]["seconds"], "label_wall_s": r["label"]["wall_seconds"],
                    "smt_total_s": smt, "bptt_total_s": bptt})
    return out


def plot(path: Path, runs: list[dict], archs: tuple[str, ...]) -> Path:
    from trainers.report import plt

    corpora = [c for c in RECIPES if any(r["corpus"] == c for r in runs)]
    fig, axes = plt.subplots(1, len(corpora), figsize=(6.5 * len(corpora), 4.6), dpi=110, squeeze=False)
    colors = dict(zip(ARCHS, ("tab:blue", "tab:orange", "tab:green")))
    for ax, corpus in zip(axes[0], corpora):
        for r in (r for r in runs if r["corpus"] == corpus):
            shared = r["teacher"]["seconds"] + r["label"]["seconds"]
            first = r["seed"] == min(x["seed"] for x in runs if x["corpus"] == corpus)
            ax.scatter([r["teacher"]["seconds"]], [r["teacher"]["bits"]], marker="*", color="black", s=60,
                       label="teacher (ceiling)" if first else None)
            for arch in archs:
                pts = r["students"][arch]["points"]
                mode = "from_teacher_prompt" if r["prompt"] else "from_m0"
                ax.plot([shared + p["own_seconds"] for p in pts], [p[mode]["bits"] for p in pts], "-o",
                        color=colors[arch], markersize=3, label=f"SMT->DMT {arch}" if first else None)
                cv = r["bptt"][arch]["curve"]
                ax.plot([c["seconds"] for c in cv], [c["from_m0"]["bits"] for c in cv], "--x", color=colors[arch],
                        linewidth=1, alpha=0.8, label=f"BPTT {arch}" if first else None)
        unit = "byte" if corpus == "text" else "pixel"
        ax.set_xlabel("CPU-seconds (per student: a student's points include the whole teacher and labels)", fontsize=8)
        ax.set_ylabel(f"test bits per {unit}")
        ax.set_title(f"{RECIPES[corpus]}: every seed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


NOTES = (
    "With the same lr sweep for both methods, chosen on valid, **BPTT wins every cell**: on text by 0.84 (mlp: "
    "SMT->DMT 4.81 against BPTT 3.97), 1.42 (gru: 4.81 / 3.39) and 0.12 bits per byte (transformer: 4.86 / 4.74), "
    "on digits by 0.51 (2.89 / 2.38), 0.61 (2.93 / 2.33) and 0.34 bits per pixel (2.95 / 2.61). The one cell SMT "
    "won before (text, transformer: 4.74 against 5.59) it now loses: that win came from BPTT's fixed lr 1e-3; at "
    "3e-3 BPTT-transformer reaches 4.74 in about 21 steps. The sweep helped BPTT far more than the students: "
    "BPTT's valid bits fall steeply with lr (text gru 5.97 / 4.68 / 3.76 at 3e-4 / 1e-3 / 3e-3), the mlp and gru "
    "students' hardly move (text mlp 4.851 / 4.847 / 4.846; transformer students more: 5.18 / 4.98 / 4.86), "
    "because every student ends at its teacher (text 4.87, digits "
    "2.92, within 0.06 bits), and the teacher is the binding ceiling. 3e-3, the top of the sweep, was chosen in "
    "35 of 36 choices (the other: digits gru SMT, seed 1, 1e-3), so a wider sweep could move BPTT further; its "
    "figures are not at their best lr. The budgets are smaller than in the previous run (teacher 20 / 12 CPU-s, "
    "60 SMT steps, 4 s DMT) so that three lrs of everything fit on the shared 2 cores in the time we had; both "
    "methods shrank together (BPTT's budget is the student's), and the teachers are worse for it (4.87 against "
    "4.68 bits per byte before; 35-47 / 30-38 steps). Students rolled out from their own m_0 match the "
    "teacher-prompt protocol (within 0.02 bits); DMT moved them 0.01-0.07 bits (digits transformer: 0.006). The amortised view is still not "
    "measured (BPTT's first probe, every 30 steps, came after it). In total CPU at the chosen lrs, one teacher + "
    "labels + three students cost about half of three BPTT runs (text 33-36 vs 68-77 s, digits 26-27 vs 47-49 s; "
    "the sweep triples both and is charged to neither), for worse bits with every updater. What we think would "
    "change it: a teacher that learns faster per CPU-second (or a much larger teacher budget: the student cannot "
    "beat it), longer sequences (T=96 bytes and 64 pixels are short; BPTT's step cost and gradient path grow with "
    "T, SMT's do not), more students per teacher, and a GPU, where SMT's time-parallel steps pay and a CPU "
    "process clock does not reward them. These are early-training figures, not converged ones. *Against the count "
    "baselines* (added afterwards, on the same test targets): on text every teacher and student (4.81-4.89) is "
    "above even the unigram (4.62 bits per byte), so at these budgets SMT has not learned the byte frequencies; "
    "BPTT beats the unigram with every updater and, with the gru, reaches the bigram (3.39 against 3.40), but "
    "nothing reaches the trigram (2.50). On digits the teacher and students (2.89-2.95) sit at the unigram (2.95 "
    "bits per pixel), above the bigram (2.67); BPTT beats the trigram (2.48) with the mlp and gru (2.38, 2.33).")
"""Reading of the results, written after the run (rendered into the .md by --render)."""


def write_md(path: Path, res: dict) -> None:
    from trainers.report import markdown_table

    b, rows = res["budgets"], res["summary"]
    unit = {"text": "byte", "digits": "pixel"}
    md = ["# SMT->DMT vs BPTT on real corpora (held-out bits against CPU-seconds)", "",
          (f"Command: `{res['command']}`; {res['machine']}; torch threads 1 per process, {res['jobs']} processes in "
          f"parallel; wall time {res['wall_minutes']:.0f} min{'. ' + res['note'] if res.get('note') else ''}. Every "
          "cost is CPU-seconds of one process (`time.process_time`), evaluations excluded, so the figures do not "
          "depend on the machine's load."), "",
          "**Budgets (tiny on purpose: a 2-core machine shared with other work).** Teacher pretraining: "
          + ", ".join(f"{c} {s:g} CPU-s" for c, s in b["teacher_seconds"].items())
          + f"; labeling of the train split (text windows every {b['text_stride']} bytes): as measured; each student: {b['student_steps']} SMT steps from the "
          f"shards (batch 512 transitions) then {b['dmt_seconds']:g} CPU-s of online DMT (lr {b['dmt_lr']:g}); "
          f"BPTT (batch 32 sequences): the per-student budget = teacher + labeling + that student's SMT and DMT, "
          f"its test bits probed every {b['bptt_eval_every']} steps.", "",
          "**Learning rates (the same sweep for both methods).** Each SMT student and each BPTT run is trained at "
          "lr " + ", ".join(f"{x:g}" for x in b["lrs"]) + " (AdamW, 20 warm-up steps, constant); the lr is chosen "
          "per (corpus, seed, updater) by the lowest bits on the valid split (SMT: the student after its SMT steps, "
          "rolled out from its own m_0; BPTT: the model at the end of its budget), and only the chosen run is "
          "scored on test and reported. Only the chosen SMT student goes on to DMT (DMT's lr fixed at "
          f"{b['dmt_lr']:g}), and a student is charged its own SMT cost only, not the other two lrs' (BPTT likewise: "
          "each lr gets the whole budget). The teacher is trained once per corpus and seed at the recipe's fixed "
          "lr (no sweep). Every lr's valid bits and the choice are in the JSON (`sweep`, `lr`).", "",
          "**Scored.** " + "; ".join(f"{c}: {s}" for c, s in res["scored"].items()) + ". Test split for every "
          "reported figure, the same sequences and targets for every model; the valid split (same sample size) "
          "only for the lr choice.", "",
          ("**Count baselines.** Beside every bits figure: unigram / bigram / trigram models fitted on the train "
           "split and scored on the same test sequences and targets (`trainers/ngram.py`: "
           + next(iter((res.get("counts") or {"": {"smoothing": "not computed"}}).values()))["smoothing"]
           + "; context = the previous tokens of the sequence). A model above the bigram has not yet learned what "
           "two adjacent tokens tell. Denormal floats flushed: "
           + ("yes" if res.get("denormals_flushed") else "no (these runs predate the flag)") + "."), "",
          ("**Two views of cost.** *Per student*: a student is charged the whole teacher and labeling, BPTT gets "
          "that much. *Amortised*: one teacher and one target set serve the three students (the design's point), "
          "so a student is charged a third of them; BPTT's figure there is its probe at that budget in the same "
          "run."), ""]
    for corpus in [c for c in RECIPES if any(r["corpus"] == c for r in rows)]:
        u = unit[corpus]
        t = []
        for r in (r for r in rows if r["corpus"] == corpus):
            prompt_na = "prefix corpus: no prompt" if corpus == "digits" else ""
            t.append({"updater": r["arch"], "teacher": fmt(r.get("teacher")),
                      "SMT (teacher prompt)": fmt(r.get("smt_prompt"), prompt_na),
                      "SMT (own m_0)": fmt(r.get("smt_m0")),
                      "SMT->DMT (teacher prompt)": fmt(r.get("dmt_prompt"), prompt_na),
                      "SMT->DMT (own m_0)": fmt(r.get("dmt_m0")),
                      "BPTT, per-student budget": fmt(r.get("bptt_full")),
                      "BPTT, amortised budget": fmt(r.get("bptt_amortised"), "no probe that early"),
                      "BPTT, first probe (CPU-s)": f"{fmt(r.get('bptt_first'))} ({r['bptt_first_seconds']['median']:.0f})",
                      "budget CPU-s (per-student / amortised)":
                          f"{r['budget']['median']:.0f} / {r['amortised_budget']['median']:.0f}",
                      "count baselines (uni / bi / tri)": counts_cell(res, corpus)})
        md += [f"## {RECIPES[corpus]}: test bits per {u} (median [min-max] over {rows[0]['seeds']} seeds)", "",
               (f"Count baselines on these test targets (fitted on train), unigram / bigram / trigram: "
                f"**{counts_cell(res, corpus)}** bits per {u}."), "",
               markdown_table(t, list(t[0])), ""]
    md += ["## Learning-rate sweep: valid bits per lr (median over seeds) and the lr chosen per seed", "",
           markdown_table(sweep_rows(res["runs"], tuple(res["archs"]), b["lrs"]),
                          ["corpus", "updater", "method"] + [f"valid bits, lr {x:g}" for x in b["lrs"]]
                          + ["chosen lr per seed"]), ""]
    md += ["## Total cost (one teacher + one target set + three students, against three BPTT runs)", "",
           markdown_table([{k: (f"{v:.0f}" if isinstance(v, float) else v) for k, v in r.items()}
                           for r in res["totals"]],
                          ["corpus", "seed", "teacher_s", "label_s", "label_wall_s", "smt_total_s", "bptt_total_s"]),
           "", "## Where each method wins", ""]
    md += [f"- {line}" for line in wins(rows)] + [""]
    md += [f"![test bits against CPU-seconds]({res['png']})", "",
           ("*Every seed: the teacher (star) at its pretraining cost; each SMT->DMT student (solid) after SMT and after "
           "DMT, placed at teacher + labeling + its own cost (rolled out from the teacher's prompt memory "
           "on text, from m_0 on digits); BPTT (dashed, x) probed every "
           f"{b['bptt_eval_every']} steps of its run.*"), ""]
    if NOTES:
        md += ["## Reading", "", NOTES, ""]
    gap = path.with_name("text_gap.md")  # issue 16's lever study on ~1 MB of English (benchmarks/text_gap.py)
    if gap.exists():
        md += ["", "---", ""] + ["#" + ln if ln.startswith("#") else ln for ln in gap.read_text().splitlines()]
    path.write_text("\n".join(md))


def sweep_rows(runs: list[dict], archs: tuple[str, ...], lrs) -> list[dict]:
    """Per corpus, updater and method: the median valid bits of each lr and the lr each seed chose."""
    out = []
    for corpus in [c for c in RECIPES if any(r["corpus"] == c for r in runs)]:
        rs = [r for r in runs if r["corpus"] == corpus]
        for arch in archs:
            for method, key in (("SMT", "students"), ("BPTT", "bptt")):
                row = {"corpus": corpus, "updater": arch, "method": method}
                for lr in lrs:
                    v = [e["valid_bits"] for r in rs for e in r[key][arch]["sweep"]
                         if e["lr"] == lr and e["valid_bits"] is not None]
                    row[f"valid bits, lr {lr:g}"] = f"{_median(v):.3f}" if v else "n/a (diverged)"
                row["chosen lr per seed"] = ", ".join(f"{r[key][arch]['lr']:g}" for r in rs)
                out.append(row)
    return out


def wins(rows: list[dict]) -> list[str]:
    """One sentence per corpus and arch: the best student figure against BPTT at both budgets."""
    out = []
    for r in rows:
        best_key = min((k for k in ("dmt_prompt", "dmt_m0", "smt_prompt", "smt_m0") if r.get(k)),
                       key=lambda k: r[k]["median"])
        s = r[best_key]["median"]
        parts = []
        for key, view in (("bptt_full", "per-student"), ("bptt_amortised", "amortised")):
            v = (r.get(key) or {}).get("median")
            if v is None and r.get("bptt_first"):
                parts.append(f"{view}: n/a (no BPTT probe at that budget; its first probe, at "
                             f"{r['bptt_first_seconds']['median']:.0f} CPU-s > {r['amortised_budget']['median']:.0f}, "
                             f"read {r['bptt_first']['median']:.3f})")
            elif v is None:
                parts.append(f"{view}: n/a (no BPTT probe at that budget)")
            else:
                who = "SMT->DMT/SMT wins" if s < v else "BPTT wins"
                parts.append(f"{view}: {who} ({s:.3f} vs BPTT {v:.3f})")
        out.append(f"{r['corpus']}, {r['arch']}: best student figure is {best_key.replace('_', ' ')}; "
                   + "; ".join(parts))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--teacher-seconds", nargs=2, type=float, default=[20.0, 12.0], metavar=("TEXT", "DIGITS"))
    ap.add_argument("--student-steps", type=int, default=60)
    ap.add_argument("--text-stride", type=int, default=96)
    ap.add_argument("--dmt-seconds", type=float, default=4.0)
    ap.add_argument("--dmt-lr", type=float, default=1e-4)
    ap.add_argument("--lrs", nargs="+", type=float, default=list(LRS), help="lr sweep of SMT students and BPTT")
    ap.add_argument("--eval-size", type=int, default=256)
    ap.add_argument("--bptt-eval-every", type=int, default=30)
    ap.add_argument("--jobs", type=int, default=3, help="(corpus, seed) runs in parallel, one torch thread each")
    ap.add_argument("--out", default=str(RESULTS / "real_corpora"), help="output stem (.json, .md, .png)")
    ap.add_argument("--fresh", action="store_true", help="ignore finished runs in the .partial.jsonl")
    ap.add_argument("--render", action="store_true", help="only recompute the summary and rewrite .md/.png from the .json")
    ap.add_argument("--wall-minutes", type=float, help="wall time to report when earlier invocations made the runs")
    ap.add_argument("--note", default="", help="how the runs were made, when not by this one invocation")
    ap.add_argument("--counts", action="store_true",
                    help="only (re)compute the count baselines into the .json (no model is run), then render")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--one-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch

    torch.set_flush_denormal(True)  # denormal floats can slow a CPU step many times over (children run main too)
    stem = Path(args.out)
    b = Budgets(teacher_seconds=dict(zip(RECIPES, args.teacher_seconds)), text_stride=args.text_stride,
                student_steps=args.student_steps,
                dmt_seconds=args.dmt_seconds, dmt_lr=args.dmt_lr, lrs=tuple(args.lrs), eval_size=args.eval_size,
                bptt_eval_every=args.bptt_eval_every)
    if args.one:  # a child: one (corpus, seed)
        corpus, seed = args.one.split(":")
        r = run_one(corpus, int(seed), tuple(args.archs), b)
        Path(args.one_out).write_text(json.dumps(r))
        return 0
    if args.render or args.counts:
        res = json.loads(stem.with_suffix(".json").read_text())
        if args.counts:
            add_counts(res)
        res["summary"], res["totals"] = summarise(res["runs"], tuple(res["archs"])), totals(res["runs"])
        stem.with_suffix(".json").write_text(json.dumps(res, indent=1))
        plot(stem.with_suffix(".png"), res["runs"], tuple(res["archs"]))
        write_md(stem.with_suffix(".md"), res)
        return 0
    partial = stem.with_suffix(".partial.jsonl")
    done = [] if args.fresh or not partial.exists() else [json.loads(ln) for ln in partial.read_text().splitlines()]
    if args.fresh and partial.exists():
        partial.unlink()
    have = {(r["corpus"], r["seed"]) for r in done}
    todo = [(c, s) for s in args.seeds for c in args.corpora if (c, s) not in have]
    t0 = time.perf_counter()
    running: list[tuple[subprocess.Popen, Path, tuple]] = []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    while todo or running:
        while todo and len(running) < args.jobs:
            c, s = todo.pop(0)
            f = Path(tempfile.mkstemp(suffix=".json")[1])
            cmd = [sys.executable, __file__, "--one", f"{c}:{s}", "--one-out", str(f), "--archs", *args.archs,
                   "--teacher-seconds", *map(str, args.teacher_seconds), "--student-steps", str(args.student_steps),
                   "--text-stride", str(args.text_stride),
                   "--dmt-seconds", str(args.dmt_seconds), "--dmt-lr", str(args.dmt_lr), "--lrs",
                   *map(str, args.lrs), "--eval-size", str(args.eval_size), "--bptt-eval-every",
                   str(args.bptt_eval_every)]
            running.append((subprocess.Popen(cmd, env=env), f, (c, s)))
        time.sleep(1.0)
        for p, f, key in list(running):
            if p.poll() is None:
                continue
            running.remove((p, f, key))
            if p.returncode != 0:
                raise SystemExit(f"run {key} failed (exit {p.returncode}); finished runs are kept in {partial}")
            r = json.loads(f.read_text())
            f.unlink()
            done.append(r)
            with partial.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
    runs = sorted(done, key=lambda r: (list(RECIPES).index(r["corpus"]), r["seed"]))
    archs = tuple(a for a in args.archs)
    res = {"command": "python benchmarks/real_corpora.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)", "jobs": args.jobs,
           "wall_minutes": args.wall_minutes or (time.perf_counter() - t0) / 60, "note": args.note, "budgets": dataclasses.asdict(b), "archs": archs,
           "scored": {r["corpus"]: r["scored"] for r in runs}, "summary": summarise(runs, archs),
           "totals": totals(runs), "png": stem.with_suffix(".png").name, "runs": runs, "denormals_flushed": True}
    add_counts(res)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1))
    plot(stem.with_suffix(".png"), runs, archs)
    write_md(stem.with_suffix(".md"), res)
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
