"""Online DMT (the paper's stage 2): fix rollout drift by training the updater on its own states.

The teacher is frozen. For each batch, the student starts from a teacher memory (m_0 in prefix mode,
m_Tc in stream mode), rolls out on the true inputs with its state detached between steps (a one-step
gradient, never BPTT), and each step is trained towards the teacher's memory of the same prefix:
    L = w_state * MSE(f(m_hat_t, x_t), m*_{t+1}) + w_readout * CE(g(sg(m_hat_{t+1})), y_t)
The readout term sees detached memories, so it trains only the readout.
Against the dip a strong SMT student shows in its first DMT steps (trainers/dmt/stability.py): `beta` trains a
decaying share of each batch on the teacher's own states, `ema` rolls out an EMA copy of the student, and
`carry_optimizer` starts from the SMT run's AdamW moments.
The offline twin (roll out, record, relabel, train on the union) is the DMT actor (`actor.py`, relabelling
with `pipeline/relabel.py`) beside a student run, in lockstep (`lockstep.py`) or alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.device import autocast, pick_device
from storage.checkpoints import save_student
from trainers.common import OptimConfig, clip_and_step, open_run
from trainers.dmt.stability import EMA, check_beta, load_moments, smt_moments, teacher_share
from trainers.evaluate import eval_batch, evaluate_student
from trainers.losses import masked_ce
from trainers.tracking import TrackingConfig


@dataclass(kw_only=True)
class OnlineDMTConfig:
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-5, schedule="cosine"))
    """Optimiser (reference: lr 3e-5, cosine decay)."""
    steps: int = 1500
    """Maximum steps."""
    seconds: float | None = None
    """Training budget in seconds of `clock` (evaluation excluded)."""
    batch_size: int = 32
    """Sequences per step."""
    Td: int | None = None
    """Rollout steps per sequence (None = to the end of the sequence)."""
    prompt: int = 0
    """Start of the rollout (0 in prefix mode; Tc in stream mode)."""
    w_state: float = 10.0
    """Weight of the one-step state MSE."""
    w_readout: float = 1.0
    """Weight of the readout cross-entropy (on detached memories: trains the readout only)."""
    train_readout: bool = True
    """Train the student's readout (initialised from the teacher decoder)."""
    eval_every: int = 50
    """Evaluate the rolled-out student every N steps."""
    eval_size: int = 256
    """Sequences of the valid split for the evaluations that drive `stop_at_acc`."""
    stop_at_acc: float | None = None
    """Stop once the rolled-out accuracy on the valid split reaches this (None = never); checked before the first
    step too, so a student that already passes is not trained (benchmarks/results/length_scaling_warm.md: DMT
    trained a passing student into failure)."""
    beta: float = 0.0
    """Share of each batch's sequences trained from the teacher's own states m*_t at step 1 (DAgger's beta)."""
    beta_halflife: float = 10.0
    """DMT steps over which that share halves (towards 0)."""
    ema: float = 0.0
    """Roll out an EMA copy of the student with this decay per step (0 = roll out the student itself)."""
    carry_optimizer: bool = False
    """Start from the SMT run's AdamW moments (`dmt_online(smt_run=...)`) instead of fresh ones."""
    seed: int = 0
    """Random seed."""
    clock: str = "wall"
    """Clock of `seconds` and of logged times: 'wall', or 'process' (this process's CPU seconds)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""

    def __post_init__(self) -> None:
        check_beta(self.beta, self.beta_halflife, "OnlineDMTConfig")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"OnlineDMTConfig: ema={self.ema} must be in [0, 1) (0 = roll out the student itself)")


@torch.no_grad()
def dmt_inputs(policy, M: torch.Tensor, x: torch.Tensor, start: int, Td: int, n_teacher: int = 0) -> torch.Tensor:
    """The states (B, Td, Z) a DMT batch trains from: rows [0, n_teacher) the teacher's own m*_start.. (DAgger's
    beta share), the others `policy` rolled out from the teacher memory at `start` on the true inputs."""
    parts = [M[:n_teacher, start:start + Td]] if n_teacher else []
    if n_teacher < M.shape[0]:
        m = M[n_teacher:, start]
        states = [m]
        for t in range(start, start + Td - 1):
            m = policy.step(m, x[n_teacher:, t])
            states.append(m)
        parts.append(torch.stack(states, 1).to(M.dtype))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def dmt_losses(student, M: torch.Tensor, x: torch.Tensor, y: torch.Tensor, start: int, Td: int,
               w_state: float, w_readout: float, policy=None, n_teacher: int = 0) -> dict:
    """One DMT batch: teacher memories M (B, T+1, Z) of x (B, T). The states come from `policy` (default the
    student itself; the gradient never crosses a step, so rolling out first and predicting every step in one
    batched call is the same one-step loss), the first `n_teacher` rows from the teacher's own states."""
    m_in = dmt_inputs(student if policy is None else policy, M, x, start, Td, n_teacher)
    B, _, Z = m_in.shape
    S = student.step(m_in.reshape(-1, Z), x[:, start:start + Td].reshape(-1)).view(B, Td, Z)  # m_hat_{t+1}
    l_state = F.mse_loss(S.float(), M[:, start + 1:start + Td + 1].float())
    yy = y[:, start:start + Td]
    sel = (yy != -1).any(0)  # only positions that hold a target need the readout
    if bool(sel.any()):
        Ss = S[:, sel].detach()
        logits = student.readout(Ss.reshape(-1, Ss.shape[-1])).view(Ss.shape[0], Ss.shape[1], -1)
        l_read = masked_ce(logits, yy[:, sel])
    else:
        l_read = S.sum() * 0.0
    return {"loss": w_state * l_state + w_readout * l_read, "loss_state": l_state, "loss_readout": l_read}


