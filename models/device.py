"""Where a model runs and in which precision: the device choice and bf16 autocast every stage shares.

It lives in models/, the lowest package, because the label/relabel stages (pipeline/) and the trainers
both run models and must agree on the precision (a label written under autocast is read by a trainer).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(kw_only=True)
class OnDevice:
    """The device field of every config that runs a model, declared once (configs inherit it)."""

    device: str = "auto"
    """'auto' (the GPU when present), 'cpu' or 'cuda'."""


def flush_denormals() -> bool:
    """Flush denormal floats to zero (where the CPU supports it); True when they are flushed.

    Denormals appear as small gradients and activations decay; on x86 every operation on one costs up to
    ~100x, so a run could slow several-fold midway (a BPTT run here went from 0.52 to 1.87 s/step), which
    skews every clock-based comparison. Every training stage calls it through `pick_device`."""
    return bool(torch.set_flush_denormal(True))


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: the GPU when one exists, else the CPU; any other name is passed to torch as it is.
    Also flushes denormals (`flush_denormals`): every stage that runs a model asks for its device here."""
    flush_denormals()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on GPU; a no-op on CPU (tests and this project's laptops run in float32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
