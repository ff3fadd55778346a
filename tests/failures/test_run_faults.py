"""The run folder under faults (issue 23): a second writer, a kill at every write of a checkpoint save, a
power loss that tears a file, a torn metrics line, a DMT pin under retention, and one endpoint for every file
of a run. Each test asserts the exact outcome: nothing lost, nothing half-visible, the error line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from storage.bucket import Bucket
from storage.checkpoints import load_student
from storage.lease import LeaseLost, RunLocked, Writer
from storage.run_dir import LATEST, Retention, RunConflict, RunDir, step_dir
from tests.train_fixtures import make_target_set
from trainers.dmt.mixing import StreamConfig
from trainers.student import StudentRun, StudentTrainConfig, run_training

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
STREAM = StreamConfig(batch_size=16, shuffle_buffer=64, seed=1, prefetch=0)


def _cfg(steps: int, **kw) -> StudentTrainConfig:
    return StudentTrainConfig(stream=STREAM, steps=steps, checkpoint_every=1, device="cpu", **kw)


def _weights(run: str, step: int, endpoint: str | None = None) -> dict[str, torch.Tensor]:
    return load_student(RunDir(run, endpoint_url=endpoint).student_at(step))[0].state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Killed(BaseException):
    """Stands for the process dying (not an Exception: nothing on the way up may catch it)."""


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    return make_target_set(str(tmp_path_factory.mktemp("bucket")))


# ---- 1. one writer per run ------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_writer_is_refused_and_a_take_over_stops_the_first(where, tmp_path, request):
    if where == "s3":
        url, endpoint = request.getfixturevalue("s3_bucket")
        run = f"{url}/runs/leased"
    else:
        run, endpoint = str(tmp_path / "run"), None
    first = RunDir(run, endpoint_url=endpoint)
    first.acquire(Writer())
    try:
        second = RunDir(run, endpoint_url=endpoint)
        with pytest.raises(RunLocked) as e:
            second.acquire(Writer())
        line = str(e.value)
        assert "\n" not in line and f"pid {os.getpid()}" in line and "--take-over" in line
        second.acquire(Writer(take_over=True))  # on purpose: the first stops at its next check
        with pytest.raises(LeaseLost, match="was taken over by"):
            first.check_writer()
        with pytest.raises(LeaseLost):
            first.save(1, lambda b: b.write_bytes("x", b"1"), {}, {"step": 1})
        assert second.latest() is None  # the first wrote nothing after it lost the lease
        second.release()
        again = RunDir(run, endpoint_url=endpoint)
        again.acquire(Writer())  # released: free at once, no waiting for expiry
        again.release()
    finally:
        first.release()


def test_a_writer_that_slipped_past_the_lease_cannot_move_the_pointer_back_or_under_a_prune(tmp_path):
    run = str(tmp_path / "run")
    a, b = RunDir(run), RunDir(run)
    a.latest()
    b.latest()  # both start from a fresh run

    def student(tag: bytes):
        return lambda bk: bk.write_bytes("config.json", tag)

    for s in (1, 2, 3):
        a.save(s, student(b"a"), {}, {"step": s}, retention=Retention(keep_last=1))
    with pytest.raises(RunConflict, match="written by another process"):
        b.save(2, student(b"b"), {}, {"step": 2}, retention=Retention(keep_last=1))
    ptr = RunDir(run).latest()
    assert ptr["step"] == 3 and ptr["writer"] == a.writer  # not moved back, and step 3 was not pruned
    # b was refused before it wrote anything: a's retention pruned step 2 and b did not write it back
    assert RunDir(run).checkpoints() == [3] and not Bucket.from_url(run).glob(f"{step_dir(2)}*")
    assert RunDir(run).resume_points()[0] == ptr


def test_train_cli_on_a_live_run_exits_with_one_line_naming_the_holder(targets, tmp_path):
    run = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "jobs.train", "--targets", targets["targets"], "--teacher", targets["teacher"],
           "--out", run, "--device", "cpu", "--stream.batch-size", "16", "--stream.shuffle-buffer", "64",
           "--stream.prefetch", "0", "--stream.seed", "1",
           "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([*cmd, "--steps", "1000000", "--checkpoint-every", "50"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lease = Bucket.from_url(run)
        deadline = time.monotonic() + 120
        while not lease.glob("lease/gen-*.json"):
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        second = subprocess.run([*cmd, "--steps", "5"], check=False, cwd=ROOT, env=env, capture_output=True, timeout=120)
        err = second.stderr.decode().strip()
        assert second.returncode == 2, err
        assert err.startswith("smt train: error: run ") and "\n" not in err
        assert f"pid {first.pid}" in err and "--take-over" in err
        took = subprocess.run([*cmd, "--steps", "3", "--take-over"], check=False, cwd=ROOT, env=env, capture_output=True,
                              timeout=120)
        assert took.returncode == 0, took.stderr.decode()
        rc = first.wait(timeout=120)  # the first stops at its next checkpoint, with one line
        err = first.stderr.read().decode().strip().splitlines()[-1]
        assert rc == 2 and "was taken over by" in err
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()


# ---- 4. kills and power loss -----------------------------------------------------------------------------
def test_a_kill_at_every_write_of_a_checkpoint_save_resumes_to_the_same_weights(targets, tmp_path, monkeypatch):
    clean = str(tmp_path / "clean")
    run_training(StudentRun(targets["targets"], targets["teacher"], clean), _cfg(3), quiet=True)
    want = _weights(clean, 3)
    run = str(tmp_path / "run")
    run_training(StudentRun(targets["targets"], targets["teacher"], run), _cfg(2), quiet=True)
    real, real_swap = Bucket.write_bytes, Bucket.replace_if  # every write; the pointer's compare-and-swap
    writes: list[str] = []

    def killing_at(k: int | None):
        def write(self, rel, data):
            if "/checkpoints/" in f"/{self.url(rel)}":
                writes.append(rel)
                if len(writes) == k:
                    raise Killed(rel)
            real(self, rel, data)

        def swap(self, rel, data, version):
            writes.append(rel)
            if len(writes) == k:
                raise Killed(rel)
            return real_swap(self, rel, data, version)

        monkeypatch.setattr(Bucket, "write_bytes", write)
        monkeypatch.setattr(Bucket, "replace_if", swap)

    killing_at(None)
    probe = str(tmp_path / "probe")
    run_training(StudentRun(targets["targets"], targets["teacher"], probe), _cfg(1), quiet=True)
    n = len(writes)  # the writes of one checkpoint save (weights, config, state, marker, pointer)
    assert n >= 5 and writes[-1].endswith("latest.json")
    for k in range(1, n + 1):
        writes.clear()
        killing_at(k)
        with pytest.raises(Killed):
            run_training(StudentRun(targets["targets"], targets["teacher"], run), _cfg(3), quiet=True)
        monkeypatch.setattr(Bucket, "write_bytes", real)
        monkeypatch.setattr(Bucket, "replace_if", real_swap)
        assert RunDir(run).latest()["step"] == 2  # the pointer never named the half-written step 3
    out = run_training(StudentRun(targets["targets"], targets["teacher"], run), _cfg(3), quiet=True)
    assert out["resumed_from"] == 2 and _same(_weights(run, 3), want)


@pytest.mark.parametrize("torn", ["state.safetensors", "state.json", "student/weights.safetensors"])
def test_a_file_torn_by_a_power_loss_walks_back_to_the_previous_checkpoint(targets, tmp_path, torn):
    clean = str(tmp_path / "clean")
    run_training(StudentRun(targets["targets"], targets["teacher"], clean), _cfg(4), quiet=True)
    run = str(tmp_path / "run")
    run_training(StudentRun(targets["targets"], targets["teacher"], run), _cfg(3), quiet=True)
    path = Path(run) / step_dir(3) / torn
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])  # what a power loss leaves
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run_training(StudentRun(targets["targets"], targets["teacher"], run), _cfg(4), quiet=True)
    said = [str(w.message) for w in caught if "does not load" in str(w.message)]
    assert len(said) == 1 and "checkpoint step 3" in said[0] and "trying the one before" in said[0]
    assert out["resumed_from"] == 2 and _same(_weights(run, 4), _weights(clean, 4))


def test_no_checkpoint_that_loads_is_one_line_naming_the_run(targets, tmp_path):
    from storage.checkpoints import CheckpointError

    run = str(tmp_path / "run")
    run_training(StudentRun(targets["targets"], targets["teacher"], run), _cfg(2), quiet=True)
    for s in (1, 2):
        (Path(run) / step_dir(s) / "state.safetensors").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError) as e:
            run_training(StudentRun(targets["targets"], targets["teacher"], run), _cfg(3), quiet=True)
    assert "\n" not in str(e.value) and "no checkpoint loads" in str(e.value) and "step 2" in str(e.value)


def test_a_pointer_naming_a_pruned_step_resumes_from_the_newest_complete_one(targets, tmp_path):
    run = str(tmp_path / "run")
    run_training(StudentRun(targets["targets"], targets["teacher"], run), _cfg(3), quiet=True)
    Bucket.from_url(run).remove(step_dir(3), recursive=True)  # what the second writer left behind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = run_training(StudentRun(targets["targets"], targets["teacher"], run), _cfg(4), quiet=True)
    assert out["resumed_from"] == 2 and RunDir(run).latest()["step"] == 4


# ---- 5. a torn metrics line --------------------------------------------------------------------------------
def test_a_torn_metrics_line_is_skipped_with_a_warning(targets, tmp_path):
    run = str(tmp_path / "run")
    run_training(StudentRun(targets["targets"], targets["teacher"], run), _cfg(2), quiet=True)
    with open(Path(run) / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.4')  # the process died mid-append
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run_training(StudentRun(targets["targets"], targets["teacher"], run), _cfg(4), quiet=True)
    assert out["resumed_from"] == 2
    assert any("metrics.jsonl line 3 is torn" in str(w.message) for w in caught)
    assert [r["step"] for r in RunDir(run).metrics()] == [1, 2, 3, 4]


# ---- 2. a DMT round's pin under the trainer's retention --------------------------------------------------
def test_a_dmt_pin_survives_the_trainers_retention(tmp_path):
    from tests.trainers.test_dmt import _label
    from tests.trainers.test_dmt_pin import _dmt, _fake_run
    from trainers.dmt.actor import DMTLoop, DMTLoopConfig

    d = _label(tmp_path)
    run = _fake_run(d, tmp_path / "run", d["fp"], step=100)
    loop = DMTLoop(DMTLoopConfig(targets=d["targets"], run=run, corpus="x", teacher=d["teacher"]))
    pin = loop._pin(1, loop._pinnable(loop.latest_checkpoint()))  # the actor pinned round 1, then died
    assert pin == {"step": 100, "path": "policy/step-00000100"}
    # the trainer (--stream.follow --keep-last 1) moves on and prunes step 100
    rd = RunDir(run)
    (Path(run) / step_dir(200)).mkdir(parents=True)
    (Path(run) / LATEST).write_text(json.dumps({"step": 200, "path": step_dir(200)}))
    Bucket.from_url(run).remove(step_dir(100), recursive=True)
    assert rd.student_dir(100) == "policy/step-00000100"
    assert _dmt(d, run) == 0  # the restarted actor completes round 1 from the pinned copy
    rep = json.loads(Path(run, "rounds", "dmt", "round-001.json").read_text())
    assert rep["student_step"] == 100 and rep["committed"] is True


# ---- 3. one endpoint for every file of a run -------------------------------------------------------------
def test_every_file_of_an_s3_run_goes_to_the_given_endpoint(targets, s3_bucket, tmp_path):
    url, endpoint = s3_bucket
    assert "AWS_ENDPOINT_URL" not in os.environ and "AWS_ENDPOINT_URL_S3" not in os.environ
    run = f"{url}/runs/one-store"
    run_training(StudentRun(targets["targets"], targets["teacher"], run, endpoint_url=endpoint), _cfg(2),
                 quiet=True)
    b = Bucket.from_url(run, endpoint_url=endpoint)
    files = set(b.glob("**"))
    for rel in (f"{step_dir(2)}/student/weights.safetensors", f"{step_dir(2)}/student/config.json",
                f"{step_dir(2)}/state.safetensors", f"{step_dir(2)}/state.json", LATEST):
        assert rel in files
    out = run_training(StudentRun(targets["targets"], targets["teacher"], run, endpoint_url=endpoint),
                       _cfg(3), quiet=True)
    assert out["resumed_from"] == 2
    # and `smt eval` reads the run at the same endpoint (its flag, not the environment)
    from jobs.cli import main as smt
    from tests.train_fixtures import CORPUS

    assert smt(["eval", "--run", run, "--corpus", CORPUS, "--teacher", targets["teacher"], "--endpoint-url", endpoint,
                "--size", "8", "--json"]) == 0
    # `smt export` writes to the same store, and `smt generate` samples the export there
    export = f"{url}/exports/one-store"
    assert smt(["export", "--run", run, "--corpus", CORPUS, "--out", export, "--endpoint-url", endpoint]) == 0
    assert Bucket.from_url(export, endpoint_url=endpoint).exists("export.json")
    assert smt(["generate", "--run", export, "--prompt", "1 2 3", "--tokens", "4", "--endpoint-url", endpoint]) == 0
