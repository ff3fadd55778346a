"""The one training loop of every trainer, and the parts every method puts around it.

A method is an `Objective` (its batch and its loss) plus `Hook`s. The loop (`train`) reads top to bottom:
hooks' `before_step`, the objective's batch, hooks' `transform`, the loss, backward, the optimiser step
(clipped), hooks' `after_step` (extra columns), the stop rule (steps, time budget), hooks' `end_step`.
What happens at the end of a step is a hook too, in the order given:
    Evaluation   a metrics row every `every` steps (and at the stop), with the method's valid figures, the
                 report-only `Callbacks`, and the `Curriculum` (length stages, `stop_at_acc`) that reads them
    Checkpoints  the method's save every `every` steps (and at the stop), on rank 0
Pretraining (`pretrain.py`), students (`student.py`), BPTT (`bptt.py`) and online DMT (`dmt/online.py`) all
run here; a new method writes its `Objective` and picks or adds hooks (trainers/README.md).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from models.device import autocast
from trainers.common import MetricsLog, clip_and_step
from trainers.evaluate import eval_batch


def _same(values: list[int]) -> list[int]:
    return values


@dataclass
class Workers:
    """This process's place among DDP workers (one process: the defaults)."""

    rank: int = 0
    world_size: int = 1
    sync: Callable[[list[int]], list[int]] | None = None
    """Rank 0's list of ints on every worker (its evaluation decides curriculum and stopping; pretraining)."""
    agree: Callable[[int], int] | None = None
    """The smallest int over all workers (the student stream's generation switches)."""
    wrap: Callable[[nn.Module], nn.Module] | None = None
    """Wraps the objective's module for DDP."""

    def share(self) -> Callable[[list[int]], list[int]]:
        """How rank 0's decisions reach every worker (the identity in one process)."""
        if self.world_size > 1 and self.sync is None:
            raise ValueError(f"world_size={self.world_size} needs `sync` (rank 0's decisions for every worker)")
        return self.sync if self.world_size > 1 else _same


@dataclass
class Callbacks:
    """A caller's functions at evaluations, run off the training clock; no rule of the run reads what they do."""

    on_eval: Callable[[dict], None] | None = None
    """After each evaluation row (and its report), e.g. to watch or interrupt a run."""
    reporter: Callable[[nn.Module, dict], dict] | None = None
    """`reporter(student, row) -> dict`: report-only figures (e.g. on the test split) that join the row."""
    on_stage_end: Callable[..., None] | None = None
    """Pretraining: `on_stage_end(teacher, student, stage_corpus, row)` each time a curriculum stage is passed
    (and when `stop_at_acc` ends the last one); it must not change the models' weights."""


class Hook:
    """Something the loop is given: called at fixed points of every step, in the order the hooks were given.
    Every method is optional (these defaults do nothing). A hook builds its per-run state in `start`, so one
    object can be shipped to every DDP worker."""

    def check(self, cfg: Any) -> None:
        """Refuse a training config this hook cannot run with (ValueError naming the fix); called first."""

    def record(self) -> dict[str, Any]:
        """Entries the run's config file records beside the training config (e.g. {"dmt": {...}})."""
        return {}

    def start(self, loop: Loop) -> None:
        """Once per process, before its first step."""

    def before_step(self, loop: Loop) -> None:
        """Before the batch of step `loop.state.step + 1` is drawn (e.g. wait for data, `loop.switch`)."""

    def transform(self, loop: Loop, batch: dict[str, torch.Tensor]) -> None:
        """Rewrite the batch (already on the device) in place before the loss."""

    def after_step(self, loop: Loop, out: dict[str, torch.Tensor]) -> dict[str, float]:
        """After the optimiser step (`loop.state.step` counts it); returns extra columns of its metrics row."""
        return {}

    def end_step(self, loop: Loop, columns: dict[str, Any]) -> None:
        """Last, once the stop rule has set `loop.done`: `columns` is the step's metrics (evaluation, checkpoints)."""

    def write(self, loop: Loop, folder: Any) -> None:
        """Add this hook's own files to a checkpoint folder (a bucket rooted there) being written, before its commit
        marker (e.g. lockstep DMT's rollout policy, which a resume reads back)."""

    def pinned_steps(self, cfg: Any) -> set[int]:
        """Steps whose checkpoint someone reads later by step: checkpoint retention never deletes them."""
        return set()


class Objective:
    """A method's step: `batch(loop)` draws the batch of step `loop.state.step + 1`, `loss(batch)` returns
    {"loss": ..., other columns} (under the loop's autocast), `columns(loop)` the row's columns after grad_norm."""

    def batch(self, loop: Loop) -> Any:
        raise NotImplementedError

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def columns(self, loop: Loop) -> dict[str, Any]:
        return {}


@dataclass
class Loop:
    """What a hook sees of the running loop. `state` has `step`, `params`, `opt`, `sched` (and a method's own
    fields); `run` is the run folder (None when nothing is written)."""

    state: Any
    run: Any
    log: MetricsLog
    lead: bool
    """Rank 0: the process that logs and writes checkpoints."""
    say: Callable[[str], None] | None
    """One-line notes for the user (None when quiet, and on other ranks)."""
    stop: int = 0
    """The last step of this call."""
    seconds: float | None = None
    """Training budget on the log's clock (evaluation excluded)."""
    share: Callable[[list[int]], list[int]] = _same
    """Rank 0's decisions for every worker."""
    done: bool = False
    """Set by the stop rule and by hooks (`stop_at_acc`): no step follows this one."""
    row: dict = field(default_factory=dict)
    """The last metrics row this process logged."""

    def spent(self) -> bool:
        """The stop rule after a step: `stop` reached or the time budget spent (rank 0's clock decides)."""
        done = self.state.step >= self.stop or (self.seconds is not None and self.log.elapsed() >= self.seconds)
        if self.seconds is not None:  # clocks differ between workers: rank 0's says when the budget is spent
            done = bool(self.share([int(done)])[0])
        return done


