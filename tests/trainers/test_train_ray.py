"""Stateless student workers on Ray Train: a 2-worker DDP run writes a checkpoint that load_student reads."""
from __future__ import annotations

import json

import pytest

from models.updaters import UpdaterConfig
from storage.checkpoints import load_student
from storage.run_dir import LATEST
from tests.train_fixtures import make_target_set
from trainers.dmt.mixing import StreamConfig
from trainers.student import StudentRun, StudentTrainConfig

pytestmark = pytest.mark.timeout(300)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_two_ray_workers_train_and_checkpoint(ray_local, tmp_path):
    from trainers.distributed import RayGroup, train_with_ray

    ts = make_target_set(str(tmp_path / "bucket"), shards=2, seqs=8)
    cfg = StudentTrainConfig(updater=UpdaterConfig(arch="mlp", depth=1, hidden=64),
                             stream=StreamConfig(batch_size=32), steps=3, checkpoint_every=2, device="cpu")
    run = tmp_path / "run"
    train_with_ray(StudentRun(ts["targets"], ts["teacher"], str(run)), cfg, RayGroup(2), quiet=True)
    pointer = read_json(run / LATEST)
    assert pointer["step"] == 3
    _, fp, _ = load_student(str(run / pointer["path"] / "student"))
    assert fp == ts["fp"]
    state = read_json(run / pointer["path"] / "state.json")
    assert state["stream"]["layout"]["world_size"] == 2 and state["stream"]["rank"] == 0
    assert state["stream"]["position"] == 3 * 32          # each rank consumed its own split in lockstep
