"""`smt train`: train a student updater by SMT from target shards (stateless workers, resumable).

    smt train --targets BUCKET/targets/<fp>/<corpus> --teacher TEACHER_URL --student mlp --out RUN_URL \
              [--workers N] [--steps N] [--batch-size N] [--checkpoint-every N] [--quiet]

Without --teacher the teacher is looked up at `<bucket root>/teachers/<fingerprint>/`, where the target
set is `<bucket root>/targets/<fingerprint>/<corpus-id>`. A teacher whose fingerprint differs from the
target set's is refused. An --out that already holds a checkpoint resumes from it.

DMT after SMT, lockstep (the trainer never uses relabels more than 2N steps old; it waits for the actor):
    smt train ... --out RUN --steps 600                       # SMT phase
    smt train ... --out RUN --steps 700 --phase-start 600 --dmt-every 2 --dmt-rounds 40 --lr 3e-5 \
              --schedule cosine --warmup-steps 5 --batch-size 2048 --round-weights '{"0": 1, "dmt": 2}' \
              --dmt-refresh --round-decay 0.1 --mix-shards 256 &
    smt dmt --targets ... --run RUN --corpus SPEC --first-step 600 --every-steps 2 --rounds 40 --sequences 64
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from jobs.common import parse, run
from models.updaters import UpdaterConfig
from storage.stream import StreamConfig
from trainers.common import OptimConfig
from trainers.dmt import LockstepDMTConfig, RefreshConfig
from trainers.student import StudentTrainConfig


@dataclass(kw_only=True)
class TrainJob:
    targets: str
    """Target set URL: <bucket>/targets/<fingerprint>/<corpus-id> (local path, file://, s3://, memory://)."""
    out: str
    """Run URL for checkpoints, config and metrics; resumes if it already holds a checkpoint."""
    teacher: str | None = None
    """Teacher checkpoint URL (default: <bucket root>/teachers/<fingerprint>/)."""
    student: Literal["transformer", "mlp", "gru"] = "mlp"
    """Updater architecture of the student."""
    workers: int = 1
    """Ray Train workers (DDP); 1 runs in-process without Ray."""
    steps: int = 1000
    """Total optimiser steps."""
    batch_size: int = 256
    """Transitions per step per worker."""
    checkpoint_every: int = 100
    """Checkpoint every this many steps (and at the end)."""
    depth: int = 2
    """Updater blocks (transformer, mlp)."""
    hidden: int = 512
    """Hidden width of the mlp updater."""
    n_heads: int = 4
    """Attention heads of the transformer updater."""
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning-rate schedule after warm-up."""
    readout_weight: float = 0.0
    """Weight of the readout cross-entropy through the teacher decoder (0 = pure MSE)."""
    train_readout: bool = False
    """Also train the readout (teacher decoder); frozen by default."""
    round_weights: str | None = None
    """JSON of per-round sampling weights, e.g. '{"0": 1, "dmt": 1}' (default: every record once)."""
    round_decay: float = 1.0
    """Share of DMT round r proportional to round_decay ** (newest - r) (lockstep DMT: 0.5)."""
    mix_shards: int = 8
    """Shards interleaved per shuffle window (>= the shard count: every window samples all of them)."""
    follow: Literal["never", "epoch", "steps"] = "never"
    """Switch to a newer manifest generation: never, at epoch boundaries, or every --follow-every steps."""
    follow_every: int = 0
    """With --follow steps: probe for a newer generation every N steps."""
    shuffle_buffer: int = 8192
    """Records per shuffle window."""
    seed: int = 0
    """Seed of the student initialisation and the stream order."""
    warmup_steps: int | None = None
    """Warm-up steps of this phase (default: 1% of its steps)."""
    phase_start: int = 0
    """Start a new phase of a resumed run at this step: fresh AdamW moments, the lr schedule restarts at
    --lr and the record order at a fresh epoch (e.g. DMT fine-tuning after SMT)."""
    dmt_every: int = 0
    """Lockstep DMT: checkpoint every N steps from --phase-start for `smt dmt --first-step S --every-steps N`,
    and wait for its rounds so the relabels are never more than 2N steps old (0 = off)."""
    dmt_rounds: int = 0
    """Lockstep DMT: the rounds `smt dmt --rounds` will commit."""
    dmt_wait_seconds: float = 600.0
    """Lockstep DMT: fail when a needed round is not committed within this time."""
    dmt_refresh: bool = False
    """Lockstep DMT: re-roll the newest round's sequences with the current student before each step
    (on-policy states, stored teacher targets); recommended with --round-decay 0.1."""
    dmt_ema: float = 0.0
    """Lockstep DMT: roll out an EMA of the student with this decay per step (refresh and relabels); 0 = off."""
    dmt_carry_optimizer: bool = False
    """Lockstep DMT: keep the SMT phase's AdamW moments at --phase-start instead of fresh ones."""
    generation: int | None = None
    """Manifest generation to start from (default: the newest)."""
    endpoint_url: str | None = None
    """S3 endpoint (default: AWS_ENDPOINT_URL)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    quiet: bool = False
    """No progress bar."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers {self.workers} must be >= 1")

    def config(self) -> StudentTrainConfig:
        weights = None
        if self.round_weights:
            try:
                weights = json.loads(self.round_weights)
            except ValueError as e:
                raise ValueError(f"--round-weights {self.round_weights!r} is not JSON ({e}); "
                                 "e.g. '{\"0\": 1, \"dmt\": 1}'") from None
        return StudentTrainConfig(
            updater=UpdaterConfig(arch=self.student, depth=self.depth, hidden=self.hidden, n_heads=self.n_heads),
            optim=OptimConfig(lr=self.lr, schedule=self.schedule, warmup_steps=self.warmup_steps),
            stream=StreamConfig(batch_size=self.batch_size, seed=self.seed, shuffle_buffer=self.shuffle_buffer,
                                round_weights=weights, round_decay=self.round_decay, mix_shards=self.mix_shards,
                                cache_shards=max(16, 2 * self.mix_shards),
                                follow=self.follow, follow_every=self.follow_every),
            steps=self.steps, checkpoint_every=self.checkpoint_every, readout_weight=self.readout_weight,
            train_readout=self.train_readout, seed=self.seed, device=self.device, phase_start=self.phase_start)

    def dmt(self) -> LockstepDMTConfig:
        return LockstepDMTConfig(every=self.dmt_every, rounds=self.dmt_rounds, wait_seconds=self.dmt_wait_seconds,
                                 refresh=RefreshConfig(enabled=self.dmt_refresh), ema=self.dmt_ema,
                                 carry_optimizer=self.dmt_carry_optimizer)


def train_job(job: TrainJob) -> int:
    cfg, hooks = job.config(), job.dmt().hooks()
    if job.workers > 1:
        from trainers.distributed import train_with_ray

        train_with_ray(job.targets, job.teacher, job.out, cfg, workers=job.workers, endpoint_url=job.endpoint_url,
                       generation=job.generation, quiet=job.quiet, hooks=hooks)
        print(f"smt train: {job.workers} workers trained a {job.student} student to step {cfg.steps}: {job.out}")
        return 0
    from trainers.student import run_training

    out = run_training(job.targets, job.teacher, job.out, cfg, endpoint_url=job.endpoint_url,
                       generation=job.generation, quiet=job.quiet, hooks=hooks)
    how = f"resumed from step {out['resumed_from']}, " if out["resumed_from"] is not None else ""
    print(f"smt train: {how}{job.student} student at step {out['step']}: {out['run']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run("train", lambda: train_job(parse(TrainJob, argv, "train", __doc__.splitlines()[0])))


if __name__ == "__main__":
    raise SystemExit(main())
