"""SMT student training from target shards: regress f(m_t, x_t) onto m_{t+1}, fully parallel in time.

Loss per batch of streamed transitions (state_in, token, state_out, y):
    L = MSE(f(m_t, x_t), m_{t+1}) + readout_weight * CE(g(f(m_t, x_t)), y_t)
where g is the teacher's decoder readout (frozen unless `train_readout`) and y_t the readout target of
the target state m_{t+1}. Any updater of the registry works. Everything resumable (weights, AdamW,
schedule, RNG, stream position, step) is in one `TrainState`; checkpoints go to the run URL
(`storage/run_dir.py`) and a run URL that holds one resumes from it, on exactly the next record.
The student records the teacher fingerprint of its target set, and a resume under another refuses.
Distributed use (DDP) only needs `rank`/`world_size`/`agree` and a process group: see
`trainers/distributed.py`.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import load_student, save_student
from models.device import autocast, pick_device
from models.student_rnn import Student
from models.updaters import UpdaterConfig, matched_updater
from storage.errors import FingerprintMismatch
from storage.reader import TargetSet
from storage.rounds import RunSource, rounds_bucket
from storage.run_dir import RunDir, flatten_optimizer, unflatten_optimizer
from storage.stream import ShardStream, StreamConfig
from trainers.common import MetricsLog, OptimConfig, clip_and_step
from trainers.dmt_stability import EMA, load_moments, moments_by_name, trainable_names
from trainers.refresh import FreshRound


@dataclass(kw_only=True)
class StudentTrainConfig:
    updater: UpdaterConfig = field(default_factory=UpdaterConfig)
    """Student updater (K, d and vocab are taken from the teacher)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    stream: StreamConfig = field(default_factory=StreamConfig)
    """Shard stream: batch size, shuffle, round weights, generation following."""
    steps: int = 1000
    """Total optimiser steps (a resumed run continues up to this)."""
    checkpoint_every: int = 100
    """Write a checkpoint every this many steps (and at the end)."""
    readout_weight: float = 0.0
    """Weight of the readout cross-entropy through the teacher decoder (0 = pure MSE)."""
    train_readout: bool = False
    """Train the readout (the teacher decoder) too; frozen by default."""
    seed: int = 0
    """Seed of the student's initialisation (the stream has its own)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    phase_start: int = 0
    """Step where this config's phase starts: resuming a run there (e.g. DMT fine-tuning after SMT) starts
    fresh AdamW moments, warm-up and decay at `optim.lr`, and a new record order (other round weights)."""
    dmt_every: int = 0
    """Lockstep DMT (0 = off): from `phase_start`, snapshot the student every this many steps for the DMT
    actor to roll out (weights only, `policy/step-N`, unless a full checkpoint falls there), and never
    train on relabels older than 2x this many steps (wait for the actor instead)."""
    dmt_rounds: int = 0
    """Lockstep DMT: rounds the DMT actor will commit (after the last, train on all of them)."""
    dmt_wait_seconds: float = 600.0
    """Lockstep DMT: give up when the round the trainer needs is not committed within this time."""
    dmt_refresh: bool = False
    """Lockstep DMT: re-roll the newest round's sequences with the current student before every step and
    train on those states (on-policy, the stored targets); older rounds keep their stored states."""
    dmt_ema: float = 0.0
    """Lockstep DMT: roll out an EMA of the student (this decay per step) in the refreshes and the DMT actor's
    relabels (`rollout/` beside each snapshot's `student/`); 0 = the student itself."""
    dmt_carry_optimizer: bool = False
    """At `phase_start`, keep the previous phase's AdamW moments (SMT's) instead of fresh ones; the lr schedule
    (warm-up, decay) is still this phase's."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.checkpoint_every < 1:
            raise ValueError(f"steps={self.steps} and checkpoint_every={self.checkpoint_every} must be >= 1")
        if self.readout_weight < 0:
            raise ValueError(f"readout_weight={self.readout_weight} must be >= 0")
        if not 0 <= self.phase_start < self.steps:
            raise ValueError(f"phase_start={self.phase_start} must be in [0, steps={self.steps})")
        if self.dmt_every < 0 or (self.dmt_every > 0) != (self.dmt_rounds > 0):
            raise ValueError(f"dmt_every={self.dmt_every}, dmt_rounds={self.dmt_rounds}: lockstep DMT needs both "
                             ">= 1 (or both 0 for off)")
        if self.dmt_refresh and not self.dmt_every:
            raise ValueError("dmt_refresh needs lockstep DMT (dmt_every >= 1)")
        if self.dmt_ema and not self.dmt_every:
            raise ValueError("dmt_ema needs lockstep DMT (dmt_every >= 1)")
        if not 0.0 <= self.dmt_ema < 1.0:
            raise ValueError(f"dmt_ema={self.dmt_ema} must be in [0, 1) (0 = roll out the student itself)")
        if self.dmt_carry_optimizer and not self.phase_start:
            raise ValueError("dmt_carry_optimizer carries a previous phase's optimizer: it needs phase_start >= 1")
        if self.dmt_every and self.stream.follow != "never":
            raise ValueError(f"lockstep DMT (dmt_every={self.dmt_every}) switches generations itself: use "
                             f"stream.follow='never', not {self.stream.follow!r}")


ROLLOUT = "rollout"  # beside a snapshot's student/: the policy the DMT actor rolls out, when it is not the student


class DMTWaitTimeout(RuntimeError):
    """Lockstep DMT: the round the trainer needs was not committed in time."""


def dmt_round_due(cfg: StudentTrainConfig, done: int) -> int | None:
    """Lockstep DMT: the round the trainer must hold before step done+1, or None (no boundary here).

    With s0 = phase_start and E = dmt_every, round r (1..R) is rolled out from the checkpoint at step
    s0 + (r-1)E. At the boundary done = s0 + kE the trainer switches to round max(1, k) (capped at R), so
    steps (s0+kE, s0+(k+1)E] train on a student at most 2E steps old while the actor relabels round k+1."""
    if not cfg.dmt_every or done < cfg.phase_start:
        return None
    k, rem = divmod(done - cfg.phase_start, cfg.dmt_every)
    if rem or k > cfg.dmt_rounds:
        return None
    return min(max(1, k), cfg.dmt_rounds)


class SMTObjective(nn.Module):
    """The loss as a module, so DDP can wrap it (its forward is what synchronises gradients)."""

    def __init__(self, student: Student, readout_weight: float) -> None:
        super().__init__()
        self.student, self.readout_weight = student, readout_weight

    def forward(self, state_in: torch.Tensor, token: torch.Tensor, state_out: torch.Tensor,
                y: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = self.student.step(state_in, token)
        mse = F.mse_loss(pred.float(), state_out.float())
        out = {"loss": mse, "mse": mse}
        if self.readout_weight > 0:
            mask = y != -1
            ce = (F.cross_entropy(self.student.readout(pred[mask]).float(), y[mask]) if bool(mask.any())
                  else pred.sum() * 0.0)
            out["ce"], out["loss"] = ce, mse + self.readout_weight * ce
        return out


class TrainState:
    """Everything a resume needs: model, optimizer, schedule, RNG, stream position, step."""

    def __init__(self, student: Student, cfg: StudentTrainConfig, stream: ShardStream, teacher_fp: str,
                 device: torch.device) -> None:
        self.student, self.cfg, self.stream, self.teacher_fp = student, cfg, stream, teacher_fp
        student.m0.requires_grad_(False)  # the teacher's empty-context memory, not learned by SMT
        student.readout_net.requires_grad_(cfg.train_readout)
        self.names = trainable_names(student, cfg.train_readout)
        named = dict(student.named_parameters())
        self.params = [named[n] for n in self.names]
        self.opt, self.sched = cfg.optim.build(self.params, cfg.steps, cfg.phase_start)
        self.ema: EMA | None = None  # lockstep DMT's rollout policy (dmt_ema), from the phase start on
        self.step = 0
        self.resumed_from: int | None = None  # the checkpoint step this process resumed from
        self.device = device

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors for safetensors, JSON) — weights travel separately via save_student."""
        tensors, opt_meta = flatten_optimizer(self.opt.state_dict())
        tensors["rng.torch"] = torch.get_rng_state()
        if self.ema is not None:
            tensors.update(self.ema.state_tensors())
        meta = {"step": self.step, "teacher_fingerprint": self.teacher_fp, "optimizer": opt_meta,
                "scheduler": self.sched.state_dict(), "stream": self.stream.state_dict(),
                "rng_numpy": _np_rng_state(), "config": asdict(self.cfg)}
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if meta["teacher_fingerprint"] != self.teacher_fp:
            raise FingerprintMismatch(self.teacher_fp, meta["teacher_fingerprint"], "the run's checkpoint")
        new_phase = int(meta["step"]) == self.cfg.phase_start > 0
        if new_phase:  # fresh AdamW moments unless dmt_carry_optimizer (benchmarks/results/dmt_dip.md compares)
            self.sched.last_epoch = int(meta["step"])
            if self.cfg.dmt_carry_optimizer:
                prev = meta.get("config", {}).get("train_readout", self.cfg.train_readout)
                moments = moments_by_name(unflatten_optimizer(tensors, meta["optimizer"]),
                                          trainable_names(self.student, bool(prev)))
                load_moments(self.opt, list(zip(self.names, self.params)), moments)
        else:
            self.opt.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
            self.sched.load_state_dict(meta["scheduler"])
        # this config's optimiser settings win (a new phase may change them); within one phase they are the
        # checkpoint's own, so an exact resume is unchanged
        o = self.cfg.optim
        self.sched.base_lrs = [o.lr for _ in self.opt.param_groups]
        for g, f in zip(self.opt.param_groups, self.sched.lr_lambdas):
            g.update(initial_lr=o.lr, lr=o.lr * f(self.sched.last_epoch), weight_decay=o.weight_decay,
                     betas=(o.beta1, o.beta2))
        self.sched._last_lr = [g["lr"] for g in self.opt.param_groups]
        if new_phase:  # its own record order
            self.stream.start_phase(meta["stream"])
        else:
            self.stream.load_state_dict(meta["stream"])
        torch.set_rng_state(tensors["rng.torch"])
        np.random.set_state(tuple(meta["rng_numpy"]))
        self.step = int(meta["step"])
        if self.cfg.dmt_ema and self.step > self.cfg.phase_start:  # inside the DMT phase: its EMA policy too
            self.ema = EMA(self.student, self.cfg.dmt_ema)
            self.ema.load_tensors(tensors)


def _np_rng_state() -> list:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def check_teacher(teacher_fp: str, targets_fp: str, teacher_where: str, targets_where: str) -> None:
    """Refuse a teacher that did not label the target set, naming both fingerprints."""
    if teacher_fp != targets_fp:
        raise FingerprintMismatch(targets_fp, teacher_fp, f"teacher {teacher_where} (target set "
                                  f"{targets_where} was labelled by {targets_fp!r})")


def build_state(targets: TargetSet, teacher, teacher_fp: str, cfg: StudentTrainConfig, run: RunDir, *,
                rank: int = 0, world_size: int = 1, agree: Callable[[int], int] | None = None) -> TrainState:
    """A fresh train state, or the one the run's newest checkpoint holds (resume)."""
    check_teacher(teacher_fp, targets.fingerprint, "given", targets.bucket.url())
    dev = pick_device(cfg.device)
    # round 0 of the target set plus this run's own DMT rounds (never another run's)
    source = RunSource(targets, rounds_bucket(run.bucket))
    stream = ShardStream(source, cfg.stream, rank=rank, world_size=world_size, agree=agree)
    pointer = run.latest()
    if pointer is None:
        torch.manual_seed(cfg.seed)
        student = Student.from_teacher(teacher, matched_updater(teacher.cfg, cfg.updater))
        return TrainState(student.to(dev).train(), cfg, stream, teacher_fp, dev)
    student_url, tensors, meta = run.load(pointer)
    student, stored_fp, _ = load_student(student_url)
    if stored_fp != teacher_fp:
        raise FingerprintMismatch(teacher_fp, str(stored_fp), f"run {run.url} (its student was trained "
                                  f"against {stored_fp!r}, the target set/teacher is {teacher_fp!r})")
    want = matched_updater(teacher.cfg, cfg.updater)
    if student.updater_cfg != want:
        raise ValueError(f"run {run.url} holds a {student.updater_cfg.arch} student {asdict(student.updater_cfg)}, "
                         f"this command asks for {asdict(want)}: use the run's settings or a new --out")
    state = TrainState(student.to(dev).train(), cfg, stream, teacher_fp, dev)
    state.load_state_dict(tensors, meta)
    state.resumed_from = state.step
    return state


def train(state: TrainState, run: RunDir, *, rank: int = 0, quiet: bool = False,
          wrap: Callable[[nn.Module], nn.Module] | None = None, stop_at: int | None = None) -> dict:
    """Train up to cfg.steps (or `stop_at`, where it checkpoints too) from state.step; rank 0 logs and
    checkpoints. Returns the last metrics row."""
    cfg, dev = state.cfg, state.device
    stop = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    objective = SMTObjective(state.student, cfg.readout_weight)
    model = wrap(objective) if wrap else objective
    lead = rank == 0
    if lead and state.step == cfg.phase_start:  # a later phase records its own config beside the first
        name = f"config-phase-{cfg.phase_start:08d}.json" if cfg.phase_start else "config.json"
        run.write_json(name, {"stage": "train", "config": asdict(cfg), "teacher_fingerprint": state.teacher_fp})
    if lead and state.step:
        run.truncate_metrics(state.step)  # rows past the checkpoint belong to the attempt that was killed
    log = MetricsLog("metrics.jsonl" if lead else None, cfg.steps, "train", quiet or not lead, bucket=run.bucket)
    log.advance(state.step)
    batches = iter(state.stream)
    row: dict = {}
    waited = 0.0
    fresh: FreshRound | None = None
    try:
        while state.step < stop:
            if cfg.dmt_ema and state.step >= cfg.phase_start and state.ema is None:
                state.ema = EMA(state.student, cfg.dmt_ema)  # the phase starts: the policy is the student
            r = dmt_round_due(cfg, state.step)
            if r is not None:
                if lead and (run.latest() or {}).get("step") != state.step:
                    save_policy(state, run)  # the student the actor rolls out next (and the one to evaluate)
                with log.paused():
                    t0 = time.monotonic()
                    g = wait_for_round(state.stream, r, cfg, run.url, say=None if quiet or not lead else print)
                    waited += time.monotonic() - t0
                if g != state.stream.generation:
                    state.stream.switch(g)
                    batches = iter(state.stream)
            b = {k: v.to(dev, non_blocking=True) for k, v in next(batches).items()}
            if cfg.dmt_refresh and state.step >= cfg.phase_start:
                if fresh is None or fresh.generation != state.stream.generation:
                    fresh = FreshRound(state.stream, state.stream.generation, dev)
                with autocast(dev):
                    fresh.refresh(state.ema.model if state.ema else state.student, b)
            with autocast(dev):
                out = model(b["state_in"], b["token"], b["state_out"], b["y"])
            out["loss"].backward()
            gn = clip_and_step(state.params, state.opt, state.sched, cfg.optim.grad_clip)
            if state.ema is not None:
                state.ema.update(state.student)
            state.step += 1
            log.advance()
            if lead:
                row = log.log(state.step, **out, grad_norm=gn, lr=state.sched.get_last_lr()[0],
                              generation=state.stream.generation,
                              **({"dmt_wait_seconds": waited} if cfg.dmt_every else {}))
            if lead and (state.step % cfg.checkpoint_every == 0 or state.step == stop):
                save(state, run)
                log.flush()  # an object store's metrics reach the checkpoint too
    finally:
        log.close()
        state.stream.close()
    return row


def wait_for_round(stream: ShardStream, r: int, cfg: StudentTrainConfig, run_url: str, poll: float = 0.2,
                   say: Callable[[str], None] | None = None) -> int:
    """The oldest generation holding DMT round r, waiting up to `cfg.dmt_wait_seconds` for the actor (`say`
    gets one line before a wait and one after it)."""
    t0 = time.monotonic()
    deadline = t0 + cfg.dmt_wait_seconds
    announced = False
    while True:
        g = stream.first_generation_with_round(r)
        if g is not None:
            if announced:
                say(f"DMT round {r} arrived after {time.monotonic() - t0:.1f} s")
            return g
        if say is not None and not announced:
            say(f"waiting up to {cfg.dmt_wait_seconds:g} s for DMT round {r} in {stream.source.bucket.url()} "
                "(from `smt dmt --first-step`)")
            announced = True
        if time.monotonic() > deadline:
            targets = stream.source.targets.bucket.url()
            raise DMTWaitTimeout(
                f"DMT round {r} was not committed to {stream.source.bucket.url()} within {cfg.dmt_wait_seconds:g} s: "
                f"start the DMT actor on this run (smt dmt --targets {targets} --run {run_url} --first-step {cfg.phase_start} "
                f"--every-steps {cfg.dmt_every} --rounds {cfg.dmt_rounds} ...) or train without --dmt-every")
        time.sleep(poll)


def _writer(state: TrainState, trained_by: str) -> Callable[[str], None]:
    """Writes the student to `<folder>/student` and, with an EMA policy, that policy to `<folder>/rollout`
    (what the DMT actor rolls out: `pipeline.dmt_loop`), both before the folder's commit marker."""
    def write(url: str) -> None:
        save_student(url, state.student, state.teacher_fp, {"trained_by": trained_by, "step": state.step})
        if state.ema is not None:
            save_student(f"{url.rsplit('/', 1)[0]}/{ROLLOUT}", state.ema.model, state.teacher_fp,
                         {"trained_by": "ema of smt+dmt", "ema": state.cfg.dmt_ema, "step": state.step})
    return write


def save(state: TrainState, run: RunDir) -> str:
    tensors, meta = state.state_dict()
    return run.save(state.step, _writer(state, "smt"), tensors, meta)


def save_policy(state: TrainState, run: RunDir) -> str:
    return run.save_policy(state.step, _writer(state, "smt+dmt"))



def teacher_url_for(targets: TargetSet) -> str:
    """The default teacher of a target set: `<bucket root>/teachers/<fingerprint>/`, where the target set
    lives at `<bucket root>/targets/<fingerprint>/<corpus-id>`."""
    url = targets.bucket.url().rstrip("/")
    parts = url.split("/")
    if len(parts) < 4 or parts[-3] != "targets" or parts[-2] != targets.fingerprint:
        raise ValueError(f"cannot find the teacher of {url}: it is not at <bucket>/targets/<fingerprint>/"
                         "<corpus-id>; pass --teacher URL")
    return "/".join(parts[:-3] + ["teachers", targets.fingerprint])


def resolve_teacher(targets: TargetSet, teacher_url: str | None = None) -> str:
    """The teacher of a target set: `teacher_url` when given, else the one `smt pretrain --bucket` or
    `smt label` published at `<bucket root>/teachers/<fingerprint>/` (CheckpointError if there is none).
    Every downstream stage (train, dmt) finds its teacher through this one rule."""
    from models.checkpoint import CheckpointError, has_checkpoint

    if teacher_url is not None:
        return teacher_url
    url = teacher_url_for(targets)
    if not has_checkpoint(url):
        raise CheckpointError(f"no teacher at {url} (the default for target set {targets.bucket.url()}, "
                              f"fingerprint {targets.fingerprint}); pass --teacher URL, or label with "
                              "`smt label`, which publishes its teacher there")
    return url


def run_training(targets_url: str, teacher_url: str | None, out: str, cfg: StudentTrainConfig, *,
                 endpoint_url: str | None = None, generation: int | None = None, rank: int = 0,
                 world_size: int = 1, agree: Callable[[int], int] | None = None,
                 wrap: Callable[[nn.Module], nn.Module] | None = None, quiet: bool = False,
                 stop_at: int | None = None, through_round: int | None = None) -> dict:
    """Open the target set and its teacher, build or resume the train state, train. One worker's body.
    `stop_at`: stop (and checkpoint) at this step; `through_round`: first move the stream to the run's
    oldest rounds generation holding DMT round r (standalone DMT: train on round 0 + rounds 1..r)."""
    from models.checkpoint import load_teacher

    targets = TargetSet.open(targets_url, None, generation, endpoint_url=endpoint_url)
    teacher_url = resolve_teacher(targets, teacher_url)
    teacher, teacher_fp, _ = load_teacher(teacher_url)
    check_teacher(teacher_fp, targets.fingerprint, teacher_url, targets.bucket.url())
    run = RunDir(out, endpoint_url=endpoint_url)
    state = build_state(targets, teacher, teacher_fp, cfg, run, rank=rank, world_size=world_size, agree=agree)
    resumed_from = state.resumed_from
    if through_round is not None:
        g = state.stream.first_generation_with_round(through_round)
        if g is None:
            raise ValueError(f"run {run.url} has no DMT round {through_round} to train on: relabel it first (smt dmt)")
        state.stream.switch(g)  # a no-op on a resume inside the block: the saved stream is already there
    row = train(state, run, rank=rank, quiet=quiet, wrap=wrap, stop_at=stop_at)
    return {"step": state.step, "run": run.url, "teacher_fingerprint": teacher_fp, "last": row,
            "resumed_from": resumed_from}


def run_config(run: RunDir) -> StudentTrainConfig:
    """The config the run's newest checkpoint was trained with (ValueError naming the fix if it has none)."""
    pointer = run.latest()
    if pointer is None:
        raise ValueError(f"run {run.url} has no checkpoint: train it first (smt train --out {run.url})")
    d = json.loads(run.bucket.read_bytes(f"{pointer['path']}/state.json"))["config"]

    def build(cls, values: dict):  # fields this version knows (a newer run's extra keys are not ours)
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    nested = {"updater": UpdaterConfig, "optim": OptimConfig, "stream": StreamConfig}
    return build(StudentTrainConfig, {**d, **{k: build(c, d[k]) for k, c in nested.items() if k in d}})


@dataclass
class AggregateTrainer:
    """Standalone DMT's student side (`DMTLoop(..., trainer=...)`): after round r, train the run on round 0
    + its rounds 1..r up to step `stop_at`. All blocks form one training phase that starts where round 1 was
    rolled out (fresh AdamW, this config's lr) and is resumed exactly from the run's checkpoints, with the
    run's own stream config (generation switches only at block starts)."""

    targets: str
    teacher: str | None
    run: str
    cfg: StudentTrainConfig
    endpoint_url: str | None = None
    quiet: bool = True

    def __call__(self, *, round: int, phase_start: int, stop_at: int, phase_end: int) -> dict:
        cfg = replace(self.cfg, phase_start=phase_start, steps=phase_end, dmt_every=0, dmt_rounds=0,
                      dmt_refresh=False, dmt_ema=0.0, stream=replace(self.cfg.stream, follow="never", follow_every=0))
        return run_training(self.targets, self.teacher, self.run, cfg, endpoint_url=self.endpoint_url,
                            quiet=self.quiet, stop_at=stop_at, through_round=round)
