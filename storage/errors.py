"""Typed errors raised by the storage package.

Every message is one line that names the object concerned (URL, shard path, generation) and, where
there is one, the fix. Messages never carry credentials.
"""
from __future__ import annotations


class StorageError(Exception):
    """Base class of every error this package raises on purpose."""


class BucketError(StorageError):
    """An object could not be read or written after retries (or the failure was not transient)."""


class ObjectNotFound(BucketError):
    """The object does not exist (not retried: absence is an answer, not a transient failure)."""


class ManifestError(StorageError):
    """A manifest generation is missing, malformed, unsafe, or cannot be committed."""


class ShardError(StorageError):
    """A shard is missing, truncated, corrupt, unsafe, or disagrees with its manifest entry."""


class FingerprintMismatch(StorageError):
    """The target set was labelled by a different teacher than the caller expects."""

    def __init__(self, expected: str, found: str, where: str) -> None:
        super().__init__(
            f"teacher fingerprint mismatch at {where}: expected {expected!r}, found {found!r}; "
            "open the target set labelled by your teacher (targets/<fingerprint>/...) or relabel"
        )
        self.expected = expected
        self.found = found


def one_line(text: object, limit: int = 300) -> str:
    """Collapse an exception's text to one bounded line for use inside our messages."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."
