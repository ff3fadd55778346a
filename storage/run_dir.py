"""A run folder at any fsspec URL: crash-safe checkpoints of the full train state, and the pointer to them.

    <run>/run.json                             the run record: its `kind` (storage/layout.py) and resolved config
    <run>/metrics.jsonl                        one JSON row per logged step (on an object store: metrics/, metrics.py)
    <run>/checkpoints/step-00000100/student/   save_student(): weights.safetensors + config.json
    <run>/checkpoints/step-00000100/teacher/   pretraining runs only: save_teacher()
    <run>/checkpoints/step-00000100/state.safetensors, state.json   optimizer, RNG (tensors) + the rest
    <run>/checkpoints/latest.json              {"step": 100, "path": "checkpoints/step-00000100", "writer": ...}
    <run>/lease/gen-N.json                     the writer's lease (storage/lease.py): one writer per run
    <run>/policy/step-00000102/student/        weights only (lockstep DMT: what the DMT actor rolls out)
    <run>/policy/step-00000102/done.json       written last: the snapshot is complete

A checkpoint folder is complete before `latest.json` names it, and `latest.json` is replaced in one
atomic compare-and-swap (`Bucket.replace_if`: compare + rename under a lock locally, one PUT with If-Match on
S3): a crash mid-write leaves the previous pointer, so
a resume never picks up a half checkpoint. Every file is durable before the next is written (temp + fsync +
rename locally), and `state.json` records the sha256 of `state.safetensors` (the student's weights carry
their fingerprint): a file torn by a power loss is detected, and `load_newest` walks back to the newest
checkpoint that verifies. Tensors go to safetensors, everything else to JSON: no pickle.

One writer: a trainer takes the run's lease (`acquire`) before it writes, and every save, pointer write
and prune checks it; the pointer is also compared before it is replaced (it must still be what this
process last read or wrote), and replaced only if it is still the version that check read (one atomic swap),
so a second writer that slipped past the lease is refused instead of moving the pointer backward, onto a
folder it half-wrote, or over a pointer that landed a moment before.

Retention (`Retention`, e.g. keep_last=3): after a checkpoint and `latest.json` are committed, older
checkpoint folders beyond the newest `keep_last` are deleted, except milestones (`keep_every`), steps the
caller pins (lockstep DMT's round boundaries: the actor and the round evaluations read them later) and the
one `latest.json` names. Pruning runs only after the commit, and a pruned folder loses its `state.json`
marker first, so a crash anywhere leaves the newest checkpoint whole and at worst a half-deleted older
folder that no reader takes for a checkpoint; the next prune removes it. Policy snapshots (`policy/`) are
never pruned: lockstep DMT writes one per round, a bounded number.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models.checkpoint import CONFIG, WEIGHTS, CheckpointError
from storage.bucket import Bucket
from storage.errors import ObjectNotFound, StorageError
from storage.layout import RECORD, read_record
from storage.layout import record as make_record
from storage.lease import Lease, Writer, acquire
from storage.metrics import MetricsFile, read_metrics

T = TypeVar("T")
_UNSET: Any = object()


class RunConflict(StorageError):
    """The run's pointer was moved by another process: this one must not write to the run."""

