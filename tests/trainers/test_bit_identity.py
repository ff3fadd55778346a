"""Bit identity of every trainer: the sha256 of the final weights (and of pretraining's logged losses) of tiny
runs, recorded as constants. A change of the trainers' structure (the one loop of `trainers/loop.py`) that
changes no arithmetic keeps every digest; one that changes a number (an extra RNG draw, another order of
operations, a step more or less) fails here, naming the run. Runs on the CPU with one torch thread: the digests
are those of this machine's kernels (another CPU or BLAS may round differently; then re-record them on the
code before the change and compare the code after it with those)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from models.teacher import TeacherConfig
from models.updaters import UpdaterConfig
from pipeline.corpora import load_corpus
from storage.checkpoints import load_student, load_teacher
from tests.train_fixtures import make_target_set
from trainers.bptt import BPTTConfig, train_bptt
from trainers.dmt import OnlineDMT, OnlineDMTConfig, dmt_online
from trainers.dmt.mixing import StreamConfig
from trainers.loop import Callbacks
from trainers.pretrain import PretrainConfig, pretrain
from trainers.student import Session, StudentRun, StudentTrainConfig, run_training

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]
SPEC = "retrieval:T=12,vocab=4"
SMALL = {"d_model": 16, "n_heads": 2, "encoder_depth": 1, "decoder_depth": 1, "mem_tokens": 2}

# recorded on the code before the one loop (trainers/pretrain.py, bptt.py, dmt/online.py with their own loops)
PRETRAIN_WEIGHTS = "2767846f78f66dc8c2e08a8c2e017899cc53beef27de798a4dd851b737530603"
PRETRAIN_LOSSES = "38e0b460af69dd77117ebd2e0c3c9d91abbf86f1594e18c45509c30ca02651ac"
STUDENT_WEIGHTS = "51922cf3b81e0b1f821b77117ba9c8aa1de3927cf6072c5fbe864e30192b8879"
BPTT_WEIGHTS = "9f8dc5bed69fa8548964eea0031398bff12ca43d3e105d64d798ca38dabd1671"
BPTT_LOSSES = "ee1be872055f4b32f04773419d154884d223aae789013f396c9240ec28932a74"
DMT_WEIGHTS = "3e0e7ecfee6d61caf90d288212a54ab572309c94b0db36a3e24cc1f310d4ff00"
DMT_LOSSES = "a8f8acbb152661525baf250d71822133fab08bbb01cac2e6aeadc58cf0b14e6e"


def digest(*modules: torch.nn.Module) -> str:
    """sha256 over every tensor of the modules' state dicts: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for m in modules:
        for k, v in sorted(m.state_dict().items()):
            a = v.detach().cpu().contiguous()
            h.update(f"{k}|{a.dtype}|{tuple(a.shape)}|".encode())
            h.update(a.numpy().tobytes())
    return h.hexdigest()


def loss_digest(history: list[dict]) -> str:
    """sha256 of the logged steps and every loss column, to the last bit (float repr)."""
    rows = [{k: v for k, v in r.items() if k == "step" or k == "T" or "loss" in k or k.endswith("_acc")}
            for r in history]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def pt_config(**kw) -> PretrainConfig:
    return PretrainConfig(teacher=TeacherConfig(**SMALL), updater=UpdaterConfig(arch="mlp", depth=1, hidden=32),
                          steps=14, eval_every=5, eval_size=16, batch_size=8, checkpoint_every=4, curriculum=(6, 9),
                          curriculum_acc=0.0, device="cpu", **kw)


