"""`smt dmt-online`: the paper's online DMT on a pretrain run (frozen teacher, student rolled out on
its own states, one-step gradient). The pipeline's offline DMT (rounds of relabeled shards) is `smt dmt`.

OUT (local folder, file://, s3:// with --endpoint-url, which also reads --run) gets its record OUT/run.json,
its metrics and at the end OUT/student.
Example: smt dmt-online --run runs/teacher --corpus retrieval:T=64,vocab=8 --out runs/dmt
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from jobs.cli_common import FLAT, RunOutputJob, figure, job_main
from trainers.dmt import OnlineDMTConfig


@dataclass(kw_only=True)
class DMTOnlineJob(RunOutputJob):
    run: str
    """A pretrain output folder (holding teacher/ and student/)."""
    corpus: str
    """Corpus spec (the one the teacher was pretrained on)."""
    out: str
    """Run URL (local folder, file://, s3://) for the DMT student: run.json, metrics, student/."""
    dmt: Annotated[OnlineDMTConfig, FLAT] = field(default_factory=lambda: OnlineDMTConfig(steps=1500))
    """Online DMT: optimiser, steps, budget, loss weights, rollouts."""

    def execute(self) -> int:
        from pipeline.corpora import load_corpus
        from storage.checkpoints import load_student, load_teacher
        from trainers.dmt import OnlineDMT

        ep = self.endpoint_url
        teacher, fp, _ = load_teacher(f"{self.run}/teacher", endpoint_url=ep)
        student, sfp, _ = load_student(f"{self.run}/student", endpoint_url=ep)
        if sfp != fp:
            raise ValueError(f"student in {self.run} was trained against teacher {sfp} but the teacher there is {fp}: "
                             "re-run smt pretrain")
        corpus = load_corpus(self.corpus)
        r = OnlineDMT(student, teacher, corpus, self.dmt, teacher_fingerprint=fp).run(
            self.run_dir(self.out), self.quiet, tracking=self.log, writer=self.writer())
        print(f"dmt -> {self.out}/student  steps={r['steps']} seconds={r['seconds']:.1f} "
              f"dmt_acc={figure(r['final'], 'dmt_acc')} (split=valid; report with smt eval)")
        return 0


main = job_main("dmt-online", DMTOnlineJob, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
