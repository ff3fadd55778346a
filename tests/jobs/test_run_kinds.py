"""Every run folder records what it is (`run.json`'s `kind`, storage/layout.py), and `smt eval` finds a folder's
models by reading that record: one case per kind, each folder written by the real writer (the pipeline's own
folder: tests/jobs/test_cli.py; its record here is the one `smt pipeline` writes, over real runs). BPTT and
online DMT runs go to any URL: an S3 run at an explicit endpoint (the environment's unset) is evaluated there."""
from __future__ import annotations

import json
import shutil

import pytest

from jobs.cli import main as smt
from pipeline.corpora import load_corpus
from storage.bucket import Bucket
from storage.checkpoints import load_checkpoint, save_checkpoint
from storage.layout import KINDS, RECORD
from storage.lease import newest_lease
from storage.run_dir import RunDir
from tests.jobs.test_cli import TASK, TINY
from tests.train_fixtures import CORPUS, make_target_set
from trainers.dmt.mixing import StreamConfig
from trainers.student import StudentRun, StudentTrainConfig, run_training

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]

SHAPE = ["--shape.d-model", "16", "--shape.n-heads", "2", "--shape.mem-tokens", "2"]
SHORT = ["--steps", "2", "--eval-every", "1", "--eval-size", "8", "--batch-size", "4", "--quiet"]


