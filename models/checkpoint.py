"""Checkpoints: safetensors weights + a JSON config + a fingerprint, at any fsspec URL. No pickle.

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

import fsspec
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


def _join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name


def save_checkpoint(url: str, kind: str, model: dict, tensors: dict[str, torch.Tensor],
                    meta: dict | None = None) -> str:
    """Write weights then config (config last: a folder without config.json is not a checkpoint).
    Returns the fingerprint."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    fp = fingerprint(kind, model, tensors)
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path, exist_ok=True)
    with fs.open(_join(path, WEIGHTS), "wb") as f:
        f.write(st_save(tensors))
    cfg = {"kind": kind, "model": model, "fingerprint": fp, "meta": meta or {}}
    with fs.open(_join(path, CONFIG), "wb") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True).encode())
    return fp


def read_config(url: str, kind: str | tuple[str, ...] | None = None) -> dict:
    """The checkpoint's config JSON only (kind, model, fingerprint, meta): a cheap check before heavy work."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        with fs.open(_join(path, CONFIG), "rb") as f:
            cfg = json.loads(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {url} (missing {CONFIG}): check the path or create one "
                              "with `smt pretrain`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {url}: {CONFIG} is not valid JSON ({e}): re-create the checkpoint") from None
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and cfg.get("kind") not in kinds:
        raise CheckpointError(f"checkpoint {url} is a {cfg.get('kind')!r} checkpoint, expected {' or '.join(kinds)}: "
                              "pass the right path")
    return cfg


def load_checkpoint(url: str, kind: str | tuple[str, ...] | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read and verify a checkpoint; returns (config, tensors)."""
    cfg = read_config(url, kind)
    fs, path = fsspec.core.url_to_fs(url)
    try:
        with fs.open(_join(path, WEIGHTS), "rb") as f:
            tensors = st_load(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {url} has no {WEIGHTS}: re-create the checkpoint") from None
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {url}: {WEIGHTS} is corrupt ({e}): re-create the checkpoint") from None
    fp = fingerprint(cfg["kind"], cfg["model"], tensors)
    if fp != cfg.get("fingerprint"):
        raise CheckpointError(f"checkpoint {url}: weights do not match the recorded fingerprint "
                              f"({fp[:12]} != {str(cfg.get('fingerprint'))[:12]}): the files are corrupt or mixed")
    return cfg, tensors


def has_checkpoint(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(_join(path, CONFIG))


# ---- typed save/load for the project's models ---------------------------------------------------------
LEGACY_TEACHER = {"mem_head": "linear"}
"""Teacher config fields that checkpoints written before them lack, with the value those checkpoints mean:
the causal memory head was one Linear(d, K*d) before `mem_head` existed."""


def teacher_config(d: dict):
    """The `TeacherConfig` of a checkpoint's teacher dict (a teacher's, or the one a student records)."""
    from models.teacher import TeacherConfig

    return TeacherConfig(**{**LEGACY_TEACHER, **d})


def save_teacher(url: str, teacher, meta: dict | None = None) -> str:
    return save_checkpoint(url, "teacher", {"teacher": teacher.cfg.to_dict()}, teacher.state_dict(), meta)


def load_teacher(url: str, device: str | torch.device = "cpu"):
    """Returns (teacher in eval mode, fingerprint, config dict)."""
    from models.teacher import Teacher

    cfg, tensors = load_checkpoint(url, "teacher")
    teacher = Teacher(teacher_config(cfg["model"]["teacher"]))
    _load_state(teacher, tensors, url)
    return teacher.to(device).eval(), cfg["fingerprint"], cfg


def save_student(url: str, student, teacher_fingerprint: str | None, meta: dict | None = None) -> str:
    model = {"teacher": student.teacher_cfg.to_dict(), "updater": student.updater_cfg.to_dict(),
             "teacher_fingerprint": teacher_fingerprint}
    return save_checkpoint(url, "student", model, student.state_dict(), meta)


def load_student(url: str, device: str | torch.device = "cpu"):
    """Returns (student in eval mode, teacher fingerprint it was trained against (or None), config dict)."""
    from models.student_rnn import Student
    from models.updaters import UpdaterConfig

    cfg, tensors = load_checkpoint(url, "student")
    m = cfg["model"]
    student = Student(UpdaterConfig(**m["updater"]), teacher_config(m["teacher"]))
    _load_state(student, tensors, url)
    return student.to(device).eval(), m.get("teacher_fingerprint"), cfg


def _load_state(module: torch.nn.Module, tensors: dict, url: str) -> None:
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {url} does not fit its recorded config ({first}): re-create it") from None



# ---- publishing: where the pipeline looks for a target set's teacher ------------------------------------
def teacher_home(fingerprint: str) -> str:
    """`teachers/<fingerprint>`, relative to a bucket root: the teacher of its `targets/<fingerprint>/...`."""
    return f"teachers/{fingerprint}"


def publish_teacher(src: str, bucket) -> str:
    """Copy the teacher checkpoint at `src` into `bucket` (a `storage.Bucket`: its endpoint and retries apply)
    at `teacher_home(fp)`, weights first and config.json last, and return its URL, so that `smt train` and
    `smt dmt` find it from a target set alone. `src` is verified first; a copy already there whose config
    names the same fingerprint is kept, so publishing again (a rerun, a second labeling) is harmless."""
    cfg, tensors = load_checkpoint(src, "teacher")
    fp = cfg["fingerprint"]
    home = teacher_home(fp)
    if bucket.exists(f"{home}/{CONFIG}"):
        try:
            if json.loads(bucket.read_bytes(f"{home}/{CONFIG}")).get("fingerprint") == fp:
                return bucket.url(home)
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # a damaged copy: replace it
    bucket.write_bytes(f"{home}/{WEIGHTS}", st_save({k: v.contiguous() for k, v in tensors.items()}))
    bucket.write_bytes(f"{home}/{CONFIG}", json.dumps(cfg, indent=2, sort_keys=True).encode())
    return bucket.url(home)
