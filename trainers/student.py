"""SMT student training from target shards: regress f(m_t, x_t) onto m_{t+1}, fully parallel in time.

Loss per batch of streamed transitions (state_in, token, state_out, y):
    L = MSE(f(m_t, x_t), m_{t+1}) + readout_weight * CE(g(f(m_t, x_t)), y_t)
where g is the teacher's decoder readout (frozen unless `train_readout`) and y_t the readout target of
the target state m_{t+1}. Any updater of the registry works. Everything resumable (weights, AdamW,
schedule, RNG, stream position, step) is in one `TrainState`; checkpoints go to the run URL
(`storage/run_dir.py`) and a run URL that holds one resumes from it, on exactly the next record.
The student records the teacher fingerprint of its target set, and a resume under another refuses.
Distributed use (DDP) only needs `rank`/`world_size`/`agree` and a process group: see
`trainers/distributed.py`. The loop (`train`) reads top to bottom: batch, loss, optimiser step, metrics,
checkpoint; whatever else happens around a step (lockstep DMT's snapshots and waits, the on-policy
refresh of a batch: `trainers/dmt/`) is a `Hook` the loop is given.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from models.device import pick_device
from models.student_rnn import Student
from models.updaters import UpdaterConfig, matched_updater
from storage.bucket import Bucket
from storage.checkpoints import load_student, save_student
from storage.errors import FingerprintMismatch
from storage.lease import Writer
from storage.reader import TargetSet
from storage.rounds import RunSource, rounds_bucket
from storage.run_dir import RunDir, flatten_optimizer, step_dir, unflatten_optimizer
from storage.stream import ShardStream
from trainers.budget import Checkpointing, Steps
from trainers.common import MetricsLog, OptimConfig, announce_resume, apply_optim, check_resume
from trainers.dmt.mixing import StreamConfig  # the stream's settings + how it mixes the rounds
from trainers.loop import Checkpoints, Evaluation, Hook, Loop, Objective, Workers
from trainers.loop import train as train_loop
from trainers.smt import SMTObjective
from trainers.tracking import TrackingConfig, open_tracker


@dataclass(kw_only=True)
class StudentTrainConfig(Checkpointing, Steps):  # fields (and --help): steps first
    updater: UpdaterConfig = field(default_factory=UpdaterConfig)
    """Student updater (K, d and vocab are taken from the teacher)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    stream: StreamConfig = field(default_factory=StreamConfig)
    """Shard stream: batch size, shuffle, round weights, generation following."""
    readout_weight: float = 0.0
    """Weight of the readout cross-entropy through the teacher decoder (0 = pure MSE)."""
    train_readout: bool = False
    """Train the readout (the teacher decoder) too; frozen by default."""
    phase_start: int = 0
    """Step where this config's phase starts: resuming a run there (e.g. DMT fine-tuning after SMT) starts
    fresh AdamW moments, warm-up and decay at `optim.lr`, and a new record order (other round weights)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.readout_weight < 0:
            raise ValueError(f"readout_weight={self.readout_weight} must be >= 0")
        if not 0 <= self.phase_start < self.steps:
            raise ValueError(f"phase_start={self.phase_start} must be in [0, steps={self.steps})")


class TrainState:
    """Everything a resume needs: model, optimizer, schedule, RNG, stream position, step (`origin`: what the run
    record says it trains from, `_origin`)."""

    def __init__(self, student: Student, cfg: StudentTrainConfig, stream: ShardStream, teacher_fp: str,
                 device: torch.device, origin: dict | None = None) -> None:
        self.student, self.cfg, self.stream, self.teacher_fp = student, cfg, stream, teacher_fp
        self.origin = origin or {}
        student.m0.requires_grad_(False)  # the teacher's empty-context memory, not learned by SMT
        student.readout_net.requires_grad_(cfg.train_readout)
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.opt, self.sched = cfg.optim.build(self.params, cfg.steps, cfg.phase_start)
        self.step = 0
        self.resumed_from: int | None = None  # the checkpoint step this process resumed from
        self.device = device

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors for safetensors, JSON) — weights travel separately via save_student."""
        tensors, opt_meta = flatten_optimizer(self.opt.state_dict())
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {"step": self.step, "teacher_fingerprint": self.teacher_fp, "optimizer": opt_meta,
                "scheduler": self.sched.state_dict(), "stream": self.stream.state_dict(),
                "rng_numpy": _np_rng_state(), "config": asdict(self.cfg)}
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *,
                        new_order: bool = False) -> None:
        """`new_order`: the stream restarts at a fresh epoch (an allowed change of its seed) instead of resuming."""
        if meta["teacher_fingerprint"] != self.teacher_fp:
            raise FingerprintMismatch(self.teacher_fp, meta["teacher_fingerprint"], "the run's checkpoint")
        new_phase = int(meta["step"]) == self.cfg.phase_start > 0
        if new_phase:  # fresh AdamW moments: the previous phase's second moments would inflate the first steps
            self.sched.last_epoch = int(meta["step"])
        else:
            self.opt.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
            self.sched.load_state_dict(meta["scheduler"])
        # this config's optimiser settings win (a new phase may change them); within one phase they are the
        # checkpoint's own, so an exact resume is unchanged
        apply_optim(self.opt, self.sched, self.cfg.optim)
        if new_phase or new_order:  # its own record order
            self.stream.start_phase(meta["stream"])
        else:
            self.stream.load_state_dict(meta["stream"])
        torch.set_rng_state(tensors["rng.torch"])
        np.random.set_state(tuple(meta["rng_numpy"]))
        self.step = int(meta["step"])