def _train(d: dict, out: str) -> None:
    cfg = StudentTrainConfig(stream=StreamConfig(batch_size=16, shuffle_buffer=64, seed=1, prefetch=0), steps=4,
                             checkpoint_every=2, device="cpu")
    run_training(StudentRun(d["targets"], d["teacher"], out), cfg, quiet=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One folder of every kind, written by the command (or trainer) that writes that kind."""
    root = tmp_path_factory.mktemp("kinds")
    d = make_target_set(str(root / "bucket"), shards=1)
    assert smt(["pretrain", "--corpus", TASK, "--out", str(root / "pretrain"), *SHORT, *TINY]) == 0
    _train(d, str(root / "train"))
    assert smt(["bptt", "--corpus", TASK, "--updater.arch", "gru", "--out", str(root / "bptt"), *SHORT, *SHAPE]) == 0
    assert smt(["bptt", "--corpus", TASK, "--updater.arch", "gru", "--out", str(root / "sweep"), *SHORT, *SHAPE,
                "--lrs", "1e-3", "3e-3"]) == 0
    assert smt(["dmt-online", "--run", str(root / "pretrain"), "--corpus", TASK, "--out", str(root / "dmt-online"),
                *SHORT]) == 0
    RunDir(str(root / "report")).write_record("dmt", run=str(root / "train"))  # as `smt dmt --report` writes it
    # `smt pipeline`'s layout over real runs: OUT/pretrain/teacher (the student's teacher), OUT/student (a train run)
    pipe = root / "pipeline"
    _train(d, str(pipe / "student"))
    cfg, tensors = load_checkpoint(d["teacher"], "teacher")
    save_checkpoint(str(pipe / "pretrain" / "teacher"), "teacher", cfg["model"], tensors, cfg["meta"])
    RunDir(str(pipe)).write_record("pipeline", recipe="test", corpus=CORPUS, bucket=str(root / "bucket"))
    return root, d


# kind -> (folder, corpus, the student's path under the root, the teacher's (None: none found))
CASES = {
    "pretrain": ("pretrain", TASK, "pretrain/checkpoints/step-00000002/student",
                 "pretrain/checkpoints/step-00000002/teacher"),
    "train": ("train", CORPUS, "train/checkpoints/step-00000004/student", None),
    "dmt": ("report", CORPUS, "train/checkpoints/step-00000004/student", None),
    "bptt": ("bptt", TASK, "bptt/student", None),
    "bptt-sweep": ("sweep", TASK, "sweep/student", None),
    "dmt-online": ("dmt-online", TASK, "dmt-online/student", None),
    "pipeline": ("pipeline", CORPUS, "pipeline/student/checkpoints/step-00000004/student", "pipeline/pretrain/teacher"),
    # no record: a pretraining checkpoint folder holding student/ and teacher/
    "models": ("pretrain/checkpoints/step-00000002", TASK, "pretrain/checkpoints/step-00000002/student",
               "pretrain/checkpoints/step-00000002/teacher"),
}


def test_every_kind_has_a_case():
    assert set(CASES) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_eval_finds_the_models_of_each_kind_by_its_record(folders, kind, capsys):
    root, _ = folders
    folder, corpus, student, teacher = CASES[kind]
    assert RunDir(str(root / folder)).record()["kind"] == kind
    capsys.readouterr()
    assert smt(["eval", "--run", str(root / folder), "--corpus", corpus, "--size", "8", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["student"]["url"] == f"{root}/{student}"
    assert (res["teacher"]["url"] if "teacher" in res else None) == (f"{root}/{teacher}" if teacher else None)


def test_a_sweeps_lr_folders_are_bptt_runs_with_their_metrics(folders):
    root, _ = folders
    sweep = RunDir(str(root / "sweep"))
    sel = json.loads(sweep.bucket.read_bytes("selection.json"))
    assert [r["folder"] for r in sel["runs"]] == ["lr-0.001", "lr-0.003"]
    for r in sel["runs"]:
        child = sweep.child(r["folder"])
        assert child.record()["kind"] == "bptt" and child.record()["config"]["optim"]["lr"] == r["lr"]
        assert [m["step"] for m in child.metrics() if "bptt_acc" in m] == [1, 2]
        assert child.bucket.exists("student/config.json")


@pytest.mark.parametrize("kind", ["train", "pipeline", "bptt-sweep", "dmt"])
def test_folders_written_before_run_records_read_as_the_kind_their_files_show(folders, kind, tmp_path, capsys):
    """A folder of an older version has no run.json: its files say what it is (a train run's checkpoints/, a
    pipeline's student/checkpoints/, a sweep's selection.json, a DMT report's dmt_rounds.json)."""
    root, _ = folders
    folder, corpus, student, _ = CASES[kind]
    old = tmp_path / folder
    if kind == "dmt":  # `smt dmt --report` wrote only its rounds, each naming the student it rolled out
        old.mkdir()
        (old / "dmt_rounds.json").write_text(json.dumps([{"round": 1, "student": f"{root}/{student}"}]))
    else:
        shutil.copytree(root / folder, old)
        (old / RECORD).unlink()
        student = student.replace(folder, str(old.relative_to(tmp_path)), 1)
    assert RunDir(str(old)).record()["kind"] == kind
    capsys.readouterr()
    assert smt(["eval", "--run", str(old), "--corpus", corpus, "--size", "8", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["student"]["url"]
    assert got == (f"{root}/{student}" if kind == "dmt" else f"{tmp_path}/{student}")


def test_a_folder_without_a_record_is_one_line(tmp_path, capsys):
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "metrics.jsonl").write_text('{"step": 1}\n')  # files, but no record and no checkpoint
    capsys.readouterr()
    assert smt(["eval", "--run", str(tmp_path / "loose"), "--corpus", TASK, "--size", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"smt eval: error: {tmp_path / 'loose'} is not a run folder or checkpoint: expected {RECORD} "
                   "(a run) or config.json (a checkpoint); pass a folder an smt command wrote")


def test_a_record_of_an_unknown_kind_is_one_line(tmp_path, capsys):
    (tmp_path / "future").mkdir()
    (tmp_path / "future" / RECORD).write_text(json.dumps({"kind": "quantum"}))
    capsys.readouterr()
    assert smt(["eval", "--run", str(tmp_path / "future"), "--corpus", TASK, "--size", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "names kind 'quantum', which this version does not know" in err


def test_bptt_and_online_dmt_runs_on_s3_at_an_explicit_endpoint(s3_bucket, monkeypatch, capsys):
    url, endpoint = s3_bucket
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)  # the flag alone says where the store is
    ep = ["--endpoint-url", endpoint]
    assert smt(["bptt", "--corpus", TASK, "--updater.arch", "gru", "--out", f"{url}/bptt", *SHORT, *SHAPE, *ep]) == 0
    run = RunDir(f"{url}/bptt", endpoint_url=endpoint)
    assert run.record()["kind"] == "bptt" and run.record()["corpus"] == load_corpus(TASK).spec
    assert [m["step"] for m in run.metrics() if "bptt_acc" in m] == [1, 2]
    files = set(Bucket.from_url(f"{url}/bptt", endpoint_url=endpoint).glob("**"))
    assert {"run.json", "student/weights.safetensors", "student/config.json"} <= files
    assert any(f.startswith("metrics/seg-") for f in files)  # the object store's metrics parts
    assert newest_lease(run.bucket)[1]["released"] is True  # written under the run's lease, released at the end
    capsys.readouterr()
    assert smt(["eval", "--run", f"{url}/bptt", "--corpus", TASK, "--size", "8", "--json", *ep]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["student"]["url"] == f"{url}/bptt/student" and res["student"]["trained_by"] == "bptt"
    # online DMT reads its pretrain run and writes its own run on the same store
    assert smt(["pretrain", "--corpus", TASK, "--out", f"{url}/pt", *SHORT, *TINY, *ep]) == 0
    assert smt(["dmt-online", "--run", f"{url}/pt", "--corpus", TASK, "--out", f"{url}/dmt", *SHORT, *ep]) == 0
    dmt = RunDir(f"{url}/dmt", endpoint_url=endpoint)
    assert dmt.record()["kind"] == "dmt-online" and [m["step"] for m in dmt.metrics() if "dmt_acc" in m] == [0, 1, 2]
    capsys.readouterr()
    assert smt(["eval", "--run", f"{url}/dmt", "--corpus", TASK, "--size", "8", "--json", "--teacher",
                f"{url}/pt/teacher", *ep]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["student"]["url"] == f"{url}/dmt/student" and res["student"]["drift_final"] is not None
