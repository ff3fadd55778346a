"""Online DMT (the paper's stage 2): fix rollout drift by training the updater on its own states.

The teacher is frozen. For each batch, the student starts from a teacher memory (m_0 in prefix mode,
m_Tc in stream mode), rolls out on the true inputs with its state detached between steps (a one-step
gradient, never BPTT), and each step is trained towards the teacher's memory of the same prefix:
    L = w_state * MSE(f(m_hat_t, x_t), m*_{t+1}) + w_readout * CE(g(sg(m_hat_{t+1})), y_t)
The readout term sees detached memories, so it trains only the readout.
The offline twin (roll out, record, relabel, train on the union) is the DMT actor (`actor.py`, relabelling
with `pipeline/relabel.py`) beside a student run, in lockstep (`lockstep.py`) or alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.checkpoint import save_student
from models.device import autocast, pick_device
from trainers.common import OptimConfig, clip_and_step, open_run
from trainers.evaluate import eval_batch, evaluate_student
from trainers.losses import masked_ce


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
    """Stop once the rolled-out accuracy on the valid split reaches this (None = never)."""
    seed: int = 0
    """Random seed."""
    clock: str = "wall"
    """Clock of `seconds` and of logged times: 'wall', or 'process' (this process's CPU seconds)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""


def dmt_losses(student, M: torch.Tensor, x: torch.Tensor, y: torch.Tensor, start: int, Td: int,
               w_state: float, w_readout: float) -> dict:
    """One DMT batch: teacher memories M (B, T+1, Z) of x (B, T)."""
    m = M[:, start]
    states = []
    for t in range(start, start + Td):
        m = student.step(m.detach(), x[:, t])
        states.append(m)
    S = torch.stack(states, 1)  # m_hat_{start+1} .. m_hat_{start+Td}
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
               carry: dict | None = None, stop_step: int | None = None) -> dict:
    """Train `student` by online DMT. With `stop_step`, stop there and return a `carry` (optimiser, schedule,
    data RNG, step) that a later call continues from, so one cosine schedule spans several DMT rounds.
    `reporter` as in `trainers.pretrain.pretrain` (report-only figures, off the training clock)."""
    dev = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    teacher = teacher.to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = student.to(dev).train()
    params = list(student.updater.parameters()) + (list(student.readout_net.parameters()) if cfg.train_readout else [])
    if carry is None:
        opt, sched = cfg.optim.build(params, cfg.steps)
        rng, step0 = np.random.default_rng([cfg.seed, 0xD317]), 0
    else:
        opt, sched, rng, step0 = carry["opt"], carry["sched"], carry["rng"], carry["step"]
    last = min(cfg.steps, stop_step or cfg.steps)
    ex, ey = (t.to(dev) for t in eval_batch(corpus, cfg.eval_size, cfg.seed))
    T = corpus.seq_len
    Td = cfg.Td or (T - cfg.prompt)
    if cfg.prompt + Td > T:
        raise ValueError(f"prompt+Td={cfg.prompt}+{Td} > T={T}: shorten Td")
    out, log = open_run(out, "dmt", corpus.spec, cfg, quiet)

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
    step = step0
    for step in range(step0 + 1, last + 1):
        x, y = (torch.as_tensor(a, dtype=torch.long, device=dev) for a in corpus.sample(cfg.batch_size, rng))
        with torch.no_grad(), autocast(dev):
            M = teacher.encode_all(x)
        with autocast(dev):
            losses = dmt_losses(student, M, x, y, cfg.prompt, Td, cfg.w_state, cfg.w_readout)
        losses["loss"].backward()
        gn = clip_and_step(params, opt, sched, cfg.optim.grad_clip)
        log.advance()
        done = (cfg.seconds is not None and log.elapsed() >= cfg.seconds) or step == last
        if step % cfg.eval_every == 0 or done:
            final = log.log(step, **losses, grad_norm=gn, **evaluate())
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
            "steps": step, "carry": {"opt": opt, "sched": sched, "rng": rng, "step": step}}
