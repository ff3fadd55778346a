"""`smt pipeline`: the whole flow from a recipe, on embedded defaults or a cluster.

    corpus -> teacher pretraining (joint SMT) -> labeling by Ray actors -> student SMT from the shards
    -> DMT rounds (the DMT actor relabels the latest student; the trainer resumes on the union)
    -> evaluation (+ the BPTT baseline: the same updater, the teacher's length curriculum and stop rule, an lr
       sweep chosen on valid, the SMT pipeline's wall-clock for the whole sweep)

Example: smt pipeline --recipe text-bytes-tiny --out runs/text --student.steps 300
Every field of the recipe's tree a user may set is a flag (`smt pipeline --recipe NAME --help` lists them with
that recipe's values as defaults); the 28 fields the pipeline takes from its earlier stages (the label stage's
teacher, the DMT phase's steps, ...) are no flags, and a recipe file that sets one is refused.
Writes OUT/run.json (the folder's record, kind "pipeline": storage/layout.py), OUT/results.json, OUT/report.md
with PNG plots, OUT/pipeline.log, and the bucket (default OUT/bucket: teachers/, targets/) plus the runs
(OUT/pretrain, the student run OUT/student, the BPTT sweep OUT/bptt). Timelines read the valid split; the
final figures (results.json `test`, `*_bits`) are bits per token on the test split for every model, on the
same sequences and targets (`trainers/heldout.py`), with samples of each model in the report, and beside them
the unigram / bigram / trigram count baselines fitted on train (`count_bits`, `test.counts`: `trainers/ngram.py`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

from jobs.cli_common import FLAT, Tracked, job_main
from jobs.pipeline_report import PipelineResult, relative_to_out
from jobs.recipes import Recipe, load_recipe, resolve_corpus
from models.teacher import ConfigError
from trainers.tracking import TrackingConfig

T = TypeVar("T")


@dataclass(kw_only=True)
class PipelineJob(Tracked):
    recipe: str = "retrieval-demo"
    """Named recipe (retrieval-demo, text-bytes-tiny, digits-pixels-tiny, tinystories-bytes, mnist-pixels[-tiny])
    or a JSON/YAML file; its values are the defaults of the flags below."""
    tree: Annotated[Recipe, FLAT] = field(default_factory=Recipe)
    """The recipe's tree."""
    out: str = "runs/pipeline"
    """Local output folder (results, report, logs, student run)."""
    bucket: str | None = None
    """Bucket URL for teachers/ and targets/ (default: OUT/bucket); s3://... on a cluster."""

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


def wired(cfg, where: str, **values):
    """The stage config of recipe field `where` (a `pipeline_view`, whose derived fields `smt pipeline` hides
    from its flags): a plain config with the derived fields set to `values`. One a recipe file changed from
    its class default is refused (it would be silently replaced)."""
    view = type(cfg)
    if set(values) != set(view.derived):
        raise TypeError(f"{where}: the pipeline sets {sorted(values)}, its recipe view hides {sorted(view.derived)}")
    for f in fields(cfg):
        if f.name in values:
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if getattr(cfg, f.name) != default:
                raise ConfigError(f"{where}.{f.name} is set by the pipeline from its earlier stages: drop it "
                                  "from the recipe file")
    plain = view.__mro__[1]
    return plain(**{**{f.name: getattr(cfg, f.name) for f in fields(plain)}, **values})


@dataclass
class _Run:
    """What every stage of one pipeline run reads: the recipe, the folders, the console, the corpus and its fixed
    test sample, and the timeline (pipeline seconds -> accuracy of the updater rolled out alone)."""
    rc: Recipe
    out: Path
    bucket: str
    quiet: bool
    say: Callable[..., None]
    tracking: TrackingConfig
    corpus: Any
    prompt: int
    x: Any
    y: Any
    test_spec: str
    t0: float
    timeline: list[dict] = field(default_factory=list)

    def mark(self, stage: str, acc: float | None = None, at: float | None = None, **kw) -> None:
        seconds = time.perf_counter() - self.t0 if at is None else at
        self.timeline.append({"seconds": round(seconds, 2), "stage": stage, "acc": acc, **kw})

    def evaluate(self, student, teacher) -> dict:
        from trainers.evaluate import evaluate_student

        return evaluate_student(student, self.x, self.y, teacher, self.prompt)


def run_pipeline(rc, out: Path, bucket: str | None = None, quiet: bool = False, say=None,
                 tracking: TrackingConfig | None = None) -> PipelineResult:
    run = _start(rc, out, bucket, quiet, say, tracking)
    pt = _pretrain_stage(run)
    rep, gpus = _label_stage(run, pt)
    st = _student_stage(run, pt, rep.target_url)
    dmt = _dmt_stage(run, pt, st, rep.target_url, gpus)
    bptt = _baseline_stage(run, dmt["smt_seconds"])
    return _results(run, pt, rep, st, dmt, bptt)


