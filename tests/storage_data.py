"""Data builders and constants shared by the storage tests."""
from __future__ import annotations

import numpy as np

from storage.schema import Pairs, Segments
from storage.settings import ShardEncoding

FP = "teacher-abc123"
CORPUS = "tiny-corpus"


def make_segments(n: int = 3, S: int = 4, Z: int = 16, dtype=np.float16, seed: int = 0) -> Segments:
    rng = np.random.default_rng(seed)
    return Segments(states=rng.standard_normal((n, S + 1, Z)).astype(dtype),
                    tokens=rng.integers(0, 1000, (n, S)), y=rng.integers(-1, 1000, (n, S)),
                    seq=np.arange(n) + 100 * seed, pos0=rng.integers(0, 50, n))


def make_pairs(n: int = 10, Z: int = 16, dtype=np.float16, seed: int = 0, drift: bool = True) -> Pairs:
    rng = np.random.default_rng(seed)
    return Pairs(state_in=rng.standard_normal((n, Z)).astype(dtype), tokens=rng.integers(0, 1000, n),
                 state_out=rng.standard_normal((n, Z)).astype(dtype), y=rng.integers(-1, 1000, n),
                 seq=np.arange(n), pos=rng.integers(0, 99, n),
                 drift=rng.random(n).astype(np.float32) if drift else None)


def writer_kwargs(**over) -> dict:
    kw = {"teacher_fingerprint": FP, "teacher_config": {"d_model": 16, "layers": 2}, "corpus_id": CORPUS,
          "corpus_params": {"seq_len": 5}}
    kw.update(over)
    return kw


def race_commits(target, n_writers: int, timeout: float = 60) -> dict:
    """n_writers threads each write one round-0 tar shard (index i), then all commit at the same instant, racing
    for the same generation numbers; returns {i: the Generation its commit reported}. Any error is raised."""
    import threading

    from storage.writer import TargetSetWriter

    barrier = threading.Barrier(n_writers)
    errors, done = [], {}

    def work(i: int) -> None:
        try:
            w = TargetSetWriter(target, encoding=ShardEncoding(format="wds"), **writer_kwargs())
            w.write_segments(i, make_segments(seed=i))
            barrier.wait(timeout=timeout)
            done[i] = w.commit()
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return done
