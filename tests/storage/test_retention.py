"""Checkpoint retention (`keep_last`, `keep_every`): a long run keeps the newest checkpoints, its milestones and
the steps other components pin, on a local folder and on S3; pruning runs only after the commit, so a crash
between the commit and the prune (or inside the prune) leaves a run that resumes; `smt eval --step` on a pruned
step names the steps that are left."""
from __future__ import annotations

import pytest
import torch

from jobs.cli import main as smt
from models.teacher import TeacherConfig
from models.updaters import UpdaterConfig
from pipeline.corpora import load_corpus
from storage.bucket import Bucket
from storage.run_dir import Retention, RunDir, step_dir
from tests.train_fixtures import CORPUS, make_target_set
from trainers.dmt.lockstep import LockstepDMT, LockstepDMTConfig
from trainers.dmt.mixing import StreamConfig
from trainers.pretrain import PretrainConfig, pretrain
from trainers.student import Hook, StudentRun, StudentTrainConfig, run_training

pytestmark = pytest.mark.timeout(300)
STREAM = StreamConfig(batch_size=16, shuffle_buffer=64, seed=1, prefetch=0)


def _cfg(steps: int, **kw) -> StudentTrainConfig:
    return StudentTrainConfig(stream=STREAM, steps=steps, checkpoint_every=1, device="cpu", **kw)


@pytest.mark.parametrize("keep_last, keep_every, pinned, kept", [
    (None, None, (), {1, 2, 3, 4, 5, 6}),  # keep everything (the default)
    (2, None, (), {5, 6}),
    (2, 3, (), {3, 5, 6}),  # milestones stay
    (1, None, (2,), {2, 6}),  # a pinned step stays
])
def test_retention_keeps_the_newest_milestones_and_pins(keep_last, keep_every, pinned, kept):
    r = Retention(keep_last=keep_last, keep_every=keep_every)
    assert r.kept([1, 2, 3, 4, 5, 6], latest=6, pinned=pinned) == kept
    assert 6 in Retention(keep_last=1).kept([6, 7], latest=6)  # the pointer's step, even with a newer folder


def test_bad_retention_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="keep_last=0 must be >= 1"):
        _cfg(4, keep_last=0)
    with pytest.raises(ValueError, match="keep_every=-2 must be >= 1"):
        PretrainConfig(keep_every=-2)


def test_lockstep_dmt_pins_every_round_boundary():
    hook = LockstepDMT(LockstepDMTConfig(every=5, rounds=3))
    assert hook.pinned_steps(_cfg(40, phase_start=10)) == {10, 15, 20, 25}


