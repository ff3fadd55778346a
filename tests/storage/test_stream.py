"""The shard stream: splits cover an epoch exactly, orders are seeded, resume is exact, rounds are weighted,
generations switch only where configured; on a temp folder and on the moto S3 endpoint."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from storage import Bucket, TargetSet, TargetSetWriter
from storage.stream import ShardStream, StreamStateError
from tests.storage_data import FP, make_pairs, make_segments, writer_kwargs
from trainers.dmt.mixing import StreamConfig

pytestmark = pytest.mark.timeout(300)


def _write(bucket, n_shards=5, n=7, S=3, round=0, seed0=0):
    with TargetSetWriter(bucket, **writer_kwargs(), round=round) as w:
        for i in range(n_shards):
            if round == 0:
                w.write_segments(i, make_segments(n=n, S=S, seed=seed0 + i))
            else:
                w.write_pairs(i, make_pairs(n=n * S, seed=seed0 + i))
    return w.generation


@pytest.fixture(params=["local", "s3"])
def bucket(request, tmp_path, monkeypatch):
    if request.param == "local":
        return Bucket.from_url(str(tmp_path / "ts"), retries=1)
    url, endpoint = request.getfixturevalue("s3_bucket")
    b = Bucket.from_url(url + "/ts", endpoint_url=endpoint, retries=1)

    def no_listing(*a, **k):
        raise AssertionError("the stream listed the bucket")
    for name in ("ls", "_ls", "find", "_find", "glob", "_glob", "walk", "_walk"):
        if hasattr(b.fs, name):
            monkeypatch.setattr(b.fs, name, no_listing)  # the fs instance is cached: restore it
    return b


def records(batches):
    return [(int(s), int(i)) for b in batches for s, i in zip(b["shard"], b["index"])]


def take(it, n):
    return [next(it) for _ in range(n)]


def test_splits_cover_one_epoch_exactly(bucket):
    _write(bucket)
    ts = TargetSet.open(bucket, FP)
    everything = {(s, i) for s, e in enumerate(ts.shards) for i in range(e.records)}
    R, K = 3, 2
    seen, per_rank = [], []
    for r in range(R):
        stream = ShardStream(ts, StreamConfig(batch_size=1, shuffle_buffer=8), rank=r, world_size=R, num_workers=K)
        n_rank = 0
        for w in range(K):
            lo, hi = stream.split(ts.generation, 0, w)
            seen += records(take(stream.split_batches(w), hi - lo))
            n_rank += hi - lo
        per_rank.append(n_rank)
        stream.close()
    assert len(set(per_rank)) == 1, per_rank                     # equal lengths: DDP lockstep
    assert len(seen) == len(set(seen))                           # no duplicates
    assert set(seen) <= everything
    assert len(everything) - len(seen) == len(everything) % R < R  # at most one dropped per rank


def test_seeded_order_and_epochs(tmp_path):
    _write(str(tmp_path))
    ts = TargetSet.open(str(tmp_path), FP)
    cfg = StreamConfig(batch_size=ts.num_records, shuffle_buffer=16)
    a, b = iter(ShardStream(ts, cfg)), iter(ShardStream(ts, cfg))
    e0, e1 = records([next(a)]), records([next(a)])
    assert e0 == records([next(b)])                              # same seed, same order
    assert sorted(e0) == sorted(e1) and e0 != e1                 # next epoch: same records, new order
    other = records([next(iter(ShardStream(ts, StreamConfig(batch_size=ts.num_records, shuffle_buffer=16,
                                                                seed=1))))])
    assert other != e0 and sorted(other) == sorted(e0)


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_at_any_position_is_exact(tmp_path, workers):
    _write(str(tmp_path))
    ts = TargetSet.open(str(tmp_path), FP)
    cfg = StreamConfig(batch_size=7, shuffle_buffer=10)
    ref = records(take(iter(ShardStream(ts, cfg, num_workers=workers)), 40))  # > 2 epochs of 105
    for stop in (0, 1, 3, 8, 15, 16, 31):
        s = ShardStream(ts, cfg, num_workers=workers)
        it = iter(s)
        take(it, stop)
        state = json.loads(json.dumps(s.state_dict()))
        s.close()
        resumed = ShardStream(TargetSet.open(str(tmp_path), FP), cfg, num_workers=workers)
        resumed.load_state_dict(state)
        assert records(take(iter(resumed), 40 - stop)) == ref[stop * 7:], stop
        resumed.close()


def test_dataloader_workers_match_in_process_and_resume(tmp_path):
    _write(str(tmp_path))
    ts = TargetSet.open(str(tmp_path), FP)
    cfg = StreamConfig(batch_size=5, shuffle_buffer=10, prefetch=0)
    ref = records(take(iter(ShardStream(ts, cfg, num_workers=2)), 12))
    s = ShardStream(ts, cfg, num_workers=2)
    it = s.loader()
    assert records(take(it, 5)) == ref[:25]
    state = s.state_dict()
    it.close()
    r = ShardStream(ts, cfg, num_workers=2)
    r.load_state_dict(state)
    it = r.loader()
    assert records(take(it, 7)) == ref[25:]
    it.close()


def test_resume_with_other_layout_fails_clearly(tmp_path):
    _write(str(tmp_path))
    ts = TargetSet.open(str(tmp_path), FP)
    cfg = StreamConfig(batch_size=4, shuffle_buffer=10)
    s = ShardStream(ts, cfg, num_workers=2, world_size=2)
    take(iter(s), 3)
    state = s.state_dict()
    with pytest.raises(StreamStateError, match=r"num_workers: saved 2, now 3"):
        ShardStream(ts, cfg, num_workers=3, world_size=2).load_state_dict(state)
    with pytest.raises(StreamStateError, match=r"world_size: saved 2, now 1"):
        ShardStream(ts, cfg, num_workers=2, world_size=1).load_state_dict(state)
    ok = ShardStream(ts, StreamConfig(batch_size=9, shuffle_buffer=10), num_workers=2, world_size=2)
    ok.load_state_dict(state)  # another batch size is fine: positions count records


def test_round_weights(tmp_path):
    _write(str(tmp_path), n_shards=4)                 # round 0: 84 records
    _write(str(tmp_path), n_shards=2, round=1)        # round 1: 42 records
    ts = TargetSet.open(str(tmp_path), FP)
    assert ts.generation == 2 and ts.num_records == 126

    def epoch_rounds(weights, epoch=0):
        s = ShardStream(ts, StreamConfig(batch_size=126, round_weights=weights))
        it = iter(s)
        for _ in range(epoch):
            next(it)
        b = next(it)
        return Counter(b["round"].tolist()), records([b])

    counts, recs = epoch_rounds({0: 1.0, "dmt": 2.0})
    assert counts == {0: 42, 1: 84}                   # 126 * 1/3 and 126 * 2/3
    assert len(set(recs)) == 42 + 42                  # base subsampled (42 distinct), dmt each twice
    assert Counter(Counter(r for r in recs if ts.shards[r[0]].round == 1).values()) == {2: 42}
    assert epoch_rounds({0: 1.0, "dmt": 2.0}, epoch=1)[1] != recs   # resampled per epoch
    assert epoch_rounds({"dmt": 1.0})[0] == {1: 126}
    assert epoch_rounds({"0": 1.0, "1": 1.0})[0] == {0: 63, 1: 63}
    assert epoch_rounds(None)[0] == {0: 84, 1: 42}


def test_round_decay_favours_the_newest_rounds(tmp_path):
    _write(str(tmp_path), n_shards=2)                 # round 0: 42 records
    for r in (1, 2, 3):
        _write(str(tmp_path), n_shards=1, round=r, seed0=10 * r)   # 21 records each
    ts = TargetSet.open(str(tmp_path), FP)
    assert ts.num_records == 105

    def epoch_rounds(decay):
        s = ShardStream(ts, StreamConfig(batch_size=105, round_weights={"0": 1, "dmt": 4}, round_decay=decay))
        return Counter(next(iter(s))["round"].tolist())

    alike = epoch_rounds(1.0)                                     # 1/5 base; 84 over the rounds at random
    assert alike[0] == 21 and sum(alike.values()) == 105 and all(21 <= alike[r] <= 42 for r in (1, 2, 3))
    # decay 0.5: dmt's 84 split 1:2:4 over rounds 1, 2, 3
    assert epoch_rounds(0.5) == {0: 21, 1: 12, 2: 24, 3: 48}
    with pytest.raises(ValueError, match="round_decay"):
        StreamConfig(round_decay=0.0)
    saved = ShardStream(ts, StreamConfig(round_weights={"0": 1, "dmt": 4}, round_decay=0.5)).state_dict()
    with pytest.raises(StreamStateError, match="round_decay"):
        ShardStream(ts, StreamConfig(round_weights={"0": 1, "dmt": 4})).load_state_dict(saved)


def test_generation_switch_only_where_configured(bucket):
    _write(bucket, n_shards=2, n=4, S=2)              # gen 1: 16 records, round 0
    ts = TargetSet.open(bucket, FP)

    def run(**follow):
        s = ShardStream(TargetSet.open(bucket, FP, generation=1), StreamConfig(batch_size=4, **follow))
        it = iter(s)
        out = [next(it)]
        if not committed:
            _write(bucket, n_shards=1, n=8, round=1, seed0=9)   # gen 2 adds 8 round-1 records
            committed.append(True)
        for _ in range(7):
            out.append(next(it))
        return [set(b["round"].tolist()) for b in out], s

    committed: list[bool] = []
    rounds, s = run()
    assert all(r == {0} for r in rounds) and s.state_dict()["generation"] == 1
    rounds, s = run(follow="epoch")                   # epoch 0 = batches 0..3 (16 records): gen 1 only
    assert all(r == {0} for r in rounds[:4]) and any(1 in r for r in rounds[4:])
    assert s.state_dict()["generation"] == 2
    rounds, s = run(follow="steps", follow_every=2)   # switches before batch 2: new epoch on gen 2
    assert rounds[:2] == [{0}, {0}] and s.state_dict()["generation"] == 2
    assert s.cursors[0].epoch >= 1
    assert ts.generation == 1
