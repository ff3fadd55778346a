"""Experiment tracking: a training run's scalars and config, mirrored to TensorBoard and/or Weights & Biases.

The run's `metrics.jsonl` (`MetricsLog`) stays the source of truth (resume, reports, `smt eval`); a `Tracker`
only receives a copy of each metrics row as it is written. One small interface:

    tracker = TrackingConfig(tensorboard="tb", wandb="my-project").open("pretrain", run=URL, start_step=s)
    tracker.log_config({...}); tracker.log(step, {"loss": 0.3}); tracker.close()

`TrackingConfig` is what a job holds (`--log.tensorboard DIR`, `--log.wandb PROJECT`); it is a plain dataclass,
so it travels to Ray workers and actors, where the rank that writes the metrics opens the tracker.

Resuming: a resumed run logs again from the step after its checkpoint (rows of the killed attempt past that
step were dropped from metrics.jsonl). TensorBoard: the writer is opened with `purge_step = start_step + 1`,
which writes a restart marker; TensorBoard's reader then hides every older event at or past that step, so the
killed attempt's tail is not shown twice (the events stay in the older event file). W&B: the run id is derived
from the run URL and the stage, so a resume continues the same W&B run (`resume="allow"`). W&B never rewrites a
step: online, it drops rows whose step is not above the run's last logged step (with a warning), so after a
kill the steps between the checkpoint and the kill keep the killed attempt's values; offline, each attempt
writes its own file of that run id (`wandb sync` uploads them in order, with the same rule). Newer steps are
logged as usual. Only rank 0 tracks; the trackers are flushed with every row.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record these scalars at this training step."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the run's resolved config (a JSON-able, possibly nested dict)."""

    def close(self) -> None:
        """Flush and release (idempotent)."""


