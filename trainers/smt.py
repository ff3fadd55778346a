"""The SMT objective: joint pretraining of a teacher and a reference updater (the paper's stage 1), and
the same dynamics term for a student trained on stored transitions (`SMTObjective`).

Per batch of sequences x, y (B, T):
- memories: the causal teacher yields m_0..m_T in one pass; the register teacher encodes one context
  per sampled position (the reference design);
- L_dec: decode m_t with the future inputs x_t.. and predict y_{t-1}, y_t, ... (Tf steps; default the whole
  remaining future, so memories far from a sparse target still get signal);
- L_dyn: MSE(f(m_t, x_t), m_{t+1}), on every consecutive pair (causal) or the sampled pairs (register);
  nothing is detached unless `detach` is set, so the dynamics loss also shapes the teacher;
- L_unif: uniformity of the memory tokens.
L = w_dec L_dec + w_dyn L_dyn + w_unif L_unif (reference weights 1, 0.1, 0.001).
A student trained from target shards (trainers/student.py) minimises the same L_dyn on the stored
(m_t, x_t, m_{t+1}), plus an optional readout cross-entropy: `SMTObjective`. `dynamics_loss` is the one
place L_dyn is written.

Positions: prefix mode samples t in [0, T] inclusive (the final memory is always decoded) and
oversamples positions whose first prediction is a target; stream mode uses positions t >= Tc only,
each memory seeing a context of at most Tc tokens, or with `all_memories` (causal teacher) every memory of the
window: the pairs m_0 -> m_1 .. m_{T-1} -> m_T and the decoder at every t in 1..T.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.teacher import ConfigError
from trainers.losses import masked_ce, uniformity


@dataclass(kw_only=True)
class SMTConfig:
    mode: str = "prefix"
    """'prefix' (sequences start at t=0: every prefix is a memory) or 'stream' (sliding Tc windows)."""
    Tc: int | None = None
    """Stream mode: context length of each memory (required there)."""
    Tf: int | None = None
    """Future steps decoded per memory; None = the whole remaining sequence."""
    dec_positions: int = 4
    """Memories decoded per sequence (the final one is always among them in prefix mode)."""
    dyn_pairs: int = 4
    """Register teacher: transitions per sequence (the causal teacher uses every consecutive pair)."""
    target_frac: float = 0.5
    """Fraction of sampled positions drawn from those whose first prediction is a target."""
    w_dec: float = 1.0
    """Weight of the predictive-state (decoder) loss."""
    w_dyn: float = 0.1
    """Weight of the dynamics loss."""
    w_unif: float = 0.001
    """Weight of the uniformity loss."""
    gamma: float = 1.0
    """Per-step decay of the decoder loss over the future (1 = none)."""
    detach: bool = False
    """Stop the dynamics gradient at the teacher (teacher trained by L_dec only)."""
    all_memories: bool = False
    """Stream mode, causal teacher: train every memory its one pass computes, not only t >= Tc: the dynamics
    pairs from m_0 on and the decoder at every t in 1..T (its future cut at the window's end; dec_positions unused)."""

    def __post_init__(self) -> None:
        if self.mode not in ("prefix", "stream"):
            raise ConfigError(f"mode={self.mode!r} is unknown: use 'prefix' or 'stream'")
        if self.streaming and not self.Tc:
            raise ConfigError("mode='stream' needs Tc (the context length of a memory): pass --smt.Tc N")
        if self.all_memories and not self.streaming:
            raise ConfigError("all_memories=True is for mode='stream' (prefix mode already trains every memory "
                              "from t=0): drop --smt.all-memories")

    def check_encoder(self, encoder) -> None:
        """Refuse options the teacher's encoder kind cannot support."""
        if self.all_memories and not encoder.one_pass:
            raise ConfigError(f"all_memories=True needs the causal teacher (every memory in one pass); the "
                              f"{encoder.name} encoder costs one pass per memory: use --teacher.encoder causal "
                              "or drop --smt.all-memories")

    @property
    def streaming(self) -> bool:
        """Stream mode (memories of sliding Tc windows); else prefix mode."""
        return self.mode == "stream"  # the one place the mode name is read

    @property
    def start(self) -> int:
        """The prompt of the evaluations and the first memory the losses use by default: Tc in stream mode, 0 in
        prefix mode."""
        return self.Tc if self.streaming else 0

    @property
    def first_memory(self) -> int:
        """The first memory position the losses use: `start`, or 0 with `all_memories`."""
        return 0 if self.all_memories else self.start

    def check_length(self, T: int) -> None:
        if self.streaming and self.Tc + (self.Tf or 1) > T:
            raise ConfigError(f"Tc+Tf={self.Tc}+{self.Tf or 1} > T={T}: use shorter Tc/Tf or longer windows")


def dynamics_loss(step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], m_in: torch.Tensor,
                  tok: torch.Tensor, m_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L_dyn over transitions: (f(m_t, x_t), MSE(f(m_t, x_t), m_{t+1})) for m_in, m_out (N, Z), tok (N,)."""
    pred = step(m_in, tok)
    return pred, F.mse_loss(pred.float(), m_out.float())


class SMTObjective(nn.Module):
    """A student's SMT loss on stored transitions: L_dyn + readout_weight * CE(g(f(m_t, x_t)), y_t), where g
    is the student's readout. A module, so DDP can wrap it (its forward is what synchronises gradients)."""

    def __init__(self, student, readout_weight: float) -> None:
        super().__init__()
        self.student, self.readout_weight = student, readout_weight

    def forward(self, state_in: torch.Tensor, token: torch.Tensor, state_out: torch.Tensor,
                y: torch.Tensor) -> dict[str, torch.Tensor]:
        pred, mse = dynamics_loss(self.student.step, state_in, token, state_out)
        out = {"loss": mse, "mse": mse}
        if self.readout_weight > 0:
            mask = y != -1
            ce = (F.cross_entropy(self.student.readout(pred[mask]).float(), y[mask]) if bool(mask.any())
                  else pred.sum() * 0.0)
            out["ce"], out["loss"] = ce, mse + self.readout_weight * ce
        return out


def _sample_positions(y: torch.Tensor, n: int, lo: int, hi: int, frac: float, g: torch.Generator,
                      force_last: bool) -> torch.Tensor:
    """(B, n) positions t in [lo, hi]; a `frac` share drawn from positions whose first prediction
    (y_{t-1}) is a target, when a row has any."""
    B = y.shape[0]
    dev = y.device
    t_all = torch.arange(lo, hi + 1, device=dev)
    prev = torch.where(t_all > 0, y[:, (t_all - 1).clamp(min=0)], torch.full((B, len(t_all)), -1, device=dev))
    tgt = (prev != -1).float()
    uni = torch.ones_like(tgt)
    has = tgt.sum(1, keepdim=True) > 0
    pick_t = torch.rand(B, n, generator=g).to(dev) < frac
    w_t = torch.where(has, tgt, uni)
    a = torch.multinomial(w_t, n, replacement=True, generator=g) if dev.type == "cpu" else \
        torch.multinomial(w_t.cpu(), n, replacement=True, generator=g).to(dev)
    b = torch.randint(0, len(t_all), (B, n), generator=g).to(dev)
    idx = torch.where(pick_t, a, b)
    if force_last:
        idx[:, 0] = len(t_all) - 1
    return t_all[idx]


def _futures(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, Tf: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For positions t (B, n): future inputs x[t : t+Tf] (B, n, Tf) and targets y[t-1 : t+Tf] (B, n, Tf+1),
    padded with -1 past the end (and y_{-1} = -1)."""
    B, T = x.shape
    xi = t[..., None] + torch.arange(Tf, device=x.device)
    yi = t[..., None] - 1 + torch.arange(Tf + 1, device=x.device)
    rows = torch.arange(B, device=x.device)[:, None, None]
    xf = torch.where(xi < T, x[rows, xi.clamp(max=T - 1)], -1)
    yf = torch.where((yi >= 0) & (yi < T), y[rows, yi.clamp(0, T - 1)], -1)
    return xf, yf


def smt_losses(teacher, updater, x: torch.Tensor, y: torch.Tensor, cfg: SMTConfig, g: torch.Generator) -> dict:
    T = x.shape[1]
    Z = teacher.mem_size
    K, d = teacher.cfg.mem_tokens, teacher.cfg.d_model
    lo = cfg.first_memory
    Tf = cfg.Tf or (T - lo)
    if cfg.all_memories:  # every memory m_1..m_T decoded (m_0 has no target y_{-1}; the causal pass computes them all;
        # PretrainConfig refuses it for the register teacher)
        t_dec = torch.arange(1, T + 1, device=x.device).expand(x.shape[0], T)
    else:
        t_dec = _sample_positions(y, cfg.dec_positions, lo, T, cfg.target_frac, g, force_last=not cfg.streaming)

    # the causal teacher trains on every consecutive pair; the register one on `dyn_pairs` sampled pairs
    m_in, m_out, tok, m_dec = teacher.encoder_kind.smt_memories(
        teacher, x, t_dec, lo, cfg.Tc if cfg.streaming else None,
        lambda: _sample_positions(y, cfg.dyn_pairs, lo, T - 1, cfg.target_frac, g, force_last=False))

    xf, yf = _futures(x, y, t_dec, Tf)
    logits = teacher.decode(m_dec.reshape(-1, Z), xf.reshape(-1, Tf))  # (B*n, Tf+1, V)
    yf = yf.reshape(-1, Tf + 1)
    if cfg.gamma != 1.0:
        w = cfg.gamma ** torch.arange(Tf + 1, device=x.device, dtype=torch.float32)
        ce = F.cross_entropy(logits.float().flatten(0, 1), yf.clamp(min=0).flatten(), reduction="none")
        mask = (yf != -1).flatten().float()
        l_dec = (ce * mask * w.repeat(yf.shape[0])).sum() / mask.sum().clamp(min=1)
    else:
        l_dec = masked_ce(logits, yf)
    l_dec0 = masked_ce(logits[:, 0], yf[:, 0])

    m_src = m_in.detach() if cfg.detach else m_in
    m_tgt = m_out.detach() if cfg.detach else m_out
    _, l_dyn = dynamics_loss(updater, m_src.reshape(-1, Z), tok.reshape(-1), m_tgt.reshape(-1, Z))
    l_unif = uniformity(m_dec.reshape(-1, K, d), generator=g)
    loss = cfg.w_dec * l_dec + cfg.w_dyn * l_dyn + cfg.w_unif * l_unif
    return {"loss": loss, "loss_decoder": l_dec, "loss_decoder0": l_dec0, "loss_dyn": l_dyn, "loss_unif": l_unif}
