"""`smt eval --run RUN` accepts every folder an smt command writes and evaluates its newest checkpoint;
`--step N` picks another; anything else is a one-line error. (The pipeline folder: tests/jobs/test_cli.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.cli import main as smt
from storage.run_dir import RunDir
from tests.jobs.test_cli import TASK, TINY
from tests.train_fixtures import CORPUS, make_target_set
from tests.trainers.test_dmt import SPEC, _label
from tests.trainers.test_dmt_pin import _dmt, _fake_run
from trainers.dmt.mixing import StreamConfig
from trainers.student import StudentRun, StudentTrainConfig, run_training

pytestmark = pytest.mark.timeout(300)


def _eval(capsys, run: Path | str, corpus: str, *extra: str) -> dict:
    capsys.readouterr()
    assert smt(["eval", "--run", str(run), "--corpus", corpus, "--size", "8", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _error(capsys, run: Path | str, corpus: str, *extra: str) -> str:
    capsys.readouterr()
    assert smt(["eval", "--run", str(run), "--corpus", corpus, "--size", "8", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smt eval: error:") and "\n" not in err
    return err


def test_pretrain_bptt_and_dmt_online_folders(tmp_path, capsys):
    pt = tmp_path / "pt"
    assert smt(["pretrain", "--corpus", TASK, "--out", str(pt), "--steps", "2", "--eval-every", "1",
                "--eval-size", "8", "--batch-size", "4", "--quiet", *TINY]) == 0
    res = _eval(capsys, pt, TASK)  # the newest checkpoint: the student and the teacher of that step
    assert res["student"]["url"].endswith(f"{pt}/checkpoints/step-00000002/student")
    assert res["teacher"]["url"].endswith(f"{pt}/checkpoints/step-00000002/teacher")
    assert "has no checkpoint or policy snapshot of step 1" in _error(capsys, pt, TASK, "--step", "1")
    assert smt(["dmt-online", "--run", str(pt), "--corpus", TASK, "--out", str(tmp_path / "dmt"), "--steps", "2",
                "--eval-every", "1", "--eval-size", "8", "--batch-size", "4", "--quiet"]) == 0
    res = _eval(capsys, tmp_path / "dmt", TASK, "--teacher", str(pt / "teacher"))
    assert res["student"]["url"] == f"{tmp_path / 'dmt'}/student" and res["student"]["drift_final"] is not None
    assert smt(["bptt", "--corpus", TASK, "--updater.arch", "gru", "--out", str(tmp_path / "bptt"), "--steps", "2",
                "--eval-every", "1", "--eval-size", "8", "--batch-size", "4", "--quiet",
                "--shape.d-model", "16", "--shape.n-heads", "2", "--shape.mem-tokens", "2"]) == 0
    assert _eval(capsys, tmp_path / "bptt", TASK)["student"]["trained_by"] == "bptt"
    assert "--step applies to runs with checkpoints/" in _error(capsys, tmp_path / "bptt", TASK, "--step", "2")
    assert "nothing-here is not a run folder or checkpoint: expected run.json (a run) or config.json" in _error(
        capsys, tmp_path / "nothing-here", TASK)


def test_train_run_newest_and_step(tmp_path, capsys):
    d = make_target_set(str(tmp_path / "bucket"))
    run = tmp_path / "runs" / "gru"
    cfg = StudentTrainConfig(stream=StreamConfig(batch_size=16, shuffle_buffer=64, seed=1, prefetch=0), steps=6,
                             checkpoint_every=3, device="cpu")
    run_training(StudentRun(d["targets"], d["teacher"], str(run)), cfg, quiet=True)
    newest = _eval(capsys, run, CORPUS)
    assert newest["student"]["url"].endswith("checkpoints/step-00000006/student") and "teacher" not in newest
    step3 = _eval(capsys, run, CORPUS, "--step", "3", "--teacher", d["teacher"])
    assert step3["student"]["url"].endswith("checkpoints/step-00000003/student")
    assert step3["teacher"]["fingerprint"] == d["fp"] and step3["student"]["drift_final"] is not None
    assert "has no checkpoint or policy snapshot of step 4; it has steps 3, 6" in _error(capsys, run, CORPUS,
                                                                                           "--step", "4")


def test_dmt_run_and_report_folder(tmp_path, capsys):
    d = _label(tmp_path)
    run = _fake_run(d, tmp_path / "run", d["fp"])
    assert _dmt(d, run) == 0  # writes its report to tmp_path/rep, the round rolled out the run's student
    assert RunDir(str(tmp_path / "rep")).record()["kind"] == "dmt"  # its record names the run (storage/layout.py)
    for folder in (run, tmp_path / "rep"):
        res = _eval(capsys, folder, SPEC)
        assert res["student"]["url"].endswith(f"{run}/checkpoints/step-00000100/student")  # the report says file://
