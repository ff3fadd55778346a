"""`smt dmt-online`: the paper's online DMT on a pretrain run (frozen teacher, student rolled out on
its own states, one-step gradient). The pipeline's offline DMT (rounds of relabeled shards) is `smt dmt`.

Example: smt dmt-online --run runs/teacher --corpus retrieval:T=64,vocab=8 --out runs/dmt
"""
from __future__ import annotations

from dataclasses import dataclass

from jobs.common import figure, parse, run
from trainers.dmt import OnlineDMTConfig


@dataclass(kw_only=True)
class DMTOnlineJob(OnlineDMTConfig):
    run: str
    """A pretrain output folder (holding teacher/ and student/)."""
    corpus: str
    """Corpus spec (the one the teacher was pretrained on)."""
    out: str
    """Output folder for the DMT student."""
    quiet: bool = False
    """No progress bar."""


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        from models.checkpoint import load_student, load_teacher
        from pipeline.corpora import load_corpus
        from trainers.dmt import dmt_online

        job = parse(DMTOnlineJob, argv, "dmt-online", __doc__)
        teacher, fp, _ = load_teacher(f"{job.run}/teacher")
        student, sfp, _ = load_student(f"{job.run}/student")
        if sfp != fp:
            raise ValueError(f"student in {job.run} was trained against teacher {sfp} but the teacher there is {fp}: "
                             "re-run smt pretrain")
        corpus = load_corpus(job.corpus)
        r = dmt_online(student, teacher, corpus, job, out=job.out, teacher_fingerprint=fp, quiet=job.quiet)
        print(f"dmt -> {job.out}/student  steps={r['steps']} seconds={r['seconds']:.1f} "
              f"dmt_acc={figure(r['final'], 'dmt_acc')} (split=valid; report with smt eval)")
        return 0

    return run("dmt-online", body)


if __name__ == "__main__":
    raise SystemExit(main())
