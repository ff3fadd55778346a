"""The SMT teacher: an encoder that compresses a context into K memory tokens, and a causal decoder
that predicts the future from those tokens.

Two encoders share one interface (`Encoder`: `CausalEncoder`, `RegisterEncoder`):
- `register` (the reference design): context tokens followed by K learned register tokens, bidirectional
  attention; one encoder pass per memory.
- `causal` (all-position): a causal Transformer over [start ; x_0 .. x_{T-1}] whose hidden state at
  position t is projected into the K memory tokens, so one pass yields every memory m_0..m_T. With
  `window` set, each layer attends to the last `window` positions, so a memory's receptive field is
  encoder_depth*(window-1)+1 positions (a sliding context).

Convention everywhere in this project: m_t is the memory after seeing x_0..x_{t-1}; the readout of
m_t predicts y_{t-1}; decoding m_t with future inputs x_t.. predicts y_{t-1}, y_t, ...
Padding tokens are -1 and are masked out, so an empty context is legal.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.layers import Transformer, causal_mask, rms_normalize


class ConfigError(Exception):
    """A configuration that cannot work; the message names the field and the fix.

    Deliberately not a ValueError: argument parsers (tyro) would swallow it into a multi-line box,
    while the jobs print it as one line."""


@dataclass(kw_only=True)
class TeacherConfig:
    vocab_size: int = 16
    """Token vocabulary of the corpus (data tokens plus special tokens)."""
    d_model: int = 64
    """Width of encoder and decoder; also the width d of each memory token."""
    n_heads: int = 4
    """Attention heads."""
    encoder_depth: int = 2
    """Encoder blocks."""
    decoder_depth: int = 2
    """Decoder blocks."""
    mem_tokens: int = 4
    """K: memory tokens. The memory has Z = K * d_model floats."""
    mem_size: int | None = None
    """Z; optional, only validated against K * d_model (the `Z` property is the size in use)."""
    encoder: str = "causal"
    """'causal' (every memory in one pass) or 'register' (reference: one pass per memory)."""
    window: int | None = None
    """Causal encoder only: each layer attends to at most this many positions (itself included), so m_t
    depends on the last encoder_depth*(window-1)+1 positions (None = the whole prefix)."""

    def __post_init__(self) -> None:
        encoder_kind(self.encoder)  # refuses an unknown name
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: change one")
        z = self.mem_tokens * self.d_model
        if self.mem_size is not None and self.mem_size != z:
            raise ConfigError(
                f"mem_size={self.mem_size} != mem_tokens*d_model={self.mem_tokens}*{self.d_model}={z}: "
                "set mem_size to K*d or change K/d_model")
        if self.vocab_size < 2:
            raise ConfigError(f"vocab_size={self.vocab_size} must be >= 2")
        if self.window is not None and self.window < 1:
            raise ConfigError(f"window={self.window} must be >= 1 or None")

    @property
    def encoder_kind(self) -> Encoder:
        """The encoder this config names (`CausalEncoder` or `RegisterEncoder`)."""
        return encoder_kind(self.encoder)

    @property
    def Z(self) -> int:
        """Flat memory size K * d."""
        return self.mem_tokens * self.d_model

    def to_dict(self) -> dict:
        return asdict(self)


class MemoryDecoder(nn.Module):
    """Causal decoder over [K memory tokens ; embedded future inputs] with an output projection.

    Also the readout g of a recurrent student: `readout(m)` is the first prediction, from memory alone.
    """

    def __init__(self, vocab_size: int, d_model: int, depth: int, n_heads: int, mem_tokens: int):
        super().__init__()
        self.K, self.d = mem_tokens, d_model
        self.embed = nn.Embedding(vocab_size, d_model)
        self.body = Transformer(d_model, depth, n_heads)
        self.to_logits = nn.Linear(d_model, vocab_size)

    def forward(self, m: torch.Tensor, x_fut: torch.Tensor | None = None) -> torch.Tensor:
        """m: (B, Z); x_fut: (B, Tf) or None. Returns logits (B, Tf+1, V) predicting y_{t-1} .. y_{t+Tf-1}."""
        B = m.shape[0]
        h = m.view(B, self.K, self.d)
        if x_fut is not None and x_fut.shape[1] > 0:
            h = torch.cat([h, self.embed(x_fut.clamp(min=0))], dim=1)
        L = h.shape[1]
        out = self.body(h, mask=causal_mask(L, h.device))
        return self.to_logits(out[:, self.K - 1:])

    def readout(self, m: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the next target from memory alone."""
        return self.forward(m)[:, 0]


