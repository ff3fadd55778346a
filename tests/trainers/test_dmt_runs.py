"""DMT rounds belong to a student run: two students relabel and train on one shared target set at the same
time and each sees only its own rounds (local folder and moto S3); `smt inspect` shows the set and each run.
`smt dmt` alone (no trainer attached) alternates relabeling and training itself, from the command line and
in a Ray actor, printing each round as it happens."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from jobs.inspect_bucket import main as inspect_main
from models.updaters import UpdaterConfig
from pipeline.executors import SerialExecutor
from pipeline.label import LabelConfig, label
from storage.bucket import Bucket
from storage.checkpoints import load_student, save_teacher
from storage.manifest import newest_generation, read_generation
from storage.rounds import rounds_bucket
from tests.label_data import tiny_teacher
from trainers.common import OptimConfig
from trainers.dmt import LockstepDMTConfig
from trainers.dmt.actor import DMTLoop, DMTLoopConfig, round_reports
from trainers.dmt.mixing import StreamConfig
from trainers.student import StudentRun, StudentTrainConfig, run_training

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[2]
SPEC = "retrieval:T=12,vocab=8,n=48"


def _setup(out: str, tmp_path, endpoint: str | None = None) -> dict:
    teacher = str(tmp_path / "teacher")
    fp = save_teacher(teacher, tiny_teacher("causal"))
    rep = label(LabelConfig(teacher=teacher, corpus=SPEC, out=out, shard_sequences=12, batch_size=12, device="cpu",
                            endpoint_url=endpoint), SerialExecutor(), quiet=True)
    return {"targets": rep.target_url, "teacher": teacher, "fp": fp, "endpoint": endpoint}


def _cfg(arch: str, steps: int, phase_start: int = 0, dmt: bool = False) -> StudentTrainConfig:
    sc = StreamConfig(batch_size=32, shuffle_buffer=128, seed=3, prefetch=0,
                      round_weights={"0": 1.0, "dmt": 2.0} if dmt else None)
    optim = OptimConfig(lr=1e-4, warmup_steps=2) if dmt else OptimConfig()
    return StudentTrainConfig(updater=UpdaterConfig(arch=arch), stream=sc, steps=steps, checkpoint_every=5,
                              device="cpu", optim=optim, phase_start=phase_start)


def _dmt(d: dict, run: str, arch: str, errors: list) -> list[threading.Thread]:
    """A lockstep DMT phase (steps 10..20, a round every 5 steps) and its DMT loop, as two threads."""
    def trainer():
        try:
            run_training(StudentRun(d["targets"], d["teacher"], run, endpoint_url=d["endpoint"]),
                         _cfg(arch, 20, 10, dmt=True),
                         hooks=LockstepDMTConfig(every=5, rounds=2, wait_seconds=120).hooks(), quiet=True)
        except Exception as e:  # noqa: BLE001 - asserted empty by the caller
            errors.append(e)

    def loop():
        try:
            DMTLoop(DMTLoopConfig(targets=d["targets"], run=run, corpus=SPEC, teacher=d["teacher"], rounds=2,
                                  every_steps=5, first_step=10, sequences=12, shard_sequences=6, dtype="float32",
                                  device="cpu", poll_seconds=0.05, timeout_seconds=120,
                                  endpoint_url=d["endpoint"])).run()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    return [threading.Thread(target=trainer), threading.Thread(target=loop)]


def _weights(run: str, step: int, endpoint: str | None = None) -> dict[str, torch.Tensor]:
    return load_student(f"{run}/checkpoints/step-{step:08d}/student", endpoint_url=endpoint)[0].state_dict()


def _round_table(run: str, endpoint: str | None) -> list[tuple[int, str, str]]:
    b = rounds_bucket(run, endpoint)
    return sorted((e.round, e.path, e.sha256) for e in read_generation(b, newest_generation(b)).shards)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_students_dmt_on_one_target_set_each_on_its_own_rounds(where, tmp_path, monkeypatch, request, capsys):
    """An mlp and a gru student run lockstep DMT on one target set at the same time. Each run's rounds hold only
    its own relabels, the shared set stays round 0 only, and each student ends bit-identical to the same run done
    alone (so neither trainer ever read the other's rounds)."""
    if where == "s3":
        url, endpoint = request.getfixturevalue("s3_bucket")
        root = url
    else:
        endpoint, root = None, str(tmp_path / "bucket")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread for every trainer and rollout: bit-identical arithmetic
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    try:
        d = _setup(root, tmp_path, endpoint)
        runs = {"mlp": f"{root}/runs/mlp", "gru": f"{root}/runs/gru", "solo": f"{root}/runs/mlp-alone"}
        for name, run in runs.items():  # the SMT phase (deterministic from the seed: "solo" equals "mlp")
            run_training(StudentRun(d["targets"], d["teacher"], run, endpoint_url=endpoint),
                         _cfg("gru" if name == "gru" else "mlp", 10), quiet=True)
        errors: list = []
        both = _dmt(d, runs["mlp"], "mlp", errors) + _dmt(d, runs["gru"], "gru", errors)
        for t in both:
            t.start()
        for t in both:
            t.join(timeout=300)
        assert not errors, errors
        alone = _dmt(d, runs["solo"], "mlp", errors)
        for t in alone:
            t.start()
        for t in alone:
            t.join(timeout=300)
        assert not errors, errors
    finally:
        monkeypatch.undo()
        torch.set_num_threads(threads)
    targets = Bucket.from_url(d["targets"], endpoint_url=endpoint)
    assert newest_generation(targets) == 1 and {e.round for e in read_generation(targets, 1).shards} == {0}
    mlp, gru, solo = (_round_table(runs[k], endpoint) for k in ("mlp", "gru", "solo"))
    assert [r for r, _, _ in mlp] == [1, 1, 2, 2] and [r for r, _, _ in gru] == [1, 1, 2, 2]
    assert not {s for *_, s in mlp} & {s for *_, s in gru}  # different students, different relabels
    assert mlp == solo  # the same student relabels the same bytes, whoever else runs
    for run in (runs["mlp"], runs["gru"]):
        assert [(r["round"], r["student_step"], r["generation"]) for r in round_reports(run, endpoint)] == \
            [(1, 10, 1), (2, 15, 2)]
    a, b = _weights(runs["mlp"], 20, endpoint), _weights(runs["solo"], 20, endpoint)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # inspect: the shared set, then each run's rounds pinned on its generation 1
    assert inspect_main([root, "--json", *(["--endpoint-url", endpoint] if endpoint else [])]) == 0
    (s,) = json.loads(capsys.readouterr().out)["target_sets"]
    assert s["rounds"] == {"0": s["rounds"]["0"]} and len(s["runs"]) == 3
    for run in s["runs"]:
        assert run["generation"] == 2 and run["base"]["generation"] == 1 and sorted(run["rounds"]) == ["1", "2"]
    assert inspect_main([runs["gru"], *(["--endpoint-url", endpoint] if endpoint else [])]) == 0  # a run: its set
    out = capsys.readouterr().out
    assert "round   0:" in out and f"run {Bucket.from_url(runs['gru']).url()}: rounds generation 2 on target-set " \
        "generation 1" in out


# ------------------------------------------------------------------------------------------ smt dmt alone


def _cli(module: str, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, check=False)


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # subprocesses compute like the in-process calls under the one_thread fixture


def _smt_train(d: dict, run: str) -> None:
    p = _cli("jobs.train", "--targets", d["targets"], "--teacher", d["teacher"], "--out", run, "--steps", "20",
             "--stream.batch-size", "32", "--stream.shuffle-buffer", "128", "--checkpoint-every", "10", "--device", "cpu",
             "--quiet", env=ONE_THREAD)
    assert p.returncode == 0, p.stderr[-2000:]


def _dmt_argv(d: dict, run: str, rounds: int, *extra: str) -> list[str]:
    return ["--targets", d["targets"], "--run", run, "--corpus", SPEC, "--teacher", d["teacher"], "--rounds",
            str(rounds), "--every-steps", "5", "--sequences", "12", "--shard-sequences", "6", "--dtype", "float32",
            "--device", "cpu", "--report", str(Path(run).parent / "report"), *extra]


@pytest.mark.usefixtures("one_thread")  # the subprocess and the in-process runs must share their kernels
def test_train_then_dmt_alone_from_the_command_line(tmp_path, capsys):
    """The README's order as a new user runs it: `smt train` (finished), then `smt dmt --rounds 2` with no trainer
    attached. It relabels, trains, relabels, trains, and ends: 2 rounds and a student 2 x 5 steps further, each
    round printed as it happens. Stopping after round 1 and going on gives the same student as one call."""
    d = _setup(str(tmp_path / "bucket"), tmp_path)
    run, split = str(tmp_path / "runs" / "gru"), str(tmp_path / "runs" / "gru-split")
    _smt_train(d, run)
    p = _cli("jobs.dmt", *_dmt_argv(d, run, 2, "--no-actor"), env=ONE_THREAD)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [line for line in p.stdout.splitlines() if line.startswith("round ")]
    assert [line.split(":")[0] for line in lines] == ["round 1"] * 3 + ["round 2"] * 3, p.stdout
    assert "student step 20 rollout_acc=" in lines[0] and "generation=1" in lines[0] and "records=144" in lines[0]
    assert "training the student from step 20 to 25 on round 0 + rounds 1..1" in lines[1]
    assert "student step 25" in lines[3] and "generation=2" in lines[3] and "to 30" in lines[4]
    assert json.loads(Path(run, "checkpoints/latest.json").read_text())["step"] == 30
    assert [(r["round"], r["student_step"]) for r in round_reports(run)] == [(1, 20), (2, 25)]
    metrics = {m["step"]: m for m in map(json.loads, Path(run, "metrics.jsonl").read_text().splitlines())}
    assert [metrics[s]["generation"] for s in range(16, 31)] == [0] * 5 + [1] * 5 + [2] * 5  # the aggregate grows
    assert Path(run, "config-phase-00000020.json").exists()  # one new phase of the run, from round 1's step
    from jobs.dmt import main as dmt_main
    from jobs.train import main as train_main

    capsys.readouterr()
    assert dmt_main(_dmt_argv(d, run, 2, "--no-actor")) == 0  # finished: nothing to do, no waiting
    assert not any(x.startswith("round ") for x in capsys.readouterr().out.splitlines())
    assert json.loads(Path(run, "checkpoints/latest.json").read_text())["step"] == 30
    # the same SMT run again (deterministic), then the same DMT job in two calls: the same student
    assert train_main(["--targets", d["targets"], "--teacher", d["teacher"], "--out", split, "--steps", "20",
                       "--stream.batch-size", "32", "--stream.shuffle-buffer", "128", "--checkpoint-every", "10",
                       "--device", "cpu",
                       "--quiet"]) == 0
    for rounds in (1, 2):
        assert dmt_main(_dmt_argv(d, split, rounds, "--no-actor", "--quiet")) == 0
    a, b = _weights(run, 30), _weights(split, 30)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_dmt_alone_in_a_ray_actor_prints_each_round(ray_local, tmp_path, capsys):
    """Actor mode (the default) streams each round's line and the training blocks to the driver in order."""
    from jobs.dmt import main as dmt_main

    d = _setup(str(tmp_path / "bucket"), tmp_path)
    run = str(tmp_path / "runs" / "mlp")
    run_training(StudentRun(d["targets"], d["teacher"], run), _cfg("mlp", 10), quiet=True)
    capsys.readouterr()
    assert dmt_main(_dmt_argv(d, run, 2, "--resources.num-cpus", "1")) == 0
    out = [line for line in capsys.readouterr().out.splitlines() if line.startswith("round ")]
    assert [line.split(":")[0] for line in out] == ["round 1"] * 3 + ["round 2"] * 3, out
    assert "student step 10 rollout_acc=" in out[0] and "trained to step 15" in out[2] and "to 20" in out[4]
    assert json.loads(Path(run, "checkpoints/latest.json").read_text())["step"] == 20


def test_dmt_alone_on_a_run_without_checkpoint_says_so(tmp_path, capsys):
    from jobs.dmt import main as dmt_main

    d = _setup(str(tmp_path / "bucket"), tmp_path)
    assert dmt_main(_dmt_argv(d, str(tmp_path / "nothing"), 2, "--no-actor")) == 2
    err = capsys.readouterr().err
    assert "has no checkpoint: train it first (smt train --out" in err and err.count("\n") == 1


def test_attached_dmt_says_what_it_waits_for(tmp_path):
    """With a trainer attached (--no-train), a round that has to wait prints what for and the time limit, and a
    trainer that never comes ends in a one-line error instead of hanging."""
    d = _setup(str(tmp_path / "bucket"), tmp_path)
    run = str(tmp_path / "runs" / "mlp")
    run_training(StudentRun(d["targets"], d["teacher"], run), _cfg("mlp", 10), quiet=True)
    p = _cli("jobs.dmt", *_dmt_argv(d, run, 2, "--no-actor", "--no-train", "--timeout-seconds", "1",
                                    "--poll-seconds", "0.05"))
    assert p.returncode == 2
    assert "round 1: student step 10" in p.stdout
    assert f"round 2: waiting up to 1 s for a checkpoint at step >= 15 in {run}" in p.stdout, p.stdout
    last = p.stderr.strip().splitlines()[-1]  # (after the relabel progress bar)
    assert last.startswith("smt dmt: error: round 2: waited 1 s for a checkpoint at step >= 15"), p.stderr
