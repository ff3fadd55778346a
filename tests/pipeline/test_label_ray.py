"""The label stage on a 2-actor Ray pool: byte-identical to the serial executor, and an actor dying
mid-run still yields every record exactly once with the serial build's checksums."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.executors import RayActorPool, SerialExecutor
from pipeline.label import LabelConfig, label
from storage.reader import TargetSet
from tests.faults import DiesOnce, WrapStage
from tests.label_data import shard_table

pytest_plugins = ["tests.label_fixtures"]
pytestmark = pytest.mark.timeout(300)

SPEC = "retrieval:T=12,vocab=8,n=18"  # 6 shards of 3 sequences


def _cfg(teachers, out, **kw) -> LabelConfig:
    return LabelConfig(teacher=teachers["register"][0], corpus=SPEC, out=str(out), shard_sequences=3, **kw)


@pytest.fixture(scope="module")
def serial_build(teachers, tmp_path_factory):
    rep = label(_cfg(teachers, tmp_path_factory.mktemp("serial")), SerialExecutor(), quiet=True)
    return shard_table(rep.target_url)


def test_ray_pool_equals_serial(ray_local, teachers, tmp_path, serial_build):
    rep = label(_cfg(teachers, tmp_path), RayActorPool(num_actors=2), quiet=True)
    assert rep.shards == 6 and rep.skipped == 0
    assert shard_table(rep.target_url) == serial_build


def test_actor_death_mid_run(ray_local, teachers, tmp_path, serial_build):
    marker = tmp_path / "died"
    pool = RayActorPool(num_actors=2, max_restarts=2, task_retries=2)
    dies = WrapStage(pool, lambda stage: DiesOnce(stage, exit_after=1, marker=str(marker)))
    rep = label(_cfg(teachers, tmp_path / "out"), dies, quiet=True)
    assert marker.exists(), "the fault was not injected"
    assert pool.stats["actor_deaths"] == 1 and pool.stats["retried_items"] == 1
    assert shard_table(rep.target_url) == serial_build
    ts = TargetSet.open(rep.target_url, teachers["register"][1])
    seq = np.concatenate([ts.read_shard_raw(e).seq for e in ts.shards])
    assert sorted(seq.tolist()) == list(range(18))  # every sequence (and so every record) exactly once
    assert ts.num_records == 18 * 12
