"""Three ways to keep DMT from undoing a good SMT student in its first steps (measured side by side in
benchmarks/dmt_dip.py), shared by online DMT (trainers/dmt/online.py) and lockstep DMT (trainers/dmt/lockstep.py):

- teacher-state mixing (DAgger's beta): a share of the transitions of each DMT step starts from the teacher's
  own memory m*_t (round 0) instead of the student's rolled-out m_hat_t; the share decays with a half-life
  towards a floor (0 for online DMT, the share `round_weights` give round 0 in lockstep DMT);
- an EMA rollout policy: the states DMT trains on come from an exponential moving average of the student,
  a policy that moves more smoothly than the student it trains;
- the SMT optimizer state: the DMT phase continues SMT's AdamW moments instead of fresh ones. A fresh AdamW
  moves every weight by about lr in its first steps whatever the gradient (m/sqrt(v) is +-1 at step 1); SMT's
  second moments scale DMT's first updates to the gradients the student has been seeing.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from trainers.dmt.mixing import check_beta, teacher_share  # the schedule lockstep DMT's round mixing uses too

__all__ = ["EMA", "check_beta", "checkpoint_moments", "load_moments", "moments_by_name", "smt_moments", "teacher_share",
           "trainable_names"]


@dataclass(kw_only=True)
class PolicyStability:
    """The two stabilisers both DMT variants offer (online `OnlineDMTConfig`, lockstep `LockstepDMTConfig`),
    declared once."""

    ema: float = 0.0
    """Roll out an EMA of the student (this decay per step) instead of the student itself (0 = the student)."""
    carry_optimizer: bool = False
    """Start the DMT phase from the SMT phase's AdamW moments instead of fresh ones (the lr schedule, warm-up
    and decay, is still the phase's own)."""


class EMA:
    """An exponential moving average copy of a model (the rollout policy): after each optimizer step,
    w_ema <- decay * w_ema + (1 - decay) * w. Starts as a copy of the model."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay={decay} must be in (0, 1) (0 = no EMA: roll out the model itself)")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach().to(e.dtype), 1.0 - self.decay)


def trainable_names(student: nn.Module, train_readout: bool) -> list[str]:
    """The parameters a student trainer optimises, in optimizer order: all but m_0, the readout only if it
    is trained (the one rule for SMT and DMT, so optimizer state can move between them by name)."""
    return [n for n, _ in student.named_parameters()
            if n != "m0" and (train_readout or not n.startswith("readout_net."))]


def moments_by_name(opt_state: dict, names: list[str]) -> dict[str, dict]:
    """An AdamW state_dict's per-parameter state keyed by parameter name (`names` in optimizer order)."""
    if len(opt_state["state"]) > len(names):
        raise ValueError(f"optimizer state holds {len(opt_state['state'])} parameters, the names {len(names)}: "
                         "not the optimizer of this parameter list")
    return {names[int(i)]: st for i, st in opt_state["state"].items()}


def load_moments(opt: torch.optim.Optimizer, named: list[tuple[str, nn.Parameter]], moments: dict[str, dict]) -> int:
    """Start `opt` (built over the parameters of `named`, in that order) from `moments` where a parameter of
    the same name and shape has them; the others start fresh. Returns how many parameters were carried."""
    carried = 0
    for name, p in named:
        st = moments.get(name)
        if st is None:
            continue
        if st["exp_avg"].shape != p.shape:
            raise ValueError(f"optimizer state of {name} has shape {tuple(st['exp_avg'].shape)}, the parameter "
                             f"{tuple(p.shape)}: the SMT run trained another architecture")
        opt.state[p] = {k: (v.detach().clone().to(p.device) if isinstance(v, torch.Tensor) else
                            torch.tensor(float(v))) for k, v in st.items()}
        carried += 1
    return carried


def checkpoint_moments(run, student: nn.Module | None = None) -> dict[str, dict]:
    """The AdamW moments (by parameter name) of a student run's (`storage.run_dir.RunDir`) newest checkpoint: the
    previous phase's end state. `student` (of the run's architecture) names the parameters; None: the
    checkpoint's own student is loaded for that. What lockstep DMT (`lockstep.carry_moments`) and online DMT
    (`smt_moments`) carry."""
    from storage.checkpoints import load_student
    from storage.run_dir import unflatten_optimizer

    pointer = run.latest()
    if pointer is None:
        raise ValueError(f"run {run.url} has no checkpoint to carry the SMT optimizer state from: train it first "
                         "(smt train), or set carry_optimizer off")
    student_url, tensors, meta = run.load(pointer)
    if student is None:
        student, _, _ = load_student(student_url)
    names = trainable_names(student, bool(meta["config"].get("train_readout", False)))
    return moments_by_name(unflatten_optimizer(tensors, meta["optimizer"]), names)


def smt_moments(run_url: str, endpoint_url: str | None = None) -> dict[str, dict]:
    """The AdamW moments (by parameter name) of a student run's newest checkpoint: the SMT phase's end state."""
    from storage.run_dir import RunDir

    return checkpoint_moments(RunDir(run_url, endpoint_url=endpoint_url))
