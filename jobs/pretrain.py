"""`smt pretrain`: joint SMT pretraining of a teacher and a reference updater on a corpus.

Example: smt pretrain --corpus retrieval:T=64,vocab=8 --out runs/teacher --curriculum 16 32
Writes OUT/teacher (checkpoint + fingerprint), OUT/student, OUT/metrics.jsonl, OUT/run.json.
"""
from __future__ import annotations

from dataclasses import dataclass

from jobs.common import figure, parse, run
from trainers.pretrain import PretrainConfig


@dataclass(kw_only=True)
class PretrainJob(PretrainConfig):
    corpus: str
    """Corpus spec, e.g. retrieval:T=64,vocab=8 (see pipeline/README.md)."""
    out: str
    """Output folder for the teacher checkpoint, metrics and config."""
    quiet: bool = False
    """No progress bar."""


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        from pipeline.corpora import load_corpus
        from trainers.pretrain import pretrain

        job = parse(PretrainJob, argv, "pretrain", __doc__)
        corpus = load_corpus(job.corpus)
        r = pretrain(corpus, job, out=job.out, quiet=job.quiet)
        f = r["final"]
        print(f"teacher {r['fingerprint'][:16]} -> {job.out}/teacher  steps={r['steps']} seconds={r['seconds']:.1f} "
              f"teacher_acc={figure(f, 'teacher_acc')} smt_acc={figure(f, 'smt_acc')} (split=valid; report with smt eval)")
        return 0

    return run("pretrain", body)


if __name__ == "__main__":
    raise SystemExit(main())
