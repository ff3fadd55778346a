"""Fault paths of the label stage: a target set never holds a record twice; a hung (SIGSTOPped) actor
is detected, killed and its item finished elsewhere; a retried shard whose bytes differ completes."""
from __future__ import annotations

import contextlib
import os
import signal

import numpy as np
import pytest

from jobs.label import main
from pipeline.executors import RayActorPool, SerialExecutor
from pipeline.label import LabelConfig, commit_once, label, prepare, receipt_path
from storage.manifest import ShardEntry, newest_generation
from storage.reader import TargetSet
from storage.schema import Segments
from storage.writer import write_shard
from tests.label_data import PREFIX_SPEC, shard_table

pytest_plugins = ["tests.label_fixtures"]
pytestmark = pytest.mark.timeout(300)


def _argv(teacher: str, out: str, *extra: str) -> list[str]:
    return ["--teacher", teacher, "--corpus", PREFIX_SPEC, "--out", out, "--quiet", "--workers", "0",
            "--shard-sequences", "4", *extra]


@pytest.mark.parametrize("change", [["--format", "wds"], ["--dtype", "float32"]])
def test_relabel_in_another_encoding_is_refused(teachers, tmp_path, capsys, change):
    path, fp = teachers["causal"]
    assert main(_argv(path, str(tmp_path))) == 0
    ts = TargetSet.open(next(iter(tmp_path.glob("targets/*/*"))).as_posix(), fp)
    before = sorted((e.path, e.sha256) for e in ts.shards)
    capsys.readouterr()
    assert main(_argv(path, str(tmp_path), *change)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already holds this corpus labeled as zarr/float16" in err
    assert ts.bucket.url() in err and "every record twice" in err
    assert newest_generation(ts.bucket) == 1
    assert sorted((e.path, e.sha256) for e in TargetSet.open(ts.bucket, fp).shards) == before
    assert main(_argv(path, str(tmp_path))) == 0  # the same encoding again is an idempotent no-op
    assert newest_generation(ts.bucket) == 1


def test_retry_with_different_bytes_completes(teachers, tmp_path):
    """An attempt wrote shard 1 with other bytes (another GPU, bf16) and died before its receipt: the
    rerun publishes the shard under a content-named variant and commits that one; nothing is overwritten."""
    path, fp = teachers["causal"]
    cfg = LabelConfig(teacher=path, corpus=PREFIX_SPEC, out=str(tmp_path / "a"), shard_sequences=4, batch_size=4,
                      device="cpu")
    plan = prepare(cfg)
    stage = plan.stage
    stage.setup()
    item = plan.items[1]
    x, y = stage._corpus.get(np.arange(item.start, item.stop))
    states = stage.memories(x) + np.float32(1e-2)  # the dead attempt's slightly different numbers
    orphan = write_shard(plan.target, Segments(states=states, tokens=x, y=y, seq=np.arange(item.start, item.stop),
                                               pos0=np.zeros(item.size, dtype=np.int64)),
                         index=item.index, round=0, fmt="zarr", dtype="float16", teacher_fingerprint=fp)
    assert orphan.path == "round-000/shard-00001.zarr.zip" and not plan.target.exists(receipt_path(1))
    assert main(_argv(path, str(tmp_path / "a"))) == 0
    clean = label(LabelConfig(teacher=path, corpus=PREFIX_SPEC, out=str(tmp_path / "b"), shard_sequences=4,
                              batch_size=4, device="cpu"), SerialExecutor(), quiet=True)
    got, want = shard_table(plan.target.url()), shard_table(clean.target_url)
    assert [sha for _, sha, _ in got] == [sha for _, sha, _ in want]  # the committed bytes are the right ones
    assert got[1][0] == f"round-000/shard-00001-{want[1][1][:12]}.zarr.zip"
    ts = TargetSet.open(plan.target, fp)
    for e in ts.shards:
        ts.verify_shard(e)
    assert plan.target.exists("round-000/shard-00001.zarr.zip")  # the orphan was left alone, invisible
    assert main(_argv(path, str(tmp_path / "a"))) == 0 and newest_generation(plan.target) == 1  # idempotent


def test_hung_actor_is_killed_and_its_item_finishes_elsewhere(ray_local, teachers, tmp_path):
    path, _ = teachers["causal"]
    plan = prepare(LabelConfig(teacher=path, corpus=PREFIX_SPEC, out=str(tmp_path / "a"), shard_sequences=2,
                               batch_size=2, device="cpu"))
    # a healthy actor answers a heartbeat in well under a second; 10 s leaves room for a loaded machine
    pool = RayActorPool(num_actors=2, heartbeat_s=0.2, hang_timeout_s=10.0)
    results, stopped = {}, None
    try:
        for res in pool.map(plan.stage, plan.items, quiet=True):
            results[res["index"]] = res
            if stopped is None:  # this actor is idle now and gets the next item: freeze it (alive, silent)
                stopped = res["worker"]
                os.kill(stopped, signal.SIGSTOP)
    finally:
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGKILL)  # never leave a stopped process behind, whatever happened
    assert pool.stats["hung_actors"] >= 1 and pool.stats["retried_items"] >= 1
    assert sorted(results) == [it.index for it in plan.items]
    assert sum(r["worker"] == stopped for r in results.values()) == 1  # only the item it finished before
    entries = [ShardEntry.from_json(results[i]["entry"], plan.target.url()) for i in sorted(results)]
    commit_once(plan, entries, Tc=None)
    clean = label(LabelConfig(teacher=path, corpus=PREFIX_SPEC, out=str(tmp_path / "b"), shard_sequences=2,
                              batch_size=2, device="cpu"), SerialExecutor(), quiet=True)
    assert shard_table(plan.target.url()) == shard_table(clean.target_url)
