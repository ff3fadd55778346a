"""What every training method's config shares, declared once: the budget and evaluation cadence, the seed,
the length curriculum and the checkpoint policy. `PretrainConfig`, `BPTTConfig`, `OnlineDMTConfig` and
`StudentTrainConfig` inherit the pieces they use, so a flag, a recipe key and `cfg.steps` mean one thing
everywhere and are spelled the same (`smt pretrain --steps`, `--pretrain.steps`, `pretrain: {steps: ..}`).
A stage whose default differs (the student's 1000 steps) sets it in its job's default config.
"""
from __future__ import annotations

from dataclasses import dataclass

from models.device import OnDevice
from storage.run_dir import Retention

CLOCK_NAMES = ("wall", "process")


def _post_init(obj, cls) -> None:
    nxt = getattr(super(cls, obj), "__post_init__", None)
    if nxt is not None:
        nxt()


@dataclass(kw_only=True)
class Steps(OnDevice):
    """A run of optimiser steps from a seed, on a device."""

    steps: int = 2000
    """Maximum optimiser steps."""
    seed: int = 0
    """Random seed of the run (model init, and the batches and positions a method draws itself; a student's
    shard stream has its own, --stream.seed)."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be >= 1")
        _post_init(self, Steps)


@dataclass(kw_only=True)
class Budget(Steps):
    """A method trained from a corpus on the one loop: a step and time budget, evaluated every few steps on
    the valid split, stopping early at an accuracy."""

    seconds: float | None = None
    """Training budget in seconds of `clock` (evaluation excluded, summed over resumes); stops early when spent."""
    clock: str = "wall"
    """Clock of `seconds` and of logged times: 'wall', or 'process' (this process's CPU seconds)."""
    batch_size: int = 32
    """Sequences per step (per worker)."""
    eval_every: int = 50
    """Evaluate on the valid split every N steps."""
    eval_size: int = 256
    """Sequences of the valid split for the evaluations that drive the curriculum and `stop_at_acc`."""
    stop_at_acc: float | None = None
    """Stop once the valid accuracy at the full length reaches this (None = never). Online DMT checks it before
    its first step too, so a student that already passes is not trained (benchmarks/results/
    length_scaling_warm.md: DMT trained a passing student into failure)."""

    def __post_init__(self) -> None:
        if self.eval_every < 1 or self.batch_size < 1 or self.eval_size < 1:
            raise ValueError(f"eval_every={self.eval_every}, eval_size={self.eval_size} and batch_size="
                             f"{self.batch_size} must all be >= 1")
        if self.clock not in CLOCK_NAMES:
            raise ValueError(f"clock={self.clock!r} is unknown: use one of {', '.join(CLOCK_NAMES)}")
        _post_init(self, Budget)


@dataclass(kw_only=True)
class LengthCurriculum:
    """Train at shorter lengths of a synthetic task first."""

    curriculum: tuple[int, ...] = ()
    """Length curriculum: train at these sequence lengths first (ascending, each < T), moving on once the
    valid accuracy reaches `curriculum_acc`; then at the corpus length. Synthetic tasks only."""
    curriculum_acc: float = 0.95
    """Valid accuracy that ends a curriculum stage."""


@dataclass(kw_only=True)
class Checkpointing:
    """A resumable run: how often it checkpoints, what it keeps, and whether a resume may change its seed."""

    checkpoint_every: int = 500
    """Checkpoint the full train state to the run URL every N steps (and when the run stops)."""
    keep_last: int | None = None
    """Retention: keep the newest N checkpoints, deleting older ones after each commit (None = keep all;
    e.g. 3 for a long run on a bucket). The newest and any step another component pins always stay."""
    keep_every: int | None = None
    """Retention: also keep checkpoints whose step is a multiple of this (milestones; with keep_last)."""
    allow_seed_change: bool = False
    """On resume, accept a seed other than the run's (pretraining's `seed`, a student's `stream.seed`; refused by
    default: the batches or record order of every later step change, so the run is no longer the one an
    uninterrupted run would be)."""

    def retention(self) -> Retention:
        return Retention(keep_last=self.keep_last, keep_every=self.keep_every)

    def __post_init__(self) -> None:
        self.retention()  # refuses 0 or negative
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be >= 1")
        _post_init(self, Checkpointing)