class PinsStep(Hook):
    """A hook that reads the checkpoint of one step later (as lockstep DMT's actor does)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def pinned_steps(self, cfg: StudentTrainConfig) -> set[int]:
        return {self.step}


def test_the_training_loop_spares_the_steps_its_hooks_pin(tmp_path):
    d = make_target_set(str(tmp_path / "bucket"))
    run = str(tmp_path / "runs" / "gru")
    run_training(StudentRun(d["targets"], d["teacher"], run), _cfg(5, keep_last=1), quiet=True,
                 hooks=[PinsStep(2)])
    assert RunDir(run).checkpoints() == [2, 5]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_student_run_keeps_exactly_the_expected_steps_and_resumes(where, tmp_path, request, monkeypatch, capsys):
    d = make_target_set(str(tmp_path / "bucket"))
    endpoint = None
    run = str(tmp_path / "runs" / "gru")
    if where == "s3":
        url, endpoint = request.getfixturevalue("s3_bucket")
        run = f"{url}/runs/gru"
    run_training(StudentRun(d["targets"], d["teacher"], run, endpoint_url=endpoint),
                 _cfg(10, keep_last=2, keep_every=4), quiet=True)
    rd = RunDir(run, endpoint_url=endpoint)
    assert rd.checkpoints() == [4, 8, 9, 10] and rd.latest()["step"] == 10
    assert {p.split("/")[1] for p in rd.bucket.glob("checkpoints/step-*")} == {f"step-{s:08d}" for s in (4, 8, 9, 10)}
    run_training(StudentRun(d["targets"], d["teacher"], run, endpoint_url=endpoint),
                 _cfg(13, keep_last=2, keep_every=4), quiet=True)  # resumes at 10
    assert rd.checkpoints() == [4, 8, 12, 13]
    if where == "local":
        capsys.readouterr()
        assert smt(["eval", "--run", run, "--corpus", CORPUS, "--size", "8", "--step", "10"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "has no checkpoint or policy snapshot of step 10; it has steps 4, 8, 12, 13" in err


def test_pretraining_keeps_the_last_checkpoints(tmp_path):
    cfg = PretrainConfig(teacher=TeacherConfig(d_model=16, n_heads=2, encoder_depth=1, decoder_depth=1, mem_tokens=2),
                         updater=UpdaterConfig(arch="mlp", depth=1, hidden=32), steps=8, eval_every=4, eval_size=8,
                         batch_size=4, checkpoint_every=2, keep_last=2, device="cpu")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain(load_corpus("retrieval:T=8,vocab=4"), cfg, out=tmp_path / "pt", quiet=True)
    finally:
        torch.set_num_threads(n)
    rd = RunDir(str(tmp_path / "pt"))
    assert rd.checkpoints() == [6, 8] and rd.latest()["step"] == 8
    assert rd.bucket.exists(f"{step_dir(8)}/teacher/config.json")


class Killed(BaseException):
    """Stands for the process dying (not an Exception: nothing on the way up may catch it)."""


def test_a_crash_between_commit_and_prune_or_inside_it_leaves_a_resumable_run(tmp_path, monkeypatch):
    d = make_target_set(str(tmp_path / "bucket"))
    run = str(tmp_path / "runs" / "gru")
    run_training(StudentRun(d["targets"], d["teacher"], run), _cfg(3), quiet=True)  # keep all: steps 1, 2, 3
    rd = RunDir(run)
    real_remove = Bucket.remove
    calls: list[str] = []

    def dies_at(n: int):
        def remove(self, rel: str, recursive: bool = False) -> None:  # the bucket, wrapped from the test
            if rel.startswith("checkpoints/"):  # retention's deletes (not the writer lease's old generations)
                calls.append(rel)
            if len(calls) == n and calls[-1] == rel:
                raise Killed(rel)
            real_remove(self, rel, recursive=recursive)
        return remove

    # 1. dead at the first delete: step 4 is committed, nothing pruned yet
    monkeypatch.setattr(Bucket, "remove", dies_at(1))
    with pytest.raises(Killed):
        run_training(StudentRun(d["targets"], d["teacher"], run), _cfg(4, keep_last=1), quiet=True)
    assert rd.latest()["step"] == 4 and rd.checkpoints() == [1, 2, 3, 4]
    # 2. dead inside the prune: step 5 committed, step 1 lost its marker but not its folder
    calls.clear()
    monkeypatch.setattr(Bucket, "remove", dies_at(2))
    with pytest.raises(Killed):
        run_training(StudentRun(d["targets"], d["teacher"], run), _cfg(5, keep_last=1), quiet=True)
    assert rd.latest()["step"] == 5 and rd.checkpoints() == [2, 3, 4, 5]
    assert rd.student_dir(1) is None and rd.bucket.exists(f"{step_dir(1)}/student/config.json")  # half-deleted
    # 3. the same command again resumes from step 5 and the next prune clears everything older
    monkeypatch.setattr(Bucket, "remove", real_remove)
    out = run_training(StudentRun(d["targets"], d["teacher"], run), _cfg(6, keep_last=1), quiet=True)
    assert out["resumed_from"] == 5 and rd.checkpoints() == [6]
    assert rd.bucket.glob("checkpoints/step-*") == [step_dir(6)]
