"""The shard stream: shuffled, split, resumable batches of transitions from one manifest generation.

    stream = ShardStream(TargetSet.open(url, fp), ShardStreamConfig(batch_size=256, seed=0), rank=r, world_size=R)
    for batch in stream:            # {"state_in", "token", "state_out", "y", "round", "shard", "index"}
        ...
    ckpt["stream"] = stream.state_dict()     # resume on exactly the next record: load_state_dict(...)

One epoch, for a generation and a seed, is a pure function of (seed, epoch):
1. the shards are permuted, then each record gets a count (1, or drawn by the config's weight function:
   `RoundWeights`; lockstep DMT's policy is `trainers/dmt/mixing.py`), and the
   records are laid out group after group of `mix_shards` shards, each group interleaved in chunks
   (chunk 0 of every shard, chunk 1, ...): the epoch *plan* of E records;
2. rank r takes plan positions [r*L, (r+1)*L) with L = E // world_size (so every rank has the same
   length and DDP ranks step in lockstep; E mod world_size < world_size records are dropped, at most
   one per rank), and its data-loader worker w the w-th of num_workers near-equal contiguous pieces;
3. each piece is cut into windows of `shuffle_buffer` records and every window is permuted with a
   seed derived from (seed, epoch, window start): a bounded shuffle buffer that can be re-entered at
   any position without replaying the epoch. A window only touches the few shards it spans, so a split
   reads ~1/num_splits of the data;
4. batches are consecutive records of that sequence and may straddle epochs. The state of a split is
   (generation, epoch, position, batches); with several workers the batches are taken round-robin
   (worker 0, 1, ..., exactly as a torch DataLoader with `in_order=True` does), so the state also
   records which worker is next.
The plan is never materialised (`EpochPlan`: per shard a saved generator state, its permutation re-drawn when
a window needs it), so memory does not grow with the records of an epoch; the opened generations are an LRU.
Decoded shards live in a small LRU cache; a background thread builds the next windows while the
current one is consumed, fetching each window's shards concurrently. Nothing here lists the bucket: a newer
generation is found by existence probes of manifest/gen-<n+1>.json. A student run's stream reads a
`RunSource` (storage/rounds.py): round 0 of the target set plus that run's own DMT rounds, whose
generations it follows the same way (generation numbers are then the run's rounds generations).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from storage.errors import StorageError
from storage.manifest import ShardEntry
from storage.reader import TargetSet
from storage.rounds import RunSource, RunView, TargetSetSource, first_generation_with_round
from storage.schema import Transitions

STATE_VERSION = 1
FOLLOW = ("never", "epoch", "steps")
_FIELDS = ("state_in", "token", "state_out", "y", "round")


Groups = dict[str, tuple[list[int], float]]
"""Sampling groups of one generation: name -> (indices of its shards, weight)."""
RoundWeights = Callable[[tuple[ShardEntry, ...]], Groups]
"""A weight function: a generation's shards -> its `Groups`. Each group gets the share weight / sum(weights) of
the epoch's records, spread evenly over the group's records; shards in no group are not sampled. It is
called once per (generation, epoch) plan and must be a pure function of the shards (the order is a pure
function of (seed, epoch))."""


def round_group(r: int, weights: Mapping[str, float]) -> str | None:
    """The key of `weights` that governs round r (None: the round is not sampled): its own 'N', else 'dmt'
    for every round >= 1."""
    if str(r) in weights:
        return str(r)
    return "dmt" if r >= 1 and "dmt" in weights else None


@dataclass(frozen=True)
class by_round:
    """The weight function of fixed weights by round key ('0' = the teacher's labels, 'dmt' = rounds >= 1,
    'N' = round N); a key of weight 0 samples nothing. A class, so a stream holding one pickles."""

    weights: Mapping[str, float]

    def __call__(self, shards: tuple[ShardEntry, ...]) -> Groups:
        out: Groups = {}
        for i, e in enumerate(shards):
            g = round_group(e.round, self.weights)
            if g is not None and self.weights[g] > 0:
                out.setdefault(g, ([], float(self.weights[g])))[0].append(i)
        return out


class StreamStateError(StorageError):
    """A stream state that cannot be resumed by this stream (other layout, seed or version)."""


@dataclass(kw_only=True)
class ShardStreamConfig:
    """The stream's own settings. Every record once per epoch; a config that samples rounds by weight (the student's
    `trainers.dmt.mixing.StreamConfig`) returns its weight function from `weights()`."""

    batch_size: int = 256
    """Records per batch (per rank)."""
    seed: int = 0
    """Seed of the shard order, the window shuffles and the round sampling."""
    shuffle_buffer: int = 8192
    """Records per shuffle window (the bounded shuffle buffer)."""
    follow: str = "never"
    """Switch to a newer manifest generation: 'never', at each 'epoch' boundary, or every N 'steps'."""
    follow_every: int = 0
    """With follow='steps': probe for a newer generation every this many batches."""
    mix_shards: int = 8
    """Shards interleaved in each shuffle window (better mixing; the cache should hold ~2x this)."""
    cache_shards: int = 16
    """Decoded shards kept in the LRU cache."""
    prefetch: int = 2
    """Windows built ahead in a background thread (0 = none)."""
    io_threads: int = 4
    """Threads fetching and decoding the shards of a window concurrently."""

    def __post_init__(self) -> None:
        if min(self.batch_size, self.shuffle_buffer, self.cache_shards, self.mix_shards, self.io_threads) < 1:
            raise ValueError(f"batch_size={self.batch_size}, shuffle_buffer={self.shuffle_buffer}, mix_shards="
                             f"{self.mix_shards} and cache_shards={self.cache_shards} must all be >= 1")
        if self.follow not in FOLLOW:
            raise ValueError(f"follow={self.follow!r} is unknown: use one of {', '.join(FOLLOW)}")
        if (self.follow == "steps") != (self.follow_every > 0):
            raise ValueError(f"follow={self.follow!r} with follow_every={self.follow_every}: "
                             "follow='steps' needs follow_every >= 1, other modes need follow_every=0")

    def weights(self) -> RoundWeights | None:
        """The weight function of each epoch's records; None: every record once."""
        return None

    def layout(self) -> dict[str, Any]:
        """The settings the record order depends on besides the world size and workers (a resume must keep them)."""
        return {"seed": self.seed, "shuffle_buffer": self.shuffle_buffer, "mix_shards": self.mix_shards}

    def layout_defaults(self) -> dict[str, Any]:
        """Values of `layout` keys that states saved by older versions lack."""
        return {}


