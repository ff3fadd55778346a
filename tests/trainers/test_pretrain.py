"""Teacher pretraining as a run: a crash, or a kill -9 of `python -m jobs.pretrain` (local folder and S3), then
the same command again ends with the weights of an uninterrupted run; workers get disjoint rows of one
global batch; the finished teacher is published where `smt train` finds it without --teacher."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jobs.cli import main as smt
from jobs.dmt import default_teacher
from models.teacher import TeacherConfig
from models.updaters import UpdaterConfig
from pipeline.corpora import load_corpus
from storage.checkpoints import load_teacher
from storage.run_dir import LATEST, RunDir
from trainers.loop import Callbacks
from trainers.pretrain import PretrainConfig, pretrain
from trainers.pretrain_state import batch_at

# one_thread (tests/conftest.py): the subprocesses run with OMP_NUM_THREADS=1: same kernels, same numbers
pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = "retrieval:T=12,vocab=4"
TINY = ["--teacher.d-model", "16", "--teacher.n-heads", "2", "--teacher.encoder-depth", "1",
        "--teacher.decoder-depth", "1", "--teacher.mem-tokens", "2", "--updater.arch", "mlp", "--updater.depth", "1",
        "--updater.hidden", "32"]
# 40 steps, a checkpoint every 4, curriculum 6 -> 9 -> 12 (each stage ends at its first evaluation)
ARGS = ["--corpus", SPEC, "--steps", "40", "--eval-every", "5", "--eval-size", "16", "--batch-size", "8",
        "--checkpoint-every", "4", "--curriculum", "6", "9", "--curriculum-acc", "0", "--device", "cpu", "--quiet",
        *TINY]



def config(**kw) -> PretrainConfig:
    kw.setdefault("teacher", TeacherConfig(d_model=16, n_heads=2, encoder_depth=1, decoder_depth=1, mem_tokens=2))
    return PretrainConfig(updater=UpdaterConfig(arch="mlp", depth=1, hidden=32), eval_every=5, eval_size=16,
                          batch_size=8, checkpoint_every=4, curriculum=(6, 9), curriculum_acc=0.0, device="cpu",
                          **{"steps": 20, **kw})


def max_diff(a_url, b_url) -> float:
    """Largest weight difference of two teacher checkpoints (URLs or buckets: an S3 run's carries its endpoint)."""
    a, _, _ = load_teacher(a_url)
    b, _, _ = load_teacher(b_url)
    return max((p - q).abs().max().item() for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def losses(path) -> dict[int, float]:
    with open(path) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, filter(str.strip, f))}


def test_crash_then_rerun_equals_uninterrupted_across_curriculum_stages(tmp_path):
    corpus = load_corpus(SPEC)
    a = pretrain(corpus, config(), out=tmp_path / "a", quiet=True)
    assert [h["T"] for h in a["history"]] == [6, 9, 12, 12] and a["resumed_from"] is None

    def crash(row):
        if row["step"] == 10:
            raise KeyboardInterrupt  # after the checkpoint of step 8, at the second stage change
    with pytest.raises(KeyboardInterrupt):
        pretrain(corpus, config(), out=tmp_path / "b", quiet=True, callbacks=Callbacks(on_eval=crash))
    assert json.loads((tmp_path / "b" / LATEST).read_text())["step"] == 8
    b = pretrain(corpus, config(), out=tmp_path / "b", quiet=True)
    assert b["resumed_from"] == 8 and b["fingerprint"] == a["fingerprint"]
    assert max_diff(str(tmp_path / "a" / "teacher"), str(tmp_path / "b" / "teacher")) == 0.0
    la, lb = losses(tmp_path / "a" / "metrics.jsonl"), losses(tmp_path / "b" / "metrics.jsonl")
    assert sorted(la) == sorted(lb) == [5, 10, 15, 20]
    np.testing.assert_allclose([lb[s] for s in la], list(la.values()), rtol=0, atol=1e-6)
    # a finished run started again trains nothing and keeps its outputs
    c = pretrain(corpus, config(), out=tmp_path / "b", quiet=True)
    assert c["steps"] == 20 and c["history"] == [] and c["fingerprint"] == a["fingerprint"]


def test_resume_refuses_another_corpus_or_architecture(tmp_path):
    pretrain(load_corpus(SPEC), config(steps=4), out=tmp_path / "r", quiet=True)
    with pytest.raises(ValueError, match="pretrains on"):
        pretrain(load_corpus("retrieval:T=12,vocab=5"), config(steps=8), out=tmp_path / "r", quiet=True)
    with pytest.raises(ValueError, match="holds a teacher"):
        pretrain(load_corpus(SPEC), config(steps=8, teacher=TeacherConfig(d_model=32, n_heads=2, encoder_depth=1,
                                                                            decoder_depth=1, mem_tokens=2)),
                 out=tmp_path / "r", quiet=True)


