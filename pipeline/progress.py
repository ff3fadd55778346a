"""One progress display for the label/relabel executors and every trainer (it sits in pipeline/, the lowest
package that shows progress, so trainers/ can import it without pipeline/ importing trainers/).

    p = Progress("train", steps=5000, seconds=120)   # a time budget: the bar counts seconds
    p.advance(1, elapsed=log.elapsed()); p.postfix(loss=0.12); p.close()

On a terminal it is a tqdm bar: of steps for a step budget, of elapsed/total seconds for a time
budget (`seconds`), with the step count beside it, so a run capped by time does not show a bar of
10,000,000 steps that never fills. When the output is not a terminal (a log file, `ray job logs`,
CI), carriage-return frames would fill the log with thousands of partial lines, so it prints one
plain line every `every_s` seconds instead, and a last one on close.

Every advance also counts towards this process's `beats()`: the DMT actor reports them, so `smt dmt` can
tell a long but moving round from a stuck one (jobs/dmt.py).
"""
from __future__ import annotations

import sys
import time
from typing import IO, Any


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


_beats = [0]  # units advanced by every Progress of this process, and explicit ticks


def tick(n: int = 1) -> None:
    """Count work this process did outside a Progress (e.g. one poll of a waiting loop)."""
    _beats[0] += n


def beats() -> int:
    """How much work this process has advanced so far (every Progress.advance and tick): a watcher that
    sees it unchanged for long knows the process is stuck, even when its threads still answer calls."""
    return _beats[0]


class Progress:
    """Progress of `steps` steps, or of a `seconds` budget (whichever the run stops on, shown as such)."""

    def __init__(self, desc: str, *, steps: int | None, seconds: float | None = None, quiet: bool = False,
                 file: IO[str] | None = None, every_s: float = 10.0, unit: str = "step",
                 now=time.monotonic) -> None:
        self.desc, self.steps, self.seconds, self.unit = desc, steps, seconds, unit
        self.file = file if file is not None else sys.stderr
        self.quiet, self.every_s, self.now = quiet, every_s, now
        self.count, self.elapsed, self.fields = 0, 0.0, {}
        self.t0 = self.last = now()
        self.tty = bool(getattr(self.file, "isatty", lambda: False)())
        self.bar = None
        if not quiet and self.tty:
            from tqdm.auto import tqdm

            if seconds is not None:
                self.bar = tqdm(total=round(float(seconds), 1), desc=desc, unit="s", file=self.file,
                                dynamic_ncols=True, leave=False,
                                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")
            else:
                self.bar = tqdm(total=steps, desc=desc, unit=unit, file=self.file, dynamic_ncols=True,
                                leave=False, unit_scale=unit != "step")

    def advance(self, n: int = 1, *, elapsed: float | None = None) -> None:
        """`n` more units done; `elapsed` is the budgeted clock's seconds (default: wall time since start)."""
        tick(max(1, n))
        self.count += n
        self.elapsed = self.now() - self.t0 if elapsed is None else float(elapsed)
        if self.quiet:
            return
        if self.bar is not None:
            if self.seconds is not None:
                self.bar.n = min(round(self.elapsed, 1), self.bar.total)
                self.bar.set_postfix_str(self._fields(with_count=True), refresh=False)
                self.bar.update(0)  # redraws at tqdm's own rate
            else:
                self.bar.update(n)
        elif self.now() - self.last >= self.every_s:
            self._line()

    def postfix(self, **fields: Any) -> None:
        """Latest metrics shown beside the bar (or on the next plain line)."""
        self.fields = {k: v for k, v in fields.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.bar is not None and self.seconds is None:
            self.bar.set_postfix_str(self._fields(with_count=False), refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.quiet and self.count:
            self._line()

    def _fields(self, *, with_count: bool) -> str:
        head = [f"{self.unit} {self.count}"] if with_count else []
        return " ".join(head + [f"{k}={_fmt(v)}" for k, v in self.fields.items()])

    def _line(self) -> None:
        self.last = self.now()
        rate = self.count / self.elapsed if self.elapsed > 0 else 0.0
        if self.seconds is not None:
            e = f"{self.elapsed:.1f}" if self.seconds < 100 else f"{self.elapsed:.0f}"
            done = f"{e}/{self.seconds:g} s ({100 * min(1.0, self.elapsed / max(self.seconds, 1e-9)):.0f}%) " \
                   f"{self.unit} {self.count}"
        else:
            of = f"/{self.steps} ({100 * self.count / self.steps:.0f}%)" if self.steps else ""
            done = f"{self.unit} {self.count}{of} {self.elapsed:.0f} s"
        extra = self._fields(with_count=False)
        print(f"{self.desc}: {done} {rate:.3g} {self.unit}/s{' ' + extra if extra else ''}", file=self.file,
              flush=True)
