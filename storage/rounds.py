"""A student run's DMT rounds: its own manifest generations beside its checkpoints, over a shared round 0.

    <targets>/manifest/gen-000001.json        the shared target set: round 0, the teacher's labels (immutable)
    <targets>/runs/<sha of run URL>.json      registry of the runs that relabel on it (for `smt inspect` only)
    <run>/rounds/manifest/gen-000003.json     generation 3 of this run's rounds; pins the target-set
                                               generation it builds on ("base")
    <run>/rounds/round-003/shard-00007.zarr.zip  this run's relabels of round 3 (write-once)

DMT relabels are rollouts of one student, so they belong to its run: two students of one teacher share
round 0 and never see each other's rounds. A rounds generation lists only the run's rounds >= 1 and is
committed like a target set's (create-if-absent, `storage/manifest.py`); the first one pins the newest
target-set generation and later ones keep that pin. What a student run trains on is a *view*:
view n = round 0 of the pinned target-set generation + the rounds of rounds generation n; view 0 (no
rounds yet) = round 0 of the generation the run started on. `RunSource` hands views to the shard stream
by existence probes and manifest reads (never listing), so the stream follows a run's rounds exactly as
it follows a target set's generations (`TargetSetSource`).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

from storage.bucket import Bucket
from storage.errors import FingerprintMismatch, ManifestError, StorageError
from storage.manifest import Generation, ShardEntry, commit, gen_path, newest_generation, read_generation
from storage.reader import TargetSet
from storage.schema import Transitions

ROUNDS = "rounds"
RUNS = "runs"


def rounds_bucket(run: Bucket | str, endpoint_url: str | None = None) -> Bucket:
    """`<run>/rounds/`: where a run's DMT rounds and their manifest live."""
    b = Bucket.from_url(run, endpoint_url=endpoint_url) if isinstance(run, str) else run
    return b.child(ROUNDS)


def commit_rounds(rounds: Bucket, entries: list[ShardEntry], targets: Generation, targets_url: str) -> Generation:
    """Commit `entries` (rounds >= 1) as the run's next rounds generation. The first generation pins
    `targets` (the target set's generation); later ones keep the pin, so every view of a run builds on
    one round 0."""
    if any(e.round < 1 for e in entries):
        raise ManifestError(f"{rounds.url()}: a run's rounds hold DMT rounds >= 1; round 0 stays in the target set")
    n = newest_generation(rounds)
    base = read_generation(rounds, n).base if n else None
    base = base or {"generation": targets.number, "url": targets_url}
    return commit(rounds, entries, teacher_fingerprint=targets.teacher_fingerprint,
                  teacher_config=targets.teacher_config, corpus_id=targets.corpus_id,
                  corpus_params=targets.corpus_params, base=base)


def first_generation_with_round(r: int, start: int, shards: Callable[[int], Iterable[ShardEntry]],
                                exists: Callable[[int], bool]) -> int | None:
    """The oldest generation n >= `start` whose `shards(n)` hold round r: `start` (taken as existing: a stream's
    current view, or view 0 of a run, which has no manifest), then start+1, ... while `exists`; None while none
    does. Probes and manifest reads only, never a listing. A generation holds its parent's shards plus the new
    ones (`storage/manifest.py` `commit`), so from any start up to the generation that committed round r, this
    is that generation. The shard stream (lockstep DMT's switches) and the DMT actor (its round reports) both ask."""
    n = start
    while True:
        if any(e.round == r for e in shards(n)):
            return n
        if not exists(n + 1):
            return None
        n += 1


def round_generation(rounds: Bucket, r: int) -> int | None:
    """The rounds generation of a run (`rounds_bucket`) that committed DMT round r; None while none holds it."""
    if not rounds.exists(gen_path(1)):
        return None
    return first_generation_with_round(r, 1, lambda n: read_generation(rounds, n).shards,
                                       lambda n: rounds.exists(gen_path(n)))


def register_run(targets: Bucket, run_url: str) -> None:
    """Record in the target set that `run_url` keeps rounds on it (idempotent; read by `smt inspect` only)."""
    key = hashlib.sha256(run_url.encode()).hexdigest()[:16]
    targets.create_exclusive(f"{RUNS}/{key}.json", json.dumps({"run": run_url}).encode())


class RunView:
    """What a run trains on at one rounds generation: round 0 of the pinned target-set generation plus the
    run's own rounds. Quacks like a TargetSet for the stream (`shards`, `read_shard`, `generation`)."""

    def __init__(self, base: TargetSet, rounds: TargetSet | None) -> None:
        self.base, self.rounds = base, rounds
        # round 0 only: relabels left in a shared set by older versions belong to no one run
        self.shards: tuple[ShardEntry, ...] = (tuple(e for e in base.shards if e.round == 0)
                                               + (rounds.shards if rounds is not None else ()))
        self.generation = rounds.generation if rounds is not None else 0
        self.fingerprint = base.fingerprint
        self.bucket = (rounds or base).bucket  # where this view's newest records live (error messages)

    @property
    def num_records(self) -> int:
        return sum(e.records for e in self.shards)

    def read_shard(self, entry: ShardEntry) -> Transitions:
        return (self.base if entry.round == 0 else self.rounds).read_shard(entry)


