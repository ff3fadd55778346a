"""`smt bptt`: train the BPTT baseline with the same updater architectures as SMT students.

Choices read the valid split (the length curriculum, --stop-at-acc and, with --lrs, the learning rate: one
run per lr under OUT/lr-<lr>/, the one with the best final valid accuracy copied to OUT/student, the sweep in
OUT/selection.json). Report figures with `smt eval` (test split by default).
Example: smt bptt --corpus retrieval:T=64,vocab=8 --student mlp --out runs/bptt --seconds 120 \
    --curriculum 16 32 --lrs 3e-4 1e-3 3e-3
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from jobs.common import parse, run
from trainers.bptt import BPTTConfig


@dataclass(kw_only=True)
class BPTTJob(BPTTConfig):
    corpus: str
    """Corpus spec, e.g. retrieval:T=64,vocab=8 (training reads its train split, choices its valid split)."""
    student: str = "mlp"
    """Updater architecture (overrides --updater.arch): transformer, mlp or gru."""
    lrs: tuple[float, ...] = ()
    """Learning-rate sweep (e.g. 3e-4 1e-3 3e-3), chosen on valid; empty = one run at --optim.lr."""
    out: str
    """Output folder."""
    quiet: bool = False
    """No progress bar."""


def sweep(corpus, job: BPTTJob) -> dict:
    """One run per lr; a run that reached the full length beats one stuck in the curriculum, then the best
    final valid accuracy wins (ties: the lower valid loss). Writes the winner to OUT/student and the whole
    sweep to OUT/selection.json; returns the winner's result."""
    from models.checkpoint import save_student
    from trainers.bptt import train_bptt

    out = Path(job.out)
    runs = []
    for lr in job.lrs:
        cfg = replace(job, optim=replace(job.optim, lr=lr))
        r = train_bptt(corpus, cfg, out=out / f"lr-{lr:g}", quiet=job.quiet)
        runs.append((lr, r))
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


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        from models.updaters import UpdaterConfig
        from pipeline.corpora import load_corpus
        from trainers.bptt import train_bptt

        job = parse(BPTTJob, argv, "bptt", __doc__)
        job.updater = UpdaterConfig(**{**job.updater.to_dict(), "arch": job.student})
        corpus = load_corpus(job.corpus)
        if job.lrs:
            r = sweep(corpus, job)
        else:
            r = {**train_bptt(corpus, job, out=job.out, quiet=job.quiet), "lr": job.optim.lr}
        acc = r["final"].get("bptt_acc")
        print(f"bptt {job.student} -> {job.out}/student  lr={r['lr']:g} steps={r['steps']} seconds={r['seconds']:.1f} "
              f"valid_acc={'n/a (no evaluation)' if acc is None else f'{acc:.3f}'} (split=valid; report with smt eval)")
        return 0

    return run("bptt", body)


if __name__ == "__main__":
    raise SystemExit(main())
