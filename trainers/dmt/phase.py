"""The DMT phase of a student run, as one component: what `smt pipeline` runs after the student's SMT phase.

    phase = DMTPhase(lockstep=..., actor=..., trainer=..., resources=...)    # or online=... instead of trainer
    rounds, pointer = run_dmt(phase, targets=..., teacher=..., run=..., evaluate=..., say=print)

- lockstep (`trainer` set): a trainer Ray actor streams the run's target set (round 0 + the run's rounds) from the
  SMT phase's end (`trainer.phase_start`) to `trainer.steps` with the lockstep hooks (`LockstepDMTConfig.hooks`),
  while the DMT actor (`DMTLoop`, `actor.first_step` = the phase start) appends one relabeled round every
  `lockstep.every` trainer steps; the trainer waits rather than train on relabels more than 2 x every steps old.
- online (`online` set): for each round the DMT actor relabels the latest student for the record, then the
  driver takes `lockstep.every` on-policy DMT steps (`OnlineDMT`); each round's student is a weights-only
  snapshot of the run (`RunDir.save_policy`, `policy/step-N`).
Both Ray actors take `resources` as their options (the recipe's DMT actor CPUs and the labeling workers' GPUs).
Returns one row per round (the actor's report, then the held-out figures after it) and the pointer to the final
student. A new DMT variant is a new mode here (plus its config), called from the same `run_dmt`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from pipeline.stage import Resources
from trainers.dmt.actor import DMTLoop, DMTLoopConfig, round_reports
from trainers.dmt.lockstep import LockstepDMTConfig
from trainers.dmt.online import OnlineDMT, OnlineDMTConfig
from trainers.student import Hook, Loop, StudentRun, StudentTrainConfig, run_training
from trainers.tracking import TrackingConfig

Evaluate = Callable[[nn.Module], dict]
"""A student -> its held-out figures ({"acc": ..., "drift_final": ...})."""
Mark = Callable[..., None]
"""mark(stage, acc, at=None, **extra): a point of the caller's timeline; `at` = seconds since `DMTPhase.started`."""


@dataclass(kw_only=True)
class DMTPhase:
    lockstep: LockstepDMTConfig
    """Rounds, their spacing (`every` student steps) and the lockstep hooks (refresh, EMA, optimizer carry)."""
    actor: DMTLoopConfig
    """The DMT actor: target set, run, corpus, teacher, its schedule (`rounds`, `every_steps`, `first_step`)."""
    trainer: StudentTrainConfig | None = None
    """Lockstep: the run's DMT phase (phase_start = the SMT phase's end, steps = its end)."""
    online: OnlineDMTConfig | None = None
    """Online DMT instead (steps = rounds x every, from the rollout start)."""
    resources: Resources = field(default_factory=Resources)
    """Ray options of each actor of the phase (the DMT actor, the lockstep trainer)."""
    started: float | None = None
    """When the caller's timeline started (time.time()); lockstep marks say when the trainer got to each step."""

    def __post_init__(self) -> None:
        if (self.trainer is None) == (self.online is None):
            raise ValueError("a DMT phase is lockstep (trainer) or online (online): set exactly one")

    def describe(self) -> str:
        """One line: what the phase does."""
        d = self.lockstep
        if self.trainer is not None:
            return (f"DMT, lockstep: {d.rounds} rounds of {self.actor.sequences} sequences; the DMT actor relabels the "
                    f"student every {d.every} steps while a trainer actor streams the rounds "
                    f"({self.trainer.stream.batch_size} transitions per step"
                    f"{', newest round re-rolled on-policy' if d.refresh.enabled else ''})")
        return (f"DMT, online: {d.rounds} rounds; each: the DMT actor relabels the latest student into a new round "
                f"of shards, then {d.every} on-policy DMT steps")


def run_dmt(phase: DMTPhase, *, teacher: nn.Module, teacher_fingerprint: str, corpus, evaluate: Evaluate,
            say: Callable[..., None] = print, mark: Mark | None = None,
            tracking: TrackingConfig | None = None) -> tuple[list[dict], dict]:
    """Run the phase on `phase.actor.run` (whose newest checkpoint is the SMT phase's end); returns (one row per
    round, the final student's pointer {"step", "path"} in the run). `corpus` (a loaded corpus) is what online
    DMT rolls out on; `say` gets one line per round or a summary."""
    from pipeline.executors import init_ray

    ray = init_ray()
    mark = mark or (lambda *a, **k: None)
    if phase.trainer is not None:
        return _lockstep(phase, ray, evaluate, say, mark, tracking)
    return _online(phase, teacher, teacher_fingerprint, corpus, evaluate, say, mark, tracking)


def _options(res: Resources) -> dict:
    return {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}


class StepClock(Hook):
    """When (time.time()) the trainer finished each of `steps`: the lockstep timeline's marks."""

    def __init__(self, steps: set[int]) -> None:
        self.steps, self.times = set(steps), {}

    def after_step(self, loop: Loop, out: dict) -> dict[str, float]:
        if loop.state.step in self.steps:
            self.times[loop.state.step] = time.time()
        return {}


def _train(src: StudentRun, cfg: StudentTrainConfig, hooks: list, tracking: TrackingConfig | None,
           steps: set[int]) -> dict[int, float]:
    """The lockstep trainer (a Ray task): the DMT phase of the run; returns when it reached each of `steps`."""
    clock = StepClock(steps)
    run_training(src, cfg, quiet=True, hooks=[*hooks, clock], tracking=tracking)
    return clock.times