def _start(rc, out: Path, bucket: str | None, quiet: bool, say, tracking: TrackingConfig | None) -> _Run:
    """The run's folder, its log (OUT/pipeline.log beside the console), its bucket and tracking, the corpus and
    the fixed sample of the test split every reported figure is on (the trainers choose on valid)."""
    from pipeline.corpora import load_corpus
    from storage.run_dir import RunDir
    from trainers.evaluate import eval_batch

    out.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("smt.pipeline")
    if not log.handlers:
        h = logging.FileHandler(out / "pipeline.log")
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
    show = say or (lambda *a: print(*a, flush=True))

    def say_and_log(*a) -> None:  # the console and OUT/pipeline.log
        show(*a)
        log.info(" ".join(map(str, a)))

    bucket = bucket or str((out / "bucket").resolve())
    tracking = tracking or TrackingConfig()
    if tracking.enabled and tracking.group is None:
        tracking = replace(tracking, group=out.resolve().name)
    corpus = load_corpus(rc.corpus)
    # the folder's record (storage/layout.py): `smt eval --run OUT` reads OUT/student with OUT/pretrain/teacher
    RunDir(str(out)).write_record("pipeline", recipe=rc.name, corpus=corpus.spec, bucket=bucket)
    prompt = rc.pretrain.smt.Tc if corpus.streaming else 0
    x, y = eval_batch(corpus, rc.eval_size, 12345, split="test")
    test_spec = corpus.with_split("test").spec
    return _Run(rc=rc, out=out, bucket=bucket, quiet=quiet, say=say_and_log, tracking=tracking, corpus=corpus,
                prompt=prompt, x=x, y=y, test_spec=test_spec, t0=time.perf_counter())


def _pretrain_stage(run: _Run) -> dict:
    """[1/5] The teacher (and the jointly trained updater), saved to the bucket; `pt` of `trainers.pretrain`
    with the teacher on the CPU, its fingerprint, URL and test figures."""
    from storage.checkpoints import save_teacher, teacher_home
    from trainers.evaluate import evaluate_teacher
    from trainers.pretrain import pretrain

    rc, corpus = run.rc, run.corpus
    run.say(f"[1/5] pretraining the teacher on {corpus.spec} (choices on the valid split; reported: {run.x.shape[0]} "
            f"sequences of the test split)")
    pt = pretrain(corpus, rc.pretrain, out=run.out / "pretrain", quiet=run.quiet,
                  tracking=run.tracking.child("pretrain"))
    fp = pt["fingerprint"]
    teacher_url = f"{run.bucket.rstrip('/')}/{teacher_home(fp)}"
    save_teacher(teacher_url, pt["teacher"], {"corpus": corpus.spec})
    teacher = pt["teacher"].cpu()
    te = evaluate_teacher(teacher, run.x, run.y, run.prompt)
    drift_teacher = teacher if (corpus.streaming or teacher.encoder_kind.one_pass) else None
    s0 = run.evaluate(pt["student"].cpu(), drift_teacher)
    run.mark("pretrain", s0["acc"], teacher_acc=te["acc"])
    run.say(f"      teacher {fp[:12]}: acc={te['acc']:.3f} bits/token={te['bits_per_token']:.3f} "
            f"({pt['seconds']:.0f} s)")
    return {**pt, "teacher": teacher, "teacher_url": teacher_url, "te": te}


def _label_stage(run: _Run, pt: dict):
    """[2/5] Labeling by Ray actors into the bucket: the labeling report and the GPUs per worker (also each
    DMT actor's)."""
    import torch

    from pipeline.label import label

    rc = run.rc
    run.say(f"[2/5] labeling with {rc.label_executor.workers or 'no'} Ray actors -> "
            f"{relative_to_out(run.bucket, run.out)}")
    gpus = rc.label_executor.gpus() if torch.cuda.is_available() else 0.0  # also each DMT actor's
    lcfg = wired(rc.label, "label", teacher=pt["teacher_url"], corpus=run.corpus.spec, out=run.bucket,
                 Tc=run.prompt or None)
    rep = label(lcfg, replace(rc.label_executor, gpus_per_worker=gpus).build(), quiet=run.quiet)
    run.mark("label")
    run.say(f"      {rep.summary()}")
    return rep, gpus


def _student_stage(run: _Run, pt: dict, targets: str) -> dict:
    """[3/5] The student SMT run (OUT/student) from the shards: its URL, the student and its test figures."""
    from storage.checkpoints import load_student
    from storage.run_dir import RunDir
    from trainers.student import StudentRun, run_training

    run_url = str((run.out / "student").resolve())
    st = run.rc.student
    run.say(f"[3/5] student SMT from the shards: {st.updater.arch} updater, {st.steps} steps")
    run_training(StudentRun(targets, pt["teacher_url"], run_url), st, quiet=run.quiet,
                 tracking=run.tracking.child("student"))
    smt_student = load_student(f"{run_url}/{RunDir(run_url).latest()['path']}/student")[0]
    s, _, _ = load_student(f"{run_url}/{RunDir(run_url).latest()['path']}/student")
    r0 = run.evaluate(s, pt["teacher"])
    run.mark("student-smt", r0["acc"], drift_final=r0.get("drift_final"))
    run.say(f"      rolled out alone: acc={r0['acc']:.3f} drift_T={r0.get('drift_final', float('nan')):.4f}")
    return {"run_url": run_url, "student": smt_student, "r0": r0}


