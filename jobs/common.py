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
from typing import Any, Protocol, TypeVar

import tyro

T = TypeVar("T")

FLAT = tyro.conf.arg(name="")
"""`Annotated[Config, FLAT]`: the component's fields are the job's own flags (`--steps`, not `--pretrain.steps`)."""


class Job(Protocol):
    def execute(self) -> int | None:
        """Build the components from the tree and run them; the exit status (None = 0)."""


def user_errors() -> tuple[type[BaseException], ...]:
    from models.checkpoint import CheckpointError
    from models.teacher import ConfigError
    from pipeline.corpora import CorpusError
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
    finally:
        sys.stderr = real
        if captured.getvalue() and not captured.getvalue().lstrip().startswith("╭"):
            real.write(captured.getvalue())  # warnings, not an error box


def one_line(box: str) -> str:
    """tyro's error box as one line: its words without the frame, the rules or the help pointer."""
    box = box.split("For full helptext", 1)[0]
    box = box[box.index("╭"):] if "╭" in box else box  # warnings printed before the box are not the error
    lines = [re.sub(r"[╭╮╰╯│─]+", " ", ln).strip() for ln in box.splitlines()]
    if any(ln.startswith("Missing from") for ln in lines):  # the missing flags, without their help text
        i = next(i for i, ln in enumerate(lines) if ln.startswith("Missing from"))
        names = []
        for raw, ln in zip(box.splitlines()[i + 1:], lines[i + 1:]):
            if not ln:  # a rule: the end of the list
                break
            first = ln.split()[0]
            if raw.lstrip("│ ").startswith(first) and len(raw) - len(raw.lstrip("│ ")) <= 6 and (
                    first.startswith("--") or first.isupper()):
                names.append(first)
        rest = " ".join(lines).split("Unrecognized options:", 1)
        text = f"missing required {', '.join(names)}" + (f"; unrecognized options: {rest[1]}" if len(rest) > 1 else "")
    else:
        lines = [ln for ln in lines if ln]
        if len(lines) > 1 and lines[1].lower().startswith(lines[0].lower()):
            lines = lines[1:]  # the box title repeats the message's first words
        text = " ".join(lines).split("Argument helptext:", 1)[0]
    return " ".join(text.split()) or "bad arguments"


def job_main(prog: str, cls: type, description: str | None = None,
             default: Callable[[list[str]], Any] | None = None) -> Callable[[list[str] | None], int]:
    """The `main(argv) -> int` of a job module: parse the tree (from `default(argv)` when given), then run it."""
    def main(argv: list[str] | None = None) -> int:
        argv = sys.argv[1:] if argv is None else list(argv)
        return run(prog, lambda: parse(cls, argv, prog, description,
                                       default(argv) if default else None).execute())

    return main


def figure(row: dict, key: str, reason: str = "no evaluation") -> str:
    """A figure for the console: 3 decimals, or `n/a (reason)` when missing (never a placeholder number)."""
    return f"{row[key]:.3f}" if row.get(key) is not None else f"n/a ({reason})"


def run(prog: str, fn: Callable[[], int | None]) -> int:
    """Run a job body, turning user errors into one line on stderr and exit status 2."""
    try:
        rc = fn()
        return int(rc or 0)
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