def scalars_of(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric columns of a metrics row, as floats (`step` is the x axis, not a scalar; text is dropped)."""
    out = {}
    for k, v in row.items():
        if k == "step" or isinstance(v, str) or v is None:
            continue
        if isinstance(v, bool | int | float):
            out[k] = float(v)
    return out


class NullTracker:
    """Tracks nothing (no --log.* flag)."""

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        pass

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class FanOut:
    """Every call goes to each of `trackers`, in order."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        for t in self.trackers:
            t.log(step, scalars)

    def log_config(self, config: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_config(config)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


class TensorBoardTracker:
    """Event files in `folder` (one TensorBoard run) through torch's `SummaryWriter`: scalars under their
    metric names, the config as the text summary `config` (JSON). Opening writes a restart marker at
    `start_step + 1` (0 for a fresh run): TensorBoard hides the folder's older events from there on."""

    def __init__(self, folder: str | Path, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder)
        _after_newest_event_file(self.folder)
        # the restart marker: TensorBoard hides older events at or past it (a fresh run from 0 replaces a
        # previous run's curves in the same folder; a resume hides the killed attempt's tail past its checkpoint)
        self.writer = SummaryWriter(str(self.folder), purge_step=start_step + 1 if start_step > 0 else 0)
        self.start_step = start_step
        self.closed = False

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, float(v), global_step=step)
        self.writer.flush()  # a killed run's rows reach the file as they do metrics.jsonl (one write per row)

    def log_config(self, config: Mapping[str, Any]) -> None:
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        # four-space indent: TensorBoard renders the text summary as markdown, this keeps it a code block
        self.writer.add_text("config", "\n".join("    " + ln for ln in text.splitlines()),
                             global_step=self.start_step)

    def close(self) -> None:
        if not self.closed:
            self.writer.close()
            self.closed = True


def _after_newest_event_file(folder: Path) -> None:
    """Wait (under a second) until the clock is past the creation second of the folder's newest event file.
    TensorBoard reads a folder's files in name order, and a name is `events.out.tfevents.<second>.<host>.<pid>.
    <counter>`: a second writer opened in the same second could sort before the first (`.10` < `.9`), and its
    restart marker would then be read before the events it must hide."""
    seconds = []
    for p in folder.glob("events.out.tfevents.*"):
        part = p.name.split(".")[3]
        if part.isdigit():
            seconds.append(int(part))
    if seconds:
        while time.time() < max(seconds) + 1:
            time.sleep(min(0.05, max(0.0, max(seconds) + 1 - time.time())) or 0.001)


class WandbTracker:
    """One Weights & Biases run (online, or offline with WANDB_MODE=offline: files under WANDB_DIR or the
    working directory, uploaded later by `wandb sync`). `run_id` set: the same id resumes the same W&B run."""

    def __init__(self, project: str, *, name: str, run_id: str | None = None, group: str | None = None,
                 job_type: str | None = None):
        import wandb

        # WANDB_MODE / WANDB_DIR as they are now: wandb reads its environment once per process otherwise
        self.run = wandb.init(project=project, name=name, id=run_id, resume="allow" if run_id else None,
                              group=group, job_type=job_type, reinit="create_new", mode=os.environ.get("WANDB_MODE"),
                              dir=os.environ.get("WANDB_DIR"))
        self.closed = False

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(json.loads(json.dumps(config, default=str)), allow_val_change=True)

    def close(self) -> None:
        if not self.closed:
            self.run.finish()
            self.closed = True


@dataclass(kw_only=True)
class TrackingConfig:
    tensorboard: str | None = None
    """Also write the run's scalars and config as TensorBoard event files to this local folder (needs the
    `tensorboard` package: pip install 'smt-pipeline[tracking]')."""
    wandb: str | None = None
    """Also log them to this Weights & Biases project (needs `wandb`; WANDB_MODE=offline works without a network)."""
    group: str | None = None
    """W&B group of the runs (default: none; `smt pipeline` groups its stages under its --out)."""

    def __post_init__(self) -> None:
        if self.tensorboard is not None:
            if "://" in self.tensorboard:
                raise ValueError(f"--log.tensorboard {self.tensorboard}: TensorBoard logs go to a local folder; "
                                 "give a path (sync it to a bucket separately)")
            if importlib.util.find_spec("tensorboard") is None:
                raise ValueError(f"--log.tensorboard {self.tensorboard} needs the tensorboard package: "
                                 "pip install 'smt-pipeline[tracking]' (or pip install tensorboard), or drop the flag")
        if self.wandb is not None:
            if not self.wandb.strip() or "/" in self.wandb:
                raise ValueError(f"--log.wandb {self.wandb!r} must be a W&B project name (no '/'): e.g. --log.wandb smt")
            if importlib.util.find_spec("wandb") is None:
                raise ValueError(f"--log.wandb {self.wandb} needs the wandb package: pip install wandb, or drop the flag")

    @property
    def enabled(self) -> bool:
        return self.tensorboard is not None or self.wandb is not None

    def child(self, name: str) -> TrackingConfig:
        """The config of one part of a larger job (a pipeline stage, one lr of a sweep): TensorBoard under
        DIR/<name> (its own TensorBoard run), W&B in the same group."""
        return replace(self, tensorboard=str(Path(self.tensorboard) / name) if self.tensorboard else None)

    def open(self, stage: str, *, run: str | Path | None = None, start_step: int = 0,
             config: Mapping[str, Any] | None = None) -> Tracker:
        """A tracker for one training run of `stage` ("pretrain", "train", ...): `run` is its run URL (the W&B
        run id derives from it, so a resume continues the same W&B run), `start_step` the step it resumes
        from, `config` its resolved config (logged once)."""
        trackers: list[Tracker] = []
        if self.tensorboard is not None:
            trackers.append(TensorBoardTracker(self.tensorboard, start_step))
        if self.wandb is not None:
            run_id = None
            name = stage
            if run is not None:
                url = str(run)
                if "://" not in url:
                    url = os.path.abspath(url)
                run_id = hashlib.sha256(f"{stage}|{url}".encode()).hexdigest()[:16]
                name = f"{stage}:{url.rstrip('/').rsplit('/', 1)[-1]}"
            trackers.append(WandbTracker(self.wandb, name=name, run_id=run_id, group=self.group, job_type=stage))
        tracker: Tracker = trackers[0] if len(trackers) == 1 else FanOut(trackers) if trackers else NullTracker()
        if config is not None:
            tracker.log_config(config)
        return tracker


def open_tracker(tracking: TrackingConfig | None, stage: str, *, run: str | Path | None = None,
                 start_step: int = 0, config: Mapping[str, Any] | None = None) -> Tracker | None:
    """`tracking.open(...)`, or None without tracking (what MetricsLog takes)."""
    if tracking is None or not tracking.enabled:
        return None
    return tracking.open(stage, run=run, start_step=start_step, config=config)