def _np_rng_state() -> list:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def check_teacher(teacher_fp: str, targets_fp: str, teacher_where: str, targets_where: str) -> None:
    """Refuse a teacher that did not label the target set, naming both fingerprints."""
    if teacher_fp != targets_fp:
        raise FingerprintMismatch(targets_fp, teacher_fp, f"teacher {teacher_where} (target set "
                                  f"{targets_where} was labelled by {targets_fp!r})")


def _load_checkpoint(run: RunDir, pointer: dict) -> tuple:
    """(student, its teacher fingerprint, state tensors, state JSON) of one checkpoint, every file verified."""
    student_at, tensors, meta = run.load(pointer)
    student, stored_fp, _ = load_student(student_at)
    return student, stored_fp, tensors, meta


def _origin(targets: TargetSet) -> dict:
    """What the run record says the run was trained from: the target set and the corpus it was labeled from
    (`smt generate` / `smt export` read how tokens read from it)."""
    return {"targets": targets.bucket.url(), "corpus": (targets.manifest.corpus_params or {}).get("spec")}


def build_state(targets: TargetSet, teacher, teacher_fp: str, cfg: StudentTrainConfig, run: RunDir, *,
                rank: int = 0, world_size: int = 1, agree: Callable[[int], int] | None = None) -> TrainState:
    """A fresh train state, or the one the run's newest checkpoint holds (resume)."""
    check_teacher(teacher_fp, targets.fingerprint, "given", targets.bucket.url())
    dev = pick_device(cfg.device)
    # round 0 of the target set plus this run's own DMT rounds (never another run's)
    source = RunSource(targets, rounds_bucket(run.bucket))
    stream = ShardStream(source, cfg.stream, rank=rank, world_size=world_size, agree=agree)
    found = run.load_newest(lambda p: _load_checkpoint(run, p))
    if found is None:
        torch.manual_seed(cfg.seed)
        student = Student.from_teacher(teacher, matched_updater(teacher.cfg, cfg.updater))
        return TrainState(student.to(dev).train(), cfg, stream, teacher_fp, dev, origin=_origin(targets))
    _, (student, stored_fp, tensors, meta) = found
    if stored_fp != teacher_fp:
        raise FingerprintMismatch(teacher_fp, str(stored_fp), f"run {run.url} (its student was trained "
                                  f"against {stored_fp!r}, the target set/teacher is {teacher_fp!r})")
    want = matched_updater(teacher.cfg, cfg.updater)
    if student.updater_cfg != want:
        raise ValueError(f"run {run.url} holds a {student.updater_cfg.arch} student {asdict(student.updater_cfg)}, "
                         f"this command asks for {asdict(want)}: use the run's settings or a new --out")
    state = TrainState(student.to(dev).train(), cfg, stream, teacher_fp, dev, origin=_origin(targets))
    changes = {}
    if int(meta["step"]) != cfg.phase_start or not cfg.phase_start:  # within a phase: the run's own config
        changes = check_resume(run.url, int(meta["step"]), meta.get("config"), asdict(cfg),
                               seeds={"stream.seed": "record order"},  # `seed` only initialises
                               allow_seed_change=cfg.allow_seed_change)
    state.load_state_dict(tensors, meta, new_order="stream.seed" in changes)
    state.resumed_from = state.step
    if rank == 0:
        announce_resume(run, state.step, changes)
    return state


