"""One writer per run folder: a lease made of create-if-absent generations, renewed while the writer lives.

    <run>/lease/gen-00000001.json   {"owner", "host", "pid", "renewed", "expires", "released"}
    <run>/lease/gen-00000002.json   the next renewal (or a take-over, or the release), created exclusively

The newest generation says who holds the run. Every change (take, renew, take over, release) creates the
next generation with exclusive create (`O_EXCL` link locally, `If-None-Match: *` on S3), so two processes
can never both believe they hold the lease: the one whose create fails has lost it. The holder renews from
a daemon thread every `ttl_s / 4` seconds; a lease whose `expires` has passed (a writer that died without
releasing) may be taken by the next writer, at once when it ran on the same host and its process is gone; a live one is refused with a line naming the holder, unless
the caller takes over on purpose (`take_over=True`), after which the old holder stops at its next check
(`check()` before every checkpoint save, pointer write and prune). Old generations are deleted by the
holder as it renews; at most a few remain.

Stores without conditional writes cannot give this guarantee: `acquire` then warns once and runs without
a lease (the pointer's own compare-before-write in `RunDir` still refuses most second writers).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field

from storage.bucket import Bucket
from storage.errors import BucketError, ObjectNotFound, StorageError


class RunLocked(StorageError):
    """Another live process holds the run's lease."""


class LeaseLost(StorageError):
    """This process's lease was taken over (or could not be renewed in time): it must stop writing."""


def _gen_rel(n: int) -> str:
    return f"lease/gen-{n:08d}.json"


def newest_lease(bucket: Bucket) -> tuple[int, dict | None]:
    """(generation, record) of the newest lease generation, (0, None) when the run never had one. One LIST:
    taken at acquire time only."""
    gens = sorted(int(m.group(1)) for r in bucket.glob("lease/gen-*.json")
                  if (m := re.fullmatch(r"lease/gen-(\d+)\.json", r)))
    for n in reversed(gens):  # a generation deleted between the LIST and the read: the next older one
        with contextlib.suppress(ObjectNotFound):
            return n, json.loads(bucket.read_bytes(_gen_rel(n)))
    return (gens[-1] if gens else 0), None


def _started(pid: int) -> str | None:
    """When process `pid` started (Linux: clock ticks since boot, from /proc), None where unknown: tells a
    live holder from a new process that got a dead holder's pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_alive(rec: dict, now: float) -> bool:
    """Whether the lease `rec` still binds: not released, not expired, and, when it was taken on this host,
    its process still running (a writer killed with SIGKILL frees its run at once, not after `ttl_s`)."""
    if rec.get("released") or float(rec.get("expires", 0)) <= now:
        return False
    if rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int):
        try:
            os.kill(rec["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # someone else's live process
        started = _started(rec["pid"])
        return rec.get("started") is None or started is None or started == rec["started"]
    return True


def describe(rec: dict, now: float | None = None) -> str:
    now = time.time() if now is None else now
    return (f"{rec.get('host', '?')} pid {rec.get('pid', '?')} (owner {str(rec.get('owner', '?'))[:8]}, renewed "
            f"{max(0.0, now - float(rec.get('renewed', 0))):.0f} s ago, expires in "
            f"{max(0.0, float(rec.get('expires', 0)) - now):.0f} s)")


@dataclass(frozen=True)
class Writer:
    """Who writes a run: processes that share `owner` are one writer (the attempts of one job: a Ray Train
    worker group restarted after a failure continues under the lease its first attempt took). `take_over`:
    take the lease from a live holder, which stops at its next check."""

    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    take_over: bool = False


@dataclass(eq=False)
class Lease:
    """The lease this process holds on `bucket` (a run folder); see the module docstring."""

    bucket: Bucket
    ttl_s: float = 60.0
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    gen: int = 0
    lost: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def _record(self, released: bool = False) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "started": _started(os.getpid()), "renewed": now,
                           "expires": now if released else now + self.ttl_s, "released": released},
                          sort_keys=True).encode()

    def _advance(self, released: bool = False) -> bool:
        """Create the next generation as this owner; False if another process created it first."""
        if not self.bucket.create_exclusive(_gen_rel(self.gen + 1), self._record(released)):
            return False
        self.gen += 1
        if self.gen > 2:  # keep the last two: a reader between LIST and GET still finds one
            with contextlib.suppress(BucketError):
                self.bucket.remove(_gen_rel(self.gen - 2))
        return True

    def renew(self) -> None:
        with self._lock:
            if self.lost:
                raise LeaseLost(self.lost)
            if not self._advance():
                self.lost = self._lost_line()
                raise LeaseLost(self.lost)

    def _lost_line(self) -> str:
        try:
            rec = json.loads(self.bucket.read_bytes(_gen_rel(self.gen + 1)))
            who = describe(rec)
        except (ObjectNotFound, ValueError):
            who = "another process"
        return (f"run {self.bucket.url()} was taken over by {who}: this process stops writing to it (its last "
                "checkpoint stays valid); run one writer per run folder")

    def check(self) -> None:
        """Raise LeaseLost if another writer has taken the run since this process last renewed (newer
        generations of this same owner, another process of one job, are followed)."""
        with self._lock:
            if self.lost:
                raise LeaseLost(self.lost)
            while self.bucket.exists(_gen_rel(self.gen + 1)):
                try:
                    rec = json.loads(self.bucket.read_bytes(_gen_rel(self.gen + 1)))
                except ObjectNotFound:  # pruned by the other process of this owner between the calls
                    rec = {"owner": self.owner}
                if rec.get("owner") != self.owner or rec.get("released"):
                    self.lost = self._lost_line()
                    raise LeaseLost(self.lost)
                self.gen += 1

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except LeaseLost:
                return
            except BucketError as e:  # the store is down: retry at the next tick, the lease has ttl left
                warnings.warn(f"could not renew the lease on {self.bucket.url()}: {e}", stacklevel=1)

    def start(self) -> Lease:
        self._thread = threading.Thread(target=self._renew_forever, name="smt-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop renewing and mark the lease released, so the next writer need not wait for it to expire."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if not self.lost:
                with contextlib.suppress(BucketError):
                    self._advance(released=True)
                self.lost = f"the lease on {self.bucket.url()} was released"


def acquire(bucket: Bucket, writer: Writer | None = None, *, ttl_s: float = 60.0) -> Lease | None:
    """Take the run's lease for `writer` (and start renewing it), or raise RunLocked naming the live holder.
    Returns None on a store without conditional writes (warned)."""
    writer = writer or Writer()
    if bucket.protocol == "s3":
        try:
            bucket.check_exclusive_create()
        except BucketError as e:
            warnings.warn(f"run {bucket.url()} has no writer lease: {e}", stacklevel=2)
            return None
    n, rec = newest_lease(bucket)
    now = time.time()
    live = rec is not None and holder_alive(rec, now)
    if live and rec.get("owner") != writer.owner and not writer.take_over:
        raise RunLocked(f"run {bucket.url()} is being written by {describe(rec, now)}: wait for it to finish, "
                        "stop it, or pass --take-over to make it stop at its next checkpoint")
    lease = Lease(bucket, ttl_s=ttl_s, owner=writer.owner, gen=n)
    if not lease._advance():
        _, rec = newest_lease(bucket)
        raise RunLocked(f"run {bucket.url()} was just taken by {describe(rec or {}, now)}: only one writer per run")
    return lease.start()