def _lockstep(phase: DMTPhase, ray, evaluate: Evaluate, say, mark: Mark, tracking) -> tuple[list[dict], dict]:
    from storage.checkpoints import load_student
    from storage.run_dir import RunDir, step_dir

    d, cfg, c = phase.lockstep, phase.trainer, phase.actor
    s0, E, total = cfg.phase_start, d.every, cfg.steps
    run = RunDir(c.run, endpoint_url=c.endpoint_url)

    def step_after(r: int, n: int) -> int:  # the last E steps up to here trained on round r
        return total if r == n else min(s0 + (r + 1) * E, total)

    boundaries = {min(s0 + k * E, total) for k in range(2, d.rounds + 2)} | {total}
    src = StudentRun(c.targets, c.teacher, c.run, endpoint_url=c.endpoint_url)
    trainer = ray.remote(**_options(phase.resources))(_train).remote(src, cfg, d.hooks(), tracking, boundaries)
    actor = ray.remote(**_options(phase.resources))(DMTLoop).remote(c)
    loop_ref = actor.run.remote(True)
    done, _ = ray.wait([trainer, loop_ref], num_returns=1)
    if done[0] == trainer:
        ray.get(trainer)  # a failed trainer raises here instead of leaving the loop waiting
    ray.get(loop_ref)
    reached = ray.get(trainer)
    ray.kill(actor)
    rounds = []
    reports = round_reports(c.run, c.endpoint_url)
    # held-out evaluation after the first rounds, then about every tenth of them, and the last
    scored = {1, 2, 3, 4, len(reports)} | {round(i * len(reports) / 10) for i in range(1, 10)}
    for rep in reports:
        r = rep["round"]
        step = step_after(r, len(reports))
        ev = evaluate(load_student(run.student_url(step))[0]) if r in scored else {}
        rounds.append({"round": r, "student_step_rolled_out": rep.get("student_step"),
                       "rollout_acc_before": rep.get("rollout_acc"), "drift_by_step": rep.get("drift_by_step"),
                       "records": rep.get("records"), "student_step_after": step, "acc_after": ev.get("acc"),
                       "drift_final_after": ev.get("drift_final")})
        if ev:
            at = reached[step] - phase.started if phase.started is not None and step in reached else None
            mark(f"dmt-{r}", ev["acc"], drift_final=ev.get("drift_final"), at=at)
    last = rounds[-1] if rounds else {}
    low = min((r for r in rounds if r["acc_after"] is not None), key=lambda r: r["acc_after"], default={})
    say(f"      {len(rounds)} rounds; drift_T of the rolled-out student {rounds[0]['drift_by_step'][-1]:.4f} (round 1) -> "
        f"{last.get('drift_final_after', float('nan')):.4f}; acc={last.get('acc_after', float('nan')):.3f} (lowest "
        f"{low.get('acc_after', float('nan')):.3f}, after round {low.get('round')})")
    return rounds, {"step": total, "path": step_dir(total)}


def _online(phase: DMTPhase, teacher: nn.Module, fp: str, corpus, evaluate: Evaluate, say, mark: Mark,
            tracking) -> tuple[list[dict], dict]:
    import ray  # started by run_dmt

    from storage.checkpoints import load_student, save_student
    from storage.run_dir import RunDir, policy_dir

    d, c, E = phase.lockstep, phase.actor, phase.lockstep.every
    run = RunDir(c.run, endpoint_url=c.endpoint_url)
    actor = ray.remote(**_options(phase.resources))(DMTLoop).remote(c)
    ptr = run.latest()
    s0 = int(ptr["step"])
    student, _, _ = load_student(run.bucket.child(f"{ptr['path']}/student"))
    rounds = []
    dmt = OnlineDMT(student, teacher, corpus, phase.online, smt_run=c.run, teacher_fingerprint=fp)
    for r in range(1, d.rounds + 1):
        rr = ray.get(actor.run_round.remote(r, ptr, True))  # relabel the student the next steps start from
        student = dmt.run(quiet=True, until=r * E, tracking=tracking)["student"]  # one schedule over the rounds
        step = s0 + r * E
        run.save_policy(step, lambda where, s=student, r=r: save_student(where, s, fp, {"trained_by": "smt+dmt",
                                                                                        "dmt_round": r}))
        ptr = {"step": step, "path": policy_dir(step)}
        ev = evaluate(student)
        rounds.append({"round": r, "student_step_rolled_out": rr.get("student_step"),
                       "rollout_acc_before": rr.get("rollout_acc"), "drift_by_step": rr.get("drift_by_step"),
                       "records": rr.get("records"), "acc_after": ev["acc"], "drift_final_after": ev.get("drift_final")})
        mark(f"dmt-{r}", ev["acc"], drift_final=ev.get("drift_final"))
        say(f"      round {r}: relabeled {rr.get('records')} states of step {rr.get('student_step')} (drift_T "
            f"{rr['drift_by_step'][-1]:.4f}); after {E} DMT steps: acc={ev['acc']:.3f} "
            f"drift_T={ev.get('drift_final', float('nan')):.4f}")
    ray.kill(actor)
    return rounds, ptr


__all__ = ["DMTPhase", "StepClock", "run_dmt"]
