"""The pretraining train state: teacher, reference updater, AdamW, schedule, RNG, curriculum stage, step, clock.

One object with `state_dict()`/`load_state_dict()` (tensors for safetensors, the rest JSON; never pickle),
checkpointed to the run URL by `storage/run_dir.py` exactly like a student run:

    <run>/checkpoints/step-XXXXXXXX/{teacher/, student/, state.safetensors, state.json}, then latest.json

Batches and loss positions come from counter-based RNG streams keyed by (seed, step[, rank])
(`batch_at`, `positions_generator`), so the data position *is* the step: a resumed run draws exactly the
batches an uninterrupted one would, on any number of workers, and no generator state has to travel
between ranks. Worker `rank` of `world` trains on rows [rank*B, (rank+1)*B) of the step's global batch of
world*B sequences: disjoint, deterministic, and the same global batch whatever the world size.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from models.student_rnn import Student
from models.teacher import Teacher, TeacherConfig
from models.updaters import matched_updater
from storage.bucket import Bucket
from storage.checkpoints import load_student, load_teacher, save_student, save_teacher
from storage.run_dir import RunDir, flatten_optimizer, unflatten_optimizer
from trainers.common import apply_optim, check_resume
from trainers.smt import SMTConfig, smt_losses

KIND = "pretrain"
_DATA, _POSITIONS = 0x5A3D, 0x9B1  # stream tags: batches and loss positions never share a stream


def batch_at(corpus, batch_size: int, seed: int, step: int, rank: int = 0, world: int = 1
             ) -> tuple[np.ndarray, np.ndarray]:
    """This worker's share of the global batch of `step` (1-based): rows [rank*B, (rank+1)*B) of world*B."""
    x, y = corpus.sample(batch_size * world, np.random.default_rng([seed, step, _DATA]))
    rows = slice(rank * batch_size, (rank + 1) * batch_size)
    return x[rows], y[rows]


def positions_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The torch generator of `step`'s sampled loss positions on worker `rank` (its own rows, its own draws)."""
    key = np.random.SeedSequence([seed, step, rank, _POSITIONS]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(key))


