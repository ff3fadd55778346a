"""Lockstep DMT, the student side: the trainer and the DMT actor take turns at fixed steps.

With s0 = the phase start (`StudentTrainConfig.phase_start`) and E = `every`, round r (1..R) is rolled out
by the actor from the student of step s0 + (r-1)E. The trainer writes a weights-only snapshot of the
student there (`policy/step-N`, unless a full checkpoint falls there) and, at the boundary done = s0 + kE,
switches its stream to the oldest generation holding round max(1, k) (capped at R), waiting for the actor
when it is behind. Steps (s0+kE, s0+(k+1)E] thus train on relabels of a student at most 2E steps old, and a
rerun replays bit-identically. The actor's side is `trainers/dmt/actor.py` (`smt dmt --first-step s0`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from models.checkpoint import save_student
from storage.run_dir import RunDir
from trainers.dmt.refresh import Refresh, RefreshConfig
from trainers.student import Hook, Loop, StudentTrainConfig, TrainState


class DMTWaitTimeout(RuntimeError):
    """Lockstep DMT: the round the trainer needs was not committed in time."""


@dataclass(kw_only=True)
class LockstepDMTConfig:
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

    @property
    def on(self) -> bool:
        return self.every > 0

    def hooks(self) -> list[Hook]:
        """What the student loop is given for this config: nothing when off."""
        if not self.on:
            return []
        return [LockstepDMT(self)] + ([Refresh(self.refresh)] if self.refresh.enabled else [])

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

    def check(self, cfg: StudentTrainConfig) -> None:
        if cfg.stream.follow != "never":
            raise ValueError(f"lockstep DMT (every={self.cfg.every}) switches generations itself: use "
                             f"stream.follow='never', not {cfg.stream.follow!r}")

    def record(self) -> dict:
        return {"dmt": asdict(self.cfg)}

    def start(self, loop: Loop) -> None:
        self.waited = 0.0

    def before_step(self, loop: Loop) -> None:
        state = loop.state
        r = self.cfg.round_due(state.cfg.phase_start, state.step)
        if r is None:
            return
        if loop.lead and (loop.run.latest() or {}).get("step") != state.step:
            save_policy(state, loop.run)  # the student the actor rolls out next (and the one to evaluate)
        with loop.log.paused():
            t0 = time.monotonic()
            g = self.wait_for_round(loop, r)
            self.waited += time.monotonic() - t0
        loop.switch(g)

    def after_step(self, loop: Loop, out: dict) -> dict[str, float]:
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


def save_policy(state: TrainState, run: RunDir) -> str:
    """A weights-only snapshot of the student at this step (`policy/step-N`), for the actor to roll out."""
    student = state.student
    return run.save_policy(state.step, lambda url: save_student(url, student, state.teacher_fp,
                                                                {"trained_by": "smt+dmt", "step": state.step}))
