"""A run's metrics log: one JSON row per logged step, kept in a run folder on any bucket.

Local folder: `<run>/metrics.jsonl`, appended as rows come (flushed, fsynced at `flush()`); a resumed run
rewrites it once (atomically) without the rows past its checkpoint.

Object store (no append): each flush puts only the new rows as one small object,
    <run>/metrics/seg-000002-0000001500/part-000007.jsonl
a segment per process start (its sequence number, then the step it resumed from), a part per flush. No
row is ever re-uploaded, so traffic grows with the rows, not with their square. Readers put segments in
order and keep a segment's rows only up to the step the next segment resumed from: the rows of an attempt
that was killed after its last checkpoint drop out without rewriting anything. A run from before segments
keeps its `metrics.jsonl`, read as segment 0.

A torn line (a crash or power loss mid-append) is skipped with a warning naming the file and line: it never
blocks a resume.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from typing import Any

from storage.bucket import Bucket
from storage.errors import ObjectNotFound

FILE = "metrics.jsonl"
_SEG = re.compile(r"metrics/seg-(\d{6})-(\d{10})/part-(\d{6})\.jsonl")


def parse_rows(data: bytes, where: str) -> list[dict[str, Any]]:
    """The rows of a JSON-lines blob; a line that is not a JSON object with a `step` is skipped, warned."""
    rows = []
    for i, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            int(row["step"])
        except (ValueError, TypeError, KeyError):
            warnings.warn(f"{where} line {i} is torn or not a metrics row; skipped", stacklevel=2)
            continue
        rows.append(row)
    return rows


def _segments(bucket: Bucket) -> dict[tuple[int, int], list[tuple[int, str]]]:
    segs: dict[tuple[int, int], list[tuple[int, str]]] = {}
    for rel in bucket.glob("metrics/seg-*/part-*.jsonl"):
        if m := _SEG.fullmatch(rel):
            segs.setdefault((int(m.group(1)), int(m.group(2))), []).append((int(m.group(3)), rel))
    return segs


def read_metrics(bucket: Bucket) -> list[dict[str, Any]]:
    """Every surviving row of the run, in step order of writing (see the module docstring)."""
    blocks: list[tuple[int, list[dict]]] = []
    with contextlib.suppress(ObjectNotFound):
        blocks.append((-1, parse_rows(bucket.read_bytes(FILE), bucket.url(FILE))))
    segs = sorted(_segments(bucket).items()) if bucket.protocol != "file" else []
    for (_, start), parts in segs:
        rows: list[dict] = []
        for _, rel in sorted(parts):
            rows += parse_rows(bucket.read_bytes(rel), bucket.url(rel))
        blocks.append((start, rows))
    out: list[dict] = []
    for i, (_, rows) in enumerate(blocks):
        cut = min((s for s, _ in blocks[i + 1:]), default=None)
        out += [r for r in rows if cut is None or int(r["step"]) <= cut]
    return out


class MetricsFile:
    """The writer of one process's rows (see the module docstring); `start`: the step a resumed run resumed
    from (0 for a fresh run)."""

    def __init__(self, bucket: Bucket, start: int = 0) -> None:
        self.bucket, self.start = bucket, int(start)
        self.local = bucket.protocol == "file"
        self.pending: list[str] = []
        if self.local:
            self.path = bucket._path(FILE)
            if self.start:
                self._truncate_local()
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._f = open(self.path, "a")  # noqa: SIM115 (kept open: one append per row)
        else:
            seq = max((s for s, _ in _segments(bucket)), default=0) + 1
            self.seg = f"metrics/seg-{seq:06d}-{self.start:010d}"
            self.part = 0

    def _truncate_local(self) -> None:
        try:
            data = self.bucket.read_bytes(FILE)
        except ObjectNotFound:
            return
        keep = [r for r in parse_rows(data, self.bucket.url(FILE)) if int(r["step"]) <= self.start]
        self.bucket.write_bytes(FILE, "".join(json.dumps(r) + "\n" for r in keep).encode())

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row) + "\n"
        if self.local:
            self._f.write(line)
            self._f.flush()
        else:
            self.pending.append(line)

    def flush(self) -> None:
        """Make the rows so far durable: fsync locally, one new part object on a store."""
        if self.local:
            if not self._f.closed:
                self._f.flush()
                os.fsync(self._f.fileno())
        elif self.pending:
            self.part += 1
            self.bucket.write_bytes(f"{self.seg}/part-{self.part:06d}.jsonl", "".join(self.pending).encode())
            self.pending = []

    def close(self) -> None:
        self.flush()
        if self.local:
            self._f.close()
