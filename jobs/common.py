"""Entry-point plumbing shared by every `jobs.<stage>`: tyro parsing and one-line user errors.

A user error (bad spec, bad config, missing checkpoint, unreachable bucket, fingerprint mismatch...)
prints `smt <stage>: error: <one line naming the thing and the fix>` and exits 2, with no traceback.
Set SMT_DEBUG=1 to see the traceback anyway.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


def user_errors() -> tuple[type[BaseException], ...]:
    from models.checkpoint import CheckpointError
    from models.teacher import ConfigError
    from pipeline.corpora import CorpusError
    from storage.errors import StorageError

    return (CheckpointError, ConfigError, CorpusError, StorageError, ValueError, FileNotFoundError)


def parse(cls: type[T], argv: list[str] | None, prog: str, description: str | None = None, *,
          bool_flags: bool = False) -> T:
    """Parse argv into `cls`; with bool_flags, booleans are `--flag/--no-flag` instead of `--flag True`."""
    import tyro

    return tyro.cli(cls, args=argv, prog=f"smt {prog}", description=description,
                    config=() if bool_flags else (tyro.conf.FlagConversionOff,))


def run(prog: str, fn: Callable[[], int | None]) -> int:
    """Run a job body, turning user errors into one line on stderr and exit status 2."""
    try:
        rc = fn()
        return int(rc or 0)
    except KeyboardInterrupt:
        print(f"smt {prog}: interrupted", file=sys.stderr)
        return 130
    except user_errors() as e:
        if os.environ.get("SMT_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"smt {prog}: error: {msg}", file=sys.stderr)
        return 2
