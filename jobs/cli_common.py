"""The one job style: a job is a config tree with a `run()` method; `job_main` parses it (tyro) and runs it.

A job dataclass holds its inputs and outputs (`--corpus`, `--out`, ...) and the components it builds, each
as that component's own config class: nested (`--optim.lr`, `--stream.batch-size`), or flattened into
the job's own flags with `Annotated[Config, FLAT]` for the stage's main component (`smt pretrain --steps`).
A user error (bad flag, bad spec, bad config, missing checkpoint, unreachable bucket, fingerprint
mismatch...) prints `smt <stage>: error: <one line naming the thing and the fix>` and exits 2, with no
traceback. Set SMT_DEBUG=1 to see the traceback anyway.
"""
from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import tyro

from storage.settings import AtEndpoint
from trainers.tracking import TrackingConfig

T = TypeVar("T")

FLAT = tyro.conf.arg(name="")
"""`Annotated[Config, FLAT]`: the component's fields are the job's own flags (`--steps`, not `--pretrain.steps`)."""


@dataclass(kw_only=True)
class Quiet:
    """The console option every job shares."""

    quiet: bool = False
    """No progress bars."""


@dataclass(kw_only=True)
class Tracked(Quiet):
    """The tracking option of every job that trains."""

    log: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment tracking: --log.tensorboard DIR (TensorBoard event files), --log.wandb PROJECT (W&B;
    WANDB_MODE=offline works offline). `smt pipeline` logs one run per stage (DIR/pretrain, DIR/student, ...,
    one W&B run each, grouped by --log.group); `smt dmt` logs its training blocks as DIR and each round's report
    at step = round as DIR/rounds. The run's metrics and the round reports stay the record."""


@dataclass(kw_only=True)
class RunOutputJob(AtEndpoint, Tracked):
    """The options of every job that writes a run folder (`smt pretrain`, `train`, `bptt`, `dmt-online`), declared
    once: where (any URL, `--endpoint-url` for S3) and as which writer (the run's lease, `--take-over`)."""

    take_over: bool = False
    """Take the run from a live writer (another process training it): that one stops at its next checkpoint."""

    def writer(self):
        """This job's writer identity: every worker and restart of the job holds the run's lease as one writer."""
        from storage.lease import Writer

        return Writer(take_over=self.take_over)

    def run_dir(self, url: str):
        """The run folder `url` at this job's endpoint."""
        from storage.run_dir import RunDir

        return RunDir(url, endpoint_url=self.endpoint_url)


@dataclass(kw_only=True)
class RunWriterJob(RunOutputJob):
    """The options of the jobs that train a run with checkpoints (`smt pretrain`, `smt train`): also workers."""

    workers: int = 1
    """Ray Train DDP workers; 1 trains in-process without Ray. Batch sizes are per worker."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers {self.workers} must be >= 1")


class Job(Protocol):
    def execute(self) -> int | None:
        """Build the components from the tree and run them; the exit status (None = 0)."""


def user_errors() -> tuple[type[BaseException], ...]:
    from models.teacher import ConfigError
    from pipeline.corpora import CorpusError
    from storage.checkpoints import CheckpointError
    from storage.errors import StorageError

    return (CheckpointError, ConfigError, CorpusError, StorageError, ValueError, FileNotFoundError)


def parse(cls: type[T], argv: list[str] | None, prog: str, description: str | None = None,
          default: T | None = None) -> T:
    """Parse argv into the config tree `cls` (tyro), starting from `default` when given (a recipe: its values
    are the defaults that flags override). Booleans are flags: `--x` / `--no-x`. A bad flag exits 2 with one
    line on stderr; `--help` prints the nested options and exits 0."""
    argv = sys.argv[1:] if argv is None else list(argv)
    captured, real = io.StringIO(), sys.stderr
    sys.stderr = captured
    try:
        return tyro.cli(cls, args=argv, prog=f"smt {prog}", description=description, default=default)
    except SystemExit as e:
        if e.code not in (0, None):
            print(f"smt {prog}: error: {one_line(captured.getvalue())} (smt {prog} --help)", file=real)
            raise SystemExit(2) from None
        raise
    else:
        real.write(captured.getvalue())  # warnings (parsing went fine)
    finally:
        sys.stderr = real


def one_line(box: str) -> str:
    """tyro's error box (UTF-8 or ASCII frame) as one line: its words without the frame, the rules or the
    help pointer; a missing-arguments box gives just the missing flags."""
    box = box.split("For full helptext", 1)[0]
    box = box[box.find("╭"):] if "╭" in box else box  # warnings printed before the box are not the error
    rows = []  # (indent inside the frame, text) of each line with words
    for raw in box.splitlines():
        line = raw.rstrip()
        line = (line[1:] if line[:1] in "│╭╰" else line).rstrip("│╮╯").rstrip()
        text = line.strip().strip("─").strip()
        if text and not re.fullmatch(r"[-─\s]+", text):  # rules are not words
            rows.append((len(line) - len(line.lstrip()), text))
    rows = rows[1:] if len(rows) > 1 else rows  # the box title ("Value error") repeats what the message says
    texts = [t for _, t in rows]
    if any(t.startswith("Missing from") for t in texts):  # the missing flags, without their help text
        i = next(i for i, t in enumerate(texts) if t.startswith("Missing from"))
        indent = rows[i + 1][0] if i + 1 < len(rows) else 0
        listed = rows[i + 1:]
        listed = listed[:next((j for j, (_, t) in enumerate(listed) if t.startswith("Unrecognized")), len(listed))]
        names = [t.split()[0] for n, t in listed if n == indent and (t.startswith("--") or t.split()[0].isupper())]
        rest = " ".join(texts).split("Unrecognized options:", 1)
        return f"missing required {', '.join(names)}" + (f"; unrecognized options: {rest[1].strip()}" if len(rest) > 1 else "")
    return " ".join(" ".join(texts).split("Argument helptext:", 1)[0].split()) or "bad arguments"


def job_main(prog: str, cls: type, description: str | None = None,
             default: Callable[[list[str]], Any] | None = None) -> Callable[[list[str] | None], int]:
    """The `main(argv) -> int` of a job module: parse the tree (from `default(argv)` when given), then run it."""
    def main(argv: list[str] | None = None) -> int:
        argv = sys.argv[1:] if argv is None else list(argv)
        return exit_status(prog, lambda: parse(cls, argv, prog, description,
                                       default(argv) if default else None).execute())

    return main


def figure(row: dict, key: str, reason: str = "no evaluation") -> str:
    """A figure for the console: 3 decimals, or `n/a (reason)` when missing (never a placeholder number)."""
    return f"{row[key]:.3f}" if row.get(key) is not None else f"n/a ({reason})"


def exit_status(prog: str, fn: Callable[[], int | None]) -> int:
    """The exit status of a job body: its own, or 2 with one line on stderr for a user error."""
    try:
        return int(fn() or 0)
    except SystemExit as e:  # parse: --help (0) or a bad flag (2, already reported)
        return int(e.code or 0)
    except KeyboardInterrupt:
        print(f"smt {prog}: interrupted", file=sys.stderr)
        return 130
    except user_errors() as e:
        if os.environ.get("SMT_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"smt {prog}: error: {msg}", file=sys.stderr)
        return 2