def dmt_online(student, teacher, corpus, cfg: OnlineDMTConfig, out: str | Path | None = None,
               teacher_fingerprint: str | None = None, quiet: bool = False, on_eval=None, reporter=None,
               carry: dict | None = None, stop_step: int | None = None, smt_run: str | None = None,
               tracking: TrackingConfig | None = None) -> dict:
    """Train `student` by online DMT. With `stop_step`, stop there and return a `carry` (optimiser, schedule,
    data RNG, step, EMA policy) that a later call continues from, so one cosine schedule spans several DMT
    rounds. `reporter` as in `trainers.pretrain.pretrain` (report-only figures, off the training clock).
    `smt_run`: the student run the SMT student comes from (its AdamW moments start DMT with carry_optimizer).
    `tracking`: also log the rows and the config to TensorBoard / W&B (calls that carry on continue one run)."""
    dev = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    teacher = teacher.to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = student.to(dev).train()
    named = [(n, p) for n, p in student.named_parameters()
             if n.startswith("updater.") or (cfg.train_readout and n.startswith("readout_net."))]
    params = [p for _, p in named]
    if carry is None:
        opt, sched = cfg.optim.build(params, cfg.steps)
        if cfg.carry_optimizer:
            if smt_run is None:
                raise ValueError("OnlineDMTConfig.carry_optimizer needs the SMT run: pass smt_run=<student run URL>")
            load_moments(opt, named, smt_moments(smt_run))
        rng, step0 = np.random.default_rng([cfg.seed, 0xD317]), 0
        ema = EMA(student, cfg.ema) if cfg.ema else None
    else:
        opt, sched, rng, step0, ema = carry["opt"], carry["sched"], carry["rng"], carry["step"], carry.get("ema")
    last = min(cfg.steps, stop_step or cfg.steps)
    ex, ey = (t.to(dev) for t in eval_batch(corpus, cfg.eval_size, cfg.seed))
    T = corpus.seq_len
    Td = cfg.Td or (T - cfg.prompt)
    if cfg.prompt + Td > T:
        raise ValueError(f"prompt+Td={cfg.prompt}+{Td} > T={T}: shorten Td")
    out, log = open_run(out, "dmt", corpus.spec, cfg, quiet, tracking, start_step=step0, track_as=smt_run)

    def evaluate() -> dict:
        with log.paused():
            return _evaluate()

    def _evaluate() -> dict:
        student.eval()
        r = evaluate_student(student, ex, ey, teacher, cfg.prompt)
        student.train()
        return {"dmt_acc": r["acc"], "dmt_loss": r["loss"], "drift_final": r["drift_final"]}

    final: dict = {}
    if carry is None:
        final = log.log(0, **evaluate())
        if on_eval:
            with log.paused():  # a caller's extra evaluation is not training time
                on_eval(final)
        if cfg.stop_at_acc is not None and final["dmt_acc"] >= cfg.stop_at_acc:
            last = step0  # the student already passes: DMT would only move it (the dip), so train nothing
    step = step0
    for step in range(step0 + 1, last + 1):
        x, y = (torch.as_tensor(a, dtype=torch.long, device=dev) for a in corpus.sample(cfg.batch_size, rng))
        with torch.no_grad(), autocast(dev):
            M = teacher.encode_all(x)
        n_teacher = round(teacher_share(cfg.beta, cfg.beta_halflife, step - 1) * x.shape[0])
        with autocast(dev):
            losses = dmt_losses(student, M, x, y, cfg.prompt, Td, cfg.w_state, cfg.w_readout,
                                policy=ema.model if ema else None, n_teacher=n_teacher)
        losses["loss"].backward()
        gn = clip_and_step(params, opt, sched, cfg.optim.grad_clip)
        if ema:
            ema.update(student)
        log.advance()
        done = (cfg.seconds is not None and log.elapsed() >= cfg.seconds) or step == last
        if step % cfg.eval_every == 0 or done:
            final = log.log(step, **losses, grad_norm=gn, teacher_rows=n_teacher, **evaluate())
            if reporter:  # figures for the report (e.g. on the test split): never read by the rules below
                with log.paused():
                    final.update(reporter(student, final))
            if on_eval:
                with log.paused():  # a caller's extra evaluation is not training time
                    on_eval(final)
            if cfg.stop_at_acc is not None and final["dmt_acc"] >= cfg.stop_at_acc:
                done = True
        if done:
            break
    log.close()
    student.eval()
    if out:
        save_student(str(out / "student"), student, teacher_fingerprint,
                     {"corpus": corpus.spec, "trained_by": "smt+dmt", "dmt_steps": step})
    return {"student": student, "history": log.history, "final": final, "seconds": log.elapsed(),
            "steps": step, "carry": {"opt": opt, "sched": sched, "rng": rng, "step": step, "ema": ema}}
