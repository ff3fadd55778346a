"""`smt train`: train a student updater by SMT from target shards (stateless workers, resumable).

    smt train --targets BUCKET/targets/<fp>/<corpus> --teacher TEACHER_URL --updater.arch mlp --out RUN_URL \
              [--workers N] [--steps N] [--stream.batch-size N] [--optim.lr LR] [--checkpoint-every N] [--quiet]

Without --teacher the teacher is looked up at `<bucket root>/teachers/<fingerprint>/`, where the target
set is `<bucket root>/targets/<fingerprint>/<corpus-id>`. A teacher whose fingerprint differs from the
target set's is refused. An --out that already holds a checkpoint resumes from it.

DMT after SMT, lockstep (the trainer never uses relabels more than 2N steps old; it waits for the actor):
    smt train ... --out RUN --steps 600                       # SMT phase
    smt train ... --out RUN --steps 700 --phase-start 600 --dmt.every 2 --dmt.rounds 40 --optim.lr 3e-5 \
              --optim.schedule cosine --optim.warmup-steps 5 --stream.batch-size 2048 \
              --stream.round-weights 0 1 dmt 2 --dmt.refresh.enabled --stream.round-decay 0.1 \
              --stream.mix-shards 256 --stream.cache-shards 512 &
    smt dmt --targets ... --run RUN --corpus SPEC --first-step 600 --every-steps 2 --rounds 40 --sequences 64
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from jobs.cli_common import FLAT, RunWriterJob, job_main
from trainers.dmt import LockstepDMTConfig
from trainers.student import StudentTrainConfig


@dataclass(kw_only=True)
class TrainJob(RunWriterJob):
    targets: str
    """Target set URL: <bucket>/targets/<fingerprint>/<corpus-id> (local path, file://, s3://, memory://)."""
    out: str
    """Run URL for checkpoints, config and metrics; resumes if it already holds a checkpoint."""
    teacher: str | None = None
    """Teacher checkpoint URL (default: <bucket root>/teachers/<fingerprint>/)."""
    train: Annotated[StudentTrainConfig, FLAT] = field(
        default_factory=lambda: StudentTrainConfig(steps=1000, checkpoint_every=100))
    """Student SMT: updater, optimiser, shard stream, steps, phases."""
    dmt: LockstepDMTConfig = field(default_factory=LockstepDMTConfig)
    """Lockstep DMT beside a `smt dmt --first-step` actor (off unless --dmt.every and --dmt.rounds are set)."""
    generation: int | None = None
    """Manifest generation to start from (default: the newest)."""

    def execute(self) -> int:

        cfg, hooks, arch = self.train, self.dmt.hooks(), self.train.updater.arch
        writer = self.writer()
        from trainers.student import Session, StudentRun, run_training

        src = StudentRun(self.targets, self.teacher, self.out, endpoint_url=self.endpoint_url,
                         generation=self.generation)
        if self.workers > 1:
            from trainers.distributed import RayGroup, train_with_ray

            train_with_ray(src, cfg, RayGroup(self.workers), quiet=self.quiet, hooks=hooks, tracking=self.log,
                           writer=writer)
            print(f"smt train: {self.workers} workers trained a {arch} student to step {cfg.steps}: {self.out}")
            return 0
        out = run_training(src, cfg, quiet=self.quiet, hooks=hooks, tracking=self.log, session=Session(writer=writer))
        how = f"resumed from step {out['resumed_from']}, " if out["resumed_from"] is not None else ""
        print(f"smt train: {how}{arch} student at step {out['step']}: {out['run']}")
        return 0


main = job_main("train", TrainJob, __doc__.splitlines()[0])

if __name__ == "__main__":
    raise SystemExit(main())
