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

    def forward_cached(self, x: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Causal attention of new positions `pos` (L,) over the cached earlier ones and themselves: the rows
        `forward` gives these positions under `causal_mask(.., cache.window)`; appends their keys to `cache`."""
        B, L, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = self.rotary(q, pos), self.rotary(k, pos)
        k, v, mask = cache.extend(k, v)
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

    def forward_cached(self, x: torch.Tensor, pos: torch.Tensor, caches: list[KVCache]):
        """`forward(.., causal_mask)` for new positions only, one `KVCache` per block: (output, last block's input)."""
        before_last = x
        for blk, cache in zip(self.blocks, caches, strict=True):
            before_last = x
            x = blk.forward_cached(x, pos, cache)
        return self.norm(x), before_last


class KVCache:
    """Keys and values of the positions a causal attention layer still reads, for incremental decoding.

    `window=None` keeps every position (the cache grows by one key and value per token); with a window w
    each query reads itself and the w-1 positions before it, so only the last w-1 are kept (constant size).
    Storage grows by doubling and drops its front in place, so appending a token costs O(1) amortised
    copies rather than a whole-cache `torch.cat`."""

    def __init__(self, window: int | None):
        self.window = window
        self.keep = None if window is None else window - 1
        self._k = self._v = None
        self._lo = self._hi = 0  # the valid slice of the storage (the sequence dimension)

    def __len__(self) -> int:
        return self._hi - self._lo

    @property
    def nbytes(self) -> int:
        """Bytes of the cached keys and values (what decoding must carry); 0 when empty."""
        if self._k is None:
            return 0
        per = self._k[:, :, :1].numel() * self._k.element_size()
        return 2 * per * len(self)

    @property
    def allocated_bytes(self) -> int:
        """Bytes of the storage behind the cache (up to about twice `nbytes`: it grows by doubling)."""
        return 0 if self._k is None else 2 * self._k.numel() * self._k.element_size()

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Append the keys/values of L new positions (B, H, L, Dh); returns (keys, values, mask) to attend with:
        the cached positions then the new ones, and a boolean (L, n) mask (None when every query reads every key:
        one new token)."""
        L = k.shape[2]
        c = len(self)
        if self._k is None or self._hi + L > self._k.shape[2]:
            cap = max(16, 2 * (c + L))
            nk, nv = (t.new_empty(*t.shape[:2], cap, t.shape[3]) for t in (k, v))
            if c:
                nk[:, :, :c], nv[:, :, :c] = self._k[:, :, self._lo:self._hi], self._v[:, :, self._lo:self._hi]
            self._k, self._v, self._lo, self._hi = nk, nv, 0, c
        self._k[:, :, self._hi:self._hi + L], self._v[:, :, self._hi:self._hi + L] = k, v
        self._hi += L
        keys, values = self._k[:, :, self._lo:self._hi], self._v[:, :, self._lo:self._hi]
        mask = None
        if L > 1 or (self.window is not None and c + 1 > self.window):
            i, j = torch.arange(L, device=k.device)[:, None] + c, torch.arange(c + L, device=k.device)[None]
            mask = j <= i
            if self.window is not None:
                mask &= j > i - self.window
        if self.keep is not None:
            self._lo = max(self._lo, self._hi - self.keep)
        return keys, values, mask


def causal_mask(L: int, device: torch.device, window: int | None = None) -> torch.Tensor:
    """(L, L) boolean mask: position i attends to j <= i (and j > i - window when a window is set)."""
    i = torch.arange(L, device=device)
    m = i[None, :] <= i[:, None]
    if window is not None:
        m &= i[None, :] > i[:, None] - window
    return m
