"""Executors: where a stage runs. `SerialExecutor` runs it in-process; `RayActorPool` on N Ray actors.

Both have `map(stage, items, *, total_records=None, quiet=False) -> iterator of results` (results in
completion order; callers key them by item) and show progress (pipeline/progress.py) in records. Only this
module and trainers/distributed.py (Ray Train) import `ray`, both lazily, so the serial path works without a
cluster; everything else that starts Ray actors (jobs/, the DMT phase) gets `ray` from `init_ray()` here.

Fault model of the pool: each actor calls `stage.setup()` once in its constructor (Ray re-runs it when
it restarts the actor, up to `max_restarts` times). Ray's own task retries are off: a failed item goes
back on the driver's queue and is handed to the next free live actor, at most `task_retries` times.
Stages are idempotent (deterministic output names, write-once shards), so a retried item after a
crash mid-write gives the same bytes (or, if they differ, a content-named variant: storage/writer.py).

A hung actor (stopped, deadlocked, stuck in I/O) is not dead to Ray, so the driver never waits
unbounded: actors are threaded (one work item, plus heartbeats answered beside it). Every
`heartbeat_s` a busy actor gets a heartbeat; one unanswered for `hang_timeout_s` (a stopped or
wedged process), or an item running past the item timeout (a live but stuck stage: a CUDA hang or a
blocking socket releases the GIL, so its heartbeats are still answered), gets the actor killed; Ray
restarts it and its item goes back on the queue like any actor death's. The item timeout is on by
default: `item_timeout_s` when given (`--item-timeout-s`), else `item_timeout_factor` x the slowest item
finished so far, at least `item_timeout_min_s`. An item that times out on every try fails the map with
one line naming it and the flag. (The serial executor runs items in the caller's thread: no bound there.)
"""
from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.stage import Stage

REPO_ROOT = str(Path(__file__).resolve().parents[1])


class ExecutorError(RuntimeError):
    """A work item failed after its retries, or no worker is left; names the item and the cause."""


@contextmanager
def _progress(total: int | None, quiet: bool, desc: str):
    from pipeline.progress import Progress  # the display trainers share: plain lines off a terminal

    bar = Progress(desc, steps=total, quiet=quiet, unit="rec")
    try:
        yield bar
    finally:
        bar.close()


class SerialExecutor:
    """Runs a stage in this process, items in order: the reference twin of the Ray pool."""

    def map(self, stage: Stage, items: Sequence[Any], *, total_records: int | None = None,
            quiet: bool = False) -> Iterator[dict]:
        import torch

        threads = torch.get_num_threads()  # setup() may pin threads to the stage's num_cpus; restore them
        try:
            stage.setup()
            with _progress(total_records, quiet, stage.name) as bar:
                for i, item in enumerate(items):
                    res = stage.run(item)
                    bar.advance(stage.records(res))
                    bar.postfix(shards=i + 1)
                    yield res
        finally:
            torch.set_num_threads(threads)


