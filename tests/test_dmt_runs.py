"""DMT rounds belong to a student run: two students relabel and train on one shared target set at the same
time and each sees only its own rounds (local folder and moto S3); `smt inspect` shows the set and each run."""
from __future__ import annotations

import json
import threading

import pytest
import torch

from jobs.inspect import main as inspect_main
from models.checkpoint import load_student, save_teacher
from models.updaters import UpdaterConfig
from pipeline.dmt_loop import DMTLoop, DMTLoopConfig, round_reports
from pipeline.executors import SerialExecutor
from pipeline.label import LabelConfig, label
from storage.bucket import Bucket
from storage.manifest import newest_generation, read_generation
from storage.rounds import rounds_bucket
from storage.stream import StreamConfig
from tests.label_data import tiny_teacher
from trainers.common import OptimConfig
from trainers.student import StudentTrainConfig, run_training

pytestmark = pytest.mark.timeout(600)
SPEC = "retrieval:T=12,vocab=8,n=48"


def _setup(out: str, tmp_path, endpoint: str | None = None) -> dict:
    teacher = str(tmp_path / "teacher")
    fp = save_teacher(teacher, tiny_teacher("causal"))
    rep = label(LabelConfig(teacher=teacher, corpus=SPEC, out=out, shard_sequences=12, batch_size=12, device="cpu",
                            endpoint_url=endpoint), SerialExecutor(), quiet=True)
    return {"targets": rep.target_url, "teacher": teacher, "fp": fp, "endpoint": endpoint}


def _cfg(arch: str, steps: int, phase_start: int = 0, every: int = 0, rounds: int = 0) -> StudentTrainConfig:
    sc = StreamConfig(batch_size=32, shuffle_buffer=128, seed=3, prefetch=0,
                      round_weights={"0": 1.0, "dmt": 2.0} if every else None)
    optim = OptimConfig(lr=1e-4, warmup_steps=2) if every else OptimConfig()
    return StudentTrainConfig(updater=UpdaterConfig(arch=arch), stream=sc, steps=steps, checkpoint_every=5,
                              device="cpu", optim=optim, phase_start=phase_start, dmt_every=every, dmt_rounds=rounds,
                              dmt_wait_seconds=120)


def _dmt(d: dict, run: str, arch: str, errors: list) -> list[threading.Thread]:
    """A lockstep DMT phase (steps 10..20, a round every 5 steps) and its DMT loop, as two threads."""
    def trainer():
        try:
            run_training(d["targets"], d["teacher"], run, _cfg(arch, 20, 10, 5, 2), endpoint_url=d["endpoint"],
                         quiet=True)
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


def _weights(run: str, step: int) -> dict[str, torch.Tensor]:
    return load_student(f"{run}/checkpoints/step-{step:08d}/student")[0].state_dict()


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
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # checkpoint loads read the run through the env
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
            run_training(d["targets"], d["teacher"], run, _cfg("gru" if name == "gru" else "mlp", 10),
                         endpoint_url=endpoint, quiet=True)
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
    a, b = _weights(runs["mlp"], 20), _weights(runs["solo"], 20)
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
