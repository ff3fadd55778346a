"""`smt bptt`: train the BPTT baseline with the same updater architectures as SMT students.

Choices read the valid split (the length curriculum, --stop-at-acc and, with --lrs, the learning rate: one
run per lr under OUT/lr-<lr>/, the one with the best final valid accuracy copied to OUT/student, the sweep in
OUT/selection.json). Report figures with `smt eval` (test split by default).
Example: smt bptt --corpus retrieval:T=64,vocab=8 --updater.arch mlp --out runs/bptt --seconds 120 \
    --curriculum 16 32 --lrs 3e-4 1e-3 3e-3
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

from jobs.common import FLAT, figure, job_main
from trainers.bptt import BPTTConfig


@dataclass(kw_only=True)
class BPTTJob:
    corpus: str
    """Corpus spec, e.g. retrieval:T=64,vocab=8 (training reads its train split, choices its valid split)."""
    out: str
    """Output folder."""
    bptt: Annotated[BPTTConfig, FLAT] = field(default_factory=BPTTConfig)
    """The BPTT baseline: updater (--updater.arch), memory shape, optimiser, budget."""
    lrs: tuple[float, ...] = ()
    """Learning-rate sweep (e.g. 3e-4 1e-3 3e-3), chosen on valid; empty = one run at --optim.lr."""
    quiet: bool = False
    """No progress bar."""

    def execute(self) -> int:
        from pipeline.corpora import load_corpus
        from trainers.bptt import train_bptt

        corpus = load_corpus(self.corpus)
        if self.lrs:
            r = self.sweep(corpus)
        else:
            r = {**train_bptt(corpus, self.bptt, out=self.out, quiet=self.quiet), "lr": self.bptt.optim.lr}
        print(f"bptt {self.bptt.updater.arch} -> {self.out}/student  lr={r['lr']:g} steps={r['steps']} "
              f"seconds={r['seconds']:.1f} valid_acc={figure(r['final'], 'bptt_acc')} (split=valid; report with smt eval)")
        return 0

    def sweep(self, corpus) -> dict:
        """One run per lr; a run that reached the full length beats one stuck in the curriculum, then the best
        final valid accuracy wins (ties: the lower valid loss). Writes the winner to OUT/student and the whole
        sweep to OUT/selection.json; returns the winner's result."""
        from models.checkpoint import save_student
        from trainers.bptt import train_bptt

        out = Path(self.out)
        runs = []
        for lr in self.lrs:
            cfg = replace(self.bptt, optim=replace(self.bptt.optim, lr=lr))
            runs.append((lr, train_bptt(corpus, cfg, out=out / f"lr-{lr:g}", quiet=self.quiet)))

        def key(p):
            f = p[1]["final"]
            return f.get("T") == corpus.seq_len, f.get("bptt_acc", -1.0), -f.get("bptt_loss", 0.0)

        lr, best = max(runs, key=key)
        save_student(str(out / "student"), best["student"], None,
                     {"corpus": corpus.spec, "trained_by": "bptt", "steps": best["steps"], "lr": lr})
        sel = {"corpus": corpus.spec, "chosen_on": corpus.with_split("valid").spec, "chosen_lr": lr,
               "runs": [{"lr": x, "folder": f"lr-{x:g}", "steps": r["steps"], "T": r["final"].get("T"),
                         "valid_acc": r["final"].get("bptt_acc"), "valid_loss": r["final"].get("bptt_loss")}
                        for x, r in runs]}
        (out / "selection.json").write_text(json.dumps(sel, indent=1))
        return {**best, "lr": lr}


main = job_main("bptt", BPTTJob, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