def init_ray():
    """Connect to the cluster of a Ray job (RAY_ADDRESS set) or start a local instance; returns `ray`."""
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"):
            ray.init()  # inside `ray job submit`: the job's runtime_env (working_dir) already applies
        else:
            path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
            ray.init(include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    return ray


class _StageHost:
    """The actor body: holds one stage, set up once per (re)start."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        stage.setup()

    def run(self, item: Any) -> dict:
        return self.stage.run(item)

    def ready(self) -> bool:
        return True

    def heartbeat(self) -> bool:
        """Answered by a second thread while `run` works: the process is alive and scheduling."""
        return True


_PING = object()  # marks an in-flight readiness probe (not a work item)


@dataclass(kw_only=True)
class RayActorPool:
    """A pool of `num_actors` actors running one stage, with a driver-side work queue."""

    num_actors: int = 2
    """Actors (workers)."""
    max_restarts: int = 3
    """Times Ray restarts a dead actor (re-running setup) before the pool gives it up."""
    task_retries: int = 3
    """Times a failed item is resubmitted (to any live actor) before the run fails."""
    num_cpus: float | None = None
    """CPUs per actor (default: the stage's declared resources)."""
    num_gpus: float | None = None
    """GPUs per actor (default: the stage's declared resources)."""
    restart_timeout_s: float = 120.0
    """How long a restarting actor may take (setup included) before the pool gives it up."""
    heartbeat_s: float = 5.0
    """How often a busy actor is asked for a heartbeat (also the driver's longest wait between checks)."""
    hang_timeout_s: float = 120.0
    """A heartbeat unanswered this long marks the actor hung: it is killed, restarted, its item re-queued."""
    item_timeout_s: float | None = None
    """Kill an actor whose item runs longer than this (a stage stuck while its process answers heartbeats)
    and retry the item; None: derived from the work (`item_timeout_factor`, `item_timeout_min_s`)."""
    item_timeout_factor: float = 10.0
    """With item_timeout_s=None: an item may run this many times as long as the slowest finished item..."""
    item_timeout_min_s: float = 600.0
    """...and at least this long (also the bound before any item has finished)."""

    def __post_init__(self) -> None:
        if self.num_actors < 1:
            raise ValueError(f"num_actors={self.num_actors} must be >= 1 (use SerialExecutor for 0)")
        check_item_timeout(self.item_timeout_s)
        if self.item_timeout_factor < 1 or self.item_timeout_min_s <= 0:
            raise ValueError(f"item_timeout_factor={self.item_timeout_factor} must be >= 1 and item_timeout_min_s="
                             f"{self.item_timeout_min_s} > 0")

    def item_timeout(self, slowest: float | None) -> float:
        """Seconds an item may run, given the slowest item finished so far (None: none yet)."""
        if self.item_timeout_s is not None:
            return self.item_timeout_s
        return max(self.item_timeout_min_s, self.item_timeout_factor * (slowest or 0.0))

    def actor_options(self, stage: Stage) -> dict:
        res = stage.resources
        return {"num_cpus": res.num_cpus if self.num_cpus is None else self.num_cpus,
                "num_gpus": res.num_gpus if self.num_gpus is None else self.num_gpus,
                "max_restarts": self.max_restarts, "max_task_retries": 0,
                "max_concurrency": 2}  # the item's thread, and one for heartbeats beside it

    def map(self, stage: Stage, items: Sequence[Any], *, total_records: int | None = None,
            quiet: bool = False) -> Iterator[dict]:
        run = _PoolRun(self, stage, items, init_ray())
        try:
            with _progress(total_records, quiet, f"{stage.name} x{len(run.actors)}") as bar:
                run.probe_all()
                while run.inflight:
                    ref = run.next_finished()
                    if ref is None:
                        continue
                    res = run.collect(ref)
                    if res is not _NO_RESULT:
                        run.report(bar, res)
                        yield res
                    if run.feed_idle():
                        break  # every item is done: do not wait for restarting actors
        finally:
            run.kill_all()


_NO_RESULT = object()  # what `_PoolRun.collect` returns for a probe or a failed item (no result to yield)


class _PoolRun:
    """The driver's side of one `RayActorPool.map`: its actors, the work queue, and their faults' bookkeeping.

    Actors are indexes into `actors`; an item goes to an actor once its readiness probe (`_PING`) has
    answered, i.e. its setup() is done (a slow setup is not a hang)."""

    def __init__(self, pool: RayActorPool, stage: Stage, items: Sequence[Any], ray: Any) -> None:
        self.pool, self.stage, self.ray = pool, stage, ray
        actor_cls = ray.remote(_StageHost).options(**pool.actor_options(stage))
        self.actors = [actor_cls.remote(stage) for _ in range(min(pool.num_actors, max(1, len(items))))]
        self.pending: deque = deque(items)
        self.inflight: dict[Any, tuple[int, Any]] = {}  # task ref -> (actor, item or _PING)
        self.alive = set(range(len(self.actors)))
        self.deaths: Counter = Counter()  # actor -> times it died under an item
        self.waiting: dict[int, float] = {}  # actor -> deadline for its restart
        self.attempts: Counter = Counter()  # item -> times it failed
        self.done = 0
        pool.stats = {"actor_deaths": 0, "retried_items": 0, "hung_actors": 0}
        self.started: dict[int, float] = {}  # actor -> when its current item was submitted
        self.beats: dict[Any, tuple[int, float]] = {}  # heartbeat ref -> (actor, sent at)
        self.last_beat: dict[int, float] = {}  # actor -> when it last answered (or got work)
        self.killed: set[int] = set()  # hung actors killed, whose item's error has not come back yet
        self.overdue: dict[int, float] = {}  # actor -> the item timeout its item ran past (killed for that)
        self.timeouts: Counter = Counter()  # item -> times it ran past the item timeout
        self.slowest: float | None = None  # the longest a finished item took (None: none finished yet)

    def probe_all(self) -> None:
        """Asks every actor whether its setup() is done, each with `restart_timeout_s` to answer."""
        for a in sorted(self.alive):
            self.waiting[a] = time.monotonic() + self.pool.restart_timeout_s
            self.ping(a)

    def ping(self, a: int) -> None:
        """Probes actor `a`: a (re)started actor gets work again once its setup() has finished."""
        self.inflight[self.actors[a].ready.remote()] = (a, _PING)

    def submit(self, a: int) -> None:
        """Hands the next pending item to actor `a`."""
        item = self.pending.popleft()
        self.inflight[self.actors[a].run.remote(item)] = (a, item)
        self.started[a] = self.last_beat[a] = time.monotonic()

    def next_finished(self) -> Any:
        """Deals with hung actors, then waits up to `heartbeat_s`: the ref of a finished item or probe, else
        None (nothing finished, or a heartbeat answered)."""
        self.check_hung()
        if not self.alive:
            raise ExecutorError(f"{self.stage.name}: no actor finished its setup within "
                                f"{self.pool.restart_timeout_s:.0f} s; see the actor logs")
        ready, _ = self.ray.wait(list(self.inflight) + list(self.beats), num_returns=1,
                                 timeout=self.pool.heartbeat_s)
        if not ready:
            return None
        [ref] = ready
        if ref in self.beats:  # an answer (or the error of a dead actor, which its item reports too)
            a, _sent = self.beats.pop(ref)
            self.last_beat[a] = time.monotonic()
            return None
        return ref

    def check_hung(self) -> None:
        """Gives up actors whose setup() overran its deadline, kills hung or stuck ones (the death path then
        re-queues their item), and sends a heartbeat to each busy actor that is due one."""
        now = time.monotonic()
        outstanding = {a: sent for a, sent in self.beats.values()}
        for ref, (a, item) in list(self.inflight.items()):
            if item is _PING:
                if now > self.waiting[a]:  # setup() never finished (hung or too slow): give the actor up
                    del self.inflight[ref]
                    self.alive.discard(a)
                    self.ray.kill(self.actors[a], no_restart=True)
                continue
            if a in self.killed:
                continue
            late = outstanding.get(a)
            hung = late is not None and now - late > self.pool.hang_timeout_s
            limit = self.pool.item_timeout(self.slowest)
            stuck = now - self.started[a] > limit
            if hung or stuck:
                self.kill_hung(a, stuck_only=stuck and not hung, limit=limit)
            elif late is None and now - self.last_beat[a] >= self.pool.heartbeat_s:
                self.beats[self.actors[a].heartbeat.remote()] = (a, now)

    def kill_hung(self, a: int, *, stuck_only: bool, limit: float) -> None:
        """Ray sees a live process: kill it (Ray restarts it), and its item comes back through the death path;
        `stuck_only`: its heartbeats were answered but the item ran past `limit` (the item timeout)."""
        self.killed.add(a)
        if stuck_only:
            self.overdue[a] = self.pool.stats["item_timeout_s"] = limit
        self.pool.stats["hung_actors"] += 1
        self.ray.kill(self.actors[a], no_restart=False)

    def collect(self, ref: Any) -> Any:
        """Takes a finished item or probe off the queue: the item's result, else `_NO_RESULT` (a probe, or a
        failure, whose item is re-queued or fails the map)."""
        from ray.exceptions import RayActorError, RayTaskError

        a, item = self.inflight.pop(ref)
        if item is not _PING:
            self.killed.discard(a)
            for r in [r for r, (b, _) in self.beats.items() if b == a]:
                del self.beats[r]  # this item is over: its heartbeats no longer matter
        try:
            res = self.ray.get(ref)
        except RayActorError as e:
            if item is _PING:
                self.probe_failed(a, e)
            else:
                self.died_under_item(a, item, e)
        except RayTaskError as e:  # the stage raised
            self.retry(item, e)
        else:
            if item is not _PING:
                elapsed = time.monotonic() - self.started[a]
                self.slowest = elapsed if self.slowest is None else max(self.slowest, elapsed)
                self.done += 1
                return res
        return _NO_RESULT

    def probe_failed(self, a: int, err: BaseException) -> None:
        """Actor `a` did not answer its probe: probe again while it is restarting, else give it up."""
        from ray.exceptions import ActorUnavailableError

        if isinstance(err, ActorUnavailableError) and time.monotonic() < self.waiting[a]:
            time.sleep(0.2)  # still restarting
            self.ping(a)
        else:
            self.alive.discard(a)  # gone for good (or never came back)

    def died_under_item(self, a: int, item: Any, err: BaseException) -> None:
        """Actor `a` died under `item`: the item goes back on the queue; Ray restarts the actor (it is probed
        again) unless it has died more than `max_restarts` times."""
        self.deaths[a] += 1
        self.pool.stats["actor_deaths"] += 1
        self.retry(item, err, self.overdue.pop(a, None))
        if self.deaths[a] > self.pool.max_restarts:
            self.alive.discard(a)
        else:
            self.waiting[a] = time.monotonic() + self.pool.restart_timeout_s
            self.ping(a)

    def retry(self, item: Any, err: BaseException, timed_out: float | None = None) -> None:
        """Puts a failed item back at the head of the queue, or fails the map once it has used its
        `task_retries` (`timed_out`: the item timeout it ran past, when that is why its actor was killed)."""
        from ray.exceptions import RayTaskError

        stage, attempts = self.stage, self.attempts
        attempts[item] += 1
        if timed_out is not None:
            self.timeouts[item] += 1
        out_of_tries = attempts[item] > self.pool.task_retries
        if out_of_tries and timed_out is not None and self.timeouts[item] == attempts[item]:
            raise ExecutorError(
                f"{stage.name}: item {item} ran past the item timeout ({timed_out:.0f} s) on "
                f"{attempts[item]} of {attempts[item]} tries while its actor answered heartbeats (stuck: a "
                "hung device or a blocking socket?); if items this size take longer, raise --item-timeout-s")
        if out_of_tries:
            cause = getattr(err, "cause", None)
            if isinstance(err, RayTaskError) and isinstance(cause, Exception):
                raise cause  # the stage's own (typed, one-line) error
            raise ExecutorError(f"{stage.name}: item {item} failed {attempts[item]} times; last error: "
                                f"{' '.join(str(err).split())[:300]}")
        self.pool.stats["retried_items"] += 1
        self.pending.appendleft(item)

    def report(self, bar: Any, res: dict) -> None:
        """Advances the progress bar by a finished item's records."""
        bar.advance(self.stage.records(res))
        stats = self.pool.stats
        bar.postfix(shards=self.done, actor_deaths=stats["actor_deaths"], hung=stats["hung_actors"])

    def feed_idle(self) -> bool:
        """Hands pending items to the idle live actors; True once every item is done (only probes left)."""
        if not self.alive:
            raise ExecutorError(f"{self.stage.name}: all {len(self.actors)} actors died; "
                                f"{len(self.pending) + len(self.inflight)} items left: see the actor logs")
        busy = {x for x, _ in self.inflight.values()}
        for b in sorted(self.alive - busy):
            if self.pending:
                self.submit(b)
        return not self.pending and all(it is _PING for _, it in self.inflight.values())

    def kill_all(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)


def make_executor(workers: int, **pool_options: Any):
    """workers == 0: the serial executor; otherwise a Ray actor pool of that size."""
    if workers < 0:
        raise ValueError(f"--workers={workers} must be >= 0 (0 = serial, in-process)")
    return SerialExecutor() if workers == 0 else RayActorPool(num_actors=workers, **pool_options)


@dataclass(kw_only=True)
class ExecutorConfig:
    """Where a stage's work items run: in-process, or on a pool of Ray actors."""

    workers: int = 0
    """Ray actors; 0 = serial, in-process."""
    max_restarts: int = 3
    """Times a dead Ray actor is restarted."""
    task_retries: int = 3
    """Times a failed work item is resubmitted to a live actor."""
    gpus_per_worker: float | None = None
    """GPUs per Ray actor (default: this machine's GPUs shared among the workers, at most 1 each; 0 without CUDA)."""
    item_timeout_s: float | None = None
    """Seconds a work item may run on a Ray actor before the actor is killed and the item retried (a stuck
    device or socket; default: 10x the slowest finished item, at least 600 s)."""

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"--workers={self.workers} must be >= 0 (0 = serial, in-process)")
        check_item_timeout(self.item_timeout_s)

    def gpus(self) -> float:
        """GPUs per actor: the given figure, else a guess from the driver's machine (asking for more GPUs than
        the cluster has would never schedule)."""
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        import torch

        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return min(1.0, n_gpus / self.workers) if (self.workers and n_gpus) else 0.0

    def build(self):
        if self.workers == 0:
            return SerialExecutor()
        return RayActorPool(num_actors=self.workers, max_restarts=self.max_restarts, task_retries=self.task_retries,
                            num_gpus=self.gpus(), item_timeout_s=self.item_timeout_s)


def check_item_timeout(seconds: float | None) -> None:
    if seconds is not None and not seconds > 0:
        raise ValueError(f"--item-timeout-s={seconds} must be > 0 (seconds an item may run; leave it unset for "
                         "10x the slowest finished item, at least 600 s)")
