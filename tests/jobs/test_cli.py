"""Two-step smoke tests of every foundation command, and one-line user errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import main as smt

TASK = "retrieval:T=8,vocab=4"
TINY = ["--teacher.d-model", "16", "--teacher.n-heads", "2", "--teacher.encoder-depth", "1",
        "--teacher.decoder-depth", "1", "--teacher.mem-tokens", "2"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "pt"
    assert smt(["pretrain", "--corpus", TASK, "--out", str(out), "--steps", "2", "--eval-every", "1",
                "--eval-size", "8", "--batch-size", "4", "--quiet", *TINY]) == 0
    return out


def test_pretrain_eval_dmt_bptt_smoke(pretrained, tmp_path, capsys):
    assert (pretrained / "teacher" / "config.json").exists() and (pretrained / "metrics.jsonl").exists()
    assert smt(["eval", "--run", str(pretrained), "--corpus", TASK, "--size", "8", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) >= {"teacher", "student"} and 0 <= res["student"]["acc"] <= 1
    # count baselines on the same targets beside every bits figure
    assert res["counts"]["sequences"] == res["sequences"] and res["counts"]["targets"] == res["student"]["targets"]
    assert 0 < res["counts"]["trigram"] and res["counts"]["unigram"] > 0
    assert smt(["dmt-online", "--run", str(pretrained), "--corpus", TASK, "--out", str(tmp_path / "dmt"),
                "--steps", "2", "--eval-every", "1", "--eval-size", "8", "--batch-size", "4", "--quiet"]) == 0
    assert smt(["eval", "--run", str(tmp_path / "dmt" / "student"), "--teacher", str(pretrained / "teacher"),
                "--corpus", TASK, "--size", "8"]) == 0
    assert smt(["bptt", "--corpus", TASK, "--updater.arch", "gru", "--out", str(tmp_path / "bptt"), "--steps", "2",
                "--eval-every", "1", "--eval-size", "8", "--batch-size", "4", "--quiet",
                "--shape.d-model", "16", "--shape.n-heads", "2", "--shape.mem-tokens", "2"]) == 0
    assert smt(["eval", "--run", str(tmp_path / "bptt"), "--corpus", TASK, "--size", "8"]) == 0
    out = capsys.readouterr().out
    assert "student" in out and "bptt" in out and "count baselines" in out and "unigram / bigram / trigram" in out


TINY_RECIPE = ["--pretrain.teacher.d-model", "16", "--pretrain.teacher.n-heads", "2", "--pretrain.teacher.mem-tokens",
               "2", "--pretrain.teacher.encoder-depth", "1", "--pretrain.teacher.decoder-depth", "1", "--pretrain.steps",
               "2", "--pretrain.eval-every", "1", "--pretrain.eval-size", "8", "--pretrain.curriculum", "--student.steps",
               "2", "--student.stream.batch-size", "16", "--dmt.rounds", "2", "--dmt.every", "1", "--dmt-actor.sequences",
               "8", "--dmt-phase.stream.batch-size", "32", "--online.batch-size", "4", "--eval-size", "8",
               "--label.shard-sequences", "16", "--label-executor.workers", "0", "--bptt-max-seconds", "1"]


def test_demo_smoke_runs_every_stage(tmp_path, ray_local, capsys):
    rc = smt(["demo", "--out", str(tmp_path / "d"), "--quiet", "--corpus", "retrieval:T=8,vocab=4,n=32",
              "--pretrain.seconds", "1", *TINY_RECIPE])
    assert rc == 0
    res = json.loads((tmp_path / "d" / "results.json").read_text())
    for k in ("task", "teacher_acc", "smt_acc", "dmt_acc", "bptt_acc", "seconds", "bucket", "student"):
        assert k in res, k
    assert [p["stage"] for p in res["timeline"]] == ["pretrain", "label", "student-smt", "dmt-1", "dmt-2"]
    # the BPTT baseline: every lr of the recipe's sweep trained (a share of the budget each), the winner chosen on valid
    sw = res["bptt_sweep"]
    assert [r["lr"] for r in sw["runs"]] == [3e-4, 1e-3, 3e-3] and "split=valid" in sw["chosen_on"]
    assert all(r["steps"] >= 1 and r["T"] == 8 and r["valid_acc"] is not None for r in sw["runs"])
    assert sw["seconds_per_lr"] == pytest.approx(sw["budget_seconds"] / 3, abs=0.01) and sw["budget_seconds"] <= 1
    assert "equal share per lr" in sw["budget_rule"]
    best = max(sw["runs"], key=lambda r: (r["valid_acc"], -r["valid_loss"]))
    assert sw["chosen_lr"] == best["lr"] and [r["chosen"] for r in sw["runs"]] == [r is best for r in sw["runs"]]
    for r in sw["runs"]:  # each lr trained its own student
        assert (tmp_path / "d" / "bptt" / r["folder"] / "student" / "config.json").exists()
    from storage.run_dir import RunDir  # every folder says what it is (storage/layout.py)

    assert [RunDir(str(tmp_path / "d" / f)).record()["kind"] for f in ("", "pretrain", "student", "bptt")] == \
        ["pipeline", "pretrain", "train", "bptt-sweep"]
    demo_out = capsys.readouterr().out
    assert "bptt lr sweep (chosen on valid: lr " in demo_out and demo_out.count("  <- chosen") >= 1
    # `smt eval --run OUT` evaluates the pipeline's newest student checkpoint, with its teacher
    assert smt(["eval", "--run", str(tmp_path / "d"), "--corpus", "retrieval:T=8,vocab=4,n=32", "--size", "8",
                "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    # results.json names files relative to OUT (no machine paths in result files); eval names the one it read
    assert ev["student"]["url"] == str(tmp_path / "d" / res["student_checkpoint"])
    assert ev["teacher"]["fingerprint"] == res["teacher_fingerprint"]
    # the bucket holds the teacher and the labels (round 0); the student run, one relabeled round per DMT round
    from storage.reader import TargetSet
    from storage.rounds import rounds_bucket

    assert res["targets"].startswith("bucket/targets/")  # relative to OUT: no machine path in results
    ts = TargetSet.open(str(tmp_path / "d" / res["targets"]), res["teacher_fingerprint"], verify="always")
    assert ts.rounds == [0] and ts.generation == 1
    rounds = TargetSet.open(rounds_bucket(str(tmp_path / "d" / "student")), res["teacher_fingerprint"], verify="always")
    assert rounds.rounds == [1, 2] and rounds.generation == 2
    for png in ("accuracy_vs_time.png", "loss_curves.png", "dmt_drift.png"):
        data = (tmp_path / "d" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
        assert png in (tmp_path / "d" / "report.md").read_text()
    assert "bucket:" in demo_out


@pytest.mark.parametrize("recipe", ["digits-pixels-tiny", "text-bytes-tiny"])
def test_tiny_recipes_run_offline(recipe, tmp_path, ray_local, monkeypatch):
    monkeypatch.chdir(tmp_path)  # any working directory: the text recipe reads Python's own pydoc text
    monkeypatch.setenv("SMT_CACHE", str(tmp_path / "cache"))
    few_shards = ["--label.shard-sequences", "4096"] if recipe == "text-bytes-tiny" else []  # 8k windows of pydoc text
    assert smt(["pipeline", "--recipe", recipe, "--out", "out", "--quiet", *TINY_RECIPE, "--pretrain.seconds", "1",
                *few_shards]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["recipe"] == recipe and len(res["dmt_rounds"]) == 2 and res["test"]["split"] == "test"
    for k in ("teacher_bits", "smt_bits", "dmt_bits", "bptt_bits"):  # test bits of every model, BPTT included
        assert 0 < res[k] < 10, k
    assert res["test"]["smt"]["from_m0"]["bits"] > 0 and res["test"]["bptt"]["from_m0"]["targets"] > 0
    # the count baselines beside them: fitted on train, scored on the same test targets, in the report's table
    cb = res["count_bits"]
    assert cb["unigram"] > cb["bigram"] > cb["trigram"] > 0 and res["test"]["counts"]["targets"] == res["test"]["targets"]
    assert set(res["splits"]) == {"train", "valid", "test"} and all(v["sequences"] > 0 for v in res["splits"].values())
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Held-out figures (test split)" in md
    assert f"| trigram count model (train split) | - | {cb['trigram']:.3f} |" in md
    if recipe == "text-bytes-tiny":
        assert res["unit"] == "byte" and res["test"]["smt"]["from_teacher_prompt"]["bits"] > 0
        assert "### Continuations of test prompts" in md and "- bptt (own m_0):" in md
    else:
        assert res["unit"] == "pixel" and "![sampled digits](samples.png)" in md
        assert (tmp_path / "out" / "samples.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, needle", [
    (["pretrain", "--corpus", "retrieval:T=2", "--out", "x"], "T=2 too short"),
    (["pretrain", "--corpus", "nosuchtask:T=8", "--out", "x"], "nosuchtask"),
    (["pretrain", "--corpus", TASK, "--out", "x", "--teacher.mem-size", "100"], "mem_size=100"),
    (["pretrain", "--corpus", TASK, "--out", "x", "--updater.arch", "lstm"], "arch='lstm' is unknown"),
    (["pretrain", "--corpus", TASK, "--out", "x", "--smt.mode", "stream"], "needs Tc"),
    (["bptt", "--corpus", TASK, "--updater.arch", "lstm", "--out", "x"], "arch='lstm' is unknown"),
    (["eval", "--run", "/nonexistent/run", "--corpus", TASK], "/nonexistent/run is not a run folder or checkpoint"),
    (["nosuchstage"], "unknown stage"),
    (["label", "--teacher", "t", "--corpus", TASK, "--out", "x", "--nosuch", "1"], "Unrecognized options: --nosuch"),
    (["inspect"], "missing required URL"),
    (["eval", "--run", "x", "--corpus", TASK, "--size", "many"], "Error parsing --size"),
])
def test_user_errors_are_one_line_without_traceback(argv, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    p = subprocess.run([sys.executable, "-m", "jobs.cli", *argv], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env=env, check=False)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "x").exists()


def test_help_lists_every_stage(capsys):
    assert smt(["--help"]) == 0
    out = capsys.readouterr().out
    for stage in ("demo", "pretrain", "label", "train", "dmt", "bptt", "eval", "inspect"):
        assert f"  {stage} " in out


@pytest.mark.parametrize("stage, flags", [
    ("train", ("--steps", "--optim.lr", "--stream.batch-size", "--updater.arch", "--dmt.every", "--dmt.refresh.enabled")),
    ("pipeline", ("--student.optim.lr", "--dmt-phase.stream.batch-size", "--pretrain.teacher.d-model", "--dmt.rounds")),
])
def test_help_shows_the_nested_component_options(stage, flags, capsys):
    assert smt([stage, "--help"]) == 0
    out = capsys.readouterr().out
    assert all(f in out for f in flags), [f for f in flags if f not in out]
