"""Shared training plumbing: optimiser + schedule, metrics log, progress (device helpers: models/device.py)."""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.progress import Progress
from storage.metrics import MetricsFile
from storage.run_dir import RunDir
from trainers.tracking import Tracker, TrackingConfig, open_tracker, scalars_of


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    warmup_frac: float = 0.01
    """Fraction of steps of linear warm-up."""
    warmup_steps: int | None = None
    """Warm-up length in steps; overrides warmup_frac (use it with wall-clock budgets)."""
    schedule: str = "constant"
    """After warm-up: 'constant' or 'cosine' (to 10% of lr)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""

    def build(self, params, total_steps: int, start: int = 0):
        """AdamW and its schedule. With `start`, the schedule (warm-up, then decay until `total_steps`) begins
        at optimiser step `start`: a later phase of a resumed run (e.g. DMT after SMT)."""
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, betas=(self.beta1, self.beta2))
        total_steps = max(1, total_steps - start)
        warm = max(1, self.warmup_steps if self.warmup_steps is not None else int(self.warmup_frac * total_steps))

        def factor(step: int) -> float:
            step = max(0, step - start)
            if step < warm:
                return (step + 1) / warm
            if self.schedule == "cosine":
                p = min(1.0, (step - warm) / max(1, total_steps - warm))
                return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))
            return 1.0

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# fields a resume may change without it being a change of the run: where it runs, and the permission below
_NOT_THE_RUN = ("device", "allow_seed_change")


def config_changes(saved: dict, now: dict, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted field: (recorded, now)} for every field whose value differs between a run's recorded config
    (JSON) and this one (`asdict`); fields the recorded config does not hold (an older version) are skipped."""
    out: dict[str, tuple[Any, Any]] = {}
    for k, v in now.items():
        if k in _NOT_THE_RUN or k not in saved:
            continue
        old = saved[k]
        if isinstance(v, dict) and isinstance(old, dict) and not k.endswith("weights"):
            out.update(config_changes(old, v, f"{prefix}{k}."))
        elif json.loads(json.dumps(v, default=str)) != old:
            out[f"{prefix}{k}"] = (old, v)
    return out


def check_resume(run_url: str, step: int, saved: dict | None, now: dict, *, seeds: dict[str, str],
                 allow_seed_change: bool) -> dict[str, tuple[Any, Any]]:
    """The changes of this config against the one the run recorded (`config_changes`). A changed seed is
    refused in one line unless `allow_seed_change` (`seeds` maps each seed field to what depends on it): the
    resumed run would not be the run an uninterrupted one is. Anything else is allowed (the caller says it)."""
    changes = config_changes(saved or {}, now)
    for k, what in seeds.items():
        if k in changes and not allow_seed_change:
            old, new = changes[k]
            raise ValueError(f"run {run_url} (step {step}) was trained with {k}={old}, this command gives {k}={new}: "
                             f"it decides the {what}, so the resume would not be exact; pass --{k.replace('_', '-')} "
                             f"{old}, or --allow-seed-change to resume with {new} anyway, or give a new --out")
    return changes


def announce_resume(run, step: int, changes: dict[str, tuple[Any, Any]]) -> str | None:
    """Say in one line what a resume changed (old -> new) and record it in the run as `resume-<step>.json`;
    returns the line (None: nothing changed)."""
    if not changes:
        return None
    name = f"resume-{step:08d}.json"
    run.write_json(name, {"step": step, "changes": {k: {"old": a, "new": b} for k, (a, b) in changes.items()}})
    what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in sorted(changes.items()))  # by name, not class layout
    line = f"resuming {run.url} at step {step} with a changed config: {what} (applied from here; recorded in {name})"
    print(line, file=sys.stderr, flush=True)
    return line


def apply_optim(opt, sched, o: OptimConfig) -> None:
    """This config's optimiser settings on a resumed AdamW and schedule (the same numbers when unchanged)."""
    sched.base_lrs = [o.lr for _ in opt.param_groups]
    for g, f in zip(opt.param_groups, sched.lr_lambdas):
        g.update(initial_lr=o.lr, lr=o.lr * f(sched.last_epoch), weight_decay=o.weight_decay, betas=(o.beta1, o.beta2))
    sched._last_lr = [g["lr"] for g in opt.param_groups]


