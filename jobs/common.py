"""Entry-point plumbing shared by every `jobs.<stage>`: tyro parsing and one-line user errors.

A user error (bad spec, bad config, missing checkpoint, unreachable bucket, fingerprint mismatch...)
prints `smt <stage>: error: <one line naming the thing and the fix>` and exits 2, with no traceback.
Set SMT_DEBUG=1 to see the traceback anyway.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def user_errors() -> tuple[type[BaseException], ...]:
    from models.checkpoint import CheckpointError
    from models.teacher import ConfigError
    from pipeline.corpora import CorpusError
    from storage.errors import StorageError

    return (CheckpointError, ConfigError, CorpusError, StorageError, ValueError, FileNotFoundError)


def parse(cls: type[T], argv: list[str] | None, prog: str, description: str | None = None,
          flags: bool = True, bool_flags: bool = True) -> T:
    """Parse argv into `cls` (tyro). Booleans are flags everywhere: `--x` / `--no-x` (the keyword arguments
    are accepted for callers written when that was optional)."""
    import tyro

    if argv is None:
        argv = sys.argv[1:]
    return tyro.cli(cls, args=merge_repeated(list(argv), list_flags(cls)), prog=f"smt {prog}",
                    description=description)


def list_flags(cls: type) -> set[str]:
    """The `--flag` spellings of `cls`'s top-level list fields (tyro accepts - and _ alike)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        if typing.get_origin(hints.get(f.name)) in (list, tuple):
            out |= {f"--{f.name}", f"--{f.name.replace('_', '-')}"}
    return out


def merge_repeated(argv: list[str], flags: set[str]) -> list[str]:
    """`--set a=1 --set b=2` -> `--set a=1 b=2`: tyro keeps only the last occurrence of a repeated list
    flag, which silently dropped every earlier one. Values run up to the next `--` token."""
    values: dict[str, list[str]] = {}
    out: list[str] = []
    i = 0
    while i < len(argv):
        flag, eq, val = argv[i].partition("=")
        i += 1
        if flag not in flags:
            out.append(argv[i - 1])
            continue
        key = flag.replace("_", "-")
        if key not in values:
            values[key] = []
            out.append(key)  # the merged values go in at the first occurrence
        if eq:
            values[key].append(val)
        while i < len(argv) and not argv[i].startswith("--"):
            values[key].append(argv[i])
            i += 1
    merged: list[str] = []
    for tok in out:
        merged.append(tok)
        if tok in values:
            merged.extend(values.pop(tok))
    return merged


def figure(row: dict, key: str, reason: str = "no evaluation") -> str:
    """A figure for the console: 3 decimals, or `n/a (reason)` when missing (never a placeholder number)."""
    return f"{row[key]:.3f}" if row.get(key) is not None else f"n/a ({reason})"


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
