"""Progress off a terminal is plain lines (time budgets counted in seconds), and a student run on
`s3://` keeps its metrics log (through the run's Bucket), across a resume."""
from __future__ import annotations

import io
import re

import pytest

from jobs.bptt import main as bptt_main
from pipeline.progress import Progress
from storage.run_dir import RunDir
from tests.train_fixtures import make_target_set
from trainers.dmt.mixing import StreamConfig
from trainers.student import StudentRun, StudentTrainConfig, run_training


class Clock:
    """A clock the test advances by hand: which lines print depends on it alone, not on the machine."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_time_budget_prints_seconds_lines_off_a_terminal():
    out, clock = io.StringIO(), Clock()
    p = Progress("bptt", steps=10**7, seconds=60, file=out, every_s=10, now=clock)
    for _ in range(25):  # 25 steps, one simulated second each
        clock.t += 1
        p.advance(1, elapsed=clock.t)
        p.postfix(loss=0.5)
    p.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "10000000" not in out.getvalue()
    assert len(lines) == 3  # at 10 s, at 20 s, and the last one on close
    assert lines[0].startswith("bptt: 10.0/60 s (17%) step 10 ")
    assert lines[-1].startswith("bptt: 25.0/60 s (42%) step 25 ")
    assert all("loss=0.5" in ln for ln in lines)


def test_step_budget_lines_and_quiet():
    out, clock = io.StringIO(), Clock()
    p = Progress("train", steps=40, file=out, every_s=10, now=clock)
    for _ in range(40):
        clock.t += 0.5
        p.advance()
    p.close()
    lines = out.getvalue().splitlines()
    assert lines == [ln for ln in lines if ln.startswith("train: step ")] and len(lines) == 3
    assert lines[0].startswith("train: step 20/40 (50%) 10 s") and lines[-1].startswith("train: step 40/40 (100%)")
    quiet = io.StringIO()
    q = Progress("train", steps=40, file=quiet, every_s=0, quiet=True)
    q.advance()
    q.close()
    assert quiet.getvalue() == ""


def test_bptt_seconds_budget_logs_plain_lines(tmp_path, capsys):
    assert bptt_main(["--corpus", "retrieval:T=8,vocab=4", "--out", str(tmp_path / "b"), "--seconds", "0.5",
                      "--eval-every", "1000", "--batch-size", "4"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "10000000" not in err
    last = [ln for ln in err.splitlines() if ln.startswith("bptt: ")][-1]
    assert re.match(r"bptt: \d+\.\d/0\.5 s \(\d+%\) step \d+ ", last)  # elapsed/total seconds, not a step total


def test_student_run_on_s3_keeps_its_metrics(s3_bucket, tmp_path):
    url, endpoint = s3_bucket  # the endpoint is passed, never put in the environment: one store for the whole run
    d = make_target_set(str(tmp_path / "bucket"))
    run = f"{url}/runs/gru"
    stream = StreamConfig(batch_size=16, shuffle_buffer=64, seed=1, prefetch=0)
    cfg = StudentTrainConfig(stream=stream, steps=6, checkpoint_every=3, device="cpu")
    run_training(StudentRun(d["targets"], d["teacher"], run, endpoint_url=endpoint), cfg, quiet=True)
    rd = RunDir(run, endpoint_url=endpoint)
    rows = rd.metrics()
    assert [r["step"] for r in rows] == list(range(1, 7)) and all("loss" in r for r in rows)
    more = StudentTrainConfig(stream=stream, steps=9, checkpoint_every=3, device="cpu")
    run_training(StudentRun(d["targets"], d["teacher"], run, endpoint_url=endpoint), more, quiet=True)  # resumes at 6
    assert [r["step"] for r in rd.metrics()] == list(range(1, 10))
    # appended in parts, one per flush (checkpoint): each row is uploaded once, nothing is re-put whole
    parts = rd.bucket.glob("metrics/seg-*/part-*.jsonl")
    assert len(parts) == 3 and not rd.bucket.exists("metrics.jsonl")
    assert sum(rd.bucket.read_bytes(p).count(b"\n") for p in parts) == 9
    # the weights went to the same endpoint as the pointer (and nowhere else: the env names no endpoint)
    assert rd.bucket.exists(f"{rd.latest()['path']}/student/weights.safetensors")


pytestmark = pytest.mark.timeout(300)
