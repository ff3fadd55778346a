"""Cluster tier (opt-in: `pytest -m cluster`): `smt label` submitted with `ray job submit --working-dir .`
to a real head node started here, connecting with a bare `ray.init()` inside the job."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.label_data import PREFIX_SPEC, shard_table

pytest_plugins = ["tests.label_fixtures"]
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]
REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A Ray head node in its own process group (killed as a group: only what this fixture started)."""
    ray_bin = shutil.which("ray") or pytest.skip("no `ray` executable")
    tmp = tempfile.mkdtemp(prefix="rh")  # short: Ray puts unix sockets under it
    dash = _port()
    # a fresh local head, without the token auth that `ray start` turns on by default (loopback only)
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([ray_bin, "start", "--head", "--block", "--port", str(_port()), "--num-cpus", "2",
                             "--dashboard-port", str(dash), "--dashboard-host", "127.0.0.1", "--temp-dir", tmp,
                             "--disable-usage-stats"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 90
        while subprocess.run([ray_bin, "job", "list", "--address", address], capture_output=True,
                             check=False, env=env).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(2)
        yield address, env
    finally:
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):  # gcs/agents outlive a TERM
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(grace)
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def test_ray_job_submit(ray_head, teachers, tmp_path):
    address, env = ray_head
    path, fp = teachers["register"]
    out = tmp_path / "bucket"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", address,
           "--working-dir", str(REPO), "--", "python", "-m", "jobs.label", "--teacher", path,
           "--corpus", PREFIX_SPEC, "--out", str(out), "--workers", "2", "--shard-sequences", "5", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, timeout=200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    url = next(line for line in proc.stdout.splitlines() if line.startswith("file://"))
    assert f"/targets/{fp}/" in url
    assert [r for _, _, r in shard_table(url)] == [60, 60]
