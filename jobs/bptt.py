"""`smt bptt`: train the BPTT baseline with the same updater architectures as SMT students.

OUT (local folder, file://, s3:// with --endpoint-url) gets its record OUT/run.json, its metrics and at the end
OUT/student. Choices read the valid split (the length curriculum, --stop-at-acc and, with --lrs, the learning
rate: one run per lr under OUT/lr-<lr>/, the one with the best final valid accuracy copied to OUT/student, the
sweep in OUT/selection.json). Report figures with `smt eval` (test split by default).
Example: smt bptt --corpus retrieval:T=64,vocab=8 --updater.arch mlp --out runs/bptt --seconds 120 \
    --curriculum 16 32 --lrs 3e-4 1e-3 3e-3
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from jobs.cli_common import FLAT, RunOutputJob, figure, job_main
from trainers.bptt import BPTTConfig


@dataclass(kw_only=True)
class BPTTJob(RunOutputJob):
    corpus: str
    """Corpus spec, e.g. retrieval:T=64,vocab=8 (training reads its train split, choices its valid split)."""
    out: str
    """Run URL (local folder, file://, s3://): run.json, metrics, student/ (and lr-<lr>/ runs with --lrs)."""
    bptt: Annotated[BPTTConfig, FLAT] = field(default_factory=BPTTConfig)
    """The BPTT baseline: updater (--updater.arch), memory shape, optimiser, budget, lr sweep (--lrs)."""

    def execute(self) -> int:
        from pipeline.corpora import load_corpus
        from trainers.bptt import sweep_bptt, train_bptt

        corpus = load_corpus(self.corpus)
        run, writer = self.run_dir(self.out), self.writer()
        if self.bptt.lrs:
            r = sweep_bptt(corpus, self.bptt, out=run, quiet=self.quiet, tracking=self.log, writer=writer)
        else:
            r = {**train_bptt(corpus, self.bptt, out=run, quiet=self.quiet, tracking=self.log, writer=writer),
                 "lr": self.bptt.optim.lr}
        print(f"bptt {self.bptt.updater.arch} -> {self.out}/student  lr={r['lr']:g} steps={r['steps']} "
              f"seconds={r['seconds']:.1f} valid_acc={figure(r['final'], 'bptt_acc')} (split=valid; report with smt eval)")
        return 0


main = job_main("bptt", BPTTJob, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
