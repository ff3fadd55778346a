"""`smt dmt`: DAgger Memory Training on a student run: roll the student out, relabel its states with the
teacher, append the round to the run (`<run>/rounds/`), and train the student on the aggregate.

    smt train --targets T --out RUN ...                       # SMT first
    smt dmt --targets T --run RUN --corpus SPEC --rounds 3 --every-steps 100

Alone (the default): round r rolls out the run's newest student, then `smt dmt` itself trains the run
--every-steps steps on round 0 + rounds 1..r (one new training phase of the run, its own stream config,
--lr to change the rate); it ends with --rounds rounds and a student trained on them (the run's newest
checkpoint). With a trainer attached, it only relabels: lockstep (--first-step S, paired with `smt train
--phase-start S --dmt.every N`: round r rolls out exactly the student of step S + (r-1)N, reproducible; see
`smt train --help`) or following (--no-train beside `smt train --stream.follow ...`: round r waits for a
checkpoint --every-steps past round r-1's). Each round prints one line (rollout accuracy, drift at t = Td,
records, generation) as it happens, every wait says what it waits for and for how long, and
`<report>/dmt_drift.png` plots drift against t per round. The loop runs inside one Ray actor (`--actor`,
the default; connects to the job's cluster under `ray job submit`, else starts a local instance) or
in-process (`--no-actor`). Restarting after a crash completes the interrupted round exactly once (its
checkpoint is pinned) and resumes a training block exactly.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Annotated

import tyro

from jobs.cli_common import FLAT, Tracked, job_main
from pipeline.stage import Resources
from trainers.dmt import DMTLoopConfig
from trainers.tracking import TrackingConfig


@dataclass(kw_only=True)
class DMTJob(Tracked):
    loop: Annotated[DMTLoopConfig, FLAT] = field(default_factory=DMTLoopConfig)
    """The DMT actor's loop: run, target set, corpus, teacher, rounds, schedule, rollouts."""
    train: bool = True
    """Without --first-step: train the student --every-steps steps on round 0 + its rounds after each round
    (--no-train: only relabel, waiting for a separately running `smt train --stream.follow ...`)."""
    lr: float | None = None
    """Learning rate of the training phase `smt dmt` runs alone (default: the run's stored optim.lr)."""
    actor: bool = True
    """Run the loop inside a Ray actor (False: in this process)."""
    stall_timeout_s: float = 900.0
    """With --actor: fail when the DMT actor shows no progress (no event, relabeled shard, training step or poll
    for a checkpoint) for this long: it is stuck (a hung device, a blocking socket), so it is killed and the
    command exits naming it; a rerun resumes. Long rounds are fine as long as they move."""
    report: str = "dmt-report"
    """Local folder for the per-round plot and JSON, and its record run.json naming the run (`smt eval --run`
    on the folder evaluates that run)."""

    def __post_init__(self) -> None:
        if not self.stall_timeout_s > 0:
            raise ValueError(f"--stall-timeout-s={self.stall_timeout_s} must be > 0 (seconds without progress "
                             "before the DMT actor counts as stuck)")

    def execute(self) -> int:
        from trainers.dmt import DMTTimeout

        try:
            return self._execute()
        except DMTTimeout as e:  # a trainer that never came: one line, like every user error
            print(f"smt dmt: error: {e}", file=sys.stderr)
            return 2

    def _execute(self) -> int:
        import json
        from dataclasses import replace
        from pathlib import Path

        from storage.run_dir import RunDir
        from trainers.dmt import AggregateTrainer, DMTLoop, round_reports
        from trainers.student import run_config

        c = self.loop
        cfg = replace(c, teacher=c.teacher or default_teacher(c.targets, c.endpoint_url))
        trainer = None
        if c.first_step is None and self.train:  # alone: the loop trains the run between rounds
            tcfg = run_config(RunDir(c.run, endpoint_url=c.endpoint_url))
            if self.lr is not None:
                tcfg.optim.lr = self.lr
            tcfg.device = c.device
            trainer = AggregateTrainer(targets=c.targets, teacher=cfg.teacher, run=c.run, cfg=tcfg,
                                       endpoint_url=c.endpoint_url, tracking=self.log)
            if not self.quiet:
                print(f"smt dmt: {c.rounds} rounds on {c.run}, each followed by {c.every_steps} training "
                      "steps on round 0 + the run's rounds (no trainer attached)", flush=True)

        def say(ev: dict) -> None:
            if not self.quiet:
                print(ev["text"], flush=True)

        if self.actor:
            from pipeline.executors import init_ray

            ray = init_ray()
            # max_concurrency=2: `progress` is answered beside the running `events`
            actor = ray.remote(num_cpus=c.resources.num_cpus, num_gpus=c.resources.num_gpus, max_restarts=2,
                               max_task_retries=2, max_concurrency=2)(DMTLoop).remote(cfg, None, trainer)
            try:
                follow_actor(ray, actor, self.stall_timeout_s, say, f"on run {c.run}")
            finally:
                ray.kill(actor)
        else:
            for ev in DMTLoop(cfg, trainer=trainer).events(quiet=self.quiet):
                say(ev)
        reps = round_reports(c.run, c.endpoint_url)
        log_rounds(self.log, c.run, reps)
        Path(self.report).mkdir(parents=True, exist_ok=True)
        RunDir(self.report).write_record("dmt", run=c.run)  # what `smt eval --run REPORT` reads: storage/layout.py
        (Path(self.report) / "dmt_rounds.json").write_text(json.dumps(reps, indent=1))
        png = plot_rounds(reps, self.report)
        latest = RunDir(c.run, endpoint_url=c.endpoint_url).latest() or {}
        print(f"{len(reps)} DMT rounds in {c.run}; newest student: step {latest.get('step')}; "
              f"report: {png or self.report}")
        return 0


