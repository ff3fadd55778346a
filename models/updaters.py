"""Recurrent updaters f(m_t, x_t) -> m_{t+1} and their registry.

Every updater maps a flat memory (B, Z) = K tokens of width d, plus one input token per row, to the next
memory, RMS-normalised per memory token like the teacher's, so teacher memories are valid inputs.
A student architecture is a name in `UPDATERS` plus an `UpdaterConfig`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.layers import Transformer, rms_normalize
from models.teacher import ConfigError, TeacherConfig


@dataclass(kw_only=True)
class UpdaterConfig:
    arch: str = "mlp"
    """Updater architecture: one of the registered names (transformer, mlp, gru)."""
    vocab_size: int = 16
    """Input vocabulary (same as the teacher's)."""
    mem_tokens: int = 4
    """K, as in the teacher."""
    d_model: int = 64
    """d, the width of a memory token, as in the teacher."""
    depth: int = 2
    """Blocks (transformer, mlp); ignored by gru."""
    n_heads: int = 4
    """Attention heads (transformer only)."""
    hidden: int = 512
    """Hidden width of the residual MLP blocks (mlp only)."""

    def __post_init__(self) -> None:
        if self.arch not in UPDATERS:
            raise ConfigError(f"updater arch={self.arch!r} is unknown: use one of {', '.join(sorted(UPDATERS))}")
        if self.depth < 1:
            raise ConfigError(f"updater depth={self.depth} must be >= 1")

    @property
    def mem_size(self) -> int:
        return self.mem_tokens * self.d_model

    def to_dict(self) -> dict:
        return asdict(self)


def matched_updater(teacher_cfg: TeacherConfig, updater: UpdaterConfig) -> UpdaterConfig:
    """The updater config with K, d and vocab taken from the teacher."""
    return UpdaterConfig(**{**asdict(updater), "vocab_size": teacher_cfg.vocab_size,
                            "mem_tokens": teacher_cfg.mem_tokens, "d_model": teacher_cfg.d_model})


class Updater(nn.Module):
    """Base: subclasses implement `step` on (B, Z) memories and (B,) tokens."""

    def __init__(self, cfg: UpdaterConfig):
        super().__init__()
        self.cfg = cfg
        self.K, self.d = cfg.mem_tokens, cfg.d_model

    def normalize(self, m: torch.Tensor) -> torch.Tensor:
        B = m.shape[0]
        return rms_normalize(m.view(B, self.K, self.d)).view(B, self.K * self.d)

    def forward(self, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.step(m, x.clamp(min=0)))


class TransformerUpdater(Updater):
    """The reference updater: a bidirectional Transformer over [K memory tokens ; input token]."""

    def __init__(self, cfg: UpdaterConfig):
        super().__init__(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.body = Transformer(cfg.d_model, cfg.depth, cfg.n_heads)

    def step(self, m, x):
        h = torch.cat([m.view(-1, self.K, self.d), self.embed(x)[:, None]], 1)
        return self.body(h)[:, : self.K].reshape(-1, self.K * self.d)


class MLPUpdater(Updater):
    """A non-gated residual MLP on the flat memory: m <- m + MLP([norm(m) ; embed(x)]) per block."""

    def __init__(self, cfg: UpdaterConfig):
        super().__init__(cfg)
        Z = cfg.mem_size
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(Z + cfg.d_model), nn.Linear(Z + cfg.d_model, cfg.hidden), nn.GELU(),
                          nn.Linear(cfg.hidden, Z))
            for _ in range(cfg.depth))

    def step(self, m, x):
        e = self.embed(x)
        for blk in self.blocks:
            m = m + blk(torch.cat([m, e], -1))
        return m


class GRUUpdater(Updater):
    """A GRU cell whose hidden state is the flat memory, renormalised after each step."""

    def __init__(self, cfg: UpdaterConfig):
        super().__init__(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.cell = nn.GRUCell(cfg.d_model, cfg.mem_size)

    def step(self, m, x):
        return self.cell(self.embed(x), m)


UPDATERS: dict[str, Callable[[UpdaterConfig], Updater]] = {
    "transformer": TransformerUpdater,
    "mlp": MLPUpdater,
    "gru": GRUUpdater,
}


def build_updater(cfg: UpdaterConfig) -> Updater:
    return UPDATERS[cfg.arch](cfg)
