"""A run folder at any fsspec URL: crash-safe checkpoints of the full train state, and the pointer to them.

    <run>/config.json                          the resolved config of the newest start/resume
    <run>/metrics.jsonl                        one JSON row per logged step (through the Bucket: s3:// too)
    <run>/checkpoints/step-00000100/student/   save_student(): weights.safetensors + config.json
    <run>/checkpoints/step-00000100/teacher/   pretraining runs only: save_teacher()
    <run>/checkpoints/step-00000100/state.safetensors, state.json   optimizer, RNG (tensors) + the rest
    <run>/checkpoints/latest.json              {"step": 100, "path": "checkpoints/step-00000100"}
    <run>/policy/step-00000102/student/        weights only (lockstep DMT: what the DMT actor rolls out)
    <run>/policy/step-00000102/done.json       written last: the snapshot is complete

A checkpoint folder is complete before `latest.json` names it, and `latest.json` is replaced in one
atomic write (temp + rename locally, one PUT on S3): a crash mid-write leaves the previous pointer, so
a resume never picks up a half checkpoint. Tensors go to safetensors, everything else to JSON: no pickle.

Retention (`Retention`, e.g. keep_last=3): after a checkpoint and `latest.json` are committed, older
checkpoint folders beyond the newest `keep_last` are deleted, except milestones (`keep_every`), steps the
caller pins (lockstep DMT's round boundaries: the actor and the round evaluations read them later) and the
one `latest.json` names. Pruning runs only after the commit, and a pruned folder loses its `state.json`
marker first, so a crash anywhere leaves the newest checkpoint whole and at worst a half-deleted older
folder that no reader takes for a checkpoint; the next prune removes it. Policy snapshots (`policy/`) are
never pruned: lockstep DMT writes one per round, a bounded number.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from storage.bucket import Bucket
from storage.errors import ObjectNotFound

LATEST = "checkpoints/latest.json"


def step_dir(step: int) -> str:
    return f"checkpoints/step-{step:08d}"


# beside a snapshot's (or checkpoint's) student/: the policy the DMT actor rolls out when it is not the student
# itself (lockstep DMT's EMA of the student, `trainers/dmt/lockstep.py`); written before the folder's marker
ROLLOUT = "rollout"


def policy_dir(step: int) -> str:
    """A weights-only snapshot of the student (no optimizer: a fraction of a checkpoint's bytes)."""
    return f"policy/step-{step:08d}"


def flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict as (tensors, JSON): per-parameter tensors become `opt.<i>.<key>`."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = t
    for idx, kv in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(kv)
    return {"state": state, "param_groups": meta["param_groups"]}


def checkpoint_steps(rels: Iterable[str]) -> list[int]:
    """The steps of the `checkpoints/step-N...` paths among `rels`, sorted, each once."""
    return sorted({int(m.group(1)) for r in rels if (m := re.match(r"checkpoints/step-(\d+)(/|$)", r))})


@dataclass(frozen=True, kw_only=True)
class Retention:
    """Which checkpoints a run keeps once a newer one is committed."""

    keep_last: int | None = None
    """Keep the newest N checkpoints (None = keep every checkpoint)."""
    keep_every: int | None = None
    """Also keep every checkpoint whose step is a multiple of this (milestones; None = none)."""

    def __post_init__(self) -> None:
        for name in ("keep_last", "keep_every"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name}={v} must be >= 1 (or None: keep every checkpoint)")

    def kept(self, steps: Iterable[int], latest: int, pinned: Iterable[int] = ()) -> set[int]:
        """The steps of `steps` (committed checkpoints at or before `latest`) that survive a prune."""
        steps = sorted(s for s in steps if s <= latest)
        if self.keep_last is None:
            return set(steps)
        pins = set(pinned) | {latest}
        return {s for s in steps if s in pins or (self.keep_every and s % self.keep_every == 0)} | set(
            steps[-self.keep_last:])


class RunDir:
    """The run URL: where checkpoints, the pointer, the config and the metrics live."""

    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        self.bucket = Bucket.from_url(url, endpoint_url=endpoint_url)
        self.url = self.bucket.url()

    def latest(self) -> dict | None:
        """The checkpoint pointer, or None for a fresh run."""
        try:
            return json.loads(self.bucket.read_bytes(LATEST))
        except ObjectNotFound:
            return None

    def write_json(self, rel: str, obj: Any) -> None:
        self.bucket.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def save(self, step: int, write_student, tensors: dict[str, torch.Tensor], meta: dict, *,
             write_teacher=None, retention: Retention | None = None, pinned: Iterable[int] = ()) -> str:
        """Write a complete step folder, then point latest.json at it, then prune by `retention` (sparing
        `pinned` steps); returns the folder's URL. `write_teacher` (pretraining: the teacher is trained too)
        writes `<step>/teacher` first."""
        rel = step_dir(step)
        if write_teacher is not None:
            write_teacher(self.bucket.url(f"{rel}/teacher"))
        write_student(self.bucket.url(f"{rel}/student"))
        self.bucket.write_bytes(f"{rel}/state.safetensors",
                                st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
        self.bucket.write_bytes(f"{rel}/state.json", json.dumps(meta, sort_keys=True).encode())
        self.write_json(LATEST, {"step": step, "path": rel})  # the commit point
        if retention is not None:
            self.prune(retention, pinned)  # only now: a crash before here leaves every older checkpoint
        return self.bucket.url(rel)

    def checkpoints(self) -> list[int]:
        """Steps of the complete checkpoints (with `state.json`), sorted. Lists the run's checkpoints/: for
        retention and error messages, never a read path."""
        return checkpoint_steps(self.bucket.glob("checkpoints/step-*/state.json"))

    def prune(self, retention: Retention, pinned: Iterable[int] = ()) -> list[int]:
        """Delete the checkpoint folders `retention` does not keep, never the one `latest.json` names nor a
        `pinned` step; returns the deleted steps. Folders past the pointer (a save that crashed before its
        commit; the next save of that step rewrites it) are left alone."""
        pointer = self.latest()
        if pointer is None or retention.keep_last is None:
            return []
        latest = int(pointer["step"])
        keep = retention.kept(self.checkpoints(), latest, pinned)
        gone = [s for s in checkpoint_steps(self.bucket.glob("checkpoints/step-*"))
                if s < latest and s not in keep]  # with half-deleted folders of an interrupted prune
        for s in gone:
            rel = step_dir(s)
            if self.bucket.exists(f"{rel}/state.json"):
                self.bucket.remove(f"{rel}/state.json")  # first: from here on no reader takes it for a checkpoint
            self.bucket.remove(rel, recursive=True)
        return gone

    def save_policy(self, step: int, write_student) -> str:
        """Write the student of `step` alone, then `done.json` (the commit marker the DMT actor waits for)."""
        rel = policy_dir(step)
        write_student(self.bucket.url(f"{rel}/student"))
        self.write_json(f"{rel}/done.json", {"step": step, "path": rel})
        return self.bucket.url(rel)

    def student_dir(self, step: int) -> str | None:
        """The folder (relative) whose student/ holds the weights of `step`: its complete full checkpoint,
        else its complete weights-only snapshot; None while neither is written."""
        for rel, marker in ((step_dir(step), "state.json"), (policy_dir(step), "done.json")):
            if self.bucket.exists(f"{rel}/{marker}"):
                return rel
        return None

    def student_url(self, step: int) -> str:
        """The student of `step` (ObjectNotFound if the run has neither a checkpoint nor a snapshot of it)."""
        rel = self.student_dir(step)
        if rel is None:
            raise ObjectNotFound(f"run {self.url} has no checkpoint or policy snapshot of step {step}")
        return self.bucket.url(f"{rel}/student")

    def truncate_metrics(self, step: int) -> None:
        """Drop metrics rows past `step` (a resumed run: they belong to the attempt that was killed)."""
        try:
            lines = self.bucket.read_bytes("metrics.jsonl").decode().splitlines(keepends=True)
        except ObjectNotFound:
            return
        keep = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
        self.bucket.write_bytes("metrics.jsonl", "".join(keep).encode())  # atomic: temp + rename, or one PUT

    def load(self, pointer: dict) -> tuple[str, dict[str, torch.Tensor], dict]:
        """(student URL, state tensors, state JSON) of the checkpoint `pointer` names."""
        rel = pointer["path"]
        tensors = st_load(self.bucket.read_bytes(f"{rel}/state.safetensors"))
        meta = json.loads(self.bucket.read_bytes(f"{rel}/state.json"))
        return self.bucket.url(f"{rel}/student"), tensors, meta