def test_workers_get_disjoint_rows_of_one_deterministic_global_batch():
    corpus = load_corpus("retrieval:T=12,vocab=4")
    whole, _ = batch_at(corpus, 16, 0, 7)
    parts = [batch_at(corpus, 8, 0, 7, rank, 2)[0] for rank in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)   # the same global batch at any world size
    np.testing.assert_array_equal(batch_at(corpus, 8, 0, 7, 1, 2)[0], parts[1])  # deterministic
    assert not np.array_equal(batch_at(corpus, 16, 0, 8)[0], whole)             # another step, other data


def _kill_and_rerun(out: str, pointer_step, env: dict, extra: list[str]) -> int:
    """Start `python -m jobs.pretrain`, SIGKILL it once a checkpoint exists, run the same command again."""
    cmd = [sys.executable, "-m", "jobs.pretrain", *ARGS, *extra, "--out", out]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while pointer_step() is None and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, p.stderr.read().decode()[-2000:]
    first = pointer_step()
    assert first is not None and 0 < first < 40
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed at step" in again.stdout
    return first


def test_kill9_then_same_command_resumes_local_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "killed"

    def step():
        p = run / LATEST
        return json.loads(p.read_text())["step"] if p.exists() else None
    _kill_and_rerun(str(run), step, env, [])
    assert smt(["pretrain", *ARGS, "--out", str(tmp_path / "straight")]) == 0
    assert max_diff(str(run / "teacher"), str(tmp_path / "straight" / "teacher")) <= 1e-6
    la, lb = losses(tmp_path / "straight" / "metrics.jsonl"), losses(run / "metrics.jsonl")
    assert sorted(la) == sorted(lb) == [5, 10, 15, 20, 25, 30, 35, 40]   # the killed attempt's extra rows dropped
    np.testing.assert_allclose([lb[s] for s in la], list(la.values()), rtol=0, atol=1e-6)


@pytest.mark.slow  # two more process starts against the S3 endpoint: about a minute on a loaded 2-core machine
def test_kill9_then_same_command_resumes_on_s3(s3_bucket, tmp_path):
    bucket, endpoint = s3_bucket
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    run = RunDir(f"{bucket}/runs/killed", endpoint_url=endpoint)
    first = _kill_and_rerun(run.url, lambda: (run.latest() or {}).get("step"), env,
                            ["--endpoint-url", endpoint, "--bucket", bucket])
    assert run.latest()["step"] == 40 and first < 40
    assert smt(["pretrain", *ARGS, "--out", str(tmp_path / "straight")]) == 0
    assert max_diff(run.bucket.child("teacher"), str(tmp_path / "straight" / "teacher")) <= 1e-6
    fp = json.loads(run.bucket.read_bytes("teacher/config.json"))["fingerprint"]
    _, published_fp, _ = load_teacher(f"{bucket}/teachers/{fp}", endpoint_url=endpoint)   # --bucket published it
    assert published_fp == fp


def test_label_publishes_the_teacher_and_train_needs_no_teacher_flag(tmp_path, capsys):
    pt, bucket = tmp_path / "pt", tmp_path / "bucket"
    assert smt(["pretrain", "--corpus", SPEC, "--out", str(pt), "--steps", "2", "--eval-every", "1",
                "--eval-size", "8", "--batch-size", "4", "--quiet", *TINY]) == 0
    capsys.readouterr()
    assert smt(["label", "--teacher", str(pt / "teacher"), "--corpus", f"{SPEC},n=64", "--out", str(bucket),
                "--shard-sequences", "32", "--quiet"]) == 0
    targets = capsys.readouterr().out.strip().splitlines()[-1]
    fp = json.loads((pt / "teacher" / "config.json").read_text())["fingerprint"]
    assert (bucket / "teachers" / fp / "config.json").exists()
    assert default_teacher(targets, None).endswith(f"/teachers/{fp}")   # smt dmt resolves it the same way
    assert smt(["train", "--targets", targets, "--out", str(tmp_path / "student"), "--steps", "2",
                "--stream.batch-size", "16", "--updater.hidden", "32", "--updater.depth", "1", "--quiet"]) == 0   # no --teacher
    assert json.loads((tmp_path / "student" / LATEST).read_text())["step"] == 2