LATEST = "checkpoints/latest.json"
STATE_SHA = "state_sha256"  # in state.json: the sha256 of state.safetensors


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
        self.lease: Lease | None = None
        self.writer = uuid.uuid4().hex  # names this process's pointer writes (the lease owner once it has one)
        self._seen: Any = _UNSET  # the pointer as this process last read or wrote it
        self._pointer_version: str | None = None  # the version of latest.json the last read saw

    # ---- one writer --------------------------------------------------------------------------------
    def acquire(self, writer: Writer | None = None, *, ttl_s: float = 60.0) -> None:
        """Take the run's writer lease (RunLocked names a live holder; `writer.take_over` makes it stop)."""
        self.lease = acquire(self.bucket, writer, ttl_s=ttl_s)
        if self.lease is not None:
            self.writer = self.lease.owner

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    @contextlib.contextmanager
    def writing(self, writer: Writer | None = None):
        """Hold the run's lease for the duration of the block (released at its end, even on an error)."""
        self.acquire(writer)
        try:
            yield self
        finally:
            self.release()

    def check_writer(self) -> None:
        if self.lease is not None:
            self.lease.check()

    # ---- the pointer -------------------------------------------------------------------------------
    def _read_pointer(self) -> dict | None:
        """latest.json as stored: None when absent, {"torn": True, ...} when it is not valid JSON. Its version
        (`Bucket.read_versioned`) is kept for the commit's compare-and-swap."""
        got = self.bucket.read_versioned(LATEST)
        self._pointer_version = None if got is None else got[1]
        if got is None:
            return None
        try:
            return json.loads(got[0])
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"step": -1, "path": "", "torn": True}

    def latest(self) -> dict | None:
        """The checkpoint pointer, or None for a fresh run."""
        ptr = self._read_pointer()
        if ptr is not None and ptr.get("torn"):
            raise CheckpointError(f"run {self.url}: {LATEST} is not valid JSON: delete it to resume from the newest "
                                  "checkpoint folder that verifies")
        self._seen = ptr
        return ptr

    def _check_pointer(self, step: int) -> None:
        """Refuse (RunConflict) when the pointer is no longer what this process last read or wrote (or, never
        read, names a later step): another process writes this run. Checked before a save writes anything and
        again before its commit."""
        self.check_writer()
        cur = self._read_pointer()  # a torn pointer named nothing readable: it is replaced
        moved = (cur != self._seen) if self._seen is not _UNSET else (cur is not None and int(cur["step"]) > step)
        if moved and not (cur or {}).get("torn"):
            raise RunConflict(f"run {self.url}: {LATEST} now names step {cur['step'] if cur else None} (written by "
                              f"another process since this one read step "
                              f"{(self._seen or {}).get('step') if self._seen is not _UNSET else None}): refusing to "
                              f"point it at step {step}; run one writer per run folder")

    def _commit_pointer(self, step: int, rel: str) -> None:
        """The commit point: replace latest.json only if it is still the version `_check_pointer` just read
        (one compare-and-swap: a writer that slipped in between is refused, never overwritten)."""
        self._check_pointer(step)
        ptr = {"step": step, "path": rel, "writer": self.writer}
        data = json.dumps(ptr, indent=2, sort_keys=True, default=str).encode()
        if not self.bucket.replace_if(LATEST, data, self._pointer_version):
            now = self._read_pointer()
            raise RunConflict(f"run {self.url}: {LATEST} changed while this process committed step {step} (it now "
                              f"names step {(now or {}).get('step')}, written by another process): refusing to "
                              "overwrite it; run one writer per run folder")
        self._seen = ptr

    def write_json(self, rel: str, obj: Any) -> None:
        self.bucket.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    # ---- the run record (storage/layout.py) ---------------------------------------------------------
    def write_record(self, kind: str, **fields: Any) -> dict:
        """Write `run.json`: what the folder is (`kind`) and its config; returns the record."""
        rec = make_record(kind, **fields)
        self.check_writer()
        self.write_json(RECORD, rec)
        return rec

    def record(self) -> dict | None:
        """The run record (with its `kind`; a folder written before records: the kind its files show,
        `storage.layout.read_record`), None when neither says what the folder is."""
        return read_record(self.bucket)

    def child(self, rel: str) -> RunDir:
        """The run folder `rel` inside this one (a sweep's `lr-<lr>`), at the same endpoint."""
        return RunDir(self.bucket.url(rel), endpoint_url=self.bucket.endpoint_url)

    # ---- checkpoints -------------------------------------------------------------------------------
    def save(self, step: int, write_student, tensors: dict[str, torch.Tensor], meta: dict, *,
             write_teacher=None, retention: Retention | None = None, pinned: Iterable[int] = ()) -> str:
        """Write a complete step folder, then point latest.json at it, then prune by `retention` (sparing
        `pinned` steps); returns the folder's URL. `write_student(bucket)` writes the student into the bucket
        it is given; `write_teacher` (pretraining: the teacher is trained too) writes `<step>/teacher` first."""
        self._check_pointer(step)  # a second writer is refused before it touches any folder
        rel = step_dir(step)
        if self.bucket.exists(f"{rel}/state.json"):  # an older write of this step (walked back past it)
            self.bucket.remove(f"{rel}/state.json")  # first: no reader takes the folder while it is rewritten
        if write_teacher is not None:
            write_teacher(self.bucket.child(f"{rel}/teacher"))
        write_student(self.bucket.child(f"{rel}/student"))
        blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        self.bucket.write_bytes(f"{rel}/state.safetensors", blob)
        self.bucket.write_bytes(f"{rel}/state.json", json.dumps(
            {**meta, STATE_SHA: hashlib.sha256(blob).hexdigest()}, sort_keys=True).encode())
        self._commit_pointer(step, rel)
        if retention is not None:
            self.prune(retention, pinned)  # only now: a crash before here leaves every older checkpoint
        return self.bucket.url(rel)

    def checkpoints(self) -> list[int]:
        """Steps of the complete checkpoints (with `state.json`), sorted. Lists the run's checkpoints/: for
        retention, walk-back and error messages, never the normal read path."""
        return checkpoint_steps(self.bucket.glob("checkpoints/step-*/state.json"))

    def prune(self, retention: Retention, pinned: Iterable[int] = ()) -> list[int]:
        """Delete the checkpoint folders `retention` does not keep, never the one `latest.json` names (read
        again here, after the lease check) nor a `pinned` step; returns the deleted steps. Folders past the
        pointer (a save that crashed before its commit; the next save of that step rewrites it) are left alone."""
        self.check_writer()
        pointer = self._read_pointer()
        if pointer is None or pointer.get("torn") or retention.keep_last is None:
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

    def load(self, pointer: dict) -> tuple[Bucket, dict[str, torch.Tensor], dict]:
        """(student folder, state tensors, state JSON) of the checkpoint `pointer` names, its state verified
        against the sha256 its state.json records (CheckpointError names a torn or missing file)."""
        rel = pointer["path"]
        where = self.bucket.url(rel)
        try:
            meta = json.loads(self.bucket.read_bytes(f"{rel}/state.json"))
            blob = self.bucket.read_bytes(f"{rel}/state.safetensors")
        except ObjectNotFound as e:
            raise CheckpointError(f"checkpoint {where} is incomplete ({e})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"checkpoint {where}: state.json is torn ({e})") from None
        want = meta.pop(STATE_SHA, None)
        if want is not None and hashlib.sha256(blob).hexdigest() != want:
            raise CheckpointError(f"checkpoint {where}: state.safetensors does not match the sha256 in state.json "
                                  f"({len(blob)} bytes): torn by a crash or edited")
        try:
            tensors = st_load(blob)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {where}: state.safetensors is corrupt ({e})") from None
        return self.bucket.child(f"{rel}/student"), tensors, meta

    def resume_points(self) -> list[dict]:
        """What a resume tries, newest first: the pointer, then every complete checkpoint before it."""
        ptr = self.latest()
        if ptr is None:
            return []
        older = [s for s in self.checkpoints() if s < int(ptr["step"])]
        return [ptr] + [{"step": s, "path": step_dir(s)} for s in reversed(older)]

    def load_newest(self, load: Callable[[dict], T]) -> tuple[dict, T] | None:
        """(pointer, load(pointer)) of the newest checkpoint that loads, None for a fresh run. A checkpoint
        that does not (torn by a power loss, pruned under the pointer, corrupt) is skipped with a warning
        naming it; CheckpointError when none loads."""
        tried = []
        for ptr in self.resume_points():
            try:
                return ptr, load(ptr)
            except (CheckpointError, ObjectNotFound) as e:
                tried.append(f"step {ptr['step']}: {e}")
                warnings.warn(f"run {self.url}: checkpoint step {ptr['step']} does not load ({e}); trying the one "
                              "before it", stacklevel=2)
        if not tried:
            return None
        raise CheckpointError(f"run {self.url}: no checkpoint loads ({'; '.join(tried)}): start a new --out, or "
                              "restore a checkpoint folder")

    # ---- weights-only snapshots (lockstep and follow-mode DMT) ---------------------------------------
    def save_policy(self, step: int, write_student) -> str:
        """Write the student of `step` alone, then `done.json` (the commit marker the DMT actor waits for)."""
        rel = policy_dir(step)
        write_student(self.bucket.child(f"{rel}/student"))
        self.write_json(f"{rel}/done.json", {"step": step, "path": rel})
        return self.bucket.url(rel)

    def copy_to_policy(self, pointer: dict) -> dict:
        """Copy the student (and rollout policy) of the checkpoint `pointer` names to `policy/step-N`, which
        retention never prunes, and return a pointer to the copy: what a DMT round pins. ObjectNotFound if the
        checkpoint was pruned meanwhile (pin a newer one)."""
        step, src = int(pointer["step"]), pointer["path"]
        rel = policy_dir(step)
        if not self.bucket.exists(f"{rel}/done.json"):
            for sub in ("student", ROLLOUT):
                for name in (WEIGHTS, CONFIG):  # config last: it marks the folder whole
                    try:
                        data = self.bucket.read_bytes(f"{src}/{sub}/{name}")
                    except ObjectNotFound:
                        if sub == ROLLOUT:
                            break
                        raise
                    self.bucket.write_bytes(f"{rel}/{sub}/{name}", data)
            self.write_json(f"{rel}/done.json", {"step": step, "path": rel, "copied_from": src})
        return {"step": step, "path": rel}

    def student_dir(self, step: int) -> str | None:
        """The folder (relative) whose student/ holds the weights of `step`: its complete full checkpoint,
        else its complete weights-only snapshot; None while neither is written."""
        for rel, marker in ((step_dir(step), "state.json"), (policy_dir(step), "done.json")):
            if self.bucket.exists(f"{rel}/{marker}"):
                return rel
        return None

    def student_at(self, step: int) -> Bucket:
        """The student folder of `step` (ObjectNotFound if the run has neither a checkpoint nor a snapshot)."""
        rel = self.student_dir(step)
        if rel is None:
            raise ObjectNotFound(f"run {self.url} has no checkpoint or policy snapshot of step {step}")
        return self.bucket.child(f"{rel}/student")

    def student_url(self, step: int) -> str:
        return self.student_at(step).url()

    # ---- metrics -----------------------------------------------------------------------------------
    def metrics_writer(self, start: int = 0) -> MetricsFile:
        """This process's metrics writer; `start` (a resumed run's step) drops the killed attempt's rows."""
        return MetricsFile(self.bucket, start)

    def metrics(self) -> list[dict]:
        """Every metrics row of the run (torn lines skipped, warned)."""
        return read_metrics(self.bucket)