def clip_and_step(params, opt, sched, clip: float) -> float:
    gn = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(gn)


# "wall": seconds on the wall clock; "process": CPU seconds of this process (all threads), a budget that
# other load on the machine does not eat into (benchmarks on shared machines use it with 1 thread).
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


class MetricsLog:
    """Keeps one JSON row per logged step (`history`), writes them, and shows the progress.

    Rows go to `store` (a run folder's `MetricsFile`, on any bucket: appended locally, one small part per
    flush on an object store, at most every `FLUSH_S` seconds, at `flush()` (checkpoints) and on close), or
    nowhere (a run kept in memory). `tracker` (`trainers/tracking.py`),
    when given, gets each row's numeric columns as it is logged (TensorBoard, W&B) and is closed with the
    log; the rows here stay the source of truth."""

    FLUSH_S = 30.0
    """Seconds between two flushes of an object store's rows (a part each)."""

    def __init__(self, total: int, desc: str, quiet: bool = False, clock: str = "wall", start: float = 0.0, *,
                 seconds: float | None = None, store: MetricsFile | None = None, tracker: Tracker | None = None):
        if clock not in CLOCKS:
            raise ValueError(f"clock={clock!r} is unknown: use one of {', '.join(CLOCKS)}")
        self.store = store
        self.flush_s, self.flushed_at = self.FLUSH_S, time.monotonic()
        self.progress = Progress(desc, steps=total, seconds=seconds, quiet=quiet)
        self.now = CLOCKS[clock]
        self.t0 = self.now() - start  # `start`: seconds a resumed run had already spent
        self.paused_for = 0.0
        self.history: list[dict[str, Any]] = []
        self.tracker = tracker

    def elapsed(self) -> float:
        """Training seconds so far on this log's clock, minus the time spent inside `paused()` (evaluation)."""
        return self.now() - self.t0 - self.paused_for

    @contextlib.contextmanager
    def paused(self):
        t = self.now()
        try:
            yield
        finally:
            self.paused_for += self.now() - t

    def log(self, step: int, **metrics: Any) -> dict:
        row = {"step": step, "time": round(self.elapsed(), 3), **{k: _num(v) for k, v in metrics.items()}}
        self.history.append(row)
        if self.store is not None:
            self.store.append(row)
            if time.monotonic() - self.flushed_at >= self.flush_s:
                self.flush()
        if self.tracker is not None:
            self.tracker.log(step, scalars_of(row))
        self.progress.postfix(**{k: v for k, v in row.items() if isinstance(v, float) and k != "time"})
        return row

    def flush(self) -> None:
        """Make the rows so far durable in the run folder (a checkpoint was just committed)."""
        if self.store is not None:
            self.store.flush()
            self.flushed_at = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.progress.advance(n, elapsed=self.elapsed())

    def close(self) -> None:
        self.progress.close()
        if self.store is not None:
            self.store.close()
        if self.tracker is not None:
            self.tracker.close()


def as_run(out: str | Path | RunDir | None) -> RunDir | None:
    """The run folder `out` names (a `RunDir` as given: it carries an S3 endpoint), None to write nothing."""
    return out if isinstance(out, RunDir) or out is None else RunDir(str(out))


def open_log(run: RunDir | None, rec: dict, cfg: Any, quiet: bool, tracking: TrackingConfig | None = None, *,
             start_step: int = 0, track_as: str | None = None) -> MetricsLog:
    """A run's metrics log after writing its record `rec` (`storage.layout.record`: kind, corpus, config) to
    `run.json`; the rows go to the run's metrics (`RunDir.metrics()` reads them). `cfg` needs `steps` and
    `clock` (and `seconds`, a time budget, if it has one). Without `run`, nothing is written and the log only
    shows progress. `tracking`: also mirror rows and record to TensorBoard / W&B, as the run (or `track_as`)
    continuing after `start_step`."""
    if run is not None:
        run.write_record(**rec)
    return MetricsLog(cfg.steps, rec["kind"], quiet, cfg.clock, seconds=getattr(cfg, "seconds", None),
                      store=run.metrics_writer(start_step) if run is not None else None,
                      tracker=open_tracker(tracking, rec["kind"], run=run.url if run is not None else track_as,
                                           start_step=start_step, config=rec))


def _num(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().item())
    return v
