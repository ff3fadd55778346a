"""The stage contract: what an executor (serial or a Ray actor pool) needs to know to run a stage.

A stage is a small, picklable object that holds configuration only. An executor ships it to each
worker, calls `setup()` once there (load the teacher, open the bucket), then `run(item)` for each work
item it is handed. Work items and results are small: items are frozen dataclasses (ranges of a corpus),
results are JSON-able dicts (a manifest entry and some counts), so they cross process boundaries
cheaply and a driver can log or persist them. Where a stage runs is the executor's business, never the
stage's: the same stage object gives the same bytes in-process and on an actor pool.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What one worker of a stage needs; the Ray executor turns this into actor options."""

    num_cpus: float = 1.0
    """CPU cores reserved per worker (also its torch thread count)."""
    num_gpus: float = 0.0
    """GPUs reserved per worker (fractions share a GPU between workers)."""

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"resources must be >= 0, got num_cpus={self.num_cpus}, num_gpus={self.num_gpus}")


@dataclass(frozen=True)
class ShardRange:
    """Work item: corpus sequences [start, stop) become target shard `index`."""

    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def shard_ranges(num_sequences: int, per_shard: int) -> list[ShardRange]:
    """Cut [0, num_sequences) into consecutive ranges of `per_shard` (the last may be shorter)."""
    if per_shard < 1:
        raise ValueError(f"shard_sequences={per_shard} must be >= 1")
    return [ShardRange(i, s, min(s + per_shard, num_sequences))
            for i, s in enumerate(range(0, num_sequences, per_shard))]


class Stage(ABC):
    """Base class of a stage. Subclasses keep __init__ cheap (config only) and do the heavy work in setup."""

    name: str = "stage"
    resources: Resources = Resources()

    def setup(self) -> None:
        """Called once per worker before the first `run` (and again after a worker restarts)."""

    @abstractmethod
    def run(self, item: Any) -> dict:
        """Process one work item; return a small JSON-able result. Must be idempotent: a retried item
        (after a crash anywhere) gives the same result and the same bytes."""

    def records(self, result: dict) -> int:
        """Records a result stands for (the progress bar's unit)."""
        return int(result.get("records", 0))


@dataclass
class ModelStage(Stage):
    """A stage that runs models over corpus ranges into shards (labeling, relabeling): its config `cfg` (which
    holds `device`, `endpoint_url` and `resources`) plus what the driver resolved before any worker started."""

    cfg: Any
    corpus: str
    """The corpus spec as loaded (normalised)."""
    target: str
    """URL of the folder the shards go to."""
    fingerprint: str
    """The teacher fingerprint the driver resolved; every worker checks the models it loads against it."""

    @property
    def resources(self) -> Resources:
        return self.cfg.resources

    def worker_device(self):
        """This worker's torch device; a CPU-only worker runs as many torch threads as it reserved CPUs."""
        import torch

        from models.device import pick_device

        r = self.resources
        if r.num_cpus >= 1 and r.num_gpus == 0:
            torch.set_num_threads(int(r.num_cpus))
        return pick_device(self.cfg.device)