def follow_actor(ray, actor, stall_s: float, say, what: str) -> None:
    """Stream the DMT actor's events to `say` as they happen, bounded by progress rather than a wall clock: while
    no event comes, ask the actor for its progress count (`DMTLoop.progress`) every few seconds; when neither an
    event nor a changed count (nor an answer) came for `stall_s` seconds, raise DMTStalled naming the actor.
    A round or training block may take hours as long as its shards and steps keep moving."""
    import time

    from trainers.dmt import DMTStalled

    gen = actor.events.options(num_returns="streaming").remote(True)  # each event reaches us as it happens
    poll = min(10.0, stall_s / 4)
    moved, seen, ask, last = time.monotonic(), None, None, "none yet"
    while True:
        ready, _ = ray.wait([gen], num_returns=1, timeout=poll)
        if ready:
            try:
                ref = next(gen)
            except StopIteration:
                return
            ev = ray.get(ref)
            last = ev.get("text", "?")
            say(ev)
            moved = time.monotonic()
            continue
        if ask is None:
            ask = actor.progress.remote()
        answered, _ = ray.wait([ask], timeout=0)
        if answered:
            count = ray.get(answered[0])
            ask = None
            if count != seen:
                seen, moved = count, time.monotonic()
        if time.monotonic() - moved > stall_s:
            raise DMTStalled(
                f"the DMT actor {actor._actor_id.hex()} {what} made no progress for {stall_s:g} s (no event, "
                f"relabeled shard, training step or poll; last event: {last}): it is stuck (a hung device or a "
                "blocking socket?), so it was stopped; see its log, then rerun this command to resume, or raise "
                "--stall-timeout-s if one shard or step takes longer")


def defaults(argv: list[str]) -> DMTJob:
    """Run, target set and corpus are required here (the pipeline sets them); the actor takes a GPU when this
    machine has one."""
    import torch

    gpus = 1.0 if torch.cuda.is_available() else 0.0
    return DMTJob(loop=DMTLoopConfig(targets=tyro.MISSING, run=tyro.MISSING, corpus=tyro.MISSING,
                                     resources=Resources(num_cpus=1.0, num_gpus=gpus)))


def log_rounds(tracking: TrackingConfig, run: str, reports: list[dict]) -> None:
    """The rounds' reports as scalars at step = round (a TensorBoard run of their own: DIR/rounds), rewritten
    whole each time `smt dmt` ends (the reports are the record; a fresh writer hides the earlier copy)."""
    from trainers.tracking import open_tracker, scalars_of

    tracker = open_tracker(tracking.child("rounds"), "dmt-rounds", run=run)
    if tracker is None:
        return
    try:
        for rep in reports:
            drift = rep.get("drift_by_step") or []
            row = {k: rep.get(k) for k in ("rollout_acc", "records", "student_step", "states_per_second", "seconds")}
            tracker.log(rep["round"], scalars_of({**row, **({"drift_final": drift[-1]} if drift else {})}))
    finally:
        tracker.close()


def default_teacher(targets_url: str, endpoint_url: str | None) -> str:
    """The teacher published for the target set (`<bucket>/teachers/<fingerprint>/`), as `smt train` finds it."""
    from storage.reader import TargetSet
    from trainers.student import resolve_teacher

    return resolve_teacher(TargetSet.open(targets_url, None, endpoint_url=endpoint_url))


def plot_rounds(reports: list[dict], folder: str) -> str | None:
    from pathlib import Path

    from trainers.report import plot_curves

    curves = {f"round {r['round']} (student step {r.get('student_step', '?')})":
              (list(range(len(r["drift_by_step"]))), r["drift_by_step"]) for r in reports if r.get("drift_by_step")}
    if not curves:
        return None
    return str(plot_curves(Path(folder) / "dmt_drift.png", curves, xlabel="rollout step t",
                           ylabel="drift MSE(m_hat_t, m*_t)", title="student drift per DMT round"))


main = job_main("dmt", DMTJob, __doc__.splitlines()[0], defaults)

if __name__ == "__main__":
    raise SystemExit(main())
