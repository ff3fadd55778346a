"""The DMT actor's loop: watch a student run, relabel after each new checkpoint, append rounds to the run.

Rounds belong to the run (storage/rounds.py): `<run>/rounds/` holds its round shards, its rounds manifest
and the loop's pins and reports (`<run>/rounds/dmt/`); the shared target set (round 0) is only read.
1. Read the run's newest rounds generation: rounds already committed are done (idempotent restarts).
2. For round r, wait until the run's `checkpoints/latest.json` names a step >= (step used by round r-1,
   0 for round 1) + `every_steps`.
3. Pin that checkpoint for round r with an exclusive-create intent file `dmt/intent-r.json`: a restarted
   actor re-reads the pin (without waiting for the trainer again), so it redoes round r from the same
   student and writes the same bytes. A full checkpoint is first copied to `policy/step-N` (weights only,
   never pruned) and the pin names the copy: the trainer's retention cannot delete a pinned student.
4. Relabel (pipeline/relabel.py): roll the student out, write round r as pair shards, save the round's
   report as `dmt/pending-r.json`, commit ONE new generation, then publish the report (drift against t,
   rollout accuracy, generation) as `dmt/round-r.json`. A crash between the commit and the report is
   repaired on restart from the pending file, so every committed round has its report.
Who trains the student between rounds:
- a trainer attached beside the loop: lockstep (`first_step`, `smt train --phase-start --dmt.every`) or
  following (`smt train --stream.follow ...`, `--no-train` here); the loop waits for its checkpoints, saying
  what it waits for and for how long;
- nobody (standalone, the README's `smt train` then `smt dmt`): the loop is given a `trainer` and after
  round r trains the run itself on round 0 + rounds 1..r for `every_steps` steps (one new training phase
  from round 1's step: `AggregateTrainer` below); round r+1 rolls out that student.
`events()` yields one line-sized event per wait, round and training block as it happens (a Ray actor
streams them); `run()` returns the round reports. This module is plain Python; `jobs/dmt.py` runs it
inside a Ray actor.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from pipeline.progress import beats, tick
from pipeline.relabel import RelabelConfig, Rollouts, check_relabel, relabel
from storage.codec import STATE_DTYPES
from storage.errors import ObjectNotFound
from storage.manifest import newest_generation, read_generation
from storage.rounds import round_generation, rounds_bucket
from storage.run_dir import ROLLOUT, RunDir
from trainers.student import Session, StudentRun, StudentTrainConfig, run_training
from trainers.tracking import TrackingConfig


class DMTTimeout(RuntimeError):
    """The run produced no new checkpoint in time."""


class DMTStalled(DMTTimeout):
    """The DMT actor made no progress (no event, relabeled shard, training step or poll) for too long."""


@dataclass(kw_only=True)
class DMTLoopConfig(Rollouts):
    targets: str = ""
    """Target set URL (the folder holding manifest/): round 0, shared and only read."""
    run: str = ""
    """Student run URL (written by `smt train`; holds checkpoints/latest.json); its rounds go to <run>/rounds/."""
    corpus: str = ""
    """Corpus spec the target set was labeled from."""
    teacher: str = ""
    """Teacher checkpoint URL (`smt dmt`: default <bucket>/teachers/<fingerprint>)."""
    rounds: int = 3
    """Total DMT rounds to reach (rounds already committed count)."""
    every_steps: int = 100
    """Relabel once the student has advanced this many steps since the previous round's checkpoint."""
    first_step: int | None = None
    """Lockstep: round r rolls out exactly the checkpoint of step first_step + (r-1) * every_steps (the
    trainer's lockstep hook (`lockstep.py`) writes them), so the round schedule is reproducible. None: round r
    takes the newest checkpoint once the run is `every_steps` past the previous round's."""
    poll_seconds: float = 1.0
    """How often to look for a new checkpoint."""
    timeout_seconds: float = 3600.0
    """Give up when no suitable checkpoint appears for this long."""

    def __post_init__(self) -> None:
        """Refuse bad values at construction, each named with its flag and the fix (all of them in one line)."""
        bad = []

        def need(ok: bool, what: str) -> None:
            if not ok:
                bad.append(what)

        need(self.rounds >= 1, f"--rounds={self.rounds} must be >= 1")
        need(self.every_steps >= 1, f"--every-steps={self.every_steps} must be >= 1")
        need(self.first_step is None or self.first_step >= 0, f"--first-step={self.first_step} must be >= 0 (or unset)")
        need(self.sequences >= 1, f"--sequences={self.sequences} must be >= 1")
        need(self.shard_sequences >= 1, f"--shard-sequences={self.shard_sequences} must be >= 1")
        need(self.start >= 0, f"--start={self.start} must be >= 0")
        need(self.Td is None or self.Td >= 1, f"--Td={self.Td} must be >= 1 (or unset: to the end)")
        need(self.format in ("zarr", "wds"), f"--format={self.format!r} must be zarr or wds")
        need(self.dtype in STATE_DTYPES, f"--dtype={self.dtype!r} must be one of {', '.join(STATE_DTYPES)}")
        need(self.poll_seconds > 0, f"--poll-seconds={self.poll_seconds} must be > 0")
        need(self.timeout_seconds > 0, f"--timeout-seconds={self.timeout_seconds} must be > 0")
        need(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None,
             f"--device={self.device!r} must be auto, cpu, cuda, cuda:N or mps")
        if bad:
            raise ValueError(f"dmt: {'; '.join(bad)}")


