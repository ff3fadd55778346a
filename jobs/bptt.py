"""`smt bptt`: train the BPTT baseline with the same updater architectures as SMT students.

Example: smt bptt --corpus retrieval:T=64,vocab=8 --student mlp --out runs/bptt --seconds 120
"""
from __future__ import annotations

from dataclasses import dataclass

from jobs.common import parse, run
from trainers.bptt import BPTTConfig


@dataclass(kw_only=True)
class BPTTJob(BPTTConfig):
    corpus: str
    """Corpus spec, e.g. retrieval:T=64,vocab=8."""
    student: str = "mlp"
    """Updater architecture (overrides --updater.arch): transformer, mlp or gru."""
    out: str
    """Output folder."""
    quiet: bool = False
    """No progress bar."""


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        from models.updaters import UpdaterConfig
        from pipeline.corpora import load_corpus
        from trainers.bptt import train_bptt

        job = parse(BPTTJob, argv, "bptt", __doc__)
        job.updater = UpdaterConfig(**{**job.updater.to_dict(), "arch": job.student})
        corpus = load_corpus(job.corpus)
        r = train_bptt(corpus, job, out=job.out, quiet=job.quiet)
        print(f"bptt {job.student} -> {job.out}/student  steps={r['steps']} seconds={r['seconds']:.1f} "
              f"bptt_acc={r['final'].get('bptt_acc', float('nan')):.3f}")
        return 0

    return run("bptt", body)


if __name__ == "__main__":
    raise SystemExit(main())
