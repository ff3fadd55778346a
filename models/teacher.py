"""The SMT teacher: an encoder that compresses a context into K memory tokens, and a causal decoder
that predicts the future from those tokens.

Two encoders share one interface (`Encoder`: `CausalEncoder`, `RegisterEncoder`):
- `register` (the reference design): context tokens followed by K learned register tokens, bidirectional
  attention; one encoder pass per memory.
- `causal` (all-position): a causal Transformer over [start ; x_0 .. x_{T-1}] followed by a memory head
  that turns every position t into the K tokens of m_t, so one pass yields every memory m_0..m_T. With
  `window` set, each layer attends to the last `window` positions, so a memory's receptive field is
  encoder_depth*(window-1)+1 positions (a sliding context). The head (`mem_head`):
  - `attend` (default, `MemoryQueries`): K learned slot queries per position (plus h_t, the stack's
    output at t) attend over the last block's input at the last `mem_span` positions, then an MLP: K
    independent reads, so the memory has K*d degrees of freedom (its Jacobian rank grows with K), at
    O(T * mem_span) extra work per slot, all slots and positions in one attention call.
  - `linear` (checkpoints from before `mem_head`): m_t = Linear(d, K*d)(h_t), K linear images of one
    d-vector, so the memory has rank <= d whatever K is.
  Padding is moved behind the real tokens before the pass, so a left-padded context gives exactly the
  memory of its real tokens (windows and spans count real tokens).

Convention everywhere in this project: m_t is the memory after seeing x_0..x_{t-1}; the readout of
m_t predicts y_{t-1}; decoding m_t with future inputs x_t.. predicts y_{t-1}, y_t, ...
Padding tokens are -1 and are masked out, so an empty context is legal.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import KVCache, Rotary, Transformer, causal_mask, rms_normalize

MEM_HEADS = ("attend", "linear")


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
    mem_head: str = "attend"
    """Causal encoder only: how position t becomes its K memory tokens. 'attend' (`MemoryQueries`): K learned
    slot queries (plus h_t) attend over the stack's states at the last `mem_span` positions, then an MLP,
    so the memory has K*d degrees of freedom; 'linear': one Linear(d, K*d) of h_t (rank <= d whatever K
    is), the head of checkpoints written before this field existed (they load as 'linear')."""
    mem_span: int | None = 32
    """'attend' head: positions each memory query reads (t-span+1..t), capped by `window`; None = all the
    window sees. The memory's rank is at most about (span+1)*d, so keep span >= K for the full K*d.
    Cost per slot is O(T * span): 32 keeps causal labeling >= 100x the register teacher's
    (benchmarks/labeling.py)."""

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
        if self.mem_span is not None and self.mem_span < 1:
            raise ConfigError(f"mem_span={self.mem_span} must be >= 1 or None")
        if self.mem_head not in MEM_HEADS:
            raise ConfigError(f"mem_head={self.mem_head!r} is unknown: use 'attend' (full-rank memory) or "
                              "'linear' (the head of checkpoints from before mem_head)")

    @property
    def encoder_kind(self) -> Encoder:
        """The encoder this config names (`CausalEncoder` or `RegisterEncoder`)."""
        return encoder_kind(self.encoder)

    @property
    def mem_width(self) -> int | None:
        """Positions an 'attend' memory query reads: mem_span capped by window (None: the whole prefix)."""
        spans = [s for s in (self.mem_span, self.window) if s is not None]
        return min(spans) if spans else None

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


class MemoryQueries(nn.Module):
    """The causal encoder's `attend` head: K memory tokens per position, each its own read of the context.

    Slot k's query at position t is Wq h_t + u_k (h_t the stack's output, u_k learned); with one attention
    head of width d and rotary positions it reads the input z of the stack's last block at positions
    t-span+1..t. z, not h: the last block's own queries see those positions, so the receptive field stays
    the encoder's, encoder_depth*(window-1)+1. Then m_{t,k} = rms(r + MLP(r)) with r = h_t + e_k + the
    attention output (e_k learned). The slots weigh the positions differently, so the K tokens are not
    images of one d-vector: the memory's Jacobian has rank up to K*d, not d (a function of h_t alone,
    such as the old `to_mem`, has rank <= d). All (T+1)*K queries go through one
    scaled_dot_product_attention call (`banded_attention`): O(T * span) extra work per slot."""

    def __init__(self, d_model: int, mem_tokens: int, n_heads: int = 1, mlp_ratio: int = 1):
        super().__init__()
        self.K, self.H = mem_tokens, n_heads
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.slot_query = nn.Parameter(torch.randn(mem_tokens, d_model))  # u_k
        self.slot = nn.Parameter(torch.randn(mem_tokens, d_model))  # e_k
        self.norm_kv = nn.RMSNorm(d_model)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))
        self.rotary = Rotary(d_model // n_heads)

    def forward(self, h: torch.Tensor, z: torch.Tensor, span: int | None, first: int = 0) -> torch.Tensor:
        """h: stack output (B, L, d); z: input of its last block (B, L, d), neither padded but at the end.
        Returns the memory tokens of positions first..L-1 (B, L-first, K, d), RMS-normalised; position t
        reads z at t-span+1..t."""
        L = h.shape[1]
        lo = 0 if span is None else max(0, first - span + 1)  # the first key any of these queries reads
        k, v = self.keys(z[:, lo:], torch.arange(lo, L, device=h.device))
        return self.read(h[:, first:], torch.arange(first, L, device=h.device), k, v, span)

    def keys(self, z: torch.Tensor, kpos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated keys and values (B, H, Lk, Dh) of the last block's inputs z (B, Lk, d) at positions kpos."""
        B, Lk, d = z.shape
        k, v = self.kv(self.norm_kv(z)).view(B, Lk, 2, self.H, d // self.H).permute(2, 0, 3, 1, 4)
        return self.rotary(k, kpos), v

    def read(self, h: torch.Tensor, qpos: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             span: int | None) -> torch.Tensor:
        """The memory tokens (B, Lq, K, d) of positions qpos (the last Lq of the keys' positions), h (B, Lq, d)."""
        B, Lq, d = h.shape
        K, H = self.K, self.H
        Dh = d // H
        # rotary is linear: R_t(Wq h_t + u_k) = R_t(Wq h_t) + R_t(u_k), the second one batch-free
        qh = self.rotary(self.query(h).view(B, Lq, H, Dh).transpose(1, 2), qpos).transpose(1, 2)  # B Lq H Dh
        qu = self.rotary(self.slot_query.to(qh.dtype).view(K * H, 1, Dh).expand(K * H, Lq, Dh), qpos)
        q = qh[:, :, None] + qu.view(K, H, Lq, Dh).permute(2, 0, 1, 3)  # (B, Lq, K, H, Dh)
        o = banded_attention(q, k, v, span)  # (B, Lq, K, H, Dh)
        r = h[:, :, None] + self.slot + o.reshape(B, Lq, K, d)
        return rms_normalize(r + self.mlp(r))


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, width: int | None) -> torch.Tensor:
    """Causal attention of K queries per position over the last `width` positions (None: all up to it).

    q (B, Lq, K, H, Dh) for the last Lq of the Lk positions of k, v (B, H, Lk, Dh) -> (B, Lq, K, H, Dh):
    query (i, k) at position i' = Lk-Lq+i attends the keys j with i'-width < j <= i'. One
    scaled_dot_product_attention call with a boolean mask. When the band is narrow, the queries are cut
    into blocks of `width`, each against the width-1 keys before it and its own, so the work is
    O(Lq * width) per slot rather than O(Lq * Lk)."""
    B, Lq, K, H, Dh = q.shape
    Lk, off = k.shape[2], k.shape[2] - Lq
    w = Lk if width is None else min(width, Lk)
    if 3 * w >= Lk:  # one dense block is as cheap
        i, a = torch.arange(Lq, device=q.device), torch.arange(Lk, device=q.device)
        mask = (a[None] <= i[:, None] + off) & (a[None] > i[:, None] + off - w)
        mask = mask.repeat_interleave(K, 0)  # rows (i, k), as q
        q = q.permute(0, 3, 1, 2, 4).reshape(B, H, Lq * K, Dh)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return o.view(B, H, Lq, K, Dh).permute(0, 2, 3, 1, 4)
    c, n = w, -(-Lq // w)  # blocks of c queries; block j reads keys off+j*c-w+1 .. off+j*c+c-1
    cw = c + w - 1
    qb = F.pad(q, (0, 0, 0, 0, 0, 0, 0, n * c - Lq)).view(B, n, c, K, H, Dh)
    qb = qb.permute(0, 1, 4, 2, 3, 5).reshape(B * n, H, c * K, Dh)
    left = max(0, w - 1 - off)  # zero keys before position 0
    s0 = off + left - w + 1  # where block 0 starts among the padded keys

    def blocks(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (0, 0, left, s0 + n * c + w - 1 - Lk - left))[:, :, s0:]
        t = t.unfold(2, cw, c)  # (B, H, n, Dh, cw)
        return t.permute(0, 2, 1, 4, 3).reshape(B * n, H, cw, Dh)

    qa, kb = torch.arange(c, device=q.device), torch.arange(cw, device=q.device)
    band = (kb[None] >= qa[:, None]) & (kb[None] < qa[:, None] + w)  # (c, cw): key b of query a
    real = s0 + kb[None] + c * torch.arange(n, device=q.device)[:, None] >= left  # (n, cw): not padding
    mask = (band[None] & real[:, None]).repeat_interleave(K, 1)  # (n, c*K, cw)
    mask = mask[None].expand(B, n, c * K, cw).reshape(B * n, 1, c * K, cw)
    o = F.scaled_dot_product_attention(qb, blocks(k), blocks(v), attn_mask=mask)  # (B*n, H, c*K, Dh)
    return o.view(B, n, H, c, K, Dh).permute(0, 1, 3, 4, 2, 5).reshape(B, n * c, K, H, Dh)[:, :Lq]


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
    """A causal Transformer over [start ; x_0 .. x_{T-1}] and a memory head that turns position t into the K
    tokens of m_t (`mem_head`: `MemoryQueries`, or the old Linear `to_mem`), so one pass yields every memory
    (with `window`, a sliding context)."""

    name, one_pass = "causal", True

    def build(self, t: Teacher) -> None:
        d, K = t.cfg.d_model, t.cfg.mem_tokens
        t.start = nn.Parameter(torch.randn(d) * 0.02)
        if t.cfg.mem_head == "linear":
            t.to_mem = nn.Linear(d, K * d)
        else:
            t.mem_queries = MemoryQueries(d, K)

    def encode(self, t: Teacher, x_ctx: torch.Tensor) -> torch.Tensor:
        # the memory after the last real token (contexts are left-padded); all-padding -> m_empty
        valid = x_ctx != -1
        M = self._compact_all(t, x_ctx, valid)
        return M[torch.arange(M.shape[0], device=M.device), valid.sum(1)]

    def encode_all(self, t: Teacher, x: torch.Tensor) -> torch.Tensor:
        valid = x != -1
        padded = not bool(valid.all())  # one host sync per call, shared with _compact_all
        M = self._compact_all(t, x, valid, padded=padded)
        if not padded:
            return M
        seen = torch.cat([torch.zeros_like(valid[:, :1], dtype=torch.long), valid.long().cumsum(1)], 1)
        return M.gather(1, seen[..., None].expand(-1, -1, M.shape[-1]))  # m_t: after x_<t's real tokens

    def _compact_all(self, t: Teacher, x: torch.Tensor, valid: torch.Tensor, first: int = 0,
                     padded: bool | None = None) -> torch.Tensor:
        """Memories after first..T real tokens (B, T+1-first, Z): padding is moved behind the real tokens
        first, so every memory sees [start ; its real tokens] whatever the padding (and windows count real
        tokens). The stack runs over every position; the memory head only over the ones returned."""
        if padded if padded is not None else not bool(valid.all()):
            x = x.gather(1, torch.argsort((~valid).long(), dim=1, stable=True))
        B, T = x.shape
        h = torch.cat([t.start.expand(B, 1, -1).to(t.embed.weight.dtype), t.embed(x.clamp(min=0))], 1)
        mask = causal_mask(T + 1, x.device, t.cfg.window)  # padding is last: no real token sees it
        K, d = t.cfg.mem_tokens, t.cfg.d_model
        L = T + 1 - first
        if t.cfg.mem_head == "linear":
            out = t.encoder(h, mask=mask)[:, first:]
            return rms_normalize(t.to_mem(out).view(B, L, K, d)).view(B, L, K * d)
        out, last_in = t.encoder(h, mask=mask, last_input=True)
        return t.mem_queries(out, last_in, t.cfg.mem_width, first).view(B, L, K * d)

    def memories_at(self, t: Teacher, x: torch.Tensor, pos: torch.Tensor, window: int | None) -> torch.Tensor:
        return self.encode_all(t, x)[torch.arange(x.shape[0], device=x.device), pos]  # its own window

    def window(self, cfg: TeacherConfig) -> int | None:
        return cfg.window

    def stream_memories(self, t: Teacher, x: torch.Tensor, Tc: int) -> torch.Tensor:
        # the sliding window (== Tc, checked by the caller) does the cut; the head runs on m_Tc.. only
        valid = x != -1
        if bool(valid.all()):
            return self._compact_all(t, x, valid, Tc, padded=False)
        return self.encode_all(t, x)[:, Tc:]

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

    # ---- inference ----------------------------------------------------------------------------
    def memory_after(self, x: torch.Tensor) -> torch.Tensor:
        """m_T of each row of x (B, T), recomputed from scratch (no cache): the causal encoder runs its stack
        over every position and its memory head at the last one only; the register one encodes x."""
        if not self.encoder_kind.one_pass:
            return self.encode(x)
        return self.encoder_kind.stream_memories(self, x, x.shape[1])[:, 0]

    def incremental(self, batch: int = 1) -> IncrementalMemory:
        """Incremental decoding with a KV cache (causal encoder only): `IncrementalMemory`."""
        return IncrementalMemory(self, batch)


class IncrementalMemory:
    """Causal decoding of a causal teacher with a KV cache: the memory after each new token without re-encoding.

    Starts at m_0 (the memory of the empty context, `memory`); `feed(x)` appends L tokens (B, L) and returns
    m_{t+1}..m_{t+L} (B, L, Z), equal to `encode_all` on the whole sequence up to float rounding. Each encoder
    block keeps the keys and values of earlier positions (`KVCache`: all of them, or the last window-1 with
    `window`), and the 'attend' memory head keeps its own keys of the last mem_span positions, so a token
    costs O(cached positions), not a pass over the sequence. `nbytes` is the state carried between tokens."""

    def __init__(self, teacher: Teacher, batch: int = 1):
        cfg = teacher.cfg
        if not teacher.encoder_kind.one_pass:
            raise ConfigError(f"incremental decoding needs the causal encoder (the {cfg.encoder} one encodes each "
                              "memory from its whole context): use memory_after(x) to recompute, or a causal teacher")
        self.teacher, self.batch, self.pos = teacher, batch, 0
        self.caches = [KVCache(cfg.window) for _ in teacher.encoder.blocks]
        self.head = KVCache(cfg.mem_width) if cfg.mem_head == "attend" else None
        start = teacher.start.expand(batch, 1, -1).to(teacher.embed.weight.dtype)
        self.memory = self._extend(start)[:, 0]

    @property
    def nbytes(self) -> int:
        """Bytes of the keys and values carried to the next token (every block's, and the memory head's)."""
        return sum(c.nbytes for c in self.caches) + (self.head.nbytes if self.head is not None else 0)

    @property
    def positions(self) -> int:
        """Tokens fed so far (the start token not counted)."""
        return self.pos - 1

    def feed(self, x: torch.Tensor) -> torch.Tensor:
        """Append tokens x (B, L) (no padding); returns their memories m_{t+1}..m_{t+L} (B, L, Z)."""
        if x.dim() != 2 or x.shape[0] != self.batch:
            raise ValueError(f"feed takes tokens of shape ({self.batch}, L), got {tuple(x.shape)}: one row per sequence")
        if x.numel() and int(x.min()) < 0:
            raise ValueError("incremental decoding takes no padding (-1): feed the real tokens only")
        if x.shape[1] == 0:
            return self.memory[:, None, :0]
        M = self._extend(self.teacher.embed(x))
        self.memory = M[:, -1]
        return M

    def _extend(self, h: torch.Tensor) -> torch.Tensor:
        t, cfg = self.teacher, self.teacher.cfg
        B, L, d = h.shape
        pos = torch.arange(self.pos, self.pos + L, device=h.device)
        self.pos += L
        out, last_in = t.encoder.forward_cached(h, pos, self.caches)
        K = cfg.mem_tokens
        if self.head is None:
            return rms_normalize(t.to_mem(out).view(B, L, K, d)).view(B, L, K * d)
        k, v = t.mem_queries.keys(last_in, pos)
        k, v, _ = self.head.extend(k, v)  # the span's band is the head's own (banded_attention)
        return t.mem_queries.read(out, pos, k, v, cfg.mem_width).view(B, L, K * d)