class TargetSetSource:
    """The generations of one target set, as a stream reads them (view n = generation n)."""

    kind = "targets"

    def __init__(self, first: TargetSet) -> None:
        self.first, self.bucket, self.fingerprint = first, first.bucket, first.fingerprint
        self.initial = first.generation

    def view(self, n: int) -> TargetSet:
        if n == self.first.generation:
            return self.first
        ts = TargetSet(self.bucket, read_generation(self.bucket, n), self.first.verify)
        if ts.fingerprint != self.fingerprint:
            raise FingerprintMismatch(self.fingerprint, ts.fingerprint, self.bucket.url(gen_path(n)))
        return ts

    def exists(self, n: int) -> bool:
        return self.bucket.exists(gen_path(n))

    def newest(self, start: int) -> int:
        return newest_generation(self.bucket, start=start)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def resume(self, saved: dict[str, Any] | None, generations: list[int]) -> list[int]:
        """The views a saved stream's splits were on (refuses a state of another kind of source)."""
        if (saved or {}).get("kind", "targets") != self.kind:
            raise StorageError(f"the saved stream read a run's rounds ({saved}); this stream reads the target set "
                               f"{self.bucket.url()} alone: open it through its run (RunSource)")
        return generations

    def start_from(self, saved: dict[str, Any] | None, generations: list[int]) -> int:
        """The view a new phase of a saved stream starts on."""
        return min(self.resume(saved, generations))


class RunSource:
    """A run's views: round 0 of a target set plus the run's rounds (see the module docstring)."""

    kind = "run"

    def __init__(self, targets: TargetSet, rounds: Bucket, generation: int | None = None) -> None:
        """`targets`: the target-set generation view 0 reads; `generation`: the view a stream starts on
        (default: the newest rounds generation)."""
        self.targets, self.rounds, self.fingerprint = targets, rounds, targets.fingerprint
        self.bucket = rounds
        self.base_generation = targets.generation  # view 0's target-set generation
        self._targets: dict[int, TargetSet] = {targets.generation: targets}
        self.initial = newest_generation(rounds) if generation is None else int(generation)

    def _target_generation(self, n: int) -> TargetSet:
        ts = self._targets.get(n)
        if ts is None:
            ts = self._targets[n] = TargetSet(self.targets.bucket, read_generation(self.targets.bucket, n),
                                              self.targets.verify)
        if ts.fingerprint != self.fingerprint:
            raise FingerprintMismatch(self.fingerprint, ts.fingerprint, self.targets.bucket.url(gen_path(n)))
        return ts

    def view(self, n: int) -> RunView:
        if n == 0:
            return RunView(self._target_generation(self.base_generation), None)
        g = read_generation(self.rounds, n)
        where = self.rounds.url(gen_path(n))
        if g.teacher_fingerprint != self.fingerprint:
            raise FingerprintMismatch(self.fingerprint, g.teacher_fingerprint, where)
        if g.corpus_id != self.targets.manifest.corpus_id:
            raise ManifestError(f"{where} holds rounds of corpus {g.corpus_id!r}, the target set "
                                f"{self.targets.bucket.url()} is corpus {self.targets.manifest.corpus_id!r}: "
                                "a run relabels the corpus it trains on; use a new run folder")
        if g.base is None or any(e.round < 1 for e in g.shards):
            raise ManifestError(f"{where} is not a run's rounds generation (no base pin, or round-0 shards)")
        return RunView(self._target_generation(int(g.base["generation"])), TargetSet(self.rounds, g, self.targets.verify))

    def exists(self, n: int) -> bool:
        return self.rounds.exists(gen_path(n))

    def newest(self, start: int) -> int:
        return newest_generation(self.rounds, start=start)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "base": self.base_generation}

    def resume(self, saved: dict[str, Any] | None, generations: list[int]) -> list[int]:
        """The views a saved stream's splits were on. A state saved before rounds were per run (it reads the
        target set's generation g) continues as view 0 on generation g when g holds round 0 alone."""
        saved = saved or {"kind": "targets"}
        if saved.get("kind") == self.kind:
            self.base_generation = int(saved["base"])
            return generations
        g = set(generations)
        if len(g) == 1:
            gen = self._target_generation(g.pop())
            if all(e.round == 0 for e in gen.shards):
                self.base_generation = gen.generation
                return [0] * len(generations)
        raise StorageError(f"the saved stream read generations {sorted(set(generations))} of the target set, which "
                           "hold DMT rounds of no one run: continue in a new phase (--phase-start) or a new run")

    def start_from(self, saved: dict[str, Any] | None, generations: list[int]) -> int:
        """The view a new phase of a saved stream starts on: its oldest view, or for a state that read the
        target set alone (an SMT run from before rounds were per run), view 0 on its oldest generation."""
        saved = saved or {"kind": "targets"}
        if saved.get("kind") == self.kind:
            self.base_generation = int(saved["base"])
            return min(generations)
        self.base_generation = self._target_generation(min(generations)).generation
        return 0
