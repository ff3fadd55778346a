"""Fault injection from the outside: production stages hold no test hooks, so tests wrap them.

- `DiesOnce(stage, exit_after=, marker=)`: a stage whose worker process dies (os._exit) once, when it has
  finished `exit_after` items; the marker file makes it happen once across actor restarts and processes.
- `StuckOn(stage, index, how)`: a stage whose item `index` never returns, blocked with the GIL released
  (`sleep`: time.sleep; `recv`: a socket recv nobody answers), so its actor still answers heartbeats: a
  CUDA hang or a dead peer, as the driver sees it.
- `WrapStage(executor, wrap)`: an executor that runs `wrap(stage)` on `executor`, so a test hands
  `label(cfg, WrapStage(pool, ...))` the stage wrapper through the executor parameter it already takes.
- `python -m tests.faults N HOW MODULE ARGS...`: runs `MODULE.main(ARGS)` (an `smt` job) in this process
  with its in-process executor replaced by one that kills the process once N (and not all) of a map's
  results have reached the driver: HOW is `exit3` (os._exit(3), a driver that stops dead) or `sigkill`.
  Used for "the driver was killed before its commit" tests, on the real job's code path.
"""
from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.executors import SerialExecutor
from pipeline.stage import Stage


@dataclass
class DiesOnce(Stage):
    """`inner`, except that the first worker to have finished `exit_after` items dies before its next one."""

    inner: Stage
    exit_after: int
    marker: str

    def __post_init__(self) -> None:
        self.name, self.resources = self.inner.name, self.inner.resources

    def setup(self) -> None:
        self.inner.setup()
        self._done = 0

    def run(self, item: Any) -> dict:
        if self._done >= self.exit_after and not os.path.exists(self.marker):
            with open(self.marker, "w") as fh:
                fh.write(str(os.getpid()))
            os._exit(1)
        res = self.inner.run(item)
        self._done += 1
        return res

    def records(self, result: dict) -> int:
        return self.inner.records(result)


@dataclass
class StuckOn(Stage):
    """`inner`, except that the item with `index` blocks forever with the GIL released (heartbeats still answered)."""

    inner: Stage
    index: int
    how: str = "sleep"

    def __post_init__(self) -> None:
        self.name, self.resources = self.inner.name, self.inner.resources

    def setup(self) -> None:
        self.inner.setup()

    def run(self, item: Any) -> dict:
        if item.index == self.index:
            if self.how == "recv":
                a, _peer = socket.socketpair()  # _peer never sends: recv waits in the kernel, like a dead peer
                a.recv(1)
            while True:
                time.sleep(3600)
        return self.inner.run(item)

    def records(self, result: dict) -> int:
        return self.inner.records(result)


class WrapStage:
    """An executor: `inner` running `wrap(stage)` instead of the stage it is given."""

    def __init__(self, inner, wrap: Callable[[Stage], Stage]) -> None:
        self.inner, self.wrap = inner, wrap

    def map(self, stage: Stage, items: Sequence[Any], **kw: Any) -> Iterator[dict]:
        return self.inner.map(self.wrap(stage), items, **kw)


DEATHS = {"exit3": lambda: os._exit(3), "sigkill": lambda: os.kill(os.getpid(), signal.SIGKILL)}


def driver_dies_after(n: int, how: str) -> type[SerialExecutor]:
    """A serial executor whose process dies once the driver has taken `n` results of a map (fewer than all)."""
    die = DEATHS[how]

    class DyingSerialExecutor(SerialExecutor):
        def map(self, stage: Stage, items: Sequence[Any], **kw: Any) -> Iterator[dict]:
            items = list(items)
            for done, res in enumerate(super().map(stage, items, **kw), 1):
                yield res
                if n <= done < len(items):  # the driver has handled `done` results; it asks for the next
                    die()

    return DyingSerialExecutor


def main(argv: list[str]) -> int:
    n, how, module, *args = argv
    import pipeline.executors

    # the jobs build their in-process executor from this name (ExecutorConfig.build, DMTLoop's default)
    pipeline.executors.SerialExecutor = driver_dies_after(int(n), how)
    return importlib.import_module(module).main(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
