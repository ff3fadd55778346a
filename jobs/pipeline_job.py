"""`smt pipeline`: the whole flow from a recipe, on embedded defaults or a cluster.

    corpus -> teacher pretraining (joint SMT) -> labeling by Ray actors -> student SMT from the shards
    -> DMT rounds (the DMT actor relabels the latest student; the trainer resumes on the union)
    -> evaluation (+ the BPTT baseline: the same updater, the teacher's length curriculum and stop rule, an lr
       sweep chosen on valid, the SMT pipeline's wall-clock for the whole sweep)

Example: smt pipeline --recipe text-bytes-tiny --out runs/text --student.steps 300
Every field of the recipe's tree is a flag (`smt pipeline --recipe NAME --help` lists them with that recipe's
values as defaults); fields the pipeline takes from its earlier stages (the label stage's teacher, the DMT
phase's steps, ...) are refused when set.
Writes OUT/results.json, OUT/report.md with PNG plots, OUT/pipeline.log, and the bucket (default
OUT/bucket: teachers/, targets/) plus the student run (OUT/student). Timelines read the valid split; the
final figures (results.json `test`, `*_bits`) are bits per token on the test split for every model, on the
same sequences and targets (`trainers/heldout.py`), with samples of each model in the report, and beside them
the unigram / bigram / trigram count baselines fitted on train (`count_bits`, `test.counts`: `trainers/ngram.py`).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, TypeVar

from jobs.cli_common import FLAT, job_main
from jobs.pipeline_report import relative_to_out
from jobs.recipes import Recipe, load_recipe, resolve_corpus
from models.teacher import ConfigError
from trainers.tracking import TrackingConfig

T = TypeVar("T")


@dataclass(kw_only=True)
class PipelineJob:
    recipe: str = "retrieval-demo"
    """Named recipe (retrieval-demo, text-bytes-tiny, digits-pixels-tiny, tinystories-bytes, mnist-pixels[-tiny])
    or a JSON/YAML file; its values are the defaults of the flags below."""
    tree: Annotated[Recipe, FLAT] = field(default_factory=Recipe)
    """The recipe's tree."""
    out: str = "runs/pipeline"
    """Local output folder (results, report, logs, student run)."""
    bucket: str | None = None
    """Bucket URL for teachers/ and targets/ (default: OUT/bucket); s3://... on a cluster."""
    quiet: bool = False
    """No progress bars."""
    log: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment tracking of every training stage: --log.tensorboard DIR (one TensorBoard run per stage:
    DIR/pretrain, DIR/student, DIR/dmt-online, DIR/bptt[/lr-<lr>]), --log.wandb PROJECT (one W&B run per stage,
    grouped by --log.group, default the --out folder's name)."""

    def execute(self) -> int:
        from jobs.pipeline_report import print_table, write_report

        rc = replace(self.tree, corpus=resolve_corpus(self.tree.corpus))
        out = Path(self.out)
        out.mkdir(parents=True, exist_ok=True)
        res = run_pipeline(rc, out, self.bucket, self.quiet, tracking=self.log)
        write_report(out, res)
        print_table(res)
        return 0


def recipe_flag(argv: list[str], default: str = "retrieval-demo") -> str:
    """The value of --recipe in argv (read before parsing: the recipe's tree is the parser's defaults)."""
    for i, tok in enumerate(argv):
        if tok == "--recipe" and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith("--recipe="):
            return tok.split("=", 1)[1]
    return default


def defaults(argv: list[str]) -> PipelineJob:
    name = recipe_flag(argv)
    return PipelineJob(recipe=name, tree=load_recipe(name))


def wired(cfg: T, where: str, **values) -> T:
    """`cfg` with the fields the pipeline derives from its earlier stages set to `values`; a field a recipe or
    a flag changed from its class default is refused (it would be silently replaced)."""
    for f in fields(cfg):
        if f.name in values:
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if getattr(cfg, f.name) != default:
                raise ConfigError(f"{where}.{f.name} is set by the pipeline from its earlier stages: drop "
                                  f"--{where.replace('_', '-')}.{f.name.replace('_', '-')}")
    return replace(cfg, **values)


def run_pipeline(rc, out: Path, bucket: str | None = None, quiet: bool = False, say=None,
                 tracking: TrackingConfig | None = None) -> dict:
    import torch

    from pipeline.corpora import load_corpus
    from pipeline.label import label
    from storage.checkpoints import load_student, save_teacher
    from storage.run_dir import RunDir
    from trainers.dmt import run_dmt
    from trainers.evaluate import eval_batch, evaluate_student, evaluate_teacher
    from trainers.heldout import sample_models, score_models, split_sizes, token_unit
    from trainers.ngram import count_baselines
    from trainers.pretrain import pretrain
    from trainers.student import run_training

    out.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("smt.pipeline")
    if not log.handlers:
        h = logging.FileHandler(out / "pipeline.log")
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
    show = say or (lambda *a: print(*a, flush=True))

    def say(*a) -> None:  # the console and OUT/pipeline.log
        show(*a)
        log.info(" ".join(map(str, a)))

    bucket = bucket or str((out / "bucket").resolve())
    tracking = tracking or TrackingConfig()
    if tracking.enabled and tracking.group is None:
        tracking = replace(tracking, group=out.resolve().name)
    corpus = load_corpus(rc.corpus)
    stream_mode = corpus.streaming
    prompt = rc.pretrain.smt.Tc if stream_mode else 0
    # every figure reported below is on a fixed sample of the test split; the trainers choose on valid
    x, y = eval_batch(corpus, rc.eval_size, 12345, split="test")
    test_spec = corpus.with_split("test").spec
    t0 = time.perf_counter()
    timeline: list[dict] = []  # pipeline seconds -> accuracy of the updater rolled out alone

    def mark(stage: str, acc: float | None = None, at: float | None = None, **kw) -> None:
        seconds = time.perf_counter() - t0 if at is None else at
        timeline.append({"seconds": round(seconds, 2), "stage": stage, "acc": acc, **kw})

    say(f"[1/5] pretraining the teacher on {corpus.spec} (choices on the valid split; reported: {x.shape[0]} "
        f"sequences of the test split)")
    pt = pretrain(corpus, rc.pretrain, out=out / "pretrain", quiet=quiet, tracking=tracking.child("pretrain"))
    fp = pt["fingerprint"]
    teacher_url = f"{bucket.rstrip('/')}/teachers/{fp}"
    save_teacher(teacher_url, pt["teacher"], {"corpus": corpus.spec})
    teacher = pt["teacher"].cpu()
    te = evaluate_teacher(teacher, x, y, prompt)
    drift_teacher = teacher if (stream_mode or teacher.encoder_kind.one_pass) else None
    s0 = evaluate_student(pt["student"].cpu(), x, y, drift_teacher, prompt)
    mark("pretrain", s0["acc"], teacher_acc=te["acc"])
    say(f"      teacher {fp[:12]}: acc={te['acc']:.3f} bits/token={te['bits_per_token']:.3f} ({pt['seconds']:.0f} s)")

    say(f"[2/5] labeling with {rc.label_executor.workers or 'no'} Ray actors -> {relative_to_out(bucket, out)}")
    gpus = rc.label_executor.gpus() if torch.cuda.is_available() else 0.0  # also each DMT actor's
    lcfg = wired(rc.label, "label", teacher=teacher_url, corpus=corpus.spec, out=bucket, Tc=prompt or None)
    rep = label(lcfg, replace(rc.label_executor, gpus_per_worker=gpus).build(), quiet=quiet)
    targets = rep.target_url
    mark("label")
    say(f"      {rep.summary()}")

    run_url = str((out / "student").resolve())
    st = rc.student
    arch = st.updater.arch

    def student_acc() -> dict:
        ptr = RunDir(run_url).latest()
        s, _, _ = load_student(f"{run_url}/{ptr['path']}/student")
        return evaluate_student(s, x, y, teacher, prompt)

    say(f"[3/5] student SMT from the shards: {arch} updater, {st.steps} steps")
    run_training(targets, teacher_url, run_url, st, quiet=quiet, tracking=tracking.child("student"))
    smt_student = load_student(f"{run_url}/{RunDir(run_url).latest()['path']}/student")[0]
    r0 = student_acc()
    mark("student-smt", r0["acc"], drift_final=r0.get("drift_final"))
    say(f"      rolled out alone: acc={r0['acc']:.3f} drift_T={r0.get('drift_final', float('nan')):.4f}")

    phase = dmt_phase(rc, targets, run_url, corpus, teacher_url, prompt, gpus,
                      started=time.time() - (time.perf_counter() - t0))  # the pipeline's start on the wall clock
    say(f"[4/5] {phase.describe()}")
    rounds, ptr = run_dmt(phase, teacher=teacher, teacher_fingerprint=fp, corpus=corpus, say=say, mark=mark,
                          evaluate=lambda s: evaluate_student(s, x, y, teacher, prompt),
                          tracking=tracking.child("dmt-online" if rc.dmt_online else "student"))
    final_url = f"{run_url}/{ptr['path']}/student"
    smt_seconds = time.perf_counter() - t0

    bptt = None
    if rc.bptt:
        bptt = _bptt_baseline(rc, corpus, smt_seconds, out, quiet, say, tracking.child("bptt"))
        bptt["acc"] = evaluate_student(bptt["student"], x, y)["acc"]
    say(f"      held-out figures on the test split ({corpus.with_split('test').spec})")
    students = {"smt": smt_student, "dmt": load_student(final_url)[0]}
    test = score_models(corpus, rc.eval_size, prompt, teacher, students, bptt and bptt["student"])
    test["counts"] = count_baselines(corpus, rc.eval_size, prompt)  # what local statistics alone give, same targets
    samples = sample_models(corpus, prompt, teacher, students, bptt and bptt["student"], k=4 if prompt else 8)
    final = timeline[-1]
    metrics = [json.loads(ln) for ln in (out / "student" / "metrics.jsonl").read_text().splitlines() if ln.strip()] \
        if (out / "student" / "metrics.jsonl").exists() else []
    res = {"task": corpus.spec, "recipe": rc.name, "chance": corpus.chance, "bucket": bucket, "targets": targets,
           "eval_split": "test", "test_corpus": test_spec, "test_sequences": int(x.shape[0]),
           "teacher_fingerprint": fp, "teacher_encoder": rc.pretrain.teacher.encoder, "student": arch,
           "student_checkpoint": final_url,
           "teacher_acc": te["acc"], "teacher_bits_per_token": te["bits_per_token"],
           "smt_acc": r0["acc"], "dmt_acc": final["acc"], "bptt_acc": bptt["acc"] if bptt else None,
           "unit": token_unit(corpus),
           "test": test, "splits": split_sizes(corpus), "samples": {k: v.tolist() for k, v in samples.items()},
           "teacher_bits": test["teacher"]["bits"], "smt_bits": _bits(test["smt"], prompt),
           "dmt_bits": _bits(test["dmt"], prompt), "bptt_bits": _bits(test["bptt"], 0),
           "count_bits": {k: test["counts"][k] for k in ("unigram", "bigram", "trigram")},
           "seconds": time.perf_counter() - t0, "smt_pipeline_seconds": smt_seconds,
           "stage_seconds": {"pretrain": pt["seconds"]}, "timeline": timeline, "dmt_rounds": rounds,
           "pretrain_history": pt["history"], "student_metrics": metrics[-2000:],
           "bptt_history": bptt["history"] if bptt else [],
           "bptt_sweep": {k: v for k, v in bptt.items() if k not in ("student", "history", "acc")} if bptt else None,
           "label": {"states_per_s": rep.states / rep.seconds,
                                                                       "records": rep.records}}
    return res


BPTT_BUDGET_RULE = ("the whole lr sweep gets the SMT pipeline's wall-clock (pretraining through DMT, capped by "
                    "bptt_max_seconds), an equal share per lr, evaluation excluded; a run stopped early by the stop "
                    "rule leaves its rest unused")


def _bptt_baseline(rc, corpus, smt_seconds: float, out: Path, quiet: bool, say,
                   tracking: TrackingConfig | None = None) -> dict:
    """The BPTT baseline with what the SMT teacher got: the same updater, memory shape and batch, the
    pretraining's length curriculum, stop rule and evaluation cadence, and an lr sweep chosen on valid
    (`trainers.bptt.sweep_bptt`), under `BPTT_BUDGET_RULE`."""
    from trainers.bptt import sweep_bptt

    p = rc.pretrain
    lrs = rc.baseline.lrs or (rc.baseline.optim.lr,)
    budget = min(smt_seconds, rc.bptt_max_seconds or smt_seconds)
    cfg = wired(rc.baseline, "baseline", updater=rc.student.updater, shape=p.teacher, batch_size=p.batch_size,
                curriculum=p.curriculum, curriculum_acc=p.curriculum_acc, stop_at_acc=p.stop_at_acc,
                eval_every=p.eval_every, eval_size=p.eval_size, seconds=budget / len(lrs))
    say(f"[5/5] BPTT baseline: {rc.student.updater.arch} updater, lrs {', '.join(f'{lr:g}' for lr in lrs)} chosen on "
        f"valid, {budget / len(lrs):.0f} s each ({budget:.0f} s in all; the SMT pipeline took {smt_seconds:.0f} s)"
        + (f", curriculum {' -> '.join(map(str, p.curriculum))} -> {corpus.seq_len}" if p.curriculum else ""))
    r = sweep_bptt(corpus, cfg, out=out / "bptt", quiet=quiet, tracking=tracking)
    for run in r["runs"]:
        say(f"      lr {run['lr']:g}: valid acc {_fig(run['valid_acc'], run.get('note'))} loss "
            f"{_fig(run['valid_loss'], run.get('note'))} ({run['steps']} steps, {run['seconds']:.0f} s)"
            + ("  <- chosen" if run["chosen"] else ""))
    return {"student": r["student"].cpu(), "history": r["history"], "seconds": sum(x["seconds"] for x in r["runs"]),
            "steps": r["steps"], "chosen_lr": r["lr"], "chosen_on": corpus.with_split("valid").spec,
            "budget_rule": BPTT_BUDGET_RULE, "budget_seconds": round(budget, 2),
            "seconds_per_lr": round(budget / len(lrs), 2), "curriculum": list(p.curriculum),
            "stop_at_acc": p.stop_at_acc, "runs": r["runs"]}


def _fig(v: float | None, reason: str | None) -> str:
    return f"{v:.3f}" if v is not None else f"n/a ({reason or 'not measured'})"


def _bits(fig: dict | None, prompt: int) -> float | None:
    """The headline test bits of a model: students from the teacher's prompt memory on stream corpora (the
    paper's protocol), from m_0 otherwise (prefix corpora, BPTT); None when the model was not trained."""
    if fig is None:
        return None
    f = fig["from_teacher_prompt"] if prompt else fig["from_m0"]
    return f["bits"]


def dmt_phase_config(rc):
    """Lockstep DMT's training config: the recipe's `dmt_phase`, with the student's updater, from the end of its
    SMT phase to the last round's boundary + `dmt_extra_steps` (the hooks are `rc.dmt.hooks()`)."""
    st, d = rc.student, rc.dmt
    return wired(rc.dmt_phase, "dmt_phase", updater=st.updater, steps=st.steps + d.rounds * d.every + rc.dmt_extra_steps,
                 phase_start=st.steps)


def online_config(rc, prompt: int):
    """Online DMT's config: the recipe's `online`, `dmt.rounds` x `dmt.every` steps from the rollout start."""
    return wired(rc.online, "online", steps=rc.dmt.rounds * rc.dmt.every, prompt=prompt)


def actor_config(rc, targets, run_url, corpus, teacher_url, prompt, first_step=None):
    """The DMT actor's config: the recipe's (sequences, shards, polling), its schedule from `dmt`, the rest from
    the earlier stages."""
    from pipeline.corpora import spec_with

    # the actor relabels windows of the corpus the target set was labeled from (`label.stride`: a share of them)
    spec = corpus.spec if rc.label.stride is None else spec_with(corpus.spec, stride=rc.label.stride)
    return wired(rc.dmt_actor, "dmt_actor", targets=targets, run=run_url, corpus=spec, teacher=teacher_url,
                 rounds=rc.dmt.rounds, every_steps=rc.dmt.every, first_step=first_step, start=prompt,
                 format=rc.label.format, dtype=rc.label.dtype)


def dmt_phase(rc, targets, run_url, corpus, teacher_url, prompt, gpus: float, started: float | None = None):
    """The recipe's DMT phase (`trainers.dmt.DMTPhase`) on the student run: lockstep, or online with
    `dmt_online`. Each of its Ray actors reserves the DMT actor's CPUs (`dmt_actor.resources.num_cpus`) and the
    labeling workers' GPUs per worker (`gpus`, 0 without CUDA)."""
    from pipeline.stage import Resources
    from trainers.dmt import DMTPhase

    resources = Resources(num_cpus=rc.dmt_actor.resources.num_cpus, num_gpus=gpus)
    if rc.dmt_online:
        return DMTPhase(lockstep=rc.dmt, actor=actor_config(rc, targets, run_url, corpus, teacher_url, prompt),
                        online=online_config(rc, prompt), resources=resources, started=started)
    return DMTPhase(lockstep=rc.dmt, actor=actor_config(rc, targets, run_url, corpus, teacher_url, prompt,
                                                         first_step=rc.student.steps),
                    trainer=dmt_phase_config(rc), resources=resources, started=started)


main = job_main("pipeline", PipelineJob, __doc__, defaults)

if __name__ == "__main__":
    raise SystemExit(main())
