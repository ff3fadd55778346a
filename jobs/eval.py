"""`smt eval`: evaluate a teacher, an SMT/DMT student or a BPTT run on a corpus.

RUN is a checkpoint folder (teacher or student) or a run folder holding teacher/ and/or student/.
Students are rolled out alone with teacher-forced inputs; with a teacher (found in the run folder or
given by --teacher) drift against the teacher's memories is reported too, after checking that the
student was trained against that teacher.
Example: smt eval --run runs/teacher --corpus retrieval:T=64,vocab=8 --json
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from jobs.common import parse, run


@dataclass(kw_only=True)
class EvalJob:
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
    json: bool = False
    """Print JSON (with per-position curves) instead of a table."""


def _exists(url: str) -> bool:
    from models.checkpoint import has_checkpoint

    return has_checkpoint(url)


def resolve(job: EvalJob) -> tuple[str | None, str | None]:
    """(teacher_url, student_url) for a run or checkpoint folder."""
    from models.checkpoint import load_checkpoint

    r = job.run.rstrip("/")
    if _exists(r):
        kind = load_checkpoint(r)[0]["kind"]
        if kind == "teacher":
            return r, None
        parent = r.rsplit("/", 1)[0] if "/" in r else "."
        t = job.teacher or next((u for u in (f"{parent}/teacher", f"{parent}/../teacher") if _exists(u)), None)
        return t, r
    t = job.teacher or (f"{r}/teacher" if _exists(f"{r}/teacher") else None)
    s = f"{r}/student" if _exists(f"{r}/student") else None
    if t is None and s is None:
        raise FileNotFoundError(f"no teacher or student checkpoint in {job.run}: pass a folder written by "
                                "smt pretrain/dmt-online/bptt/train, or a checkpoint folder")
    return t, s


def evaluate_run(job: EvalJob) -> dict:
    import torch

    from models.checkpoint import load_student, load_teacher
    from pipeline.corpora import load_corpus
    from trainers.evaluate import evaluate_student, evaluate_teacher
    from trainers.pretrain import eval_batch

    corpus = load_corpus(job.corpus)
    t_url, s_url = resolve(job)
    teacher = fp = None
    out: dict = {"corpus": corpus.with_split(job.split).spec, "split": job.split, "run": job.run}
    x, y = eval_batch(corpus, job.size, job.seed, job.split)
    out["sequences"] = int(x.shape[0])
    if t_url:
        teacher, fp, _ = load_teacher(t_url)
        _check_vocab(corpus, teacher.cfg.vocab_size, t_url)
        out["teacher"] = {"url": t_url, "fingerprint": fp, **evaluate_teacher(teacher, x, y, job.prompt)}
    if s_url:
        student, sfp, cfg = load_student(s_url)
        _check_vocab(corpus, student.teacher_cfg.vocab_size, s_url)
        if teacher is not None and sfp is not None and sfp != fp:
            raise ValueError(f"student {s_url} was trained against teacher {sfp}, not {fp} ({t_url}): "
                             "pass the matching --teacher")
        with torch.no_grad():
            res = evaluate_student(student, x, y, teacher if (sfp is not None or job.prompt) else None, job.prompt)
        out["student"] = {"url": s_url, "trained_by": cfg["meta"].get("trained_by"),
                          "arch": student.updater_cfg.arch, "teacher_fingerprint": sfp, **res}
    return out


def _check_vocab(corpus, vocab: int, url: str) -> None:
    if corpus.vocab_size > vocab:
        raise ValueError(f"corpus {corpus.spec} has vocabulary {corpus.vocab_size} but {url} was trained on "
                         f"{vocab}: evaluate on the corpus the model was trained on")


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        job = parse(EvalJob, argv, "eval", __doc__)
        res = evaluate_run(job)
        if job.json:
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
        return 0

    return run("eval", body)


if __name__ == "__main__":
    raise SystemExit(main())
