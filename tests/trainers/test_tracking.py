"""Experiment tracking (`trainers/tracking.py`, `--log.tensorboard DIR`, `--log.wandb PROJECT`): every training job
mirrors its metrics rows and config; read back with TensorBoard's own reader (EventAccumulator) and, when `wandb`
is installed, from W&B's offline run file. A resumed run shows each step once in TensorBoard."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jobs.cli import main as smt
from models.teacher import TeacherConfig
from models.updaters import UpdaterConfig
from pipeline.corpora import load_corpus
from pipeline.executors import SerialExecutor
from pipeline.label import LabelConfig, label
from storage.checkpoints import save_teacher
from tests.label_data import tiny_teacher
from trainers.dmt.actor import round_reports
from trainers.loop import Callbacks
from trainers.pretrain import PretrainConfig, pretrain
from trainers.tracking import TrackingConfig

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("one_thread")]  # tests/conftest.py
SPEC = "retrieval:T=12,vocab=4"
TINY = ["--teacher.d-model", "16", "--teacher.n-heads", "2", "--teacher.encoder-depth", "1",
        "--teacher.decoder-depth", "1", "--teacher.mem-tokens", "2", "--updater.arch", "mlp", "--updater.depth", "1",
        "--updater.hidden", "32"]



def events(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def tb_scalars(folder, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events(folder).Scalars(tag)]


def tb_configs(folder) -> list[tuple[int, dict]]:
    """(step, config) of each config text summary (one per writer: a run's start and each resume)."""
    return [(ev.step, json.loads("\n".join(line[4:] for line in ev.tensor_proto.string_val[0].decode().splitlines())))
            for ev in events(folder).Tensors("config/text_summary")]


def tb_config(folder) -> dict:
    (cfg,) = [c for _, c in tb_configs(folder)]
    return cfg


def rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def expected(path, key: str) -> list[tuple[int, float]]:
    """A metrics.jsonl column as TensorBoard stores it (float32)."""
    return [(r["step"], float(np.float32(r[key]))) for r in rows(path) if key in r]


def config(**kw) -> PretrainConfig:
    return PretrainConfig(teacher=TeacherConfig(d_model=16, n_heads=2, encoder_depth=1, decoder_depth=1, mem_tokens=2),
                          updater=UpdaterConfig(arch="mlp", depth=1, hidden=32), eval_every=5, eval_size=16,
                          batch_size=8, checkpoint_every=4, device="cpu", **{"steps": 20, **kw})


def test_pretrain_and_dmt_online_mirror_rows_and_config_to_tensorboard(tmp_path):
    """`smt pretrain --log.tensorboard DIR`: every metrics row's columns are scalars at their step, the config
    is the text summary `config`; `smt dmt-online` on that run likewise."""
    out, tb = tmp_path / "pt", tmp_path / "tb"
    assert smt(["pretrain", "--corpus", SPEC, "--out", str(out), "--steps", "10", "--eval-every", "5",
                "--eval-size", "16", "--batch-size", "8", "--device", "cpu", "--quiet", *TINY,
                "--log.tensorboard", str(tb)]) == 0
    metrics = out / "metrics.jsonl"
    assert [r["step"] for r in rows(metrics)] == [5, 10]
    acc = events(tb)
    assert set(acc.Tags()["scalars"]) == {k for k in rows(metrics)[0] if k != "step"}
    for key in ("loss", "teacher_acc", "smt_loss", "lr", "grad_norm", "time", "T"):
        assert tb_scalars(tb, key) == expected(metrics, key), key
    cfg = tb_config(tb)
    assert cfg["kind"] == "pretrain" and cfg["corpus"] == load_corpus(SPEC).spec and cfg["start_step"] == 0
    assert cfg["config"]["steps"] == 10 and cfg["config"]["teacher"]["d_model"] == 16
    # online DMT on that run: its rows from the step-0 evaluation on
    assert smt(["dmt-online", "--run", str(out), "--corpus", SPEC, "--out", str(tmp_path / "dmt"), "--steps", "2",
                "--eval-every", "1", "--eval-size", "8", "--batch-size", "4", "--quiet",
                "--log.tensorboard", str(tmp_path / "tb-dmt")]) == 0
    assert [s for s, _ in tb_scalars(tmp_path / "tb-dmt", "dmt_acc")] == [0, 1, 2]
    assert tb_scalars(tmp_path / "tb-dmt", "dmt_loss") == expected(tmp_path / "dmt" / "metrics.jsonl", "dmt_loss")
    assert tb_config(tmp_path / "tb-dmt")["kind"] == "dmt-online"


def test_a_resumed_pretrain_shows_each_step_once_with_the_resumed_values(tmp_path):
    """Killed after the row of step 10 (its checkpoint is step 8), then resumed: the killed attempt's step-10
    events stay in its event file, but TensorBoard hides them (restart marker at step 9), so each step appears
    once, with the values metrics.jsonl holds."""
    corpus, out, tb = load_corpus(SPEC), tmp_path / "pt", tmp_path / "tb"
    track = TrackingConfig(tensorboard=str(tb))

    def crash(row):
        if row["step"] == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(corpus, config(), out=out, quiet=True, callbacks=Callbacks(on_eval=crash), tracking=track)
    killed = tb_scalars(tb, "loss")
    assert [s for s, _ in killed] == [5, 10]  # the killed attempt's row of step 10 reached the event file
    r = pretrain(corpus, config(), out=out, quiet=True, tracking=track)
    assert r["resumed_from"] == 8
    assert len(list(tb.glob("events.out.tfevents.*"))) == 2
    assert tb_scalars(tb, "loss") == expected(out / "metrics.jsonl", "loss")
    assert [s for s, _ in tb_scalars(tb, "loss")] == [5, 10, 15, 20]
    assert tb_scalars(tb, "teacher_acc") == expected(out / "metrics.jsonl", "teacher_acc")


def _target_set(tmp_path) -> dict:
    teacher = str(tmp_path / "teacher")
    save_teacher(teacher, tiny_teacher("causal"))
    rep = label(LabelConfig(teacher=teacher, corpus="retrieval:T=12,vocab=8,n=48", out=str(tmp_path / "bucket"),
                            shard_sequences=12, batch_size=12, device="cpu"), SerialExecutor(), quiet=True)
    return {"targets": rep.target_url, "teacher": teacher}


def test_train_then_dmt_alone_log_the_run_and_the_rounds(tmp_path):
    """`smt train` then `smt dmt` (alone: it trains between rounds) on one run and one TensorBoard folder: the
    run's scalars are its metrics rows, steps 1..20 from train and 21..30 from the DMT blocks, each once; the
    rounds' reports are their own TensorBoard run (DIR/rounds) at step = round."""
    d, run, tb = _target_set(tmp_path), str(tmp_path / "run"), tmp_path / "tb"
    assert smt(["train", "--targets", d["targets"], "--teacher", d["teacher"], "--out", run, "--steps", "20",
                "--stream.batch-size", "32", "--stream.shuffle-buffer", "128", "--checkpoint-every", "10",
                "--device", "cpu", "--quiet", "--log.tensorboard", str(tb)]) == 0
    assert smt(["dmt", "--targets", d["targets"], "--run", run, "--corpus", "retrieval:T=12,vocab=8,n=48",
                "--teacher", d["teacher"], "--rounds", "2", "--every-steps", "5", "--sequences", "12",
                "--shard-sequences", "6", "--dtype", "float32", "--device", "cpu", "--no-actor", "--quiet",
                "--report", str(tmp_path / "report"), "--log.tensorboard", str(tb)]) == 0
    metrics = Path(run) / "metrics.jsonl"
    assert [s for s, _ in tb_scalars(tb, "loss")] == list(range(1, 31))
    for key in ("loss", "generation", "grad_norm", "lr"):
        assert tb_scalars(tb, key) == expected(metrics, key), key
    reps = round_reports(run)
    assert [(s, v) for s, v in tb_scalars(tb / "rounds", "rollout_acc")] == \
        [(r["round"], float(np.float32(r["rollout_acc"]))) for r in reps]
    assert tb_scalars(tb / "rounds", "drift_final") == \
        [(r["round"], float(np.float32(r["drift_by_step"][-1]))) for r in reps]
    # each writer logs the config it trains with at its first step: train's phase, then each DMT block's
    assert [(step, c["kind"], c["config"]["phase_start"]) for step, c in tb_configs(tb)] == \
        [(0, "train", 0), (20, "train", 20), (25, "train", 20)]


# ------------------------------------------------------------------------------------------ W&B offline


def wandb_records(root: Path) -> dict[str, list]:
    """The records of every offline W&B run under `root`, per run id, read from its `run-<id>.wandb` file: W&B's
    own protobuf records in its LevelDB-style log (32 KiB blocks, 7-byte record headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    runs: dict[str, list] = {}
    for path in sorted(root.rglob("run-*.wandb")):
        data, pos, chunks, part = path.read_bytes(), 7, [], b""
        assert data[:4] == b":W&B", path
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:
                pos += left
                continue
            _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if n == 0 and kind == 0:
                pos += left
                continue
            chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
            if kind == 1:
                chunks.append(chunk)
            elif kind in (2, 3):
                part += chunk
            else:
                chunks.append(part + chunk)
                part = b""
        for c in chunks:
            rec = pb.Record()
            rec.ParseFromString(c)
            runs.setdefault(path.stem.removeprefix("run-"), []).append(rec)
    return runs


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_history(recs) -> dict[int, dict]:
    """step -> the logged scalars (W&B's own `_step`, `_runtime`, `_timestamp` left out)."""
    return {r.history.step.num: {_key(i): json.loads(i.value_json) for i in r.history.item
                                 if not _key(i).startswith("_")}
            for r in recs if r.WhichOneof("record_type") == "history"}


def wandb_config(recs) -> dict:
    cfg = {}
    for r in recs:
        kind = r.WhichOneof("record_type")
        items = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        cfg.update({_key(i): json.loads(i.value_json) for i in items})
    return cfg


def test_bptt_fans_out_to_tensorboard_and_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    out, tb = tmp_path / "bptt", tmp_path / "tb"
    assert smt(["bptt", "--corpus", SPEC, "--updater.arch", "gru", "--out", str(out), "--steps", "4",
                "--eval-every", "2", "--eval-size", "8", "--batch-size", "4", "--quiet", "--lrs", "1e-3", "3e-3",
                "--shape.d-model", "16", "--shape.n-heads", "2", "--shape.mem-tokens", "2",
                "--log.tensorboard", str(tb), "--log.wandb", "smt-test"]) == 0
    runs = wandb_records(tmp_path / "wb")
    assert len(runs) == 2  # one W&B run per lr of the sweep, as in TensorBoard (DIR/lr-<lr>)
    for lr in ("0.001", "0.003"):
        metrics = out / f"lr-{lr}" / "metrics.jsonl"
        assert tb_scalars(tb / f"lr-{lr}", "bptt_acc") == expected(metrics, "bptt_acc")
        (recs,) = [r for r in runs.values() if wandb_config(r)["config"]["optim"]["lr"] == float(lr)]
        hist = wandb_history(recs)
        assert sorted(hist) == [2, 4]
        for row in rows(metrics):
            assert hist[row["step"]] == {k: v for k, v in row.items() if k != "step"}
        assert wandb_config(recs)["kind"] == "bptt"


def test_wandb_resume_continues_the_same_run(tmp_path, monkeypatch):
    """The W&B run id derives from the run URL and the stage: a pretrain killed after its row of step 10 (its
    checkpoint is step 8) and resumed logs into the same W&B run. Offline, each attempt writes its own file of
    that run: the killed one steps 5 and 10, the resumed one 10, 15 and 20 with the values metrics.jsonl keeps."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    corpus, out = load_corpus(SPEC), tmp_path / "pt"
    track = TrackingConfig(wandb="smt-test")

    def crash(row):
        if row["step"] == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(corpus, config(), out=out, quiet=True, callbacks=Callbacks(on_eval=crash), tracking=track)
    pretrain(corpus, config(), out=out, quiet=True, tracking=track)
    files = sorted((tmp_path / "wb").rglob("run-*.wandb"))
    assert len(files) == 2 and files[0].name == files[1].name  # one run id
    killed, resumed = (wandb_history(wandb_records(f.parent)[f.stem.removeprefix("run-")]) for f in files)
    assert sorted(killed) == [5, 10] and sorted(resumed) == [10, 15, 20]
    for row in rows(out / "metrics.jsonl"):
        if row["step"] >= 10:
            assert resumed[row["step"]] == {k: v for k, v in row.items() if k != "step"}
        else:
            assert killed[row["step"]] == {k: v for k, v in row.items() if k != "step"}


# ------------------------------------------------------------------------------------------ the pipeline


def test_pipeline_logs_every_training_stage(tmp_path, ray_local):
    from tests.jobs.test_cli import TINY_RECIPE

    out, tb = tmp_path / "d", tmp_path / "tb"
    assert smt(["pipeline", "--recipe", "retrieval-demo", "--out", str(out), "--quiet",
                "--corpus", "retrieval:T=8,vocab=4,n=32", "--pretrain.seconds", "1", *TINY_RECIPE,
                "--baseline.lrs", "1e-3", "--log.tensorboard", str(tb)]) == 0
    assert tb_scalars(tb / "pretrain", "teacher_acc") == expected(out / "pretrain" / "metrics.jsonl", "teacher_acc")
    student = out / "student" / "metrics.jsonl"
    assert tb_scalars(tb / "student", "loss") == expected(student, "loss")  # SMT steps 1..2 then the DMT phase
    assert [s for s, _ in tb_scalars(tb / "student", "loss")] == list(range(1, rows(student)[-1]["step"] + 1))
    assert tb_scalars(tb / "bptt", "bptt_loss") == expected(out / "bptt" / "lr-0.001" / "metrics.jsonl", "bptt_loss")
    assert tb_config(tb / "bptt")["config"]["optim"]["lr"] == 1e-3


@pytest.mark.parametrize("flag, value, needle", [
    ("--log.tensorboard", "s3://b/tb", "--log.tensorboard s3://b/tb: TensorBoard logs go to a local folder"),
    ("--log.wandb", "team/proj", "must be a W&B project name (no '/')"),
])
def test_bad_log_flags_are_one_line(flag, value, needle, tmp_path, capsys):
    assert smt(["pretrain", "--corpus", SPEC, "--out", str(tmp_path / "x"), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