def train(loop: Loop, objective: Objective, hooks: Sequence[Hook], clip: float, device: torch.device) -> dict:
    """Step until `loop.done`; returns the last metrics row. The log is closed on the way out (an exception too)."""
    state = loop.state
    try:
        for h in hooks:
            h.start(loop)
        while not loop.done:
            for h in hooks:
                h.before_step(loop)
            batch = objective.batch(loop)
            for h in hooks:
                h.transform(loop, batch)
            with autocast(device):
                out = objective.loss(batch)
            out["loss"].backward()
            gn = clip_and_step(state.params, state.opt, state.sched, clip)
            state.step += 1
            columns = {**out, "grad_norm": gn, **objective.columns(loop)}
            for h in hooks:
                columns.update(h.after_step(loop, out))
            loop.log.advance()
            loop.done = loop.spent()
            for h in hooks:
                h.end_step(loop, columns)
    finally:
        loop.log.close()  # trackers flush and close (W&B marks the run finished)
    return loop.row


class Curriculum:
    """Length stages (`with_length` corpora, the full corpus last) and the rules that read an evaluation:
    stage s is passed once `acc` reaches `pass_acc`; at the last stage `stop_at_acc` stops the run. `batch` is
    the valid evaluation set of the current stage, drawn again when the stage moves."""

    def __init__(self, stages: list, acc: str, pass_acc: float, stop_at_acc: float | None, *, eval_size: int,
                 seed: int, device: torch.device, stage: int = 0) -> None:
        self.stages, self.acc, self.pass_acc, self.stop_at_acc = stages, acc, pass_acc, stop_at_acc
        self.eval_size, self.seed, self.device = eval_size, seed, device
        self.move(stage)

    @property
    def corpus(self):
        return self.stages[self.stage]

    def move(self, stage: int) -> None:
        self.stage = stage
        self.batch = tuple(t.to(self.device) for t in eval_batch(self.corpus, self.eval_size, self.seed))

    def decide(self, row: dict) -> tuple[int, bool]:
        """(the stage to train at next, whether the current stage was passed: a curriculum step or the stop)."""
        acc, last = row[self.acc], len(self.stages) - 1
        if self.stage < last and acc >= self.pass_acc:
            return self.stage + 1, True
        return self.stage, self.stage == last and self.stop_at_acc is not None and acc >= self.stop_at_acc


class Evaluation(Hook):
    """A metrics row every `every` steps and at the stop (rank 0): the step's columns, then `figures()` (the
    method's valid evaluation, off the training clock), the callbacks' report, and the curriculum's decision,
    which every worker takes from rank 0. `on_pass(stage_corpus, row)`: a stage was passed (pretraining's
    `on_stage_end`)."""

    def __init__(self, every: int, figures: Callable[[], dict] | None = None, *, curriculum: Curriculum | None = None,
                 callbacks: Callbacks | None = None, model: nn.Module | None = None,
                 on_pass: Callable[[Any, dict], None] | None = None) -> None:
        self.every, self.figures, self.curriculum = every, figures, curriculum
        self.callbacks, self.model, self.on_pass = callbacks or Callbacks(), model, on_pass

    def end_step(self, loop: Loop, columns: dict[str, Any]) -> None:
        if loop.state.step % self.every and not loop.done:
            return
        self.evaluate(loop, loop.state.step, columns)

    def evaluate(self, loop: Loop, step: int, columns: dict[str, Any], report: bool = True) -> None:
        """The row of `step` and the decisions it drives; also before the first step (online DMT's step 0,
        without the reporter: `report=False`)."""
        c = self.curriculum
        stage, done = (c.stage if c else 0), loop.done
        if loop.lead:
            if self.figures is not None:
                with loop.log.paused():
                    figures = self.figures()
                loop.row = row = loop.log.log(step, **columns, **figures)
            else:
                loop.row = row = loop.log.log(step, **columns)
            self.report(loop, row, report)
            if c is not None:
                stage, passed = c.decide(row)
                done = done or (passed and stage == c.stage)
                if passed and self.on_pass:
                    with loop.log.paused():
                        self.on_pass(c.corpus, row)
        if c is not None:
            stage, shared = loop.share([stage, int(done)])
            loop.done = bool(shared)
            if stage != c.stage:
                c.move(stage)

    def report(self, loop: Loop, row: dict, reporter: bool = True) -> None:
        cb = self.callbacks
        if cb.reporter and reporter:  # figures for the report (e.g. on the test split): never read by the rules
            with loop.log.paused():
                row.update(cb.reporter(self.model, row))
        if cb.on_eval:
            with loop.log.paused():  # a caller's extra evaluation is not training time
                cb.on_eval(row)


class Checkpoints(Hook):
    """`save(loop)` on rank 0 every `every` steps and at the stop (a run that writes nothing has none)."""

    def __init__(self, every: int, save: Callable[[Loop], None]) -> None:
        self.every, self.save = every, save

    def end_step(self, loop: Loop, columns: dict[str, Any]) -> None:
        if loop.lead and loop.run is not None and (loop.state.step % self.every == 0 or loop.done):
            self.save(loop)