@dataclass
class StreamLoop(Loop):
    """The loop as a student's hooks see it: the stream's batches, and `switch` to another generation."""

    batches: Iterator[dict[str, torch.Tensor]] | None = None
    """The stream's iterator, made at the first batch and again after a `switch`."""

    def switch(self, generation: int) -> None:
        """Move the stream to another manifest generation: the next batch comes from it."""
        if generation != self.state.stream.generation:
            self.state.stream.switch(generation)
            self.batches = None

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.batches is None:
            self.batches = iter(self.state.stream)
        return {k: v.to(self.state.device, non_blocking=True) for k, v in next(self.batches).items()}


class StreamSMT(Objective):
    """The student's step: the stream's next batch, the SMT loss on its transitions."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def batch(self, loop: StreamLoop) -> dict[str, torch.Tensor]:
        return loop.next_batch()

    def loss(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(b["state_in"], b["token"], b["state_out"], b["y"])

    def columns(self, loop: StreamLoop) -> dict[str, Any]:
        return {"lr": loop.state.sched.get_last_lr()[0], "generation": loop.state.stream.generation}


def check_hooks(cfg: StudentTrainConfig, hooks: Sequence[Hook]) -> None:
    """Every hook's `check` (the entry points call it before opening anything)."""
    for h in hooks:
        h.check(cfg)


def train(state: TrainState, run: RunDir, *, hooks: Sequence[Hook] = (), rank: int = 0, quiet: bool = False,
          wrap: Callable[[nn.Module], nn.Module] | None = None, stop_at: int | None = None,
          tracking: TrackingConfig | None = None) -> dict:
    """Train up to cfg.steps (or `stop_at`, where it checkpoints too) from state.step on the loop of
    `trainers/loop.py`; rank 0 logs a row every step and checkpoints (with the hooks' files, sparing their
    pinned steps). Returns the last metrics row. `tracking`: rank 0 also logs the rows and the config to
    TensorBoard / W&B (`trainers/tracking.py`)."""
    cfg = state.cfg
    stop = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    objective = SMTObjective(state.student, cfg.readout_weight)
    lead = rank == 0
    extra = {k: v for h in hooks for k, v in h.record().items()}
    record = {"kind": "train", "config": asdict(cfg), **extra, "teacher_fingerprint": state.teacher_fp,
              **state.origin}
    if lead and state.step == cfg.phase_start:  # a later phase records its own config beside the first
        if cfg.phase_start:
            run.write_json(f"config-phase-{cfg.phase_start:08d}.json", record)
        else:
            run.write_record(**record)  # run.json: the run record (storage/layout.py)
    # a resumed run's writer drops the rows past its checkpoint (they belong to the attempt that was killed)
    tracker = open_tracker(tracking, "train", run=run.url, start_step=state.step, config=record) if lead else None
    log = MetricsLog(cfg.steps, "train", quiet or not lead,
                     store=run.metrics_writer(state.step) if lead else None, tracker=tracker)
    log.advance(state.step)
    loop = StreamLoop(state, run, log, lead, None if quiet or not lead else print, stop=stop,
                      done=state.step >= stop)

    def checkpoint(loop: Loop) -> None:
        save(state, run, lambda folder: [h.write(loop, folder) for h in hooks],
             pinned=set().union(*(h.pinned_steps(cfg) for h in hooks)))
        log.flush()  # an object store's metrics reach the checkpoint too

    try:
        return train_loop(loop, StreamSMT(wrap(objective) if wrap else objective),
                          [*hooks, Evaluation(1), Checkpoints(cfg.checkpoint_every, checkpoint)],
                          cfg.optim.grad_clip, state.device)
    finally:
        state.stream.close()


