"""The student loop's hook interface on a real tiny run: the order of the calls, what a batch transform
changes, the extra metrics columns and config entries, and a refusing hook that stops the run before anything
is written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.updaters import UpdaterConfig
from tests.train_fixtures import make_target_set
from trainers.dmt.mixing import StreamConfig
from trainers.student import Hook, Loop, StudentRun, StudentTrainConfig, run_training

pytestmark = pytest.mark.timeout(120)


class Recorder(Hook):
    """Records every call with the step the loop is at; its transform zeroes the target states."""

    def __init__(self, zero_targets: bool = False) -> None:
        self.calls: list[tuple[str, int]] = []
        self.zero_targets = zero_targets

    def check(self, cfg: StudentTrainConfig) -> None:
        self.calls.append(("check", -1))

    def record(self) -> dict:
        return {"recorder": {"zero_targets": self.zero_targets}}

    def start(self, loop: Loop) -> None:
        self.calls.append(("start", loop.state.step))

    def before_step(self, loop: Loop) -> None:
        self.calls.append(("before_step", loop.state.step))

    def transform(self, loop: Loop, batch: dict[str, torch.Tensor]) -> None:
        self.calls.append(("transform", loop.state.step))
        if self.zero_targets:
            batch["state_out"].zero_()

    def after_step(self, loop: Loop, out: dict) -> dict[str, float]:
        self.calls.append(("after_step", loop.state.step))
        return {"recorded_calls": float(len(self.calls))}


def _cfg(steps: int) -> StudentTrainConfig:
    return StudentTrainConfig(updater=UpdaterConfig(arch="mlp", depth=1, hidden=32), steps=steps, checkpoint_every=steps,
                              device="cpu", stream=StreamConfig(batch_size=64, shuffle_buffer=128, seed=1))


def test_hooks_are_called_in_loop_order_and_shape_the_run(tmp_path):
    d = make_target_set(str(tmp_path / "bucket"), shards=2, seqs=8)
    rec = Recorder()
    run_training(StudentRun(d["targets"], d["teacher"], str(tmp_path / "a")), _cfg(3), quiet=True, hooks=[rec])
    # check before anything is opened, start once, then per step: before_step, transform, after_step
    want = [("check", -1), ("start", 0)]
    for s in range(3):
        want += [("before_step", s), ("transform", s), ("after_step", s + 1)]
    assert rec.calls == want, rec.calls
    rows = [json.loads(line) for line in Path(tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["recorded_calls"] for r in rows] == [5.0, 8.0, 11.0]  # after_step's columns reach the metrics rows
    assert json.loads(Path(tmp_path / "a" / "run.json").read_text())["recorder"] == {"zero_targets": False}
    # a transform changes what the loss sees: zero targets make the first loss the mean square of the prediction,
    # which differs from the untouched run's first loss on the same batch and weights
    zeroed = Recorder(zero_targets=True)
    run_training(StudentRun(d["targets"], d["teacher"], str(tmp_path / "b")), _cfg(1), quiet=True,
                 hooks=[zeroed])
    first = json.loads(Path(tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] != pytest.approx(rows[0]["loss"])


def test_a_refusing_hook_stops_the_run_before_anything_is_written(tmp_path):
    d = make_target_set(str(tmp_path / "bucket"), shards=2, seqs=8)

    class Refuse(Hook):
        def check(self, cfg: StudentTrainConfig) -> None:
            raise ValueError(f"needs more than {cfg.steps} steps")

    with pytest.raises(ValueError, match="needs more than 2 steps"):
        run_training(StudentRun(d["targets"], d["teacher"], str(tmp_path / "run")), _cfg(2), quiet=True,
                     hooks=[Refuse()])
    assert not (tmp_path / "run").exists()
