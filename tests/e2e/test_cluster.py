"""A real Ray cluster (`ray start --head` on 127.0.0.1) and real `ray job submit`s of a labeling job and of a
short pretraining job on 2 Ray Train workers.

Token authentication stays on: the cluster and the client share RAY_AUTH_MODE=token and one token.
Marked `cluster` (opt-in: `python -m pytest -m cluster`; `.ci/run` runs it).
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]
REPO = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster():
    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash, agent = _port(), _port(), _port()
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
         "--temp-dir", tmp, "--include-dashboard", "true", "--disable-usage-stats",
         # the job agent's default port (52365) is taken by any other Ray on the machine: then no job runs
         "--dashboard-agent-listen-port", str(agent)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            p = subprocess.run([ray_bin, "job", "list", "--address", address], env=env, capture_output=True,
                               text=True, check=False)
            if p.returncode == 0:
                break
            if head.poll() is not None or time.monotonic() > deadline:
                out = head.stdout.read() if head.poll() is not None else ""
                pytest.fail(f"ray head did not come up: {p.stderr[-800:]} {out[-800:]}")
            time.sleep(2)
        yield ray_bin, address, env, Path(tmp)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def _submit(ray_bin: str, address: str, env: dict, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [ray_bin, "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--runtime-env", str(REPO / "jobs" / "runtime_env.yaml"), "--", "python", "-m", *args]
    for _ in range(30):  # the head answers before its job agent is up: "No available agent", retry
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=360, check=False)
        if p.returncode == 0 or "No available agent" not in p.stderr + p.stdout:
            break
        time.sleep(2)
    return p


def test_ray_job_submit_pretrains_on_two_workers_and_publishes(cluster):
    import json

    from storage.checkpoints import load_teacher

    ray_bin, address, env, tmp = cluster
    run, bucket = tmp / "runs" / "pt", tmp / "bucket"
    p = _submit(ray_bin, address, env, [
        "jobs.pretrain", "--corpus", "retrieval:T=12,vocab=4", "--out", str(run), "--bucket", str(bucket),
        "--workers", "2", "--steps", "6", "--checkpoint-every", "3", "--eval-every", "3", "--eval-size", "16",
        "--batch-size", "8", "--teacher.d-model", "16", "--teacher.n-heads", "2", "--teacher.mem-tokens", "2",
        "--device", "cpu", "--quiet"])
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
    assert "succeeded" in (p.stdout + p.stderr).lower()
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 6
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    _, fp, _ = load_teacher(str(run / "teacher"))
    _, published, _ = load_teacher(str(bucket / "teachers" / fp))
    assert published == fp


def test_ray_job_submit_labels_shards(cluster):
    import torch

    from models.teacher import Teacher, TeacherConfig
    from pipeline.corpora import load_corpus
    from storage.checkpoints import save_teacher
    from storage.reader import TargetSet

    ray_bin, address, env, tmp = cluster
    corpus = load_corpus("retrieval:T=12,vocab=4,n=64")
    torch.manual_seed(0)
    teacher = Teacher(TeacherConfig(vocab_size=corpus.vocab_size, d_model=16, n_heads=2, encoder_depth=1,
                                    decoder_depth=1, mem_tokens=2))
    fp = save_teacher(str(tmp / "teacher"), teacher)
    bucket = tmp / "bucket"
    cmd = [ray_bin, "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--runtime-env", str(REPO / "jobs" / "runtime_env.yaml"), "--",
           "python", "-m", "jobs.label", "--teacher", str(tmp / "teacher"), "--corpus", corpus.spec,
           "--out", str(bucket), "--workers", "2", "--shard-sequences", "16", "--quiet"]
    for _ in range(30):  # the head answers before its job agent is up: "No available agent", retry
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=360, check=False)
        if p.returncode == 0 or "No available agent" not in p.stderr + p.stdout:
            break
        time.sleep(2)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
    assert "succeeded" in (p.stdout + p.stderr).lower()
    ts = TargetSet.open(str(bucket / "targets" / fp / corpus.corpus_id), fp, verify="always")
    assert len(ts.shards) == 4 and ts.num_records == 64 * 12
    for e in ts.shards:
        ts.read_shard(e)

    # the client must hold the cluster's token: without it the submission is refused
    bad = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    q = subprocess.run([ray_bin, "job", "list", "--address", address], env=bad, capture_output=True, text=True,
                       timeout=120, check=False)
    assert q.returncode != 0
