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
"""
from __future__ import annotations

import json
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


class RunDir:
    """The run URL: where checkpoints, the pointer, the config and the metrics live."""

    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        self.bucket = Bucket.from_url(url, endpoint_url=endpoint_url)
        self.url = self.bucket.url()

    def local_path(self, rel: str) -> str | None:
        """A filesystem path for `rel` when the run is local (metrics are appended there)."""
        return self.bucket._path(rel) if self.bucket.protocol == "file" else None

    def latest(self) -> dict | None:
        """The checkpoint pointer, or None for a fresh run."""
        try:
            return json.loads(self.bucket.read_bytes(LATEST))
        except ObjectNotFound:
            return None

    def write_json(self, rel: str, obj: Any) -> None:
        self.bucket.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def save(self, step: int, write_student, tensors: dict[str, torch.Tensor], meta: dict, *,
             write_teacher=None) -> str:
        """Write a complete step folder, then point latest.json at it; returns the folder's URL.
        `write_teacher` (pretraining: the teacher is trained too) writes `<step>/teacher` first."""
        rel = step_dir(step)
        if write_teacher is not None:
            write_teacher(self.bucket.url(f"{rel}/teacher"))
        write_student(self.bucket.url(f"{rel}/student"))
        self.bucket.write_bytes(f"{rel}/state.safetensors",
                                st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
        self.bucket.write_bytes(f"{rel}/state.json", json.dumps(meta, sort_keys=True).encode())
        self.write_json(LATEST, {"step": step, "path": rel})  # last: the commit point
        return self.bucket.url(rel)

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