def metrics_rows(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_pretraining_weights_and_losses_and_a_resume_of_it(tmp_path):
    corpus = load_corpus(SPEC)
    a = pretrain(corpus, pt_config(), out=tmp_path / "a", quiet=True)
    assert a["steps"] == 14 and [h["T"] for h in a["history"]] == [6, 9, 12]
    assert digest(a["teacher"], a["student"]) == PRETRAIN_WEIGHTS
    assert loss_digest(a["history"]) == PRETRAIN_LOSSES
    assert loss_digest(metrics_rows(tmp_path / "a" / "metrics.jsonl")) == PRETRAIN_LOSSES

    def crash(row):
        if row["step"] == 10:
            raise KeyboardInterrupt  # after the checkpoint of step 8, at a curriculum stage change
    with pytest.raises(KeyboardInterrupt):
        pretrain(corpus, pt_config(), out=tmp_path / "b", quiet=True, callbacks=Callbacks(on_eval=crash))
    b = pretrain(corpus, pt_config(), out=tmp_path / "b", quiet=True)
    assert b["resumed_from"] == 8 and b["steps"] == 14
    assert digest(b["teacher"], b["student"]) == PRETRAIN_WEIGHTS
    assert loss_digest(metrics_rows(tmp_path / "b" / "metrics.jsonl")) == PRETRAIN_LOSSES
    teacher, _, _ = load_teacher(str(tmp_path / "b" / "teacher"))
    student, _, _ = load_student(str(tmp_path / "b" / "student"))
    assert digest(teacher, student) == PRETRAIN_WEIGHTS  # the published outputs are the returned models


def test_student_run_weights_and_a_resume_of_it(tmp_path):
    d = make_target_set(str(tmp_path / "bucket"))
    cfg = StudentTrainConfig(updater=UpdaterConfig(arch="mlp", depth=1, hidden=32), steps=8, checkpoint_every=3,
                             readout_weight=0.5, stream=StreamConfig(batch_size=32, shuffle_buffer=64), device="cpu")
    r = run_training(StudentRun(d["targets"], d["teacher"], str(tmp_path / "a")), cfg, quiet=True)
    assert r["step"] == 8
    whole, _, _ = load_student(f"{tmp_path}/a/checkpoints/step-00000008/student")
    assert digest(whole) == STUDENT_WEIGHTS
    run_training(StudentRun(d["targets"], d["teacher"], str(tmp_path / "b")), cfg, quiet=True,
                 session=Session(stop_at=5))
    assert run_training(StudentRun(d["targets"], d["teacher"], str(tmp_path / "b")), cfg, quiet=True)["resumed_from"] == 5
    resumed, _, _ = load_student(f"{tmp_path}/b/checkpoints/step-00000008/student")
    assert digest(resumed) == STUDENT_WEIGHTS


def test_bptt_weights(tmp_path):
    b = train_bptt(load_corpus(SPEC), BPTTConfig(shape=TeacherConfig(**SMALL), updater=UpdaterConfig(arch="gru"),
                                                 steps=9, eval_every=3, eval_size=16, batch_size=8, truncate=5,
                                                 curriculum=(6,), curriculum_acc=0.0, device="cpu"),
                   out=tmp_path / "bptt", quiet=True)
    assert b["steps"] == 9 and [h["T"] for h in b["history"]] == [6, 12, 12]
    assert digest(b["student"]) == BPTT_WEIGHTS
    assert loss_digest(b["history"]) == loss_digest(metrics_rows(tmp_path / "bptt" / "metrics.jsonl")) == BPTT_LOSSES
    saved, _, _ = load_student(str(tmp_path / "bptt" / "student"))
    assert digest(saved) == BPTT_WEIGHTS


def test_online_dmt_weights_in_one_call_and_carried_over_two(tmp_path):
    corpus = load_corpus(SPEC)
    pt = pretrain(corpus, pt_config(), quiet=True)
    teacher = pt["teacher"]
    start = {k: v.clone() for k, v in pt["student"].state_dict().items()}  # DMT trains it in place
    cfg = OnlineDMTConfig(steps=6, eval_every=2, eval_size=16, batch_size=8, beta=0.5, beta_halflife=2.0, ema=0.5,
                          device="cpu")

    def student():
        s = pt["student"]
        s.load_state_dict(start)
        return s

    one = dmt_online(student(), teacher, corpus, cfg, out=tmp_path / "dmt", quiet=True)
    assert one["steps"] == 6
    assert digest(one["student"]) == DMT_WEIGHTS
    assert [h["step"] for h in one["history"]] == [0, 2, 4, 6]
    assert loss_digest(one["history"]) == loss_digest(metrics_rows(tmp_path / "dmt" / "metrics.jsonl")) == DMT_LOSSES
    saved, _, _ = load_student(str(tmp_path / "dmt" / "student"))
    assert digest(saved) == DMT_WEIGHTS
    dmt = OnlineDMT(student(), teacher, corpus, cfg)
    assert dmt.run(quiet=True, until=4)["steps"] == 4
    second = dmt.run(quiet=True)
    assert second["steps"] == 6 and digest(second["student"]) == DMT_WEIGHTS
    assert np.isfinite(second["final"]["dmt_loss"])
