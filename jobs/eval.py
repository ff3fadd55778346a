"""`smt eval`: evaluate a teacher, an SMT/DMT student or a BPTT run on a corpus.

RUN is any folder an smt command writes, or a checkpoint folder (teacher or student; an exported student is
one). A run folder says what it is in its record, RUN/run.json (`kind`); where each kind keeps its models is
defined once, in storage/layout.py:
  smt pretrain / train / dmt --run RUN     RUN/checkpoints/...: the newest checkpoint (or --step N)
  smt bptt / dmt-online OUT                OUT/student (and OUT/teacher when present)
  smt pipeline OUT                         OUT/student (a train run) with OUT/pretrain/teacher
  smt dmt --report FOLDER                  the run its rounds rolled out (named in its record)
A folder with neither a record nor a checkpoint's config.json is refused in one line.
Students are rolled out alone with teacher-forced inputs; with a teacher (found beside the run, or
given by --teacher) drift against the teacher's memories is reported too, after checking that the
student was trained against that teacher.
Example: smt eval --run runs/gru --corpus retrieval:T=64,vocab=8 [--step 600] --json
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from jobs.cli_common import job_main
from storage.settings import AtEndpoint


@dataclass(kw_only=True)
class EvalJob(AtEndpoint):
    run: str
    """Checkpoint or run folder/URL."""
    corpus: str
    """Corpus spec to evaluate on."""
    teacher: str | None = None
    """Teacher checkpoint (default: RUN/teacher or RUN/../teacher when present)."""
    split: str = "test"
    """Split to evaluate on (test for reported figures, valid for model choice); overrides the spec's."""
    size: int = 512
    """Held-out sequences (the whole split when it has fewer)."""
    prompt: int = 0
    """Stream corpora: roll out from the teacher memory after this many tokens."""
    seed: int = 0
    """Seed of the held-out batch (the same as training's evaluation batch by default)."""
    step: int | None = None
    """Runs with checkpoints (smt train, dmt, pipeline): evaluate the student of this step (default: newest)."""
    json: bool = False
    """Print JSON (with per-position curves) instead of a table."""

    def execute(self) -> int:
        from trainers.ngram import counts_line

        res = evaluate_run(self)
        if self.json:
            print(json.dumps(res, indent=2))
            return 0
        print(f"split={res['split']}: {res['sequences']} sequences of {res['corpus']}")
        print(f"{'model':<10} {'acc':>7} {'loss':>8} {'bits/tok':>9} {'drift_T':>9}  url")
        for k in ("teacher", "student"):
            if k in res:
                r = res[k]
                d = r.get("drift_final")
                print(f"{k:<10} {r['acc']:>7.3f} {r['loss']:>8.4f} {r['bits_per_token']:>9.4f} "
                      f"{(f'{d:.4f}' if d is not None else '-'):>9}  {r['url']}")
        print(f"count baselines, bits/tok on the same targets (fit on train): {counts_line(res['counts'])}")
        return 0


def _exists(url: str, ep: str | None) -> bool:
    """A teacher or student checkpoint (a train run's own config.json is not one); `ep`: the S3 endpoint."""
    from storage.checkpoints import has_checkpoint, read_config

    return has_checkpoint(url, endpoint_url=ep) and read_config(url, endpoint_url=ep).get("kind") in ("teacher", "student")


def _fingerprint(url: str, ep: str | None) -> str | None:
    from storage.checkpoints import read_config

    return read_config(url, endpoint_url=ep).get("fingerprint")


def _run_student(r: str, step: int | None, ep: str | None) -> str:
    """The student of `step` (default: the newest checkpoint) of a run with checkpoints/ (checkpoints/latest.json)."""
    from storage.run_dir import RunDir

    run = RunDir(r, endpoint_url=ep)
    if step is None:
        latest = run.latest()
        if latest is None:
            raise FileNotFoundError(f"run {r} has no checkpoint yet: evaluate it once it has written one")
        rel = latest["path"]
    else:
        rel = run.student_dir(step)
    if rel is None:
        have = sorted({int(p.split("step-")[1].split("/")[0]) for p in run.bucket.glob("*/step-*/student/config.json")})
        raise FileNotFoundError(f"run {r} has no checkpoint or policy snapshot of step {step}; it has steps "
                                f"{', '.join(map(str, have)) or 'none'}: pass one of them to --step")
    return f"{r}/{rel}/student"  # spelled like RUN, so the output names what the user passed


def _teacher_beside(student: str, candidates: list[str], ep: str | None) -> str | None:
    """The first candidate teacher whose fingerprint the student was trained against."""
    from storage.checkpoints import read_config

    if not candidates:
        return None
    want = read_config(student, "student", endpoint_url=ep)["model"].get("teacher_fingerprint")
    return next((u for u in candidates if _exists(u, ep) and _fingerprint(u, ep) == want), None) if want else None


