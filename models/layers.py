"""Transformer building blocks shared by the teacher, the updaters and the readout.

Pre-norm blocks with RMSNorm, rotary position embeddings and a GELU MLP. Attention goes through
`scaled_dot_product_attention` with an explicit boolean mask, so padding, causality and sliding
windows are all expressed the same way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMS-normalise the last dimension with no learnable scale (how memory tokens are normalised)."""
    return F.rms_norm(x, x.shape[-1:], eps=eps)


class Rotary(nn.Module):
    """Rotary position embedding applied to queries and keys (relative positions only)."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # x: (B, H, L, Dh), pos: (L,) or (B, L) positions
        ang = pos.to(torch.float32)[..., None] * self.inv_freq  # (.., L, Dh/2)
        if ang.dim() == 3:
            ang = ang[:, None]  # (B, 1, L, Dh/2)
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)


class Block(nn.Module):
    """One pre-norm Transformer block: attention then MLP, both residual."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}: pick n_heads dividing d_model")
        self.n_heads = n_heads
        self.norm1 = nn.RMSNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.norm2 = nn.RMSNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(), nn.Linear(mlp_ratio * d_model, d_model)
        )
        self.rotary = Rotary(d_model // n_heads)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = self.rotary(q, pos), self.rotary(k, pos)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(att.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of blocks with a final RMSNorm. `mask` is boolean (True = may attend), broadcastable
    to (B, 1, L, L)."""

    def __init__(self, d_model: int, depth: int, n_heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(depth))
        self.norm = nn.RMSNorm(d_model)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                last_input: bool = False):
        """The normed output; with `last_input`, (output, the input of the last block)."""
        if pos is None:
            pos = torch.arange(x.shape[1], device=x.device)
        before_last = x
        for blk in self.blocks:
            before_last = x
            x = blk(x, pos, mask)
        return (self.norm(x), before_last) if last_input else self.norm(x)


def causal_mask(L: int, device: torch.device, window: int | None = None) -> torch.Tensor:
    """(L, L) boolean mask: position i attends to j <= i (and j > i - window when a window is set)."""
    i = torch.arange(L, device=device)
    m = i[None, :] <= i[:, None]
    if window is not None:
        m &= i[None, :] > i[:, None] - window
    return m