class DMTLoop:
    def __init__(self, cfg: DMTLoopConfig, executor=None, trainer: Callable[..., dict] | None = None):
        """`trainer` (standalone DMT, no trainer attached): called as trainer(round=r, phase_start=s0,
        stop_at=s, phase_end=e) after round r, it trains the run on round 0 + rounds 1..r up to step s and
        returns run_training's summary (`AggregateTrainer`)."""
        from pipeline.executors import SerialExecutor

        for name in ("targets", "run", "corpus", "teacher"):
            if not getattr(cfg, name):
                raise ValueError(f"dmt: {name} is not set: pass --{name}")
        if trainer is not None and cfg.first_step is not None:
            raise ValueError("lockstep DMT (first_step) has its trainer attached: pass no standalone trainer")
        self.cfg = cfg
        self.trainer = trainer
        self.executor = executor or SerialExecutor()
        self.student_run = RunDir(cfg.run, endpoint_url=cfg.endpoint_url)
        self.run_dir = self.student_run.bucket
        self.rounds = rounds_bucket(self.run_dir)  # this run's rounds, pins and reports

    def committed_rounds(self) -> set[int]:
        n = newest_generation(self.rounds)
        return {e.round for e in read_generation(self.rounds, n).shards} if n else set()

    def latest_checkpoint(self) -> dict | None:
        return self.student_run.latest()

    def _pin(self, r: int, pointer: dict) -> dict:
        """The checkpoint round r uses: created once, then re-read by any restart."""
        rel = f"dmt/intent-{r:03d}.json"
        self.rounds.create_exclusive(rel, json.dumps(pointer, sort_keys=True).encode())
        return json.loads(self.rounds.read_bytes(rel))

    def pinned(self, r: int) -> dict | None:
        """The checkpoint pointer pinned for round r, or None."""
        try:
            return json.loads(self.rounds.read_bytes(f"dmt/intent-{r:03d}.json"))
        except ObjectNotFound:
            return None

    def _round_step(self, r: int) -> int:
        p = self.pinned(r) if r >= 1 else None
        return int(p["step"]) if p else 0

    def _repair_report(self, r: int) -> None:
        """Round r is committed but its report may be missing (crash after the commit): publish it."""
        rel = f"dmt/round-{r:03d}.json"
        if self.rounds.exists(rel):
            return
        try:
            rep = json.loads(self.rounds.read_bytes(f"dmt/pending-{r:03d}.json"))
        except ObjectNotFound:  # committed by something other than this loop: a minimal report
            p = self.pinned(r) or {}
            rep = {"round": r, "student_step": p.get("step"), "drift_by_step": None, "note": "no report"}
        rep.update(generation=round_generation(self.rounds, r), committed=True)
        self.rounds.write_bytes(rel, json.dumps(rep, indent=1).encode())

    def _ready_pointer(self, r: int) -> dict | None:
        """The checkpoint round r rolls out if the run already holds it, else None (no waiting)."""
        c = self.cfg
        if c.first_step is None:  # the newest checkpoint, once every_steps past round r-1's
            p = self.latest_checkpoint()
            return p if p is not None and int(p["step"]) >= c.every_steps + self._round_step(r - 1) else None
        step = c.first_step + (r - 1) * c.every_steps
        rel = self.student_run.student_dir(step)  # the trainer's weights-only snapshot of that step, or a full checkpoint there
        if rel is not None:
            return {"step": step, "path": rel}
        p = self.latest_checkpoint()
        if p is not None and int(p["step"]) >= step and self.student_run.student_dir(step) is None:  # (not written since)
            raise DMTTimeout(f"run {c.run} has no checkpoint or policy snapshot at step {step} for lockstep round "
                             f"{r}: train with --phase-start {c.first_step} --dmt.every {c.every_steps} so the "
                             "trainer writes it")
        return None

    def _awaited(self, r: int) -> str:
        """What round r waits for, in words."""
        c = self.cfg
        if c.first_step is None:
            return (f"a checkpoint at step >= {c.every_steps + self._round_step(r - 1)} in {c.run} (from a running "
                    "`smt train --stream.follow ...`)")
        step = c.first_step + (r - 1) * c.every_steps
        return (f"the student of step {step} in {c.run} (from `smt train --phase-start {c.first_step} --dmt.every "
                f"{c.every_steps}`)")

    def _await_pointer(self, r: int) -> dict:
        """The checkpoint round r rolls out, waiting up to `timeout_seconds` for the trainer to write it."""
        c = self.cfg
        deadline = time.monotonic() + c.timeout_seconds
        while True:
            p = self._ready_pointer(r)
            if p is not None:
                return p
            tick()  # a poll is progress: the wait has its own bound (timeout_seconds)
            if time.monotonic() > deadline:
                raise DMTTimeout(f"round {r}: waited {c.timeout_seconds:.0f} s for {self._awaited(r)} in vain: is that "
                                 "trainer running? (with no trainer, run `smt dmt` alone: no --first-step, no --no-train)")
            time.sleep(c.poll_seconds)

    def _own_pointer(self, r: int) -> dict:
        """Standalone: round 1 rolls out the run's newest checkpoint, round r > 1 the end of block r-1."""
        p = self.latest_checkpoint()
        if p is None:
            raise DMTTimeout(f"run {self.cfg.run} has no checkpoint: train it first (`smt train --out {self.cfg.run}`)")
        need = self._round_step(r - 1) + self.cfg.every_steps if r > 1 else 0
        if int(p["step"]) < need:  # _train_block(r-1) always runs first, so this is a broken run folder
            raise DMTTimeout(f"run {self.cfg.run} is at step {p['step']}, round {r} needs step {need}: was a "
                             "checkpoint removed? resume with `smt dmt` on an intact run")
        return p

    def _train_block(self, r: int):
        """Standalone: train the student on round 0 + rounds 1..r up to `every_steps` past round r's pin (one
        phase starting at round 1's step); yields progress events. Already trained: nothing."""
        c = self.cfg
        start, pinned = self._round_step(1), self._round_step(r)
        stop = pinned + c.every_steps
        at = int((self.latest_checkpoint() or {"step": 0})["step"])
        if at >= stop:
            return
        yield {"event": "train", "round": r, "text": f"round {r}: training the student from step {at} to {stop} on "
               f"round 0 + rounds 1..{r}"}
        t0 = time.monotonic()
        out = self.trainer(round=r, phase_start=start, stop_at=stop, phase_end=start + c.rounds * c.every_steps)
        loss = (out.get("last") or {}).get("loss")
        yield {"event": "trained", "round": r, "step": out["step"], "loss": loss,
               "text": f"round {r}: trained to step {out['step']} (loss {loss if loss is None else f'{loss:.4g}'}, "
                       f"{time.monotonic() - t0:.1f} s)"}

    def _policy_url(self, pointer: dict) -> str:
        """The student a round rolls out: the snapshot's `rollout/` policy (the trainer's EMA, `LockstepDMTConfig.ema`) when
        it holds one, else its `student/`; both are written before the snapshot's commit marker."""
        rollout = f"{pointer['path']}/{ROLLOUT}"
        return self.run_dir.url(rollout if self.run_dir.exists(f"{rollout}/config.json") else f"{pointer['path']}/student")

    def _relabel_config(self, r: int, pointer: dict) -> RelabelConfig:
        c = self.cfg
        return RelabelConfig(
            targets=c.targets, run=c.run, teacher=c.teacher, student=self._policy_url(pointer),
            corpus=c.corpus, round=r, sequences=c.sequences, shard_sequences=c.shard_sequences, start=c.start,
            Td=c.Td, format=c.format, dtype=c.dtype, device=c.device, endpoint_url=c.endpoint_url,
            resources=c.resources)

    def _pinnable(self, pointer: dict) -> dict:
        """A checkpoint pointer made safe to pin: a copy of its student in `policy/` (never pruned), so the
        trainer's retention (`--keep-last`) cannot delete a round's student under its pin. A checkpoint pruned
        while it is copied is replaced by the run's newest one."""
        for _ in range(5):
            try:
                return self.student_run.copy_to_policy(pointer)
            except ObjectNotFound:
                pointer = self.latest_checkpoint() or pointer
        raise DMTTimeout(f"run {self.cfg.run}: every checkpoint was pruned before it could be copied for a DMT "
                         "round: raise the trainer's --keep-last")

    def run_round(self, r: int, pointer: dict, quiet: bool = True) -> dict:
        if self.pinned(r) is None:  # validate before pinning: a pin from a bad run would bind later runs
            check_relabel(self._relabel_config(r, pointer))
            if self.cfg.first_step is None and pointer["path"].startswith("checkpoints/"):  # lockstep trainers
                pointer = self._pinnable(pointer)  # spare the round's steps themselves (Hook.pinned_steps)
        pointer = self._pin(r, pointer)
        if not self.run_dir.exists(f"{pointer['path']}/student/config.json"):
            raise DMTTimeout(f"run {self.cfg.run}: DMT round {r} is pinned to {pointer['path']}, which no longer exists "
                             f"(pruned by the trainer's retention): delete {self.rounds.url(f'dmt/intent-{r:03d}.json')} "
                             "to pin the newest checkpoint instead")

        def save_pending(rep: dict) -> None:
            rep["student_step"] = int(pointer["step"])
            self.rounds.write_bytes(f"dmt/pending-{r:03d}.json", json.dumps(rep, indent=1).encode())

        rep = relabel(self._relabel_config(r, pointer), self.executor, quiet=quiet, before_commit=save_pending)
        rep["student_step"] = int(pointer["step"])
        if rep.get("committed"):
            self.rounds.write_bytes(f"dmt/round-{r:03d}.json", json.dumps(rep, indent=1).encode())
        else:
            self._repair_report(r)
        return rep

    def events(self, quiet: bool = True):
        """Run the loop, yielding one event (a dict with "event" and a one-line "text") as each thing happens:
        "wait" before waiting for a trainer, "round" with each committed round's report, "train"/"trained"
        around a standalone training block. A Ray actor streams them (`num_returns="streaming"`)."""
        done = self.committed_rounds() - {0}
        c = self.cfg
        for r in range(1, c.rounds + 1):
            if r in done:
                self._repair_report(r)
            else:
                pointer = self.pinned(r)
                if pointer is None and self.trainer is not None:
                    pointer = self._own_pointer(r)
                if pointer is None:
                    pointer = self._ready_pointer(r)
                if pointer is None:
                    yield {"event": "wait", "round": r, "text": f"round {r}: waiting up to {c.timeout_seconds:.0f} s "
                           f"for {self._awaited(r)}"}
                    pointer = self._await_pointer(r)
                rep = self.run_round(r, pointer, quiet)
                yield {"event": "round", "round": r, "report": rep, "text": round_line(rep)}
            if self.trainer is not None:
                yield from self._train_block(r)

    def run(self, quiet: bool = True, on_round=None) -> list[dict]:
        """Relabel (and standalone, train) until `rounds` rounds are committed; returns this call's round
        reports. `on_round(report)` is called as each round is committed."""
        reports = []
        for ev in self.events(quiet):
            if ev["event"] == "round":
                reports.append(ev["report"])
                if on_round:
                    on_round(ev["report"])
        return reports

    def config(self) -> dict:
        return asdict(self.cfg)

    def progress(self) -> int:
        """Work done so far in this process (relabeled shards, training steps, polls): a Ray actor answers
        this beside `events` (max_concurrency=2), and a watcher that sees it unchanged knows the loop is stuck."""
        return beats()