class JointObjective(nn.Module):
    """Teacher + reference updater with the joint SMT loss as forward: the module DDP wraps."""

    def __init__(self, teacher: Teacher, updater: nn.Module, smt: SMTConfig) -> None:
        super().__init__()
        self.teacher, self.updater, self.smt = teacher, updater, smt

    def forward(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        return smt_losses(self.teacher, self.updater, x, y, self.smt, g)


class PretrainState:
    """Everything a resume needs. `elapsed` is the training clock (evaluation excluded), `stage` the
    curriculum stage, `finished` whether the run stopped and `finished_by` why: "steps", "seconds" (the time
    budget) or "accuracy" (`stop_at_acc`, reached at `finished_acc`); None in runs recorded before the reason."""

    def __init__(self, teacher: Teacher, student: Student, cfg, corpus_spec: str, device: torch.device) -> None:
        self.teacher, self.student, self.cfg, self.corpus_spec, self.device = teacher, student, cfg, corpus_spec, device
        self.params = list(teacher.parameters()) + list(student.updater.parameters())
        self.opt, self.sched = cfg.optim.build(self.params, cfg.steps)
        self.step, self.stage, self.elapsed, self.finished = 0, 0, 0.0, False
        self.finished_by: str | None = None
        self.finished_acc: float | None = None
        self.last_eval: dict[str, Any] = {}
        self.starts: list[int] = []  # the step every start of this run began at (0, then each resume)
        self.changes: dict[str, tuple] = {}  # config fields this resume changed: {field: (recorded, now)}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON); the weights travel separately (teacher/ and student/ checkpoints)."""
        tensors, opt_meta = flatten_optimizer(self.opt.state_dict())
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {"kind": KIND, "step": self.step, "stage": self.stage, "elapsed": self.elapsed,
                "finished": self.finished, "finished_by": self.finished_by, "finished_acc": self.finished_acc,
                "last_eval": self.last_eval, "starts": self.starts,
                "corpus": self.corpus_spec, "optimizer": opt_meta, "scheduler": self.sched.state_dict(),
                "config": asdict(self.cfg)}
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.opt.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        self.sched.load_state_dict(meta["scheduler"])
        apply_optim(self.opt, self.sched, self.cfg.optim)  # a changed lr applies from here (announced by the caller)
        torch.set_rng_state(tensors["rng.torch"])
        self.step, self.stage = int(meta["step"]), int(meta["stage"])
        self.elapsed, self.finished = float(meta["elapsed"]), bool(meta["finished"])
        self.finished_by, self.finished_acc = meta.get("finished_by"), meta.get("finished_acc")
        self.last_eval, self.starts = dict(meta["last_eval"]), list(meta["starts"])

    def stays_finished(self, cfg) -> bool:
        """Whether a run that stopped stays stopped under `cfg` (the config of this start): one stopped by its
        step count or time budget trains on when given more of it, one stopped at `stop_at_acc` when that bar is
        raised or dropped. A run recorded before the reason was stays stopped (the old rule)."""
        if not self.finished:
            return False
        if self.finished_by == "steps":
            return self.step >= cfg.steps
        if self.finished_by == "seconds":
            return cfg.seconds is not None and self.elapsed >= cfg.seconds
        if self.finished_by == "accuracy":
            return cfg.stop_at_acc is not None and (self.finished_acc or 0.0) >= cfg.stop_at_acc
        return True

    def mark_running(self) -> None:
        self.finished, self.finished_by, self.finished_acc = False, None, None

    def mark_stopped(self, cfg, acc_key: str) -> None:
        """Record that the loop stopped now, and why (see `stays_finished`)."""
        self.finished = True
        if self.step >= cfg.steps:
            self.finished_by = "steps"
        elif cfg.seconds is not None and self.elapsed >= cfg.seconds:
            self.finished_by = "seconds"
        else:
            self.finished_by, self.finished_acc = "accuracy", self.last_eval.get(acc_key)

    def sync_readout(self) -> None:
        """The updater's readout is the teacher's decoder and m_0 its empty-context memory (not trained here)."""
        self.student.readout_net.load_state_dict(self.teacher.decoder.state_dict())
        with torch.no_grad():
            self.student.m0.copy_(self.teacher.encode(torch.zeros(1, 0, dtype=torch.long, device=self.device))[0])


def _load_checkpoint(run: RunDir, pointer: dict, device: torch.device) -> tuple:
    """(teacher, student, state tensors, state JSON) of one checkpoint, every file verified."""
    student_at, tensors, meta = run.load(pointer)
    teacher, _, _ = load_teacher(run.bucket.child(f"{pointer['path']}/teacher"), device)
    student, _, _ = load_student(student_at, device)
    return teacher, student, tensors, meta


def build_state(corpus, cfg, run: RunDir | None, device: torch.device) -> PretrainState:
    """A fresh state (weights from `cfg.seed`), or the one the run's newest checkpoint holds."""
    tcfg = TeacherConfig(**{**asdict(cfg.teacher), "vocab_size": corpus.vocab_size})
    ucfg = matched_updater(tcfg, cfg.updater)
    found = run.load_newest(lambda p: _load_checkpoint(run, p, device)) if run is not None else None
    if found is None:
        torch.manual_seed(cfg.seed)
        teacher = Teacher(tcfg).to(device)
        student = Student.from_teacher(teacher, ucfg).to(device)
        return PretrainState(teacher, student, cfg, corpus.spec, device)
    _, (teacher, student, tensors, meta) = found
    fix = "rerun with the run's settings, or give a new --out"
    if meta.get("kind") != KIND:
        raise ValueError(f"run {run.url} holds a {meta.get('kind', 'student')!r} run, not pretraining: give a new --out")
    if meta["corpus"] != corpus.spec:
        raise ValueError(f"run {run.url} pretrains on {meta['corpus']!r}, this command on {corpus.spec!r}: {fix}")
    if teacher.cfg != tcfg:
        raise ValueError(f"run {run.url} holds a teacher {asdict(teacher.cfg)}, this command asks for {asdict(tcfg)}: {fix}")
    if student.updater_cfg != ucfg:
        raise ValueError(f"run {run.url} holds a {student.updater_cfg.arch} updater {asdict(student.updater_cfg)}, "
                         f"this command asks for {asdict(ucfg)}: {fix}")
    changes = check_resume(run.url, int(meta["step"]), meta.get("config"), asdict(cfg),
                           seeds={"seed": "batches and loss positions of every later step"},
                           allow_seed_change=cfg.allow_seed_change)
    state = PretrainState(teacher.train(), student.train(), cfg, corpus.spec, device)
    state.load_state_dict(tensors, meta)
    state.changes = changes
    return state


def save(state: PretrainState, run: RunDir) -> str:
    """One complete checkpoint of `state` (teacher, student, state files), then the latest pointer, then
    retention prunes older checkpoints (`keep_last`, `keep_every`)."""
    tensors, meta = state.state_dict()
    info = {"corpus": state.corpus_spec, "steps": state.step}
    fp: list[str] = []  # the teacher is written first; its fingerprint goes into the student's checkpoint

    def write_teacher(where: Bucket) -> None:
        fp.append(save_teacher(where, state.teacher, info))

    def write_student(where: Bucket) -> None:
        save_student(where, state.student, fp[0], {**info, "trained_by": "smt"})

    retention = state.cfg.retention()
    return run.save(state.step, write_student, tensors, meta, write_teacher=write_teacher, retention=retention)


def export(state: PretrainState, run: RunDir) -> str:
    """The run's outputs `<run>/teacher` and `<run>/student` (what `smt label`/`smt eval` read); returns the
    teacher fingerprint. Each checkpoint writes its config last, so a crash here leaves no half output."""
    run.check_writer()
    info = {"corpus": state.corpus_spec, "steps": state.step}
    fp = save_teacher(run.bucket.child("teacher"), state.teacher, info)
    save_student(run.bucket.child("student"), state.student, fp, {**info, "trained_by": "smt"})
    return fp
