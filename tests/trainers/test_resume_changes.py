"""A resume compares its config with the one the run recorded (issue 23 item 14): a changed seed would break
exact resume and is refused in one line unless --allow-seed-change; a changed lr or step count is applied,
said in one line (old -> new) and recorded in the run (`resume-<step>.json`). The DMT loop's config refuses
bad values when it is built, each named with its flag."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from jobs.dmt import main as dmt_main
from jobs.pretrain import main as pretrain_main
from models.teacher import TeacherConfig
from models.updaters import UpdaterConfig
from pipeline.corpora import load_corpus
from storage.run_dir import RunDir
from tests.train_fixtures import make_target_set
from trainers.common import OptimConfig
from trainers.dmt import DMTLoopConfig
from trainers.dmt.mixing import StreamConfig
from trainers.loop import Callbacks
from trainers.pretrain import PretrainConfig, pretrain
from trainers.student import StudentRun, StudentTrainConfig, run_training

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]  # tests/conftest.py
SPEC = "retrieval:T=12,vocab=4"
TINY = ["--teacher.d-model", "16", "--teacher.n-heads", "2", "--teacher.encoder-depth", "1",
        "--teacher.decoder-depth", "1", "--teacher.mem-tokens", "2", "--updater.arch", "mlp", "--updater.depth", "1",
        "--updater.hidden", "32", "--corpus", SPEC, "--eval-every", "4", "--eval-size", "8", "--batch-size", "4",
        "--checkpoint-every", "4", "--device", "cpu", "--quiet", "--optim.warmup-steps", "1"]



def pt_config(**kw) -> PretrainConfig:
    """The config TINY parses to."""
    return PretrainConfig(teacher=TeacherConfig(d_model=16, n_heads=2, encoder_depth=1, decoder_depth=1, mem_tokens=2),
                          updater=UpdaterConfig(arch="mlp", depth=1, hidden=32), eval_every=4, eval_size=8,
                          batch_size=4, checkpoint_every=4, device="cpu",
                          **{"steps": 8, "optim": OptimConfig(warmup_steps=1), **kw})


def rows(path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, filter(str.strip, path.read_text().splitlines()))}


def interrupted(out) -> None:
    """A pretraining run of 8 steps stopped after its checkpoint of step 4 (not finished)."""
    def crash(row):
        if row["step"] == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(load_corpus(SPEC), pt_config(), out=out, quiet=True, callbacks=Callbacks(on_eval=crash))
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 4


def test_pretraining_refuses_another_seed_on_resume_in_one_line(tmp_path, capsys):
    out = tmp_path / "pt"
    interrupted(out)
    assert pretrain_main([*TINY, "--out", str(out), "--steps", "8", "--seed", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"smt pretrain: error: run {RunDir(str(out)).url} (step 4) was trained with seed=0, this command gives seed=1: "
        "it decides the batches and loss positions of every later step, so the resume would not be exact; pass "
        "--seed 0, or --allow-seed-change to resume with 1 anyway, or give a new --out")
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 4  # nothing trained
    assert not (out / "resume-00000004.json").exists()
    assert pretrain_main([*TINY, "--out", str(out), "--steps", "8", "--seed", "1", "--allow-seed-change"]) == 0
    assert json.loads((out / "resume-00000004.json").read_text()) == {"step": 4, "changes": {"seed": {"old": 0, "new": 1}}}
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 8


def test_pretraining_applies_a_changed_lr_and_says_so(tmp_path, capsys):
    out = tmp_path / "pt"
    interrupted(out)
    capsys.readouterr()
    new = pt_config(steps=12, optim=OptimConfig(lr=1e-3, warmup_steps=1))
    assert pretrain(load_corpus(SPEC), new, out=out, quiet=True)["resumed_from"] == 4
    assert capsys.readouterr().err.strip() == (
        f"resuming {RunDir(str(out)).url} at step 4 with a changed config: optim.lr 0.0003 -> 0.001, steps 8 -> 12 "
        "(applied from here; recorded in resume-00000004.json)")
    assert json.loads((out / "resume-00000004.json").read_text())["changes"] == {
        "optim.lr": {"old": 0.0003, "new": 0.001}, "steps": {"old": 8, "new": 12}}
    assert json.loads((out / "run.json").read_text())["changes"]["optim.lr"] == {"old": 0.0003, "new": 0.001}
    lr = {s: r["lr"] for s, r in rows(out / "metrics.jsonl").items()}
    assert lr == {4: 3e-4, 8: 1e-3, 12: 1e-3}  # the new rate from the resume on, not the checkpoint's


def test_a_finished_pretraining_run_trains_on_when_given_more_of_what_stopped_it(tmp_path):
    """A run stopped by its steps trains on to a larger --steps; one stopped at --stop-at-acc stays stopped with
    the same bar and trains on when it is raised; the reason travels in the checkpoint."""
    corpus, out = load_corpus(SPEC), tmp_path / "pt"
    pretrain(corpus, pt_config(), out=out, quiet=True)
    state = json.loads((out / "checkpoints" / "step-00000008" / "state.json").read_text())
    assert (state["finished"], state["finished_by"]) == (True, "steps")
    assert pretrain(corpus, pt_config(), out=out, quiet=True)["history"] == []  # same config: nothing to do
    more = pretrain(corpus, pt_config(steps=12), out=out, quiet=True)
    assert more["resumed_from"] == 8 and more["steps"] == 12 and [r["step"] for r in more["history"]] == [12]
    acc = tmp_path / "acc"
    first = pretrain(corpus, pt_config(steps=40, stop_at_acc=0.0), out=acc, quiet=True)  # passes at the first eval
    state = json.loads((acc / "checkpoints" / f"step-{first['steps']:08d}" / "state.json").read_text())
    assert first["steps"] < 40 and state["finished_by"] == "accuracy" and state["finished_acc"] is not None
    assert pretrain(corpus, pt_config(steps=40, stop_at_acc=0.0), out=acc, quiet=True)["history"] == []
    on = pretrain(corpus, pt_config(steps=first["steps"] + 4, stop_at_acc=1.01), out=acc, quiet=True)
    assert on["steps"] == first["steps"] + 4 and on["history"]


@pytest.fixture(scope="module")
def target_set(tmp_path_factory):
    return make_target_set(str(tmp_path_factory.mktemp("bucket")), shards=2, seqs=8)


def st_config(**kw) -> StudentTrainConfig:
    return StudentTrainConfig(updater=UpdaterConfig(arch="mlp", depth=1, hidden=32), device="cpu",
                              optim=OptimConfig(lr=1e-3, warmup_steps=1), checkpoint_every=2,
                              **{"steps": 4, "stream": StreamConfig(batch_size=16, shuffle_buffer=64), **kw})


def test_a_student_resume_refuses_another_stream_seed_and_applies_a_new_lr(target_set, tmp_path, capsys):
    t, out = target_set, tmp_path / "run"

    def train(cfg):
        return run_training(StudentRun(t["targets"], t["teacher"], str(out)), cfg, quiet=True)

    train(st_config())
    capsys.readouterr()
    moved = st_config(steps=6, stream=StreamConfig(batch_size=16, shuffle_buffer=64, seed=3))
    with pytest.raises(ValueError) as e:
        train(moved)
    assert str(e.value) == (
        f"run {RunDir(str(out)).url} (step 4) was trained with stream.seed=0, this command gives stream.seed=3: it decides the record "
        "order, so the resume would not be exact; pass --stream.seed 0, or --allow-seed-change to resume with 3 "
        "anyway, or give a new --out")
    res = train(replace(st_config(steps=6, seed=5), optim=OptimConfig(lr=2e-3, warmup_steps=1)))
    assert res["resumed_from"] == 4 and res["step"] == 6
    assert capsys.readouterr().err.strip() == (
        f"resuming {RunDir(str(out)).url} at step 4 with a changed config: optim.lr 0.001 -> 0.002, seed 0 -> 5, steps 4 -> 6 "
        "(applied from here; recorded in resume-00000004.json)")
    assert rows(out / "metrics.jsonl")[5]["lr"] == 2e-3
    res = train(replace(moved, steps=8, optim=OptimConfig(lr=2e-3, warmup_steps=1), seed=5, allow_seed_change=True))
    assert res["resumed_from"] == 6 and res["step"] == 8
    assert json.loads((out / "resume-00000006.json").read_text())["changes"] == {
        "steps": {"old": 6, "new": 8}, "stream.seed": {"old": 0, "new": 3}}


def test_the_dmt_loop_config_refuses_bad_values_when_built(capsys):
    with pytest.raises(ValueError) as e:
        DMTLoopConfig(rounds=0, every_steps=-1, sequences=0, Td=0, format="npz", dtype="float64", poll_seconds=0,
                      timeout_seconds=-5, device="gpu")
    assert str(e.value) == (
        "dmt: --rounds=0 must be >= 1; --every-steps=-1 must be >= 1; --sequences=0 must be >= 1; --Td=0 must be >= 1 "
        "(or unset: to the end); --format='npz' must be zarr or wds; --dtype='float64' must be one of float32, "
        "float16, bfloat16, int8; --poll-seconds=0 must be > 0; --timeout-seconds=-5 must be > 0; --device='gpu' "
        "must be auto, cpu, cuda, cuda:N or mps")
    assert dmt_main(["--targets", "t", "--run", "r", "--corpus", "c", "--shard-sequences", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "smt dmt: error: dmt: --shard-sequences=0 must be >= 1")
