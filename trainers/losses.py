"""The SMT/DMT losses: masked and per-position cross-entropy, and the uniformity loss of memory tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over targets != -1 (0 when there are none). logits (..., V), y (...)."""
    mask = y != -1
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask].float(), y[mask])


def per_position_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per position, 0 where y == -1. logits (B, T, V), y (B, T) -> (B, T)."""
    ce = F.cross_entropy(logits.float().flatten(0, -2), y.clamp(min=0).flatten(), reduction="none").view(y.shape)
    return ce * (y != -1)


def uniformity(mem_tokens: torch.Tensor, t: float = 2.0, sample: int = 512,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """log mean exp(-t ||a - b||^2) over pairs of L2-normalised memory tokens (pooled over batch x tokens,
    subsampled to `sample`). Lower = more spread out; keeps memories from collapsing."""
    z = mem_tokens.reshape(-1, mem_tokens.shape[-1]).float()
    z = z / (z.norm(dim=-1, keepdim=True) + 1e-6)
    if z.shape[0] > sample:
        idx = torch.randperm(z.shape[0], generator=generator, device="cpu")[:sample].to(z.device)
        z = z[idx]
    if z.shape[0] < 2:
        return z.sum() * 0.0
    return torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log()
