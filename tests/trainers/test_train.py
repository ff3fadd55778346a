"""The SMT student trainer and `smt train`: kill-and-resume equals not stopping, one target set serves every
updater architecture, other teachers are refused, and the job's two-step smoke test."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from jobs.train import main
from models.updaters import UpdaterConfig
from storage.checkpoints import load_student
from storage.errors import FingerprintMismatch
from storage.run_dir import LATEST
from tests.train_fixtures import make_target_set
from trainers.dmt.mixing import StreamConfig
from trainers.evaluate import evaluate_student
from trainers.student import StudentRun, StudentTrainConfig, run_training

pytestmark = pytest.mark.timeout(300)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bucket"))
    return make_target_set(root, seed=0), make_target_set(root, seed=1), root


def read_json(path):
    with open(path) as f:
        return json.load(f)


def losses(path):
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["step"]: r["loss"] for r in rows}


def test_kill_and_resume_equals_uninterrupted(two_sets, tmp_path):
    a, _, _ = two_sets
    args = ["--targets", a["targets"], "--teacher", a["teacher"], "--steps", "30", "--stream.batch-size", "96",
            "--checkpoint-every", "3", "--stream.shuffle-buffer", "300", "--updater.hidden", "64", "--updater.depth", "1",
            "--quiet"]
    run = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "jobs.train", *args, "--out", run]
    env = {**os.environ, "PYTHONPATH": ROOT}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pointer = os.path.join(run, LATEST)
    deadline = time.time() + 60
    while not os.path.exists(pointer) and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, p.stderr.read().decode()
    first = read_json(pointer)["step"]
    assert 0 < first < 30

    again = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True)  # the same command
    assert again.returncode == 0, again.stderr
    assert f"resumed from step {first}," in again.stdout
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    resumed, straight = losses(os.path.join(run, "metrics.jsonl")), losses(tmp_path / "straight" / "metrics.jsonl")
    assert sorted(resumed) == sorted(straight) == list(range(1, 31))
    with open(os.path.join(run, "metrics.jsonl")) as f:
        assert len(f.readlines()) == 30            # rows past the checkpoint from the killed attempt were dropped
    np.testing.assert_allclose([resumed[s] for s in range(first + 1, 31)],
                               [straight[s] for s in range(first + 1, 31)], rtol=0, atol=1e-6)
    assert read_json(pointer)["step"] == 30


def test_one_target_set_serves_every_updater(two_sets, tmp_path):
    a, _, _ = two_sets
    corpus, teacher = a["corpus"], a["teacher_model"]
    x, y = (torch.as_tensor(v, dtype=torch.long) for v in corpus.sample(32, np.random.default_rng(123)))
    for arch in ("transformer", "mlp", "gru"):
        cfg = StudentTrainConfig(updater=UpdaterConfig(arch=arch, depth=1, hidden=64, n_heads=2),
                                 stream=StreamConfig(batch_size=64), steps=3, checkpoint_every=3, device="cpu")
        out = run_training(StudentRun(a["targets"], a["teacher"], str(tmp_path / arch)), cfg, quiet=True)
        assert out["step"] == 3 and out["teacher_fingerprint"] == a["fp"]
        student, fp, _ = load_student(str(tmp_path / arch / "checkpoints" / "step-00000003" / "student"))
        assert fp == a["fp"] and student.updater_cfg.arch == arch
        torch.testing.assert_close(student.readout_net.state_dict(), teacher.decoder.state_dict())
        ev = evaluate_student(student, x, y, teacher)
        assert 0 <= ev["acc"] <= 1 and np.isfinite(ev["loss"]) and np.isfinite(ev["drift_final"])


def test_other_teachers_are_refused(two_sets, tmp_path):
    a, b, _ = two_sets
    cfg = StudentTrainConfig(stream=StreamConfig(batch_size=32), steps=2, checkpoint_every=2, device="cpu")
    with pytest.raises(FingerprintMismatch) as e:         # a teacher that did not label the target set
        run_training(StudentRun(a["targets"], b["teacher"], str(tmp_path / "x")), cfg, quiet=True)
    assert a["fp"] in str(e.value) and b["fp"] in str(e.value)
    run_training(StudentRun(a["targets"], a["teacher"], str(tmp_path / "run")), cfg, quiet=True)
    more = StudentTrainConfig(stream=StreamConfig(batch_size=32), steps=4, checkpoint_every=2, device="cpu")
    with pytest.raises(FingerprintMismatch) as e:         # resuming a student of teacher A on B's target set
        run_training(StudentRun(b["targets"], b["teacher"], str(tmp_path / "run")), more, quiet=True)
    assert a["fp"] in str(e.value) and b["fp"] in str(e.value)


def test_smt_train_smoke_and_default_teacher(two_sets, tmp_path, capsys):
    a, _, root = two_sets
    assert main(["--targets", a["targets"], "--updater.arch", "gru", "--out", str(tmp_path / "run"), "--steps", "2",
                 "--stream.batch-size", "16", "--checkpoint-every", "1", "--quiet"]) == 0   # teacher found by fingerprint
    assert read_json(tmp_path / "run" / LATEST)["step"] == 2
    _, fp, _ = load_student(str(tmp_path / "run" / "checkpoints" / "step-00000002" / "student"))
    assert fp == a["fp"]
    moved = tmp_path / "elsewhere"
    os.rename(root + f"/teachers/{a['fp']}", moved)
    try:
        assert main(["--targets", a["targets"], "--out", str(tmp_path / "r2"), "--steps", "2", "--quiet"]) == 2
    finally:
        os.rename(moved, root + f"/teachers/{a['fp']}")
    err = capsys.readouterr().err
    assert "error: no teacher at" in err and a["fp"] in err and "--teacher" in err
