"""An exported student: one self-contained folder that a user loads with one call and samples from.

    <dir>/export.json          format, how tokens read (`TokenFormat`), where each part of the network lives,
                               how a prompt is read, provenance (the run, trained_by, teacher fingerprint)
    <dir>/README.md            how to load it
    <dir>/weights.safetensors  the student's tensors: updater.*, readout_net.* (the readout g), m0 (m_0)
    <dir>/config.json          a student checkpoint's config (kind, updater + memory shape, fingerprint), last

The weights and config are a student checkpoint (`storage.checkpoints`), so loading verifies the fingerprint;
export.json and README.md are written first and config.json last, so a folder whose export was interrupted is
not taken for a student. Nothing in it points back to the run or the teacher: the student reads a prompt with
its own updater from m_0. `load_exported(dir)` -> `Exported` (student, tokens, info); `smt generate --run DIR`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import torch

from storage.bucket import Bucket

EXPORT = "export.json"
FORMAT = "smt-student/1"
PARTS = {"updater": "updater.*", "readout": "readout_net.*", "m_0": "m0"}


@dataclass(frozen=True, kw_only=True)
class TokenFormat:
    """How a model's token ids read: UTF-8 bytes (`byte`), grey levels of raster-order pixels (`pixel`, with the
    image's height and width) or plain ids (`token`, e.g. a synthetic task's symbols)."""

    unit: str
    vocab_size: int
    height: int | None = None
    width: int | None = None
    corpus: str | None = None

    def __post_init__(self) -> None:
        if self.unit not in ("byte", "pixel", "token"):
            raise ValueError(f"token unit {self.unit!r} is unknown: use byte, pixel or token")
        if self.unit == "pixel" and not (self.height and self.width):
            raise ValueError("pixel tokens need the image's height and width")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def encode(self, prompt: str) -> list[int]:
        """The ids of a prompt: its UTF-8 bytes (byte), else integers separated by spaces or commas. An id
        outside the vocabulary raises ValueError naming it."""
        if self.unit == "byte":
            ids = list(prompt.encode("utf-8"))
        else:
            words = prompt.replace(",", " ").split()
            bad = next((w for w in words if not w.lstrip("-").isdigit()), None)
            if bad is not None:
                what = "pixel grey levels" if self.unit == "pixel" else "token ids"
                raise ValueError(f"prompt item {bad!r} is not an integer: give {what} 0..{self.vocab_size - 1} "
                                 "separated by spaces or commas")
            ids = [int(w) for w in words]
        return self.check(ids)

    def check(self, ids: list[int]) -> list[int]:
        """`ids`, after checking that each is in the vocabulary (ValueError naming the first that is not)."""
        out = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if out is not None:
            what = f"byte {out}" if self.unit == "byte" else f"token {out}"
            raise ValueError(f"prompt {what} is outside the model's vocabulary 0..{self.vocab_size - 1}: "
                             f"use ids below {self.vocab_size}" + (" (ASCII text)" if self.unit == "byte" else ""))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Bytes as text (invalid UTF-8 replaced); other units as ids separated by spaces."""
        if self.unit == "byte":
            return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
        return " ".join(map(str, ids))


@dataclass
class Exported:
    """A loaded export: the student (eval mode), how its tokens read, and export.json as a dict."""

    student: Any
    tokens: TokenFormat
    info: dict


def is_exported(url: str, endpoint_url: str | None = None) -> bool:
    return Bucket.from_url(url, endpoint_url=endpoint_url).exists(EXPORT)


def export_student(student, out: str, tokens: TokenFormat, teacher_fingerprint: str | None,
                   source: dict | None = None, endpoint_url: str | None = None) -> str:
    """Write `student` as a self-contained folder at `out` (any fsspec URL, `endpoint_url` for S3); returns its
    fingerprint."""
    from storage.checkpoints import has_checkpoint, save_student

    b = Bucket.from_url(out, endpoint_url=endpoint_url)
    if has_checkpoint(b):
        raise ValueError(f"{out} already holds a checkpoint: pass a new --out folder (or delete it)")
    info = {"format": FORMAT, "tokens": tokens.to_dict(), "parts": PARTS,
            "prompt": "read by the student's own updater from m_0 (no teacher needed)",
            "updater": student.updater_cfg.to_dict(), "memory": {"K": student.teacher_cfg.mem_tokens,
                                                                  "d": student.teacher_cfg.d_model,
                                                                  "Z": student.teacher_cfg.Z},
            "source": source or {}, "teacher_fingerprint": teacher_fingerprint}
    b.write_bytes(EXPORT, json.dumps(info, indent=2, sort_keys=True).encode())
    b.write_bytes("README.md", _readme(info).encode())
    return save_student(b, student, teacher_fingerprint, {"exported": True, **(source or {})})


def read_export(url: str, endpoint_url: str | None = None) -> dict:
    """export.json of an exported student folder (checked: present, this format)."""
    from storage.checkpoints import CheckpointError

    b = Bucket.from_url(url, endpoint_url=endpoint_url)
    if not b.exists(EXPORT):
        raise CheckpointError(f"{url} is not an exported student (no {EXPORT}): write one with "
                              "`smt export --run RUN --out DIR`")
    info = json.loads(b.read_bytes(EXPORT))
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{url}: export format {info.get('format')!r} is not {FORMAT!r}: re-export it with "
                              "this version's `smt export`")
    return info


def load_exported(url: str, device: str | torch.device = "cpu", endpoint_url: str | None = None) -> Exported:
    """Load an exported student folder: `Exported(student, tokens, info)`. One call, no teacher, no run."""
    from storage.checkpoints import CheckpointError, has_checkpoint, load_student

    info = read_export(url, endpoint_url)
    if not has_checkpoint(url, endpoint_url=endpoint_url):
        raise CheckpointError(f"{url} has no config.json (the export was interrupted): run `smt export` again")
    student, _, _ = load_student(url, device, endpoint_url=endpoint_url)
    return Exported(student, TokenFormat(**info["tokens"]), info)


def _readme(info: dict) -> str:
    t = info["tokens"]
    return "\n".join([
        "# An exported SMT student (a recurrent network)", "",
        (f"Updater `{info['updater']['arch']}`, memory K={info['memory']['K']} x d={info['memory']['d']} "
         f"(Z={info['memory']['Z']} floats), tokens: {t['unit']}s, vocabulary {t['vocab_size']}."), "",
        "```python",
        "from storage.export import load_exported",
        "e = load_exported('THIS_FOLDER')          # e.student, e.tokens, e.info",
        "```", "",
        "or `smt generate --run THIS_FOLDER --prompt ...`. The prompt is " + info["prompt"] + ".", ""])
