"""Memory that does not grow with the run (issue 23 item 10): the stream's epoch plan is never materialised
(per shard a saved generator state; permutations re-drawn for the windows that need them), its order is the
one the materialised plan had, bit for bit, and the generations a stream opens are an LRU."""
from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pytest

from storage.manifest import ShardEntry
from storage.reader import TargetSet
from storage.schema import Segments
from storage.settings import ShardEncoding
from storage.stream import EpochPlan, ShardStream
from storage.writer import TargetSetWriter
from trainers.dmt.mixing import StreamConfig, epoch_plan


def shards(spec) -> tuple[ShardEntry, ...]:
    return tuple(ShardEntry(round=r, path=f"round-{r:03d}/shard-{i:05d}.zarr.zip", format="zarr", layout="pairs",
                            dtype="float32", z=4, s=0, rows=n, records=n, bytes=1, sha256="0" * 64)
                 for i, (r, n) in enumerate(spec))


SETS = {"flat": [(0, n) for n in (37, 50, 1, 64, 23, 0, 91, 40)],
        "rounds": [(0, 120), (0, 97), (0, 64), (1, 30), (1, 33), (2, 41), (3, 17), (3, 29)]}
# sha256 (first 16 hex) of the plans the materialising implementation gave before issue 23 (same arguments):
# a resumed stream state of an older run continues on exactly the record it would have
BEFORE = [
    ("flat", None, 1, 1.0, None, 0, 0, 306, "bd818caa47b95c94"),
    ("flat", None, 1, 1.0, None, 7, 3, 306, "e4abd5d007622093"),
    ("flat", None, 3, 1.0, None, 0, 0, 306, "f7315bbe300974cd"),
    ("flat", None, 3, 1.0, None, 7, 3, 306, "f4abd8d945ca67f7"),
    ("flat", None, 100, 1.0, None, 0, 0, 306, "6b4fb55bd42037ec"),
    ("flat", None, 100, 1.0, None, 7, 3, 306, "2a9d548171d9410b"),
    ("rounds", {"0": 1.0, "dmt": 2.0}, 1, 1.0, None, 0, 0, 431, "39dafffa207a07e2"),
    ("rounds", {"0": 1.0, "dmt": 2.0}, 1, 1.0, None, 7, 3, 431, "7221dcda91f44977"),
    ("rounds", {"0": 1.0, "dmt": 2.0}, 3, 0.5, None, 0, 0, 431, "88810b655f6052e4"),
    ("rounds", {"0": 1.0, "dmt": 2.0}, 3, 0.5, None, 7, 3, 431, "1e80b14a3a988558"),
    ("rounds", {"0": 1.0, "dmt": 2.0}, 8, 0.1, 0.5, 0, 0, 431, "bb531d4d0e1fc889"),
    ("rounds", {"0": 1.0, "dmt": 2.0}, 8, 0.1, 0.5, 7, 3, 431, "d22dc9df33999406"),
    ("rounds", {"0": 0.0, "2": 1.0, "dmt": 0.5}, 2, 1.0, None, 0, 0, 150, "7714a5ac51f6a1ac"),
    ("rounds", {"0": 0.0, "2": 1.0, "dmt": 0.5}, 2, 1.0, None, 7, 3, 150, "493eeb03e7765aa0"),
]


@pytest.mark.parametrize("name, weights, mix, decay, beta, seed, epoch, n, digest", BEFORE)
def test_the_order_is_the_one_before(name, weights, mix, decay, beta, seed, epoch, n, digest):
    s, r = epoch_plan(shards(SETS[name]), seed, epoch, weights, mix, decay, beta, 5.0)
    assert len(s) == n
    assert hashlib.sha256(s.astype(np.int64).tobytes() + r.astype(np.int64).tobytes()).hexdigest()[:16] == digest


@pytest.mark.parametrize("name, weights, mix", [("flat", None, 3), ("rounds", {"0": 1.0, "dmt": 2.0}, 8),
                                                ("rounds", {"0": 1.0, "dmt": 2.0}, 1)])
def test_any_slice_is_that_part_of_the_whole_plan(name, weights, mix):
    whole_s, whole_r = epoch_plan(shards(SETS[name]), 5, 2, weights, mix)
    plan = EpochPlan(shards(SETS[name]), 5, 2, weights, mix, keep=2)  # re-draws permutations all the time
    rng = np.random.default_rng(0)
    for a, b in [(0, len(plan)), (0, 1), (len(plan) - 1, len(plan)), *rng.integers(0, len(plan), (40, 2))]:
        a, b = sorted((int(a), int(b)))
        s, r = plan.slice(a, b)
        assert s.tolist() == whole_s[a:b].tolist() and r.tolist() == whole_r[a:b].tolist()
        assert len(plan._perms) <= 2


def test_a_plan_holds_per_shard_state_not_per_record():
    """64 shards of 100,000 records: the materialised plan was 12 bytes a record (77 MB, 154 MB for the two
    a stream cached); the plan keeps O(shards), plus the permutations of the `keep` shards a window touched."""
    many = shards([(0, 100_000)] * 32 + [(1, 100_000)] * 32)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        plan = EpochPlan(many, 0, 0, {"0": 1.0, "dmt": 3.0}, mix_shards=4, keep=8)
        held = tracemalloc.get_traced_memory()[0] - base
        s, r = plan.slice(1_000_000, 1_008_192)
        del s, r
        with_window = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(plan) == 6_400_000
    # the round weights' once-more bits (1 bit a record, packed) are the only per-record state: 0.125 bytes
    bits = sum(x.nbytes for x in plan.extra if x is not None)
    assert bits == 64 * 100_000 // 8
    assert held < bits + 64 * 2_000  # a few hundred bytes a shard
    assert len(plan._perms) <= 8 and with_window < held + 8 * 100_000 * 8 + 1_000_000


def _set_with_generations(root, n: int) -> str:
    url = f"{root}/targets/fp/c"
    rng = np.random.default_rng(0)
    for g in range(n):  # one shard per generation, as DMT rounds arrive
        with TargetSetWriter(url, teacher_fingerprint="fp", teacher_config={}, corpus_id="c", encoding=ShardEncoding(dtype="float32")) as w:
            w.write_segments(g, Segments(states=rng.standard_normal((4, 5, 8), dtype=np.float32),
                                         tokens=rng.integers(0, 4, (4, 4)), y=rng.integers(0, 4, (4, 4)),
                                         seq=np.arange(4) + 4 * g, pos0=np.zeros(4, dtype=np.int64)))
    return url


def test_a_stream_keeps_a_bounded_number_of_generations(tmp_path):
    url = _set_with_generations(tmp_path, 12)
    stream = ShardStream(TargetSet.open(url, "fp", generation=1),
                         StreamConfig(batch_size=8, shuffle_buffer=16, follow="steps", follow_every=1, prefetch=0))
    seen = set()
    it = iter(stream)
    for _ in range(40):
        next(it)
        seen.add(stream.generation)
        assert len(stream._sets) <= 3 and len(stream._plans) <= 2
    stream.close()
    assert max(seen) == 12 and len(seen) >= 2