def resolve(job: EvalJob) -> tuple[str | None, str | None]:
    """(teacher_url, student_url) for a checkpoint folder or any folder an smt command writes."""
    return resolve_run(job.run, job.step, job.teacher, job.endpoint_url)


def resolve_run(run: str, step: int | None = None, teacher: str | None = None,
                ep: str | None = None) -> tuple[str | None, str | None]:
    """(teacher_url, student_url) of RUN: a checkpoint folder (an exported student is one) or any folder an smt
    command writes, read by its record's kind (module docstring, storage/layout.py); `step` picks a checkpoint,
    `teacher` overrides the one found; `ep`: the S3 endpoint of every URL involved."""
    from storage.bucket import Bucket
    from storage.checkpoints import CONFIG, read_config
    from storage.layout import RECORD, join, layout, read_record

    r = run.rstrip("/")
    no_steps = (f"--step applies to runs with checkpoints/ (smt pretrain, train, dmt --run, pipeline); {run} "
                "keeps only its final model: drop --step")
    rec = read_record(Bucket.from_url(r, endpoint_url=ep))
    if rec is None:
        if not _exists(r, ep):
            raise FileNotFoundError(f"{run} is not a run folder or checkpoint: expected {RECORD} (a run) or {CONFIG} "
                                    "(a checkpoint); pass a folder an smt command wrote")
        if step is not None:
            raise ValueError(no_steps)
        if read_config(r, endpoint_url=ep)["kind"] == "teacher":
            return r, None
        return teacher or _teacher_beside(r, [join(r, "../teacher"), join(r, "../../teacher")], ep), r
    lay = layout(rec, r)
    if lay.follows:  # smt dmt's report: the run its rounds rolled out
        if not rec.get(lay.follows):
            raise ValueError(f"{r}/{RECORD} (kind {rec['kind']}) names no {lay.follows}: rerun the command that wrote it")
        return resolve_run(rec[lay.follows], step, teacher, ep)
    teachers = [join(r, t) for t in lay.teachers]
    if lay.checkpoints is not None:  # a pretrain checkpoint holds the teacher of its step beside its student
        s = _run_student(join(r, lay.checkpoints), step, ep)
        return teacher or _teacher_beside(s, [join(s, "../teacher"), *teachers], ep), s
    if step is not None:
        raise ValueError(no_steps)
    s = join(r, lay.student)
    return teacher or _teacher_beside(s, teachers, ep), s


def evaluate_run(job: EvalJob) -> dict:
    import torch

    from pipeline.corpora import load_corpus
    from storage.checkpoints import load_student, load_teacher
    from trainers.evaluate import eval_batch, evaluate_student, evaluate_teacher
    from trainers.ngram import count_baselines

    corpus = load_corpus(job.corpus)
    t_url, s_url = resolve(job)
    teacher = fp = None
    out: dict = {"corpus": corpus.with_split(job.split).spec, "split": job.split, "run": job.run}
    x, y = eval_batch(corpus, job.size, job.seed, job.split)
    out["sequences"] = int(x.shape[0])
    if t_url:
        teacher, fp, _ = load_teacher(t_url, endpoint_url=job.endpoint_url)
        _check_vocab(corpus, teacher.cfg.vocab_size, t_url)
        out["teacher"] = {"url": t_url, "fingerprint": fp, **evaluate_teacher(teacher, x, y, job.prompt)}
    if s_url:
        student, sfp, cfg = load_student(s_url, endpoint_url=job.endpoint_url)
        _check_vocab(corpus, student.teacher_cfg.vocab_size, s_url)
        if teacher is not None and sfp is not None and sfp != fp:
            raise ValueError(f"student {s_url} was trained against teacher {sfp}, not {fp} ({t_url}): "
                             "pass the matching --teacher")
        with torch.no_grad():
            res = evaluate_student(student, x, y, teacher if (sfp is not None or job.prompt) else None, job.prompt)
        out["student"] = {"url": s_url, "trained_by": cfg["meta"].get("trained_by"),
                          "arch": student.updater_cfg.arch, "teacher_fingerprint": sfp, **res}
    # what local statistics give on the same targets: a bits figure is read against these
    out["counts"] = count_baselines(corpus, job.size, job.prompt, job.split, job.seed)
    return out


def _check_vocab(corpus, vocab: int, url: str) -> None:
    if corpus.vocab_size > vocab:
        raise ValueError(f"corpus {corpus.spec} has vocabulary {corpus.vocab_size} but {url} was trained on "
                         f"{vocab}: evaluate on the corpus the model was trained on")


main = job_main("eval", EvalJob, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
