"""DMT relabeling and the DMT loop: correctness of the pairs, idempotence, executor equivalence, the loop
against a real trainer, a streaming trainer during commits, and a killed DMT driver."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from models.student_rnn import Student
from models.updaters import UpdaterConfig, matched_updater
from pipeline.corpora import load_corpus
from pipeline.executors import RayActorPool, SerialExecutor
from pipeline.label import LabelConfig, label
from pipeline.relabel import RelabelConfig, relabel, relabel_batch, round_items
from storage.bucket import Bucket
from storage.checkpoints import load_student, save_student, save_teacher
from storage.manifest import newest_generation, read_generation
from storage.reader import TargetSet
from storage.rounds import RunSource, rounds_bucket
from storage.stream import ShardStream
from tests.label_data import tiny_teacher
from trainers.common import OptimConfig
from trainers.dmt import LockstepDMTConfig, RefreshConfig
from trainers.dmt.actor import DMTLoop, DMTLoopConfig, round_reports
from trainers.dmt.mixing import StreamConfig
from trainers.student import StudentRun, StudentTrainConfig, check_hooks, run_training

REPO = Path(__file__).resolve().parents[2]
SPEC = "retrieval:T=12,vocab=8,n=48"


def _label(root: Path) -> dict:
    teacher = tiny_teacher("causal")
    fp = save_teacher(str(root / "teacher"), teacher)
    rep = label(LabelConfig(teacher=str(root / "teacher"), corpus=SPEC, out=str(root), shard_sequences=12,
                            batch_size=12, device="cpu"), SerialExecutor(), quiet=True)
    return {"targets": rep.target_url, "teacher": str(root / "teacher"), "fp": fp, "model": teacher,
            "run": str(root / "run")}


def _student(d: dict, path: Path, seed: int = 1) -> str:
    torch.manual_seed(seed)
    s = Student.from_teacher(d["model"], matched_updater(d["model"].cfg, UpdaterConfig(arch="mlp"))).eval()
    save_student(str(path), s, d["fp"], {})
    return str(path)


def _rcfg(d: dict, student: str, r: int, **kw) -> RelabelConfig:
    return RelabelConfig(targets=d["targets"], run=kw.pop("run", d["run"]), teacher=d["teacher"], student=student,
                         corpus=SPEC, round=r,
                         sequences=kw.pop("sequences", 24), shard_sequences=kw.pop("shard_sequences", 8),
                         dtype="float32", device="cpu", **kw)


def _round_shards(run: str, r: int) -> list[tuple[str, str]]:
    b = rounds_bucket(run)
    return sorted((e.path, e.sha256) for e in read_generation(b, newest_generation(b)).shards if e.round == r)


def _round_transitions(d: dict, r: int, run: str | None = None):
    from storage.schema import Transitions
    ts = TargetSet.open(rounds_bucket(run or d["run"]), d["fp"])
    return Transitions.concat([ts.read_shard(e) for e in ts.shards if e.round == r])


@pytest.fixture()
def labeled(tmp_path) -> dict:
    return _label(tmp_path)


# ------------------------------------------------------------------------------------------ relabel


def test_round_items_cover_the_window_without_loss():
    items = round_items(10, 2, 8, 4)  # window [8, 16) mod 10 wraps at the corpus end
    seqs = [s for it in items for s in range(it.start, it.stop)]
    assert seqs == [8, 9, 0, 1, 2, 3, 4, 5] and [it.index for it in items] == list(range(len(items)))
    assert all(it.stop <= 10 for it in items)


def test_pairs_are_student_rollout_and_teacher_targets(labeled, tmp_path):
    d = labeled
    st = _student(d, tmp_path / "s")
    rep = relabel(_rcfg(d, st, 1), SerialExecutor(), quiet=True)
    assert rep["committed"] and rep["generation"] == 1 and rep["records"] == 24 * 12
    assert rep["drift_by_step"][0] == 0.0 and len(rep["drift_by_step"]) == 13 and rep["drift_by_step"][-1] > 0
    tr = _round_transitions(d, 1)
    x, _ = load_corpus(SPEC).get(np.arange(24))
    student, _, _ = load_student(st)
    with torch.no_grad():
        xt = torch.as_tensor(x, dtype=torch.long)
        M = d["model"].encode_all(xt)
        S = student.rollout(xt, M[:, 0])  # the student alone, from m*_0
    order = np.lexsort((tr.pos, tr.seq))
    assert np.array_equal(tr.seq[order], np.repeat(np.arange(24), 12))
    np.testing.assert_allclose(tr.state_in[order], S[:, :-1].reshape(-1, S.shape[-1]).numpy(), atol=1e-5)
    np.testing.assert_allclose(tr.state_out[order], M[:, 1:].reshape(-1, M.shape[-1]).numpy(), atol=1e-5)
    assert np.allclose(tr.state_in[order][::12], M[:, 0].numpy(), atol=1e-6)  # every rollout starts at m*_0
    assert np.all(tr.drift[order][::12] == 0)
    # the round's report is reproduced by relabel_batch directly
    _, drift, _ = relabel_batch(student, d["model"], x, load_corpus(SPEC).get(np.arange(24))[1], np.arange(24))
    np.testing.assert_allclose(drift, rep["drift_by_step"], rtol=1e-4, atol=1e-6)


def test_committed_round_is_not_written_twice(labeled, tmp_path):
    d = labeled
    st = _student(d, tmp_path / "s")
    relabel(_rcfg(d, st, 1), SerialExecutor(), quiet=True)
    before = _round_shards(d["run"], 1)
    again = relabel(_rcfg(d, _student(d, tmp_path / "other", seed=7), 1), SerialExecutor(), quiet=True)
    assert again["committed"] is False and newest_generation(rounds_bucket(d["run"])) == 1
    assert _round_shards(d["run"], 1) == before
    assert newest_generation(Bucket.from_url(d["targets"])) == 1  # the shared set is only read


def test_serial_and_ray_pool_write_identical_rounds(ray_local, tmp_path):
    serial, pooled = _label(tmp_path / "a"), _label(tmp_path / "b")
    assert serial["fp"] == pooled["fp"]
    st = _student(serial, tmp_path / "s")
    relabel(_rcfg(serial, st, 1), SerialExecutor(), quiet=True)
    pool = RayActorPool(num_actors=2)
    relabel(_rcfg(pooled, st, 1), pool, quiet=True)
    a, b = _round_shards(serial["run"], 1), _round_shards(pooled["run"], 1)
    assert len(a) == 3 and a == b


# ------------------------------------------------------------------------------------------ the loop


def _train_cfg(steps: int, every: int = 10, follow_every: int = 0, **stream) -> StudentTrainConfig:
    sc = StreamConfig(batch_size=32, shuffle_buffer=128, seed=3, prefetch=0,
                      follow="steps" if follow_every else "never", follow_every=follow_every, **stream)
    return StudentTrainConfig(updater=UpdaterConfig(arch="mlp"), stream=sc, steps=steps, checkpoint_every=every,
                              device="cpu")


def _loop_cfg(d: dict, run: str, rounds: int, every_steps: int, **kw) -> DMTLoopConfig:
    return DMTLoopConfig(targets=d["targets"], run=run, corpus=SPEC, teacher=d["teacher"], rounds=rounds,
                         every_steps=every_steps, sequences=12, shard_sequences=6, dtype="float32", device="cpu",
                         poll_seconds=0.05, **{"timeout_seconds": 30, **kw})


def test_loop_follows_a_real_training_run(labeled, tmp_path):
    d = labeled
    run = str(tmp_path / "run")
    run_training(StudentRun(d["targets"], d["teacher"], run), _train_cfg(30), quiet=True)
    assert [r["student_step"] for r in DMTLoop(_loop_cfg(d, run, rounds=1, every_steps=20)).run()] == [30]
    run_training(StudentRun(d["targets"], d["teacher"], run), _train_cfg(50), quiet=True)  # resumes: 20 more steps
    loop = DMTLoop(_loop_cfg(d, run, rounds=2, every_steps=20))
    reps = loop.run()
    assert [r["round"] for r in reps] == [2] and reps[0]["committed"]
    pins = [json.loads(rounds_bucket(run).read_bytes(f"dmt/intent-{r:03d}.json")) for r in (1, 2)]
    # each round pins a copy of its checkpoint in policy/, which the trainer's retention never prunes
    assert pins == [{"step": 30, "path": "policy/step-00000030"}, {"step": 50, "path": "policy/step-00000050"}]
    assert [(r["student_step"], r["generation"]) for r in round_reports(run)] == [(30, 1), (50, 2)]
    assert load_student(f"{run}/checkpoints/step-00000050/student")[1] == d["fp"]
    assert loop.run() == []  # restart: nothing left to do
    assert newest_generation(rounds_bucket(run)) == 2 and newest_generation(Bucket.from_url(d["targets"])) == 1


def test_loop_rounds_pin_advancing_checkpoints(labeled, tmp_path):
    """The loop runs beside a live trainer: each round waits for `every_steps` more steps."""
    d = labeled
    run = str(tmp_path / "run")
    cfg = _train_cfg(90, every=10, follow_every=5, round_weights={"0": 1.0, "dmt": 1.0})
    t = threading.Thread(target=run_training, args=(StudentRun(d["targets"], d["teacher"], run), cfg),
                         kwargs={"quiet": True})
    t.start()
    try:
        reps = DMTLoop(_loop_cfg(d, run, rounds=3, every_steps=20)).run()
    finally:
        t.join()
    steps = [r["student_step"] for r in reps]
    assert [r["round"] for r in reps] == [1, 2, 3]
    assert steps[0] >= 20 and all(b - a >= 20 for a, b in itertools.pairwise(steps))
    metrics = [json.loads(line) for line in Path(f"{run}/metrics.jsonl").read_text().splitlines()]
    assert max(m["generation"] for m in metrics) > 0  # the trainer picked the run's rounds up


# ------------------------------------------------------------------------------------------ concurrency


class _Recorder:
    """Wraps ShardStream.__iter__ to record each batch's generation and its records' identity."""

    def __init__(self):
        self.rows: list[dict] = []

    def install(self, monkeypatch):
        orig = ShardStream.__iter__
        rows = self.rows

        def it(stream):
            for b in orig(stream):
                c = stream.cursors[0]
                rows.append({"generation": c.generation, "batches": c.batches, "shard": b["shard"].numpy().copy(),
                             "index": b["index"].numpy().copy(), "state_in": b["state_in"].numpy().copy()})
                yield b
        monkeypatch.setattr(ShardStream, "__iter__", it)


def _digest(rows) -> list[str]:
    return [hashlib.sha256(r["shard"].tobytes() + r["index"].tobytes() + r["state_in"].tobytes()).hexdigest()
            for r in rows]


def test_streaming_trainer_during_commits(labeled, tmp_path, monkeypatch):
    d = labeled
    run = str(tmp_path / "run")
    every = 4
    cfg = _train_cfg(90, every=10, follow_every=every, round_weights={"0": 1.0, "dmt": 2.0})
    rec = _Recorder()
    rec.install(monkeypatch)
    t = threading.Thread(target=run_training, args=(StudentRun(d["targets"], d["teacher"], run), cfg),
                         kwargs={"quiet": True})
    t.start()
    try:
        DMTLoop(_loop_cfg(d, run, rounds=3, every_steps=20)).run()
    finally:
        t.join()
    monkeypatch.undo()
    rows = rec.rows[:90]
    gens = [r["generation"] for r in rows]
    assert gens[0] == 0 and len(set(gens)) >= 2, gens
    for k in range(1, len(rows)):  # batch k (0-based) may switch only when k batches were drawn, k % every == 0
        if gens[k] != gens[k - 1]:
            assert k % every == 0, (k, gens)
    # no partial shard: every record equals the committed shard's bytes read afterwards
    source = RunSource(TargetSet.open(d["targets"], d["fp"]), rounds_bucket(run))
    cache = {}
    for r in rows:
        ts = source.view(r["generation"])
        shards = ts.shards
        for s in np.unique(r["shard"]):
            e = shards[int(s)]
            if e.path not in cache:
                cache[e.path] = ts.read_shard(e).state_in
            m = r["shard"] == s
            np.testing.assert_array_equal(r["state_in"][m], cache[e.path][r["index"][m]])
    # the same generation schedule replays the same batches
    sched = {k: gens[k] for k in range(len(gens))}
    stream = ShardStream(RunSource(TargetSet.open(d["targets"], d["fp"], 1), rounds_bucket(run), generation=0), cfg.stream,
                         agree=lambda newest: min(newest, sched[stream.cursors[0].batches]))
    rec2 = _Recorder()
    rec2.install(monkeypatch)
    it = iter(stream)
    for _ in range(len(rows)):
        next(it)
    stream.close()
    assert [r["generation"] for r in rec2.rows] == gens
    assert _digest(rec2.rows) == _digest(rows)


# ------------------------------------------------------------------------------------------ lockstep DMT


def _dmt_phase_cfg(steps: int, start: int, every: int) -> StudentTrainConfig:
    sc = StreamConfig(batch_size=32, shuffle_buffer=128, seed=3, prefetch=0, round_weights={"0": 1.0, "dmt": 2.0})
    return StudentTrainConfig(updater=UpdaterConfig(arch="mlp"), stream=sc, steps=steps, checkpoint_every=2 * every,
                              device="cpu", optim=OptimConfig(lr=1e-4, warmup_steps=2, schedule="cosine"),
                              phase_start=start)


def _lockstep_hooks(every: int, rounds: int, wait_seconds: float = 600.0, refresh: bool = False) -> list:
    return LockstepDMTConfig(every=every, rounds=rounds, wait_seconds=wait_seconds,
                             refresh=RefreshConfig(enabled=refresh)).hooks()


def _lockstep(d: dict, run: str, monkeypatch) -> tuple[list[dict], list[dict]]:
    """SMT for 20 steps, then a DMT phase (rounds every 5 steps) beside a lockstep DMT loop. Both run in this
    process, so torch uses one thread throughout (the relabel stage sets the thread count of the process,
    which would otherwise change the trainer's float rounding mid-run; as actors they are separate processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    run_training(StudentRun(d["targets"], d["teacher"], run), _train_cfg(20), quiet=True)
    rec = _Recorder()
    rec.install(monkeypatch)
    err: list[BaseException] = []

    def trainer():
        try:
            run_training(StudentRun(d["targets"], d["teacher"], run), _dmt_phase_cfg(40, 20, 5), quiet=True,
                         hooks=_lockstep_hooks(5, 3, wait_seconds=60))
        except Exception as e:  # noqa: BLE001 - re-raised by the assertion below
            err.append(e)

    t = threading.Thread(target=trainer)
    t.start()
    try:
        reps = DMTLoop(_loop_cfg(d, run, rounds=3, every_steps=5, first_step=20)).run()
    finally:
        t.join()
        monkeypatch.undo()
        torch.set_num_threads(threads)
    assert not err, err
    return reps, rec.rows


def test_lockstep_dmt_bounds_policy_lag_and_replays_exactly(tmp_path, monkeypatch):
    """The trainer waits for the round it needs, switches generation only at round boundaries, the actor
    rolls out exactly the boundary checkpoints, and a second run from the same inputs is bit-identical."""
    d = _label(tmp_path / "a")
    run = str(tmp_path / "a" / "run")
    reps, rows = _lockstep(d, run, monkeypatch)
    assert [(r["round"], r["student_step"], r["generation"]) for r in reps] == [(1, 20, 1), (2, 25, 2), (3, 30, 3)]
    metrics = {m["step"]: m for m in map(json.loads, Path(f"{run}/metrics.jsonl").read_text().splitlines())}
    gens = [metrics[s]["generation"] for s in range(21, 41)]
    # steps 21-30 train on round 1 (the run's rounds generation 1), 31-35 on round 2, 36-40 on round 3: a
    # student at most 2 x 5 steps older than the one being trained
    assert gens == [1] * 10 + [2] * 5 + [3] * 5, gens
    assert all(m["generation"] == 0 for s, m in metrics.items() if s <= 20)  # round 0 alone
    # the DMT phase restarts the schedule at its own lr (logged: the lr of the next step): warm-up, then cosine
    assert metrics[20]["lr"] == pytest.approx(OptimConfig().lr) and metrics[21]["lr"] == pytest.approx(1e-4)
    assert metrics[40]["lr"] == pytest.approx(1e-5)
    assert json.loads(Path(f"{run}/config-phase-00000020.json").read_text())["dmt"]["every"] == 5
    from storage.run_dir import RunDir, unflatten_optimizer
    _, tensors, meta = RunDir(run).load({"step": 30, "path": "checkpoints/step-00000030"})
    opt = unflatten_optimizer(tensors, meta["optimizer"])
    assert {float(v["step"]) for v in opt["state"].values()} == {10.0}  # fresh AdamW moments at the phase start
    # round 2 rolled out the weights-only snapshot of step 25 (full checkpoints every 10 steps: 20, 30, 40)
    pins = [json.loads(rounds_bucket(run).read_bytes(f"dmt/intent-{r:03d}.json"))["path"] for r in (1, 2, 3)]
    assert pins == ["checkpoints/step-00000020", "policy/step-00000025", "checkpoints/step-00000030"]
    assert not Path(run, "checkpoints/step-00000025").exists()
    # the replay: the same labels, trainer and rounds give the same batches and the same student
    d2 = _label(tmp_path / "b")
    run2 = str(tmp_path / "b" / "run")
    reps2, rows2 = _lockstep(d2, run2, monkeypatch)
    assert [r["student_step"] for r in reps2] == [20, 25, 30]
    assert _digest(rows2) == _digest(rows)
    a, _, _ = load_student(f"{run}/checkpoints/step-00000040/student")
    b, _, _ = load_student(f"{run2}/checkpoints/step-00000040/student")
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(v, w), k


def test_fresh_round_replays_the_relabel_with_the_current_student(labeled, tmp_path):
    """The on-policy refresh: the newest round's stored states are replaced by the current student's own rollout."""
    from trainers.dmt.refresh import FreshRound

    d = labeled
    a, b = _student(d, tmp_path / "a", seed=1), _student(d, tmp_path / "b", seed=2)
    relabel(_rcfg(d, a, 1), SerialExecutor(), quiet=True)  # round 1 rolled out by student a
    relabel(_rcfg(d, b, 2), SerialExecutor(), quiet=True)  # round 2 by student b (the reference for a refresh)
    source = RunSource(TargetSet.open(d["targets"], d["fp"]), rounds_bucket(d["run"]), generation=1)
    stream = ShardStream(source, StreamConfig(batch_size=64, shuffle_buffer=64, round_weights={"dmt": 1.0}))
    fresh = FreshRound(stream, 1, torch.device("cpu"))  # the run's rounds generation 1: round 1 is its newest
    assert fresh.round == 1 and fresh.Td == 12 and fresh.tokens.shape == (24, 12)
    batch = next(iter(stream))
    assert set(batch["round"].tolist()) == {1}
    stored = batch["state_in"].clone()
    sa, _, _ = load_student(a)
    assert fresh.refresh(sa, batch) == 64
    torch.testing.assert_close(batch["state_in"], stored)  # the same student: the same states
    sb, _, _ = load_student(b)
    fresh.refresh(sb, batch)
    assert not torch.allclose(batch["state_in"], stored)
    # student b's states on round 1's sequences are what relabeling them with b records
    corpus = load_corpus(SPEC)
    ts = stream.target_set(1)
    seq = np.array([ts.read_shard(ts.shards[int(s)]).seq[int(i)] for s, i in zip(batch["shard"], batch["index"])])
    pos = np.array([ts.read_shard(ts.shards[int(s)]).pos[int(i)] for s, i in zip(batch["shard"], batch["index"])])
    x, y = corpus.get(np.unique(seq))
    from storage.checkpoints import load_teacher
    p, _, _ = relabel_batch(sb, load_teacher(d["teacher"])[0], x, y, np.unique(seq))
    want = {(int(q), int(t)): p.state_in[k] for k, (q, t) in enumerate(zip(p.seq, p.pos))}
    np.testing.assert_allclose(batch["state_in"].numpy(), np.stack([want[(int(q), int(t))] for q, t in zip(seq, pos)]),
                               rtol=1e-5, atol=1e-5)
    stream.close()


def test_lockstep_with_refresh_trains(labeled, tmp_path):
    d = labeled
    run = str(tmp_path / "run")
    run_training(StudentRun(d["targets"], d["teacher"], run), _train_cfg(20), quiet=True)
    t = threading.Thread(target=run_training, args=(StudentRun(d["targets"], d["teacher"], run),
                                                    _dmt_phase_cfg(30, 20, 5)),
                         kwargs={"quiet": True, "hooks": _lockstep_hooks(5, 2, refresh=True)})
    t.start()
    try:
        reps = DMTLoop(_loop_cfg(d, run, rounds=2, every_steps=5, first_step=20)).run()
    finally:
        t.join()
    assert [r["student_step"] for r in reps] == [20, 25]
    metrics = [json.loads(line) for line in Path(f"{run}/metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 30 and all(np.isfinite(m["loss"]) for m in metrics)
    with pytest.raises(ValueError, match="refresh needs lockstep"):
        LockstepDMTConfig(refresh=RefreshConfig(enabled=True))


def test_lockstep_refresh_on_two_ddp_workers(ray_local, labeled, tmp_path):
    """The DMT phase on 2 Ray Train workers (DDP, gloo) beside the loop: both ranks wait for and switch to the
    same rounds, re-roll them, and the phase may change the world size of the SMT run it resumes."""
    from trainers.distributed import RayGroup, train_with_ray

    d = labeled
    run = str(tmp_path / "run")
    run_training(StudentRun(d["targets"], d["teacher"], run), _train_cfg(20), quiet=True)
    box: dict = {}
    loop = threading.Thread(target=lambda: box.setdefault(
        "reps", DMTLoop(_loop_cfg(d, run, rounds=2, every_steps=5, first_step=20, timeout_seconds=120)).run()))
    loop.start()
    try:
        train_with_ray(StudentRun(d["targets"], d["teacher"], run), _dmt_phase_cfg(35, 20, 5), RayGroup(2), quiet=True,
                       hooks=_lockstep_hooks(5, 2, wait_seconds=120, refresh=True))
    finally:
        loop.join(timeout=180)
    assert [r["student_step"] for r in box["reps"]] == [20, 25]
    state = json.loads(Path(f"{run}/checkpoints/step-00000035/state.json").read_text())
    assert state["stream"]["layout"]["world_size"] == 2 and state["stream"]["generation"] == 2
    assert json.loads(Path(f"{run}/checkpoints/latest.json").read_text())["step"] == 35


def test_lockstep_trainer_without_actor_names_the_fix(labeled, tmp_path):
    from trainers.dmt import DMTWaitTimeout

    d = labeled
    run = str(tmp_path / "run")
    run_training(StudentRun(d["targets"], d["teacher"], run), _train_cfg(20), quiet=True)
    with pytest.raises(DMTWaitTimeout, match=r"DMT round 1 was not committed .* \(smt dmt .*--first-step 20 --every-steps 5"):
        run_training(StudentRun(d["targets"], d["teacher"], run), _dmt_phase_cfg(30, 20, 5), quiet=True,
                     hooks=_lockstep_hooks(5, 2, wait_seconds=0.5))
    # the wait happened after the round-1 checkpoint (step 20, already there): nothing trained, nothing lost
    assert json.loads(Path(f"{run}/checkpoints/latest.json").read_text())["step"] == 20


def test_lockstep_loop_refuses_a_run_without_the_boundary_checkpoint(labeled, tmp_path):
    from trainers.dmt.actor import DMTTimeout

    d = labeled
    run = str(tmp_path / "run")
    run_training(StudentRun(d["targets"], d["teacher"], run), _train_cfg(30, every=10), quiet=True)
    with pytest.raises(DMTTimeout, match=r"no checkpoint or policy snapshot at step 25 .*--dmt\.every 5"):
        DMTLoop(_loop_cfg(d, run, rounds=1, every_steps=5, first_step=25)).run()
    assert newest_generation(rounds_bucket(run)) == 0


def test_lockstep_config_is_validated():
    with pytest.raises(ValueError, match="both"):
        _lockstep_hooks(5, 0)
    with pytest.raises(ValueError, match="follow='never'"):
        check_hooks(StudentTrainConfig(stream=StreamConfig(follow="epoch"), steps=40, phase_start=20),
                    _lockstep_hooks(5, 2))
    with pytest.raises(ValueError, match="phase_start"):
        StudentTrainConfig(steps=10, phase_start=10)


# ------------------------------------------------------------------------------------------ faults


def _dmt_cli(d: dict, run: str, rounds: int, die: list[str] = ()) -> subprocess.CompletedProcess:
    """`smt dmt` in a subprocess; `die` = [N, how] runs it under tests/faults.py (killed after N shards)."""
    argv = ["--targets", d["targets"], "--run", run, "--corpus", SPEC, "--teacher", d["teacher"],
            "--rounds", str(rounds), "--every-steps", "10", "--sequences", "24", "--shard-sequences", "6",
            "--dtype", "float32", "--device", "cpu", "--poll-seconds", "0.05", "--timeout-seconds", "30",
            "--no-actor", "--quiet", "--report", str(Path(run).parent / "report")]
    entry = ["-m", "tests.faults", *die, "jobs.dmt"] if die else ["-m", "jobs.dmt"]
    return subprocess.run([sys.executable, *entry, *argv], check=False, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)


def test_killed_dmt_driver_leaves_no_partial_round_and_resumes_once(tmp_path):
    d, ref = _label(tmp_path / "a"), _label(tmp_path / "b")
    run = str(tmp_path / "run")
    run_training(StudentRun(d["targets"], d["teacher"], run), _train_cfg(20), quiet=True)
    p = _dmt_cli(d, run, 1)  # round 1 completes
    assert p.returncode == 0, p.stderr
    b = rounds_bucket(run)
    assert newest_generation(b) == 1
    run_training(StudentRun(d["targets"], d["teacher"], run), _train_cfg(40), quiet=True)  # the student moves on
    p = _dmt_cli(d, run, 2, ["2", "sigkill"])  # killed (SIGKILL) after 2 of round 2's 4 shards
    assert p.returncode == -9, (p.returncode, p.stderr[-2000:])
    assert newest_generation(b) == 1  # the partial round is invisible
    written = sorted(x.name for x in Path(b.url("round-002").removeprefix("file://")).iterdir())
    assert len(written) == 2
    pin = json.loads(b.read_bytes("dmt/intent-002.json"))
    assert pin["step"] == 40
    run_training(StudentRun(d["targets"], d["teacher"], run), _train_cfg(60), quiet=True)  # newer checkpoint: not used
    p = _dmt_cli(d, run, 2)
    assert p.returncode == 0, p.stderr
    assert newest_generation(b) == 2
    tr = _round_transitions(d, 2, run)
    keys = tr.seq * 100 + tr.pos
    assert len(np.unique(keys)) == len(keys) == 24 * 12  # every (sequence, position) exactly once
    # an uninterrupted run from the same pinned checkpoint writes the same bytes
    st = f"{run}/{pin['path']}/student"
    relabel(_rcfg(ref, st, 2, shard_sequences=6), SerialExecutor(), quiet=True)
    assert _round_shards(ref["run"], 2) == _round_shards(run, 2)
    assert [r["round"] for r in round_reports(run)] == [1, 2]
    assert round_reports(run)[1]["student_step"] == 40


def test_lockstep_from_the_command_line(labeled, tmp_path):
    """`smt train --phase-start --dmt.every --dmt.rounds --dmt.refresh.enabled` beside `smt dmt --first-step`."""
    from jobs.train import main as train_main

    d = labeled
    run = str(tmp_path / "run")
    common = ["--targets", d["targets"], "--teacher", d["teacher"], "--out", run, "--stream.batch-size", "32",
              "--stream.shuffle-buffer", "128", "--device", "cpu", "--quiet"]
    assert train_main([*common, "--steps", "20", "--checkpoint-every", "10"]) == 0
    argv = ["--targets", d["targets"], "--run", run, "--corpus", SPEC, "--teacher", d["teacher"], "--rounds", "2",
            "--every-steps", "5", "--first-step", "20", "--sequences", "12", "--shard-sequences", "6", "--dtype",
            "float32", "--device", "cpu", "--poll-seconds", "0.05", "--timeout-seconds", "60", "--no-actor", "--quiet",
            "--report", str(tmp_path / "report")]
    actor = subprocess.Popen([sys.executable, "-m", "jobs.dmt", *argv], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert train_main([*common, "--steps", "35", "--checkpoint-every", "10", "--phase-start", "20", "--dmt.every",
                           "5", "--dmt.rounds", "2", "--dmt.refresh.enabled", "--stream.round-decay", "0.1",
                           "--optim.lr", "1e-4", "--stream.round-weights", "0", "1", "dmt", "2",
                           "--dmt.wait-seconds", "60"]) == 0
        _, err = actor.communicate(timeout=120)
    finally:
        actor.kill()
    assert actor.returncode == 0, err[-2000:]
    assert [(r["round"], r["student_step"]) for r in round_reports(run)] == [(1, 20), (2, 25)]
    metrics = [json.loads(line) for line in Path(f"{run}/metrics.jsonl").read_text().splitlines()]
    assert [m["generation"] for m in metrics if m["step"] > 20] == [1] * 10 + [2] * 5  # round 2 from step 31


def test_crash_after_commit_repairs_report(labeled, tmp_path):
    d = labeled
    run = str(tmp_path / "run")
    run_training(StudentRun(d["targets"], d["teacher"], run), _train_cfg(20), quiet=True)
    loop = DMTLoop(_loop_cfg(d, run, rounds=1, every_steps=10))
    loop.run()
    b = rounds_bucket(run)
    b.remove("dmt/round-001.json")
    assert round_reports(run) == []
    assert DMTLoop(loop.cfg).run() == []
    rep = round_reports(run)
    assert [r["round"] for r in rep] == [1] and rep[0]["generation"] == 1 and rep[0]["drift_by_step"][0] == 0


def test_ray_actor_loop(ray_local, labeled, tmp_path):
    d = labeled
    run = str(tmp_path / "run")
    run_training(StudentRun(d["targets"], d["teacher"], run), _train_cfg(20), quiet=True)
    actor = ray_local.remote(num_cpus=1)(DMTLoop).remote(_loop_cfg(d, run, rounds=1, every_steps=10))
    reps = ray_local.get(actor.run.remote(True), timeout=120)
    ray_local.kill(actor)
    assert [r["round"] for r in reps] == [1] and newest_generation(rounds_bucket(run)) == 1


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_end_to_end_dmt_on_ray(tmp_path):
    """Pretrained causal teacher on retrieval:T=64, 2-actor labeling, trainer and DMT loop as Ray actors:
    the rolled-out answer accuracy rises from the SMT-only value to >= 95%. (Minutes on 2 CPU cores.)"""
    from benchmarks.dmt import E2EConfig, run

    res = run(E2EConfig(root=str(tmp_path), teacher=os.environ.get("SMT_DMT_E2E_TEACHER"), online=False))
    print(json.dumps({k: res[k] for k in ("smt", "after_rounds", "rounds", "dmt")}, indent=1))
    accs = [a["acc"] for a in res["after_rounds"]]
    assert res["teacher_acc"] >= 0.99
    assert accs[-1] >= 0.95 and accs[-1] >= accs[0], accs
    assert res["after_rounds"][-1]["drift_final"] < res["after_rounds"][0]["drift_final"]
    assert [r["round"] for r in res["rounds"]] == list(range(1, 41))
    assert [r["student_step"] for r in res["rounds"]] == [600 + 2 * k for k in range(40)]  # lockstep pins