class Encoder:
    """How a teacher turns contexts into memories. Two kinds behind this one interface (`CausalEncoder`,
    `RegisterEncoder`); `TeacherConfig.encoder` names one and `TeacherConfig.encoder_kind` is the object.
    Stateless: the parameters live on the teacher (`build`), so checkpoints keep their keys."""

    name: str
    one_pass: bool
    """Every memory m_0..m_T of a sequence comes from one encoder pass (cheap drift curves, sampling)."""

    def build(self, t: Teacher) -> None:
        """Add this encoder's own parameters to the teacher."""
        raise NotImplementedError

    def encode(self, t: Teacher, x_ctx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_all(self, t: Teacher, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def memories_at(self, t: Teacher, x: torch.Tensor, pos: torch.Tensor, window: int | None) -> torch.Tensor:
        raise NotImplementedError

    def window(self, cfg: TeacherConfig) -> int | None:
        """The context length every memory sees by construction (None: whatever context it is given)."""
        raise NotImplementedError

    def stream_memories(self, t: Teacher, x: torch.Tensor, Tc: int) -> torch.Tensor:
        """m_Tc..m_T of windows x (B, T), each memory seeing the Tc tokens before it: (B, T-Tc+1, Z)."""
        raise NotImplementedError

    def smt_memories(self, t: Teacher, x: torch.Tensor, t_dec: torch.Tensor, lo: int, window: int | None,
                     sample_dyn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The memories of one SMT batch: (m_in, m_out, token) of the dynamics pairs and m_dec at positions
        t_dec (B, n). `sample_dyn()` gives (B, n') pair positions for an encoder that cannot afford all."""
        raise NotImplementedError

    def readout_memories(self, t: Teacher, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(memories m_{c+1} (B, n, Z), columns c (n,)) covering at least every column of y with a target."""
        raise NotImplementedError


class CausalEncoder(Encoder):
    """A causal Transformer over [start ; x_0 .. x_{T-1}]: the hidden state at position t, projected into K
    tokens, is m_t, so one pass yields every memory (with `window`, a sliding context)."""

    name, one_pass = "causal", True

    def build(self, t: Teacher) -> None:
        d, K = t.cfg.d_model, t.cfg.mem_tokens
        t.start = nn.Parameter(torch.randn(d) * 0.02)
        t.to_mem = nn.Linear(d, K * d)

    def encode(self, t: Teacher, x_ctx: torch.Tensor) -> torch.Tensor:
        # the memory after the last real token (contexts are left-padded); all-padding -> m_empty
        M = self.encode_all(t, x_ctx)
        trailing = torch.flip(x_ctx == -1, [1]).long().cumprod(1).sum(1)
        return M[torch.arange(M.shape[0], device=M.device), x_ctx.shape[1] - trailing]

    def encode_all(self, t: Teacher, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape
        valid = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=x.device), x != -1], 1)
        h = torch.cat([t.start.expand(B, 1, -1).to(t.embed.weight.dtype), t.embed(x.clamp(min=0))], 1)
        pos = torch.cumsum(valid.long(), 1) - 1
        mask = causal_mask(T + 1, x.device, t.cfg.window)[None, None] & valid[:, None, None, :]
        out = t.encoder(h, pos=pos, mask=mask)
        K, d = t.cfg.mem_tokens, t.cfg.d_model
        return rms_normalize(t.to_mem(out).view(B, T + 1, K, d)).view(B, T + 1, K * d)

    def memories_at(self, t: Teacher, x: torch.Tensor, pos: torch.Tensor, window: int | None) -> torch.Tensor:
        return self.encode_all(t, x)[torch.arange(x.shape[0], device=x.device), pos]  # its own window

    def window(self, cfg: TeacherConfig) -> int | None:
        return cfg.window

    def stream_memories(self, t: Teacher, x: torch.Tensor, Tc: int) -> torch.Tensor:
        return self.encode_all(t, x)[:, Tc:]  # the sliding window (== Tc, checked by the caller) does the cut

    def smt_memories(self, t, x, t_dec, lo, window, sample_dyn):
        T = x.shape[1]
        M = self.encode_all(t, x)  # (B, T+1, Z), windowed by the teacher's own config in stream mode
        m_dec = M[torch.arange(x.shape[0], device=x.device)[:, None], t_dec]  # first: the autograd order of old
        return M[:, lo:T], M[:, lo + 1:T + 1], x[:, lo:T], m_dec  # every consecutive pair

    def readout_memories(self, t, x, y, batch: int = 256):
        M = torch.cat([self.encode_all(t, x[i:i + batch]) for i in range(0, x.shape[0], batch)])
        return M[:, 1:], torch.arange(x.shape[1])


class RegisterEncoder(Encoder):
    """The reference design: context tokens followed by K learned register tokens, bidirectional attention;
    one encoder pass per memory."""

    name, one_pass = "register", False

    def build(self, t: Teacher) -> None:
        t.registers = nn.Parameter(torch.randn(t.cfg.mem_tokens, t.cfg.d_model) * 0.02)

    def encode(self, t: Teacher, x_ctx: torch.Tensor) -> torch.Tensor:
        B, Tc = x_ctx.shape
        K, d = t.cfg.mem_tokens, t.cfg.d_model
        valid = x_ctx != -1
        h = torch.cat([t.embed(x_ctx.clamp(min=0)), t.registers.expand(B, K, d).to(t.embed.weight.dtype)], 1)
        keys = torch.cat([valid, torch.ones(B, K, dtype=torch.bool, device=x_ctx.device)], 1)
        # positions count real tokens only, so left padding changes nothing for the real tokens
        pos = torch.cumsum(keys.long(), 1) - 1
        out = t.encoder(h, pos=pos, mask=keys[:, None, None, :])
        return rms_normalize(out[:, Tc:]).reshape(B, K * d)

    def encode_all(self, t: Teacher, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        # One register pass per prefix: the reference cost model (used for labeling and evaluation).
        B, T = x.shape
        ctx = torch.full((T + 1, B, T), -1, dtype=x.dtype, device=x.device)
        for s in range(1, T + 1):
            ctx[s, :, T - s:] = x[:, :s]
        flat = ctx.reshape((T + 1) * B, T)
        mems = torch.cat([self.encode(t, flat[i:i + chunk]) for i in range(0, flat.shape[0], chunk)])
        return mems.view(T + 1, B, -1).transpose(0, 1)

    def memories_at(self, t: Teacher, x: torch.Tensor, pos: torch.Tensor, window: int | None) -> torch.Tensor:
        T = x.shape[1]
        Tc = window or T
        idx = pos[:, None] - Tc + torch.arange(Tc, device=x.device)[None]  # (B, Tc), positions of the context
        ctx = torch.where(idx >= 0, torch.gather(x, 1, idx.clamp(min=0)), torch.full_like(idx, -1))
        return self.encode(t, ctx)

    def window(self, cfg: TeacherConfig) -> int | None:
        return None

    def stream_memories(self, t: Teacher, x: torch.Tensor, Tc: int, chunk: int = 4096) -> torch.Tensor:
        B, T = x.shape
        ctx = x.unfold(1, Tc, 1).reshape(-1, Tc)  # window s = x[s:s+Tc] is the context of m_{s+Tc}
        mems = torch.cat([self.encode(t, ctx[i:i + chunk]) for i in range(0, ctx.shape[0], chunk)])
        return mems.view(B, T - Tc + 1, -1)

    def smt_memories(self, t, x, t_dec, lo, window, sample_dyn):
        B, T = x.shape
        t_dyn = sample_dyn()  # a few pairs per sequence: each memory costs one encoder pass
        both = torch.cat([t_dyn, t_dyn + 1, t_dec], 1)  # one batched encoder call
        xx = x[:, None].expand(B, both.shape[1], T).reshape(-1, T)
        mems = self.memories_at(t, xx, both.reshape(-1), window).view(B, -1, t.cfg.Z)
        n = t_dyn.shape[1]
        rows = torch.arange(B, device=x.device)[:, None]
        return mems[:, :n], mems[:, n:2 * n], x[rows, t_dyn], mems[:, 2 * n:]

    def readout_memories(self, t, x, y):
        B = x.shape[0]
        cols = torch.nonzero((y != -1).any(0)).flatten()  # only memories whose readout has a target
        M = torch.stack([self.memories_at(t, x, torch.full((B,), int(c) + 1, device=x.device), None) for c in cols], 1) \
            if len(cols) else torch.zeros(B, 0, t.mem_size, device=x.device)
        return M, cols


ENCODERS: dict[str, Encoder] = {e.name: e for e in (CausalEncoder(), RegisterEncoder())}


def encoder_kind(name: str) -> Encoder:
    """The encoder a config names: the one place the string becomes an object."""
    if name not in ENCODERS:
        raise ConfigError(f"encoder={name!r} is unknown: use one of {', '.join(ENCODERS)}")
    return ENCODERS[name]


class Teacher(nn.Module):
    def __init__(self, cfg: TeacherConfig):
        super().__init__()
        self.cfg = cfg
        d, K = cfg.d_model, cfg.mem_tokens
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.encoder = Transformer(d, cfg.encoder_depth, cfg.n_heads)
        cfg.encoder_kind.build(self)
        self.decoder = MemoryDecoder(cfg.vocab_size, d, cfg.decoder_depth, cfg.n_heads, K)

    @property
    def mem_size(self) -> int:
        return self.cfg.Z

    @property
    def encoder_kind(self) -> Encoder:
        return self.cfg.encoder_kind

    # ---- encoders (the kind's) ------------------------------------------------------------------
    def encode(self, x_ctx: torch.Tensor) -> torch.Tensor:
        """Memory of a (left-padded) context: (B, Tc) -> (B, Z). Tc may be 0."""
        return self.cfg.encoder_kind.encode(self, x_ctx)

    def encode_all(self, x: torch.Tensor) -> torch.Tensor:
        """Every memory m_0..m_T of a sequence: (B, T) -> (B, T+1, Z), m_t seeing x_<t only."""
        return self.cfg.encoder_kind.encode_all(self, x)

    def memories_at(self, x: torch.Tensor, t: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """m_t for one position per row: x (B, T), t (B,) in [0, T] -> (B, Z).

        The register encoder reads the context x[max(0, t - window):t]; the causal one its own window."""
        return self.cfg.encoder_kind.memories_at(self, x, t, window)

    # ---- decoder ------------------------------------------------------------------------------
    def decode(self, m: torch.Tensor, x_fut: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(m, x_fut)

    def readout(self, m: torch.Tensor) -> torch.Tensor:
        return self.decoder.readout(m)