def save(state: TrainState, run: RunDir, extra: Callable[[str], Any] | None = None,
         pinned: set[int] = frozenset()) -> str:
    """A full checkpoint of the state; `extra(folder URL)` adds files to it before the commit (hooks' `write`).
    After the commit, older checkpoints are pruned by the config's retention, sparing `pinned` steps."""
    tensors, meta = state.state_dict()
    student, cfg = state.student, state.cfg

    def write(where: Bucket) -> None:
        save_student(where, student, state.teacher_fp, {"trained_by": "smt", "step": state.step})
        if extra is not None:
            extra(run.bucket.child(step_dir(state.step)))

    return run.save(state.step, write, tensors, meta,
                    retention=cfg.retention(), pinned=pinned)


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
    from storage.checkpoints import CheckpointError, has_checkpoint

    if teacher_url is not None:
        return teacher_url
    url = teacher_url_for(targets)
    if not has_checkpoint(url, endpoint_url=targets.bucket.endpoint_url):
        raise CheckpointError(f"no teacher at {url} (the default for target set {targets.bucket.url()}, "
                              f"fingerprint {targets.fingerprint}); pass --teacher URL, or label with "
                              "`smt label`, which publishes its teacher there")
    return url


@dataclass(frozen=True)
class StudentRun:
    """What a student run is pointed at: its target set (from a manifest generation, default the newest), the
    teacher that labeled it (None: the one published for the target set) and the run URL it writes, all at
    one S3 endpoint. Reusing a target set across student architectures is one `StudentRun` per run URL."""

    targets: str
    teacher: str | None
    out: str
    endpoint_url: str | None = None
    generation: int | None = None


@dataclass(frozen=True)
class Session:
    """How this process takes part in a run beyond its config: its worker slot (rank, world size, `agree`
    for the stream's generation switches, DDP `wrap`; `trainers/loop.py`), the writer identity that holds
    the run's lease, and, for standalone DMT's blocks, `stop_at` (stop and checkpoint at this step) and
    `through_round` (first move the stream to the run's oldest rounds generation holding DMT round r)."""

    workers: Workers | None = None
    writer: Writer | None = None
    stop_at: int | None = None
    through_round: int | None = None


def run_training(src: StudentRun, cfg: StudentTrainConfig, *, quiet: bool = False, hooks: Sequence[Hook] = (),
                 tracking: TrackingConfig | None = None, session: Session = Session()) -> dict:
    """Open the target set and its teacher, build or resume the train state, train (with `hooks`, e.g.
    lockstep DMT: `trainers.dmt`) as one worker of the run (`session`)."""
    from storage.checkpoints import load_teacher

    check_hooks(cfg, hooks)  # before anything is opened
    w, through_round = session.workers or Workers(), session.through_round
    targets = TargetSet.open(src.targets, None, src.generation, endpoint_url=src.endpoint_url)
    teacher_url = resolve_teacher(targets, src.teacher)
    teacher, teacher_fp, _ = load_teacher(teacher_url, endpoint_url=src.endpoint_url)
    check_teacher(teacher_fp, targets.fingerprint, teacher_url, targets.bucket.url())
    run = RunDir(src.out, endpoint_url=src.endpoint_url)
    with run.writing(session.writer) if w.rank == 0 else contextlib.nullcontext():
        state = build_state(targets, teacher, teacher_fp, cfg, run, rank=w.rank, world_size=w.world_size,
                            agree=w.agree)
        resumed_from = state.resumed_from
        if through_round is not None:
            g = state.stream.first_generation_with_round(through_round)
            if g is None:
                raise ValueError(f"run {run.url} has no DMT round {through_round} to train on: relabel it first "
                                 "(smt dmt)")
            state.stream.switch(g)  # a no-op on a resume inside the block: the saved stream is already there
        row = train(state, run, hooks=hooks, rank=w.rank, quiet=quiet, wrap=w.wrap, stop_at=session.stop_at,
                    tracking=tracking)
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