@dataclass
class AggregateTrainer:
    """Standalone DMT's student side (`DMTLoop(..., trainer=...)`): after round r, train the run on round 0
    + its rounds 1..r up to step `stop_at`. All blocks form one training phase that starts where round 1 was
    rolled out (fresh AdamW, this config's lr) and is resumed exactly from the run's checkpoints, with the
    run's own stream config (generation switches only at block starts; no lockstep hooks)."""

    targets: str
    teacher: str | None
    run: str
    cfg: StudentTrainConfig
    endpoint_url: str | None = None
    quiet: bool = True
    tracking: TrackingConfig | None = None
    """Also log each block's metrics rows to TensorBoard / W&B (one run continued block after block)."""

    def __call__(self, *, round: int, phase_start: int, stop_at: int, phase_end: int) -> dict:
        cfg = replace(self.cfg, phase_start=phase_start, steps=phase_end,
                      stream=replace(self.cfg.stream, follow="never", follow_every=0))
        return run_training(StudentRun(self.targets, self.teacher, self.run, endpoint_url=self.endpoint_url),
                            cfg, quiet=self.quiet, tracking=self.tracking,
                            session=Session(stop_at=stop_at, through_round=round))


def round_line(rep: dict) -> str:
    """One line per round: rollout accuracy, drift at t = Td, records, generation."""
    d = rep.get("drift_by_step") or [float("nan")]
    acc = rep.get("rollout_acc")
    return (f"round {rep['round']}: student step {rep.get('student_step')} rollout_acc="
            f"{'n/a' if acc is None else f'{acc:.3f}'} drift_T={d[-1]:.4f} records={rep.get('records')} "
            f"generation={rep.get('generation')}" + ("" if rep.get("committed", True) else " (already committed)"))


def round_reports(run: str, endpoint_url: str | None = None) -> list[dict]:
    """The per-round reports (drift against t, rollout accuracy) of a run's DMT rounds so far, in round order."""
    b = rounds_bucket(run, endpoint_url)
    out, r = [], 1
    while True:
        try:
            out.append(json.loads(b.read_bytes(f"dmt/round-{r:03d}.json")))
        except ObjectNotFound:
            return out
        r += 1
