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

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.device import autocast, pick_device
from pipeline.relabel import RolloutWindow
from storage.checkpoints import save_student
from storage.layout import record
from storage.lease import Writer
from storage.run_dir import RunDir
from trainers.budget import Budget
from trainers.common import OptimConfig, as_run, open_log
from trainers.dmt.stability import EMA, PolicyStability, check_beta, load_moments, smt_moments, teacher_share
from trainers.evaluate import evaluate_student
from trainers.loop import Callbacks, Curriculum, Evaluation, Hook, Loop, Objective, train
from trainers.losses import masked_ce
from trainers.tracking import TrackingConfig


@dataclass(kw_only=True)
class OnlineDMTConfig(PolicyStability, RolloutWindow, Budget):  # fields: the budget first, then these
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-5, schedule="cosine"))
    """Optimiser (reference: lr 3e-5, cosine decay)."""
    w_state: float = 10.0
    """Weight of the one-step state MSE."""
    w_readout: float = 1.0
    """Weight of the readout cross-entropy (on detached memories: trains the readout only)."""
    train_readout: bool = True
    """Train the student's readout (initialised from the teacher decoder)."""
    beta: float = 0.0
    """Share of each batch's sequences trained from the teacher's own states m*_t at step 1 (DAgger's beta)."""
    beta_halflife: float = 10.0
    """DMT steps over which that share halves (towards 0)."""

    def __post_init__(self) -> None:
        super().__post_init__()  # the budget's checks (steps, eval_every, batch_size, clock)
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


def dmt_losses(student, M: torch.Tensor, x: torch.Tensor, y: torch.Tensor, window: range,
               weights: tuple[float, float], policy=None, n_teacher: int = 0) -> dict:
    """One DMT batch: teacher memories M (B, T+1, Z) of x (B, T), rolled out over the positions `window`
    (range(start, start + Td)), the loss weighted by `weights` (w_state, w_readout). The states come from
    `policy` (default the student itself; the gradient never crosses a step, so rolling out first and predicting
    every step in one batched call is the same one-step loss), the first `n_teacher` rows from the teacher's
    own states."""
    start, Td, (w_state, w_readout) = window.start, len(window), weights
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


class OnlineDMTState:
    """What the loop steps, kept between calls of `OnlineDMT.run` (one schedule over several DMT rounds): the
    trained parameters, AdamW and schedule, the data RNG, the step, the EMA policy."""

    def __init__(self, student, cfg: OnlineDMTConfig, smt_run: str | None) -> None:
        named = [(n, p) for n, p in student.named_parameters()
                 if n.startswith("updater.") or (cfg.train_readout and n.startswith("readout_net."))]
        self.params = [p for _, p in named]
        self.opt, self.sched = cfg.optim.build(self.params, cfg.steps)
        if cfg.carry_optimizer:
            if smt_run is None:
                raise ValueError("OnlineDMTConfig.carry_optimizer needs the SMT run: pass smt_run=<student run URL>")
            load_moments(self.opt, named, smt_moments(smt_run))
        self.rng, self.step = np.random.default_rng([cfg.seed, 0xD317]), 0
        self.ema = EMA(student, cfg.ema) if cfg.ema else None


class OnlineDMTStep(Objective, Hook):
    """Online DMT's step: fresh sequences, the teacher's memories of them, the one-step loss from the policy's
    (or, for a decaying share of rows, the teacher's) states; after the step, the EMA policy follows."""

    def __init__(self, dmt: OnlineDMT, Td: int, device: torch.device) -> None:
        self.dmt, self.Td, self.device = dmt, Td, device

    def batch(self, loop: Loop) -> tuple:
        cfg, state = self.dmt.cfg, loop.state
        x, y = (torch.as_tensor(a, dtype=torch.long, device=self.device)
                for a in self.dmt.corpus.sample(cfg.batch_size, state.rng))
        with torch.no_grad(), autocast(self.device):
            M = self.dmt.teacher.encode_all(x)
        self.n_teacher = round(teacher_share(cfg.beta, cfg.beta_halflife, state.step) * x.shape[0])
        return M, x, y

    def loss(self, batch: tuple) -> dict[str, torch.Tensor]:
        cfg, ema = self.dmt.cfg, self.dmt.state.ema
        return dmt_losses(self.dmt.student, *batch, range(cfg.start, cfg.start + self.Td),
                          (cfg.w_state, cfg.w_readout), policy=ema.model if ema else None, n_teacher=self.n_teacher)

    def columns(self, loop: Loop) -> dict:
        return {"teacher_rows": self.n_teacher}

    def after_step(self, loop: Loop, out: dict) -> dict:
        if loop.state.ema:
            loop.state.ema.update(self.dmt.student)
        return {}


