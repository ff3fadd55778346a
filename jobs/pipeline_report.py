"""Results table, results.json and report.md with PNG plots for `smt demo` / `smt pipeline`."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

TEACHER_CHOICE = (
    "Why the causal teacher is the default on this task: in `benchmarks/results/smt_vs_bptt_teachers.md` (retrieval, mlp updater, "
    "120 CPU-seconds per run, 2 seeds) the register teacher of the reference design did not get past the T=16 stage of "
    "the length curriculum, and the causal teacher without the curriculum stayed at chance, while the causal teacher "
    "with the curriculum reached 95% rolled-out accuracy at T=64 in a median 45 s and at T=128 in 91 s (the same "
    "earlier protocol; the held-out rerun is `benchmarks/results/smt_vs_bptt.md`); it also labels 123x faster than the register teacher at Tc=256 "
    "(`benchmarks/results/labeling.md`).")
RECIPE_NOTES = {"retrieval-demo": TEACHER_CHOICE}
"""Paragraphs a report prints for one recipe only: the study behind TEACHER_CHOICE ran on the retrieval task, so
it says nothing about text or MNIST runs."""


PATH_KEYS = ("bucket", "targets", "student_checkpoint", "report")  # results.json fields that name files


@dataclass
class PipelineResult:
    """What `smt pipeline` measured (`jobs.pipeline_job.run_pipeline`), read by `write_report` and `print_table`;
    results.json is `to_json()` with the paths of `PATH_KEYS` relative to OUT. `write_report` sets the last two."""
    task: str
    recipe: str
    chance: float | None
    bucket: str
    targets: str
    eval_split: str
    test_corpus: str
    test_sequences: int
    teacher_fingerprint: str
    teacher_encoder: str
    student: str
    student_checkpoint: str
    teacher_acc: float
    teacher_bits_per_token: float
    smt_acc: float
    dmt_acc: float | None
    bptt_acc: float | None
    unit: str
    test: dict
    splits: dict
    samples: dict
    teacher_bits: float | None
    smt_bits: float | None
    dmt_bits: float | None
    bptt_bits: float | None
    count_bits: dict
    seconds: float
    smt_pipeline_seconds: float
    stage_seconds: dict
    timeline: list[dict]
    dmt_rounds: list[dict]
    pretrain_history: list[dict]
    student_metrics: list[dict]
    bptt_history: list[dict]
    bptt_sweep: dict | None
    label: dict
    denormals_flushed: bool | None = None
    report: str | None = None

    def to_json(self) -> dict:
        """The fields in declaration order (results.json's key order), the values themselves (not copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def relative_to_out(value: str, out: Path) -> str:
    """A path or file:// URL inside OUT as a path relative to OUT, so result files name no folder of the
    machine they ran on (and stay valid when OUT is moved or committed); anything else unchanged."""
    try:
        return Path(str(value).removeprefix("file://")).resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return str(value)


def resolve_in_out(value: str, out: Path) -> str:
    """Inverse of `relative_to_out`: a relative results.json path as a path under OUT; URLs and absolute
    paths (older results, buckets outside OUT) unchanged."""
    return value if "://" in value or Path(value).is_absolute() else str(Path(out) / value)


def print_table(res: PipelineResult) -> None:
    def f(v):
        return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

    print()
    print(f"{'task':<40} {'student':>7} {'teacher':>8} {'smt':>6} {'dmt':>6} {'bptt':>6} {'seconds':>8}")
    print(f"{res.task[:40]:<40} {res.student:>7} {f(res.teacher_acc):>8} {f(res.smt_acc):>6} "
          f"{f(res.dmt_acc):>6} {f(res.bptt_acc):>6} {res.seconds:>8.0f}")
    if res.test:
        label = f"test bits per {res.unit}"
        print(f"{label:<40} {'':>7} {f(res.teacher_bits):>8} {f(res.smt_bits):>6} "
              f"{f(res.dmt_bits):>6} {f(res.bptt_bits):>6}")
        if res.count_bits:
            from trainers.ngram import counts_line

            print(f"{'  count baselines (train counts)':<40} {counts_line(res.count_bits)}")
    for line in bptt_sweep_lines(res.bptt_sweep):
        print(line)
    print(f"bucket: {res.bucket}")
    if res.report:
        print(f"report: {res.report}")


def bptt_sweep_lines(sw: dict | None) -> list[str]:
    """The BPTT baseline's lr sweep: every lr's final valid figures (n/a with the reason where a run never
    reached the full length), the chosen lr and the budget rule."""
    if not sw:
        return []

    def f(v, run):
        return f"{v:.3f}" if isinstance(v, (int, float)) else f"n/a ({run.get('note') or 'not measured'})"

    lines = [(f"bptt lr sweep (chosen on valid: lr {sw['chosen_lr']:g}; budget: {sw['seconds_per_lr']:.0f} s per lr, "
              f"{sw['budget_seconds']:.0f} s in all: {sw['budget_rule']})")]
    lines += [f"  lr {r['lr']:g}: valid acc {f(r['valid_acc'], r)}, valid loss {f(r['valid_loss'], r)}, {r['steps']} steps, "
              f"{r['seconds']:.0f} s, T={r['T']}{'  <- chosen' if r['chosen'] else ''}" for r in sw["runs"]]
    return lines


def write_report(out: Path, res: PipelineResult) -> str:
    from models.device import flush_denormals
    from trainers.report import markdown_table, plot_curves

    out = Path(out)
    ph, sm, bh = res.pretrain_history, res.student_metrics, res.bptt_history
    loss_png = plot_curves(out / "loss_curves.png", {
        "teacher decoder loss (pretraining)": ([r["step"] for r in ph], [r["loss_decoder"] for r in ph]),
        "dynamics loss (pretraining)": ([r["step"] for r in ph], [r["loss_dyn"] for r in ph]),
        "student SMT loss from shards": ([r["step"] for r in sm], [r["loss"] for r in sm if "loss" in r][:len(sm)]),
    }, xlabel="step", ylabel="loss", title="training losses", logy=True)
    tl = res.timeline
    curves = {
        "teacher (own memories, pretraining)": ([r["time"] for r in ph], [r.get("teacher_acc") for r in ph]),
        "updater alone, joint SMT (pretraining)": ([r["time"] for r in ph], [r.get("smt_acc") for r in ph]),
        "student alone: SMT from shards, then DMT rounds": ([p["seconds"] for p in tl if p["acc"] is not None
                                                             and p["stage"] != "pretrain"],
                                                            [p["acc"] for p in tl if p["acc"] is not None
                                                             and p["stage"] != "pretrain"]),
    }
    if bh:
        curves[f"BPTT ({res.student} updater"
               + (f", chosen lr {res.bptt_sweep['chosen_lr']:g})" if res.bptt_sweep else ")")] = ([r["time"] for r in bh], [r["bptt_acc"] for r in bh])
    acc_png = plot_curves(out / "accuracy_vs_time.png", curves, xlabel="seconds since the pipeline started",
                          ylabel="answer accuracy (held-out)", title=f"{res.task}: SMT->DMT vs BPTT",
                          hline=res.chance)
    rounds = res.dmt_rounds
    if len(rounds) > 6:  # a readable plot: the first round, the last, and four evenly spaced between
        keep = sorted({round(i * (len(rounds) - 1) / 5) for i in range(6)})
        rounds = [rounds[i] for i in keep]
    drift_png = plot_curves(out / "dmt_drift.png", {
        f"round {r['round']} (student before it)": (list(range(len(r["drift_by_step"] or []))), r["drift_by_step"] or [])
        for r in rounds}, xlabel="rollout step t", ylabel="drift MSE(m_hat_t, m*_t)",
        title="student drift measured by each DMT round") if rounds else None
    rows = [{"stage": p["stage"], "seconds": p["seconds"], "acc": p["acc"] if p["acc"] is not None else "-",
             "drift_T": p.get("drift_final", "-")} for p in tl]
    md = [f"# {res.recipe}: {res.task}", "",
          (f"Teacher: {res.teacher_encoder} encoder, fingerprint `{res.teacher_fingerprint[:16]}`; student "
           f"updater `{res.student}`; bucket `{relative_to_out(res.bucket, out)}`. Accuracies here and in the "
           "timeline: answer accuracy on a fixed sample of the test split (choices read valid), the student updater "
           "rolled out alone (teacher-forced inputs, teacher readout)" + ("; bits per token of every model follow "
                                                                          "below." if res.test else ".")), "",
          markdown_table([res.to_json()], ["teacher_acc", "smt_acc", "dmt_acc", "bptt_acc", "seconds"]), "",
          *([RECIPE_NOTES[res.recipe], ""] if res.recipe in RECIPE_NOTES else []),
          *(["BPTT baseline, " + "; ".join(ln.strip() for ln in bptt_sweep_lines(res.bptt_sweep)) + ".", ""]
            if res.bptt_sweep else []),
          markdown_table(rows, ["stage", "seconds", "acc", "drift_T"]), "",
          f"![accuracy against wall-clock]({acc_png.name})", "",
          ("*Accuracy against seconds since the pipeline started: the teacher and the jointly trained updater during "
           "pretraining (at the current curriculum length), then the student trained from the shards and after each "
           "DMT round; BPTT with the same updater from its own start, for the same total time.*"), "",
          f"![losses]({loss_png.name})", "", "*Training losses against steps (log scale).*", ""]
    if drift_png:
        md += [f"![drift]({drift_png.name})", "",
               ("*Drift between the student's rolled-out memory and the teacher's, against t, as measured by each "
                "DMT round on the student it relabeled (round 1 = the SMT-only student).*"), ""]
    if res.test:
        md += heldout_section(out, res.to_json())
    res.denormals_flushed = flush_denormals()  # every stage flushed them (pick_device); say so in the files
    md.insert(1, f"\nDenormals flushed: {'yes' if res.denormals_flushed else 'no (this CPU cannot flush them)'}.")
    (out / "report.md").write_text("\n".join(md))
    res.report = str(out / "report.md")
    doc = res.to_json()
    stored = {**doc, **{k: relative_to_out(doc[k], out) for k in PATH_KEYS if isinstance(doc[k], str)}}
    (out / "results.json").write_text(json.dumps(stored, indent=1, default=str))
    return res.report


def heldout_section(out: Path, res: dict) -> list[str]:
    """The test-split figures of every model (n/a with the reason where a model is missing), the split sizes,
    and the samples: text continuations, or a PNG grid of sampled images beside real test ones."""
    from trainers.heldout import bits_line
    from trainers.report import markdown_table

    t, unit = res["test"], res.get("unit", "token")
    miss = t.get("missing", {})
    col = f"bits per {unit}"
    rows = [{"model": "teacher (own memories: the ceiling)", "rollout": "-", **_cells(t["teacher"], None, col)}]
    for name, label in (("smt", "SMT student"), ("dmt", "SMT->DMT student"), ("bptt", f"BPTT ({res['student']})")):
        starts = (("from_teacher_prompt", "teacher's memory of the prompt"), ("from_m0", "own m_0 (standalone RNN)"))
        for start, how in starts if name != "bptt" else starts[1:]:
            fig = (t.get(name) or {}).get(start)
            reason = miss.get(name) or miss.get(f"{name}.{start}")
            rows.append({"model": label, "rollout": how, **_cells(fig, reason, col)})
    counts = t.get("counts")
    for name in ("unigram", "bigram", "trigram"):  # what local statistics alone give on the same targets
        rows.append({"model": f"{name} count model (train split)", "rollout": "-",
                     col: bits_line({"bits": counts[name]} if counts else None, "not measured"), "accuracy": "-"})
    sizes = [{"split": k, "sequences": v["sequences"], f"{unit}s": v["tokens"]} for k, v in res["splits"].items()]
    md = ["## Held-out figures (test split)", "",
          (f"Test corpus `{t['corpus']}`, {t['sequences']} sequences, {t['targets']} scored {unit}s. Scored: "
          f"{t['scored']}. The same sequences and targets for every model."), "",
          markdown_table(rows, ["model", "rollout", col, "accuracy"]), "",
          *([(f"Count baselines: {counts['smoothing']}, fitted on {counts['fit_on']}; context = the previous inputs "
             "of the same sequence."), ""] if counts else []),
          markdown_table(sizes, ["split", "sequences", f"{unit}s"]), ""]
    samples = res.get("samples") or {}
    if unit == "pixel" and samples:
        png = image_grid(out / "samples.png", samples)
        md += [f"![sampled digits]({png.name})", "",
               ("*Top row: real test digits; below, one row per model: images sampled at temperature 0.8 after the "
                "first pixel of each real digit (every model reads it, none predicts it). Students and BPTT run "
                "alone; the teacher samples from the readout of its memory of each prefix.*"), ""]
    elif unit == "byte" and samples:
        md += ["### Continuations of test prompts", "",
               ("Sampled at temperature 0.8 after each prompt (the first bytes of a test window); `real` is the text "
               "that follows in the test split."), ""]
        for i, p in enumerate(samples["prompt"]):
            md += [f"**Prompt {i + 1}:**", "", _fence(p), ""]
            md += [ln for name, r in samples.items() if name != "prompt"
                   for ln in (f"- {name}:", "", _fence(r[i], indent="  "), "")]
    return md


def _cells(fig: dict | None, reason: str | None, col: str) -> dict:
    from trainers.heldout import bits_line

    if fig is None:
        na = bits_line(None, reason)
        return {col: na, "accuracy": na}
    return {col: bits_line(fig), "accuracy": f"{fig['acc']:.3f}"}


def _fence(tokens: list[int], indent: str = "") -> str:
    """Bytes as readable text in a fenced block: invalid utf-8 replaced, control bytes escaped, no fence breaks."""
    text = bytes(t for t in tokens if 0 <= t < 256).decode("utf-8", errors="replace")
    text = "".join(c if c in "\n" or c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    text = text.replace("```", "'''")
    return "\n".join(indent + ln for ln in ["```text", *text.split("\n"), "```"])


def image_grid(path: Path, samples: dict) -> Path:
    """A PNG: one row of square images per entry of `samples` except "prompt" (prompt + continuation = one
    whole image), real test images first."""
    import numpy as np

    from trainers.report import plt

    prompt = np.asarray(samples["prompt"])
    rows = {k: np.concatenate([prompt, np.asarray(v)], 1) for k, v in samples.items() if k != "prompt"}
    n, L = next(iter(rows.values())).shape
    side = round(L ** 0.5)
    vmax = max(1, max(int(r.max()) for r in rows.values()))
    fig, axes = plt.subplots(len(rows), n, figsize=(0.7 * n + 2.4, 0.8 * len(rows) + 0.2), dpi=110, squeeze=False)
    for i, (name, imgs) in enumerate(rows.items()):
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(np.clip(imgs[j], 0, None).reshape(side, side), cmap="gray_r", vmin=0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
