"""Lockstep DMT, the student side: the trainer and the DMT actor take turns at fixed steps.

With s0 = the phase start (`StudentTrainConfig.phase_start`) and E = `every`, round r (1..R) is rolled out
by the actor from the student of step s0 + (r-1)E. The trainer writes a weights-only snapshot of the
student there (`policy/step-N`, unless a full checkpoint falls there) and, at the boundary done = s0 + kE,
switches its stream to the oldest generation holding round max(1, k) (capped at R), waiting for the actor
when it is behind. Steps (s0+kE, s0+(k+1)E] thus train on relabels of a student at most 2E steps old, and a
rerun replays bit-identically. The actor's side is `trainers/dmt/actor.py` (`smt dmt --first-step s0`).
Against the dip a good SMT student shows as DMT starts (`stability.py`, benchmarks/results/dmt_dip.md):
`carry_optimizer` keeps the SMT phase's AdamW moments, and `ema` makes an EMA of the student the policy the
refresh and the actor roll out (`rollout/` beside `student/` in its snapshots and checkpoints).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from torch import nn

from storage.bucket import Bucket
from storage.checkpoints import load_student, save_student
from storage.run_dir import ROLLOUT, RunDir, policy_dir
from trainers.dmt.refresh import Refresh, RefreshConfig
from trainers.dmt.stability import EMA, PolicyStability, checkpoint_moments, load_moments
from trainers.student import Hook, Loop, StudentTrainConfig, TrainState


class DMTWaitTimeout(RuntimeError):
    """Lockstep DMT: the round the trainer needs was not committed in time."""


@dataclass(kw_only=True)
class LockstepDMTConfig(PolicyStability):
    every: int = 0
    """Snapshot the student every this many steps from the phase start for the DMT actor, and never train on
    relabels older than 2x this many steps (wait for the actor instead); 0 = lockstep DMT off."""
    rounds: int = 0
    """Rounds the DMT actor will commit (after the last, train on all of them)."""
    wait_seconds: float = 600.0
    """Give up when the round the trainer needs is not committed within this time."""
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    """On-policy refresh of the newest round's states before every step (a batch transform)."""

    def __post_init__(self) -> None:
        if self.every < 0 or (self.every > 0) != (self.rounds > 0):
            raise ValueError(f"dmt every={self.every}, rounds={self.rounds}: lockstep DMT needs both >= 1 (or both "
                             "0 for off)")
        if self.refresh.enabled and not self.every:
            raise ValueError("the on-policy refresh needs lockstep DMT (--dmt.every N --dmt.rounds R)")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"dmt ema={self.ema} must be in [0, 1) (0 = roll out the student itself)")

    @property
    def on(self) -> bool:
        return self.every > 0

    def hooks(self) -> list[Hook]:
        """What the student loop is given for this config: nothing when off."""
        if not self.on:
            return []
        lockstep = LockstepDMT(self)
        return [lockstep] + ([Refresh(self.refresh, lockstep.policy)] if self.refresh.enabled else [])

    def round_due(self, phase_start: int, done: int) -> int | None:
        """The round the trainer must hold before step done+1, or None (no boundary here)."""
        if not self.every or done < phase_start:
            return None
        k, rem = divmod(done - phase_start, self.every)
        if rem or k > self.rounds:
            return None
        return min(max(1, k), self.rounds)