class OnlineDMT:
    """Online DMT of `student` under `cfg`'s one schedule, trained in one `run()` or over several (`run(until=s)`
    stops at step s; the next call continues from there: optimiser, schedule, data RNG, step and EMA policy).
    `smt_run`: the student run the SMT student comes from (its AdamW moments start DMT with carry_optimizer;
    a run without `out` is tracked as its continuation). `teacher_fingerprint` is recorded in the saved student."""

    def __init__(self, student, teacher, corpus, cfg: OnlineDMTConfig, *, smt_run: str | None = None,
                 teacher_fingerprint: str | None = None) -> None:
        self.dev = pick_device(cfg.device)
        self.teacher = teacher.to(self.dev).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student, self.corpus, self.cfg = student.to(self.dev).train(), corpus, cfg
        self.smt_run, self.teacher_fingerprint = smt_run, teacher_fingerprint
        self.Td = cfg.Td or (corpus.seq_len - cfg.start)
        if cfg.start + self.Td > corpus.seq_len:
            raise ValueError(f"start+Td={cfg.start}+{self.Td} > T={corpus.seq_len}: shorten Td")
        torch.manual_seed(cfg.seed)
        self.state: OnlineDMTState | None = None

    def run(self, out: str | Path | RunDir | None = None, quiet: bool = False, *, until: int | None = None,
            callbacks: Callbacks | None = None, tracking: TrackingConfig | None = None,
            writer: Writer | None = None) -> dict:
        """Train up to `until` (default: cfg.steps) on the loop of `trainers/loop.py`; the first call evaluates the
        student at step 0 first and trains nothing if it already reaches `stop_at_acc`. `callbacks` as in
        `trainers.pretrain.pretrain`. `tracking`: also log the rows and the config to TensorBoard / W&B (calls
        that continue one schedule continue one tracked run). With `out` (a local folder or any URL; a `RunDir`
        names an S3 endpoint), under the run's lease held as `writer`: the record `run.json` (kind
        "dmt-online", storage/layout.py), the metrics (`RunDir.metrics()`; a later call continues them) and the
        trained `student/`. Returns {"student", "history", "final", "seconds", "steps"}."""
        run = as_run(out)
        with run.writing(writer) if run is not None else contextlib.nullcontext():
            return self._run(run, quiet, until, callbacks, tracking)

    def _run(self, run: RunDir | None, quiet: bool, until: int | None, callbacks: Callbacks | None,
             tracking: TrackingConfig | None) -> dict:
        cfg, student, first = self.cfg, self.student.train(), self.state is None
        if first:
            self.state = OnlineDMTState(student, cfg, self.smt_run)
        else:
            torch.manual_seed(cfg.seed)
        state = self.state
        stop = min(cfg.steps, until or cfg.steps)
        curriculum = Curriculum([self.corpus], "dmt_acc", 1.0, cfg.stop_at_acc, eval_size=cfg.eval_size,
                                seed=cfg.seed, device=self.dev)  # one stage: the stop rule and the valid set
        rec = record("dmt-online", corpus=self.corpus.spec, config=asdict(cfg), smt_run=self.smt_run,
                     teacher_fingerprint=self.teacher_fingerprint)
        log = open_log(run, rec, cfg, quiet, tracking, start_step=state.step, track_as=self.smt_run)

        def figures() -> dict:
            student.eval()
            r = evaluate_student(student, *curriculum.batch, self.teacher, cfg.start)
            student.train()
            return {"dmt_acc": r["acc"], "dmt_loss": r["loss"], "drift_final": r["drift_final"]}

        evaluation = Evaluation(cfg.eval_every, figures, curriculum=curriculum, callbacks=callbacks, model=student)
        loop = Loop(state, run, log, True, None, stop=stop, seconds=cfg.seconds, done=state.step >= stop)
        if first:  # a student that already passes is not trained: DMT would only move it (the dip)
            evaluation.evaluate(loop, 0, {}, report=False)
        step = OnlineDMTStep(self, self.Td, self.dev)
        final = train(loop, step, [step, evaluation], cfg.optim.grad_clip, self.dev)
        student.eval()
        if run is not None:
            run.check_writer()
            save_student(run.bucket.child("student"), student, self.teacher_fingerprint,
                         {"corpus": self.corpus.spec, "trained_by": "smt+dmt", "dmt_steps": state.step})
        return {"student": student, "history": log.history, "final": final, "seconds": log.elapsed(),
                "steps": state.step}


def dmt_online(student, teacher, corpus, cfg: OnlineDMTConfig, out: str | Path | RunDir | None = None,
               quiet: bool = False, *, callbacks: Callbacks | None = None, tracking: TrackingConfig | None = None) -> dict:
    """Train `student` by online DMT in one call (`OnlineDMT` for a schedule over several calls, the SMT run's
    moments, or the teacher fingerprint recorded in the saved student); returns `OnlineDMT.run`'s dict."""
    return OnlineDMT(student, teacher, corpus, cfg).run(out, quiet, callbacks=callbacks, tracking=tracking)