def _check_version(state: dict[str, Any]) -> None:
    if state.get("version") != STATE_VERSION:
        raise StreamStateError(f"stream state version {state.get('version')!r} is not {STATE_VERSION}")


@dataclass
class Cursor:
    """Where one split stands: the next record is `position` of epoch `epoch` of `generation`."""

    generation: int
    epoch: int = 0
    position: int = 0
    batches: int = 0


class EpochPlan:
    """The (shard index, record index) of every position of one epoch, before the window shuffle, without
    holding them: `slice(a, b)` computes positions [a, b) on demand.

    The order is `epoch_plan`'s (below), draw for draw: one Generator seeded by (seed, epoch, 1) permutes
    the shards, draws the weighted counts, then permutes each shard's records in plan order. Building the plan
    runs those draws once, keeping per shard only the Generator's state before its permutation (a few
    ints), its count (`base`, plus one bit per record drawn once more, packed, only with round weights) and
    its length; a slice re-draws the permutations of the shards it touches from their saved states (an LRU of
    `keep` of them: about 2 x mix_shards, the shards the decoded-shard cache holds anyway). So a plan costs
    O(shards) + O(kept shards' records) memory instead of 12 bytes per record of the epoch.

    Without weights every record appears once. With a weight function (`RoundWeights`; a mapping of
    fixed weights by round key is `by_round`'s), the epoch still has E records, E = the records of all its
    groups; group g gets q_g = E * w_g / sum(w) of them (largest remainder rounding, groups in name order);
    each of its n_g records appears q_g // n_g times, and a seeded random q_g mod n_g of them once more.
    Consecutive groups of `mix_shards` shards (in permuted order) are interleaved: chunk j of each
    shard of the group (its records in a seeded random order; `np.array_split`'s cut into as many chunks as
    the group has shards), for j = 0..len(group)-1, so a shuffle window holds records of ~mix_shards
    shards; mix_shards >= the shard count makes every window a proportional sample of the whole epoch
    (lockstep DMT switches generations every few steps).
    """

    def __init__(self, shards: tuple[ShardEntry, ...], seed: int, epoch: int,
                 weights: RoundWeights | Mapping[str, float] | None, mix_shards: int = 1,
                 keep: int | None = None) -> None:
        rng = np.random.default_rng([seed, epoch, 1])
        groups = None if weights is None else (by_round(weights) if isinstance(weights, Mapping) else weights)(shards)
        order = rng.permutation(len(shards))
        sizes = [int(e.records) for e in shards]
        self.sizes = sizes
        self.base = [1] * len(shards)
        self.extra: list[np.ndarray | None] = [None] * len(shards)  # packed bits: drawn once more
        if groups is not None:
            self._weights(groups, rng)
        self.lengths = np.array([self.base[i] * n + (int(np.unpackbits(x, count=n).sum()) if x is not None else 0)
                                 for i, (n, x) in enumerate(zip(sizes, self.extra))], dtype=np.int64)
        self.states: list[dict | None] = [None] * len(shards)
        for i in order:  # the permutations' draws, in plan order: keep the state before each
            self.states[i] = rng.bit_generator.state
            rng.permutation(int(self.lengths[i]))  # the draws depend on the length only (a 1-D shuffle)
        self.groups = [order[g:g + mix_shards] for g in range(0, len(order), mix_shards)]
        self.group_start = np.concatenate([[0], np.cumsum([int(self.lengths[m].sum()) for m in self.groups])])
        self.length = int(self.group_start[-1])
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()  # group -> start of each chunk (small)
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()
        self.keep = keep if keep is not None else max(2, 2 * mix_shards)
        self._lock = threading.Lock()

    def _weights(self, groups: Groups, rng) -> None:
        """Each record's count from the groups' weights (draws from `rng`, groups in name order)."""
        self.base = [0] * len(self.sizes)  # in no group: not sampled
        names = sorted(groups)
        total = int(sum(self.sizes[i] for g in names for i in groups[g][0]))
        w = np.array([groups[g][1] for g in names])
        exact = total * w / w.sum()
        quota = np.floor(exact).astype(np.int64)
        for j in np.argsort(-(exact - quota), kind="stable")[: total - int(quota.sum())]:
            quota[j] += 1
        for g, q in zip(names, quota):
            idx = groups[g][0]
            n_g = int(sum(self.sizes[i] for i in idx))
            once_more = np.zeros(n_g, dtype=bool)
            once_more[rng.choice(n_g, int(q % n_g), replace=False)] = True
            for i, part in zip(idx, np.split(once_more, np.cumsum([self.sizes[i] for i in idx])[:-1])):
                self.base[i] = int(q // n_g)
                self.extra[i] = np.packbits(part) if part.any() else None

    def __len__(self) -> int:
        return self.length

    def perm(self, i: int) -> np.ndarray:
        """Shard i's records in this epoch's order (each as often as its count), re-drawn from its saved state."""
        with self._lock:
            if i in self._perms:
                self._perms.move_to_end(i)
                return self._perms[i]
        n = self.sizes[i]
        counts = np.full(n, self.base[i], dtype=np.int64)
        if self.extra[i] is not None:
            counts += np.unpackbits(self.extra[i], count=n)
        recs = np.arange(n, dtype=np.int64) if self.base[i] == 1 and self.extra[i] is None else \
            np.repeat(np.arange(n, dtype=np.int64), counts)
        rng = np.random.default_rng()
        rng.bit_generator.state = self.states[i]
        p = rng.permutation(recs)
        with self._lock:
            self._perms[i] = p
            while len(self._perms) > self.keep:
                self._perms.popitem(last=False)
        return p

    def _chunk_starts(self, g: int) -> np.ndarray:
        """Start of each chunk j within group g (relative to the group): chunk j holds part j of each member."""
        with self._lock:
            if g in self._chunks:
                return self._chunks[g]
        L, k = self.lengths[self.groups[g]], len(self.groups[g])
        sizes = (L // k).sum() + np.array([(L % k > j).sum() for j in range(k)], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        with self._lock:
            self._chunks[g] = starts
            while len(self._chunks) > 4:
                self._chunks.popitem(last=False)
        return starts

    def slice(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, record index) of plan positions [a, b)."""
        a, b = max(0, a), min(b, self.length)
        shard_parts, rec_parts = [], []
        pos = a
        while pos < b:
            g = int(np.searchsorted(self.group_start, pos, side="right")) - 1
            members, k = self.groups[g], len(self.groups[g])
            L = self.lengths[members]
            starts = self._chunk_starts(g)
            j = int(np.searchsorted(starts, pos - self.group_start[g], side="right")) - 1
            parts = L // k + (L % k > j)  # part j of each member: np.array_split's sizes
            first = j * (L // k) + np.minimum(j, L % k)  # where part j starts in each member's permutation
            off = pos - int(self.group_start[g] + starts[j])
            for i, size, at in zip(members, parts, first):
                if pos >= b:
                    break
                if off >= size:
                    off -= int(size)
                    continue
                take = min(int(size) - off, b - pos)
                rec_parts.append(self.perm(int(i))[int(at) + off:int(at) + off + take])
                shard_parts.append(np.full(take, i, dtype=np.int32))
                pos += take
                off = 0
        if not rec_parts:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        return np.concatenate(shard_parts), np.concatenate(rec_parts)


def epoch_plan(shards: tuple[ShardEntry, ...], seed: int, epoch: int,
               weights: RoundWeights | Mapping[str, float] | None, mix_shards: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The whole `EpochPlan` as two arrays (tests, tools; the stream never materialises it)."""
    plan = EpochPlan(shards, seed, epoch, weights, mix_shards, keep=len(shards) or 1)
    return plan.slice(0, len(plan))


def split_range(length: int, rank: int, world_size: int, worker: int, num_workers: int) -> tuple[int, int]:
    """Plan positions [lo, hi) of (rank, worker): equal per rank, near-equal per worker."""
    per_rank = length // world_size
    base = rank * per_rank
    return base + worker * per_rank // num_workers, base + (worker + 1) * per_rank // num_workers


class ShardCache:
    """LRU of decoded shards keyed by path; concurrent requests for one shard decode it once."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Transitions] = OrderedDict()
        self._loading: dict[str, Future] = {}
        self._lock = threading.Lock()
        self.decoded = 0

    def get(self, ts: TargetSet, entry: ShardEntry) -> Transitions:
        with self._lock:
            if entry.path in self._items:
                self._items.move_to_end(entry.path)
                return self._items[entry.path]
            fut = self._loading.get(entry.path)
            owner = fut is None
            if owner:
                fut = self._loading[entry.path] = Future()
        if not owner:
            return fut.result()
        try:
            tr = ts.read_shard(entry)
        except BaseException as e:
            with self._lock:
                del self._loading[entry.path]
            fut.set_exception(e)
            raise
        with self._lock:
            del self._loading[entry.path]
            self._items[entry.path] = tr
            self.decoded += 1
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        fut.set_result(tr)
        return tr


class ShardStream(torch.utils.data.IterableDataset):
    """Infinite batches of one (rank, worker) split; see the module docstring for the order."""

    def __init__(self, source: TargetSet | RunSource, cfg: ShardStreamConfig | None = None, *, rank: int = 0,
                 world_size: int = 1, num_workers: int = 1,
                 agree: Callable[[int], int] | None = None) -> None:
        """`source`: one generation of a target set (its newer generations are followed), or a run's
        `RunSource` (round 0 + the run's own DMT rounds; generation numbers are the run's rounds generations)."""
        super().__init__()
        self.cfg = cfg or ShardStreamConfig()
        self.weights = self.cfg.weights()  # how each epoch samples the rounds (None: every record once)
        if not 0 <= rank < world_size or num_workers < 1:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size}) and num_workers={num_workers} >= 1")
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.agree = agree  # DDP: maps this rank's newest generation to one all ranks agree on (min)
        self.cache = ShardCache(self.cfg.cache_shards)
        self.source = TargetSetSource(source) if isinstance(source, TargetSet) else source
        first = self.source.view(self.source.initial)
        # the generations opened, an LRU: lockstep DMT moves to a new one every few steps, and a long run must
        # not keep every manifest it ever read (an evicted one in use is opened again: one manifest GET)
        self._sets: OrderedDict[int, TargetSet | RunView] = OrderedDict({first.generation: first})
        self._keep_sets = num_workers + 2
        self.fingerprint = first.fingerprint
        self.cursors = [Cursor(first.generation) for _ in range(num_workers)]
        self.next_worker = 0
        self._plans: OrderedDict[tuple[int, int], EpochPlan] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._io_pool: ThreadPoolExecutor | None = None
        self._shift = 0  # DataLoader worker id -> logical worker (set by load_state_dict)

    # ---- state -----------------------------------------------------------------------------------
    def layout(self) -> dict[str, Any]:
        c = self.cfg
        return {"world_size": self.world_size, "num_workers": self.num_workers, **c.layout()}

    @property
    def generation(self) -> int:
        """The generation of the split that goes next."""
        return self.cursors[self.next_worker].generation

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state; (generation, epoch, position) are those of the split that goes next."""
        nxt = self.cursors[self.next_worker]
        return {"version": STATE_VERSION, "generation": nxt.generation, "epoch": nxt.epoch,
                "position": nxt.position, "rank": self.rank, "next_worker": self.next_worker,
                "workers": [asdict(c) for c in self.cursors], "layout": self.layout(), "source": self.source.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume on exactly the next record. Another world size, worker count, seed, shuffle buffer or
        round weights would give another order, so they are refused (StreamStateError)."""
        _check_version(state)
        mine, theirs = self.layout(), {**self.cfg.layout_defaults(), **state.get("layout", {})}
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            what = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise StreamStateError(
                f"cannot resume the stream of rank {self.rank}: {what}. The record order depends on these; "
                "resume with the saved values (e.g. the same --workers), or start a new run")
        views = self.source.resume(state.get("source"), [int(c["generation"]) for c in state["workers"]])
        self.cursors = [Cursor(**{**c, "generation": v}) for c, v in zip(state["workers"], views)]
        self.next_worker = int(state["next_worker"])
        self._shift = self.next_worker
        for c in self.cursors:
            self._target_set(c.generation)

    def start_phase(self, state: dict[str, Any]) -> None:
        """Continue a saved stream in a new training phase (other round weights, batch size, world size):
        the order restarts at a fresh epoch of the saved generation, so nothing from the old layout is
        needed and the new order is again a pure function of (seed, epoch)."""
        _check_version(state)
        g = self.source.start_from(state.get("source"), [int(c["generation"]) for c in state["workers"]])
        e = max(int(c["epoch"]) for c in state["workers"]) + 1
        self._target_set(g)
        self.cursors = [Cursor(g, e) for _ in range(self.num_workers)]
        self.next_worker, self._shift = 0, 0

    # ---- generations -----------------------------------------------------------------------------
    def target_set(self, n: int) -> TargetSet | RunView:
        """Generation n of the stream's source (opened once, fingerprint-checked)."""
        return self._target_set(n)

    def _target_set(self, n: int) -> TargetSet | RunView:
        with self._lock:
            ts = self._sets.get(n)
            if ts is not None:
                self._sets.move_to_end(n)
        if ts is None:
            ts = self.source.view(n)
            if ts.fingerprint != self.fingerprint:
                raise StreamStateError(f"generation {n} of {self.source.bucket.url()} has teacher "
                                       f"{ts.fingerprint!r}, the stream was opened on {self.fingerprint!r}")
            with self._lock:
                self._sets[n] = ts
                while len(self._sets) > self._keep_sets:
                    self._sets.popitem(last=False)
        return ts

    def _maybe_switch(self, cur: Cursor) -> None:
        """Move `cur` to the newest generation if one exists (probes only); a mid-epoch switch starts a
        new epoch on the new generation."""
        newest = cur.generation
        if self.source.exists(cur.generation + 1):
            newest = self.source.newest(cur.generation + 1)
        if self.agree is not None:
            newest = int(self.agree(newest))
        self._move(cur, newest)

    def _move(self, cur: Cursor, generation: int) -> None:
        """Put `cur` on a newer `generation`; a split in mid-epoch starts a new epoch on it."""
        if generation > cur.generation:
            self._target_set(generation)
            if cur.position:
                cur.epoch, cur.position = cur.epoch + 1, 0
            cur.generation = generation

    def first_generation_with_round(self, r: int) -> int | None:
        """The oldest generation from the current one on that holds round r (existence probes and manifest
        reads only, no listing); None while no such generation is committed."""
        return first_generation_with_round(r, min(c.generation for c in self.cursors),
                                           lambda n: self._target_set(n).shards, self.source.exists)

    def switch(self, generation: int) -> None:
        """Move every split to `generation` now (a batch boundary), exactly as a followed switch does.
        Re-create the iterator afterwards (`iter(stream)`)."""
        for cur in self.cursors:
            self._move(cur, generation)

    # ---- the order -------------------------------------------------------------------------------
    def plan(self, generation: int, epoch: int) -> EpochPlan:
        key = (generation, epoch)
        with self._lock:
            if key in self._plans:
                return self._plans[key]
        c = self.cfg
        p = EpochPlan(self._target_set(generation).shards, c.seed, epoch, self.weights, c.mix_shards,
                      keep=max(2 * c.mix_shards, c.cache_shards))
        with self._lock:
            self._plans[key] = p
            while len(self._plans) > 2:
                self._plans.popitem(last=False)
        return p

    def split(self, generation: int, epoch: int, worker: int) -> tuple[int, int]:
        n = len(self.plan(generation, epoch))
        lo, hi = split_range(n, self.rank, self.world_size, worker, self.num_workers)
        if hi <= lo:
            raise StreamStateError(
                f"generation {generation} has {n} records in epoch {epoch}: too few for world_size="
                f"{self.world_size} x num_workers={self.num_workers} splits; label more or use fewer workers")
        return lo, hi

    def window(self, generation: int, epoch: int, worker: int, k: int) -> dict[str, np.ndarray]:
        """Window k of a split: its records, permuted (a pure function of the arguments)."""
        lo, hi = self.split(generation, epoch, worker)
        a, b = lo + k * self.cfg.shuffle_buffer, min(hi, lo + (k + 1) * self.cfg.shuffle_buffer)
        s, r = self.plan(generation, epoch).slice(a, b)
        perm = np.random.default_rng([self.cfg.seed, epoch, 2, a]).permutation(b - a)
        s, r = s[perm], r[perm]
        ts = self._target_set(generation)
        needed = np.unique(s)
        if len(needed) > 1:  # fetch + decode the window's shards concurrently (I/O and zarr release the GIL)
            for f in [self._io().submit(self.cache.get, ts, ts.shards[i]) for i in needed]:
                f.result()
        out: dict[str, np.ndarray] = {}
        for i in needed:
            tr = self.cache.get(ts, ts.shards[i])
            m = s == i
            for f in _FIELDS:
                col = getattr(tr, f)
                if f not in out:
                    out[f] = np.empty((b - a, *col.shape[1:]), dtype=col.dtype)
                out[f][m] = col[r[m]]
        out["shard"], out["index"] = s.astype(np.int64), r
        return out

    # ---- iteration -------------------------------------------------------------------------------
    def _windows(self, worker: int, cur: Cursor) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """(window, offset) pairs from the cursor on, following the configured generation switches."""
        buf = self.cfg.shuffle_buffer
        pending: dict[tuple, Future] = {}

        def after(key: tuple) -> tuple:
            g, e, k = key
            lo, hi = self.split(g, e, worker)
            return (g, e, k + 1) if lo + (k + 1) * buf < hi else (g, e + 1, 0)

        while True:
            k = cur.position // buf
            key = (cur.generation, cur.epoch, k)
            fut = pending.pop(key, None)
            win = fut.result() if fut is not None else self.window(*key[:2], worker, k)
            ahead, nk = {}, key
            for _ in range(self.cfg.prefetch):  # guess the next windows (same generation); a switch drops them
                nk = after(nk)
                ahead[nk] = pending.pop(nk, None) or self._executor().submit(self.window, nk[0], nk[1], worker, nk[2])
            pending = ahead
            yield win, cur.position - k * buf

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="stream-prefetch")
        return self._pool

    def _io(self) -> ThreadPoolExecutor:
        if self._io_pool is None:
            self._io_pool = ThreadPoolExecutor(self.cfg.io_threads, thread_name_prefix="stream-io")
        return self._io_pool

    def split_batches(self, worker: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches of one split; advances self.cursors[worker] as each batch is handed out."""
        cur = self.cursors[worker]
        bs, follow = self.cfg.batch_size, self.cfg.follow
        windows = self._windows(worker, cur)
        win, off = next(windows)
        while True:
            if follow == "steps" and cur.batches and cur.batches % self.cfg.follow_every == 0:
                g = cur.generation
                self._maybe_switch(cur)
                if cur.generation != g:
                    windows = self._windows(worker, cur)
                    win, off = next(windows)
            parts, need = [], bs
            while need:
                take = min(need, len(win["token"]) - off)
                parts.append({f: v[off:off + take] for f, v in win.items()})
                need -= take
                off += take
                cur.position += take
                if off == len(win["token"]):
                    lo, hi = self.split(cur.generation, cur.epoch, worker)
                    if lo + cur.position >= hi:
                        cur.epoch, cur.position = cur.epoch + 1, 0
                        if follow == "epoch":
                            g = cur.generation
                            self._maybe_switch(cur)
                            if cur.generation != g:
                                windows = self._windows(worker, cur)
                    win, off = next(windows)
            cur.batches += 1
            yield {f: np.concatenate([p[f] for p in parts]) for f in parts[0]}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        if info is not None:  # inside a DataLoader worker: one logical split, batches tagged for observe()
            if info.num_workers != self.num_workers:
                raise StreamStateError(f"stream was built for num_workers={self.num_workers}, the DataLoader "
                                       f"has {info.num_workers}")
            w = (info.id + self._shift) % self.num_workers
            for b in self.split_batches(w):
                c = self.cursors[w]
                yield {**to_torch(b), "_cursor": torch.tensor([w, c.generation, c.epoch, c.position, c.batches])}
            return
        its = [self.split_batches(w) for w in range(self.num_workers)]
        while True:  # in-process: the same round-robin a DataLoader with num_workers workers gives
            w = self.next_worker
            b = next(its[w])
            self.next_worker = (w + 1) % self.num_workers
            yield to_torch(b)

    def observe(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """DataLoader use: record the cursor a worker batch carries, return the batch without it."""
        w, g, e, p, n = (int(v) for v in batch.pop("_cursor"))
        self.cursors[w] = Cursor(g, e, p, n)
        self.next_worker = (w + 1) % self.num_workers
        return batch

    def loader(self, **kwargs: Any) -> Iterator[dict[str, torch.Tensor]]:
        """Batches through a torch DataLoader with num_workers processes, state tracked in this process."""
        if self.num_workers == 1 and not kwargs.get("num_workers"):
            yield from self
            return
        dl = torch.utils.data.DataLoader(self, batch_size=None, num_workers=self.num_workers, **kwargs)
        for batch in dl:
            yield self.observe(batch)

    def close(self) -> None:
        for pool in (self._pool, self._io_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._io_pool = None

    def __getstate__(self) -> dict:  # DataLoader workers get a copy without the thread pool/locks
        d = dict(self.__dict__)
        d["_pool"], d["_io_pool"], d["_lock"], d["cache"] = None, None, None, None
        d["_plans"] = OrderedDict()  # plans hold locks; a worker builds its own
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()
        self.cache = ShardCache(self.cfg.cache_shards)


def to_torch(b: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A numpy batch as torch tensors: float32 states, int64 tokens/targets/provenance."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) if v.dtype == np.float32 else
            torch.from_numpy(v.astype(np.int64)) for k, v in b.items()}


__all__ = ["Cursor", "EpochPlan", "Groups", "RoundWeights", "ShardStream", "ShardStreamConfig", "StreamStateError",
           "by_round", "epoch_plan", "round_group", "split_range"]