class LockstepDMT(Hook):
    """The hook: snapshot, then wait for and switch to the round due at each boundary; logs the time waited
    (`dmt_wait_seconds`, cumulative in this process)."""

    def __init__(self, cfg: LockstepDMTConfig) -> None:
        self.cfg = cfg
        self.waited = 0.0
        self.ema: EMA | None = None

    def check(self, cfg: StudentTrainConfig) -> None:
        if cfg.stream.follow != "never":
            raise ValueError(f"lockstep DMT (every={self.cfg.every}) switches generations itself: use "
                             f"stream.follow='never', not {cfg.stream.follow!r}")
        if self.cfg.carry_optimizer and not cfg.phase_start:
            raise ValueError("dmt carry_optimizer carries a previous phase's optimizer: it needs phase_start >= 1")

    def record(self) -> dict:
        return {"dmt": asdict(self.cfg)}

    def start(self, loop: Loop) -> None:
        self.waited, self.ema = 0.0, None
        state, s0 = loop.state, loop.state.cfg.phase_start
        if self.cfg.carry_optimizer and state.step == s0 and state.resumed_from == s0:
            carry_moments(loop)  # the phase starts here, from the previous phase's checkpoint
        if self.cfg.ema and state.step > s0:  # a resume inside the phase: its EMA policy is in the checkpoint
            rel = f"{loop.run.latest()['path']}/{ROLLOUT}"
            if not loop.run.bucket.exists(f"{rel}/config.json"):
                raise ValueError(f"run {loop.run.url} checkpoint {rel.rsplit('/', 1)[0]} holds no {ROLLOUT}/ policy: it "
                                 "was trained without dmt ema; resume with the run's own settings")
            self.ema = EMA(state.student, self.cfg.ema)
            self.ema.model.load_state_dict(load_student(loop.run.bucket.child(rel))[0].state_dict())

    def policy(self, loop: Loop) -> nn.Module:
        """The student the refresh and the actor roll out: the EMA when there is one."""
        return self.ema.model if self.ema is not None else loop.state.student

    def write(self, loop: Loop, folder: Bucket) -> None:
        if self.ema is not None:
            save_student(folder.child(ROLLOUT), self.ema.model, loop.state.teacher_fp,
                         {"trained_by": "ema of smt+dmt", "ema": self.cfg.ema, "step": loop.state.step})

    def before_step(self, loop: Loop) -> None:
        state = loop.state
        if self.cfg.ema and self.ema is None and state.step >= state.cfg.phase_start:
            self.ema = EMA(state.student, self.cfg.ema)  # the phase starts: the policy is the student
        r = self.cfg.round_due(state.cfg.phase_start, state.step)
        if r is None:
            return
        if loop.lead and (loop.run.latest() or {}).get("step") != state.step:
            save_policy(state, loop.run, lambda folder: self.write(loop, folder))  # what the actor rolls out next
        with loop.log.paused():
            t0 = time.monotonic()
            g = self.wait_for_round(loop, r)
            self.waited += time.monotonic() - t0
        loop.switch(g)

    def after_step(self, loop: Loop, out: dict) -> dict[str, float]:
        if self.ema is not None:
            self.ema.update(loop.state.student)
        return {"dmt_wait_seconds": self.waited}

    def pinned_steps(self, cfg: StudentTrainConfig) -> set[int]:
        """Every round boundary: the actor rolls out (and the pipeline evaluates) the student there, from the
        full checkpoint when one falls on it (no policy snapshot is written then), so retention keeps it."""
        c = self.cfg
        return {cfg.phase_start + k * c.every for k in range(c.rounds + 1)}

    def wait_for_round(self, loop: Loop, r: int, poll: float = 0.2) -> int:
        """The oldest generation holding DMT round r, waiting up to `wait_seconds` for the actor (`loop.say`
        gets one line before a wait and one after it)."""
        stream, c, say = loop.state.stream, self.cfg, loop.say
        t0 = time.monotonic()
        deadline = t0 + c.wait_seconds
        announced = False
        while True:
            g = stream.first_generation_with_round(r)
            if g is not None:
                if announced:
                    say(f"DMT round {r} arrived after {time.monotonic() - t0:.1f} s")
                return g
            if say is not None and not announced:
                say(f"waiting up to {c.wait_seconds:g} s for DMT round {r} in {stream.source.bucket.url()} "
                    "(from `smt dmt --first-step`)")
                announced = True
            if time.monotonic() > deadline:
                targets = stream.source.targets.bucket.url()
                raise DMTWaitTimeout(
                    f"DMT round {r} was not committed to {stream.source.bucket.url()} within {c.wait_seconds:g} s: "
                    f"start the DMT actor on this run (smt dmt --targets {targets} --run {loop.run.url} --first-step "
                    f"{loop.state.cfg.phase_start} --every-steps {c.every} --rounds {c.rounds} ...) or train without "
                    "--dmt.every")
            time.sleep(poll)


def save_policy(state: TrainState, run: RunDir, extra=None) -> str:
    """A weights-only snapshot of the student at this step (`policy/step-N`), for the actor to roll out;
    `extra(folder URL)` adds files (the EMA policy) before the commit marker."""
    def write(where: Bucket) -> None:
        save_student(where, state.student, state.teacher_fp, {"trained_by": "smt+dmt", "step": state.step})
        if extra is not None:
            extra(run.bucket.child(policy_dir(state.step)))

    return run.save_policy(state.step, write)


def carry_moments(loop: Loop) -> int:
    """Start the phase's AdamW from the moments in the run's newest checkpoint (the previous phase's end,
    matched by parameter name); returns how many parameters were carried."""
    state = loop.state
    moments = checkpoint_moments(loop.run, state.student)
    named = dict(state.student.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad]  # the train state's parameters, in its order
    return load_moments(state.opt, [(n, named[n]) for n in names], moments)