def _dmt_stage(run: _Run, pt: dict, st: dict, targets: str, gpus: float) -> dict:
    """[4/5] The recipe's DMT phase on the student run: its rounds, the final student's URL, and the SMT
    pipeline's seconds (pretraining through DMT: the BPTT baseline's budget)."""
    from trainers.dmt import run_dmt

    rc, teacher = run.rc, pt["teacher"]
    phase = dmt_phase(rc, targets, st["run_url"], run.corpus, pt["teacher_url"], run.prompt, gpus,
                      started=time.time() - (time.perf_counter() - run.t0))  # the pipeline's start on the wall clock
    run.say(f"[4/5] {phase.describe()}")
    rounds, ptr = run_dmt(phase, teacher=teacher, teacher_fingerprint=pt["fingerprint"], corpus=run.corpus,
                          say=run.say, mark=run.mark, evaluate=lambda s: run.evaluate(s, teacher),
                          tracking=run.tracking.child("dmt-online" if rc.dmt_online else "student"))
    return {"rounds": rounds, "final_url": f"{st['run_url']}/{ptr['path']}/student",
            "smt_seconds": time.perf_counter() - run.t0}


def _baseline_stage(run: _Run, smt_seconds: float) -> dict | None:
    """[5/5] The BPTT baseline (`_bptt_baseline`) with its test accuracy; None when the recipe has none."""
    from trainers.evaluate import evaluate_student

    if not run.rc.bptt:
        return None
    bptt = _bptt_baseline(run.rc, run.corpus, smt_seconds, run.out, run.quiet, run.say, run.tracking.child("bptt"))
    bptt["acc"] = evaluate_student(bptt["student"], run.x, run.y)["acc"]
    return bptt


def _results(run: _Run, pt: dict, rep, st: dict, dmt: dict, bptt: dict | None) -> PipelineResult:
    """The report's stage: every model's held-out figures on the test split, the count baselines and samples,
    and the results (`PipelineResult`: results.json's fields)."""
    from storage.checkpoints import load_student
    from storage.run_dir import RunDir
    from trainers.heldout import sample_models, score_models, split_sizes, token_unit
    from trainers.ngram import count_baselines

    rc, corpus, prompt, teacher = run.rc, run.corpus, run.prompt, pt["teacher"]
    run.say(f"      held-out figures on the test split ({corpus.with_split('test').spec})")
    students = {"smt": st["student"], "dmt": load_student(dmt["final_url"])[0]}
    test = score_models(corpus, rc.eval_size, prompt, teacher, students, bptt and bptt["student"])
    test["counts"] = count_baselines(corpus, rc.eval_size, prompt)  # what local statistics alone give, same targets
    samples = sample_models(corpus, prompt, teacher, students, bptt and bptt["student"], k=4 if prompt else 8)
    final = run.timeline[-1]
    metrics = RunDir(st["run_url"]).metrics()
    te, r0 = pt["te"], st["r0"]
    return PipelineResult(task=corpus.spec, recipe=rc.name, chance=corpus.chance, bucket=run.bucket,
                          targets=rep.target_url, eval_split="test", test_corpus=run.test_spec,
                          test_sequences=int(run.x.shape[0]), teacher_fingerprint=pt["fingerprint"],
                          teacher_encoder=rc.pretrain.teacher.encoder, student=rc.student.updater.arch,
                          student_checkpoint=dmt["final_url"],
                          teacher_acc=te["acc"], teacher_bits_per_token=te["bits_per_token"],
                          smt_acc=r0["acc"], dmt_acc=final["acc"], bptt_acc=bptt["acc"] if bptt else None,
                          unit=token_unit(corpus),
                          test=test, splits=split_sizes(corpus), samples={k: v.tolist() for k, v in samples.items()},
                          teacher_bits=test["teacher"]["bits"], smt_bits=_bits(test["smt"], prompt),
                          dmt_bits=_bits(test["dmt"], prompt), bptt_bits=_bits(test["bptt"], 0),
                          count_bits={k: test["counts"][k] for k in ("unigram", "bigram", "trigram")},
                          seconds=time.perf_counter() - run.t0, smt_pipeline_seconds=dmt["smt_seconds"],
                          stage_seconds={"pretrain": pt["seconds"]}, timeline=run.timeline, dmt_rounds=dmt["rounds"],
                          pretrain_history=pt["history"], student_metrics=metrics[-2000:],
                          bptt_history=bptt["history"] if bptt else [],
                          bptt_sweep={k: v for k, v in bptt.items() if k not in ("student", "history", "acc")}
                          if bptt else None,
                          label={"states_per_s": rep.states / rep.seconds, "records": rep.records})


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
    return wired(rc.online, "online", steps=rc.dmt.rounds * rc.dmt.every, start=prompt)


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
