"""Checkpoints as bytes: safetensors weights + a JSON config + a fingerprint. No pickle, and no I/O here:
`storage/checkpoints.py` reads and writes them through a `Bucket` (one endpoint, retries, durable writes).

Layout of a checkpoint folder:
    weights.safetensors   tensors only
    config.json           {"kind", "model": {...configs}, "fingerprint", "meta": {...}}
The fingerprint is sha256 over the canonical JSON of `kind` + `model` and every tensor (name, dtype,
shape, bytes) in name order: it names a teacher's target shards and changes when any weight changes.
Loading recomputes it, so a corrupt or edited checkpoint is refused. Teacher configs are read through
`teacher_config`, which fills in what older checkpoints did not record (they keep their fingerprint:
it is computed over the config as stored).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

WEIGHTS, CONFIG = "weights.safetensors", "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or of the wrong kind; the message names the path and the fix."""


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def fingerprint(kind: str, model: dict, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(_canonical({"kind": kind, "model": model}))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(_canonical([name, str(t.dtype), list(t.shape)]))
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def encode(kind: str, model: dict, tensors: dict[str, torch.Tensor], meta: dict | None = None
           ) -> tuple[dict[str, bytes], str]:
    """The files of a checkpoint folder ({WEIGHTS: ..., CONFIG: ...}) and its fingerprint. Writers put
    WEIGHTS first and CONFIG last: a folder without config.json is not a checkpoint."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    fp = fingerprint(kind, model, tensors)
    cfg = {"kind": kind, "model": model, "fingerprint": fp, "meta": meta or {}}
    return {WEIGHTS: st_save(tensors), CONFIG: json.dumps(cfg, indent=2, sort_keys=True).encode()}, fp


def decode_config(data: bytes, where: str, kind: str | tuple[str, ...] | None = None) -> dict:
    """A checkpoint's config.json, checked to be JSON of the expected `kind`; `where` names it in errors."""
    try:
        cfg = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {where}: {CONFIG} is not valid JSON ({e}): re-create the checkpoint") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"checkpoint {where}: {CONFIG} is not a JSON object: re-create the checkpoint")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and cfg.get("kind") not in kinds:
        raise CheckpointError(f"checkpoint {where} is a {cfg.get('kind')!r} checkpoint, expected {' or '.join(kinds)}: "
                              "pass the right path")
    return cfg


def decode_weights(cfg: dict, data: bytes, where: str) -> dict[str, torch.Tensor]:
    """The tensors of WEIGHTS, verified against the fingerprint `cfg` records (a torn or mixed folder is refused)."""
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {where}: {WEIGHTS} is corrupt ({e}): re-create the checkpoint") from None
    fp = fingerprint(cfg["kind"], cfg["model"], tensors)
    if fp != cfg.get("fingerprint"):
        raise CheckpointError(f"checkpoint {where}: weights do not match the recorded fingerprint "
                              f"({fp[:12]} != {str(cfg.get('fingerprint'))[:12]}): the files are corrupt or mixed")
    return tensors


# ---- typed save/load for the project's models ---------------------------------------------------------
LEGACY_TEACHER = {"mem_head": "linear"}
"""Teacher config fields that checkpoints written before them lack, with the value those checkpoints mean:
the causal memory head was one Linear(d, K*d) before `mem_head` existed."""


def teacher_config(d: dict):
    """The `TeacherConfig` of a checkpoint's teacher dict (a teacher's, or the one a student records)."""
    from models.teacher import TeacherConfig

    return TeacherConfig(**{**LEGACY_TEACHER, **d})


def teacher_model(teacher) -> dict:
    """The `model` dict of a teacher checkpoint."""
    return {"teacher": teacher.cfg.to_dict()}


def student_model(student, teacher_fingerprint: str | None) -> dict:
    """The `model` dict of a student checkpoint (with the fingerprint of the teacher it was trained against)."""
    return {"teacher": student.teacher_cfg.to_dict(), "updater": student.updater_cfg.to_dict(),
            "teacher_fingerprint": teacher_fingerprint}


def build_teacher(cfg: dict, tensors: dict[str, torch.Tensor], where: str):
    """The teacher (eval mode, on CPU) of a verified teacher checkpoint."""
    from models.teacher import Teacher

    teacher = Teacher(teacher_config(cfg["model"]["teacher"]))
    _load_state(teacher, tensors, where)
    return teacher.eval()


def build_student(cfg: dict, tensors: dict[str, torch.Tensor], where: str):
    """The student (eval mode, on CPU) of a verified student checkpoint."""
    from models.student_rnn import Student
    from models.updaters import UpdaterConfig

    m = cfg["model"]
    student = Student(UpdaterConfig(**m["updater"]), teacher_config(m["teacher"]))
    _load_state(student, tensors, where)
    return student.eval()


def _load_state(module: torch.nn.Module, tensors: dict, where: str) -> None:
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {where} does not fit its recorded config ({first}): re-create it") from None
