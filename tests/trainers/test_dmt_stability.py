"""The DMT variants against the dip (trainers/dmt/stability.py) each do what they say, on tiny real runs:
DAgger's beta mixes the stated share of teacher states (online rows, lockstep round-0 records), the EMA
policy is what gets rolled out (online and by the lockstep DMT actor) and survives a resume, and the carried
optimizer state is the SMT phase's end state."""
from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.student_rnn import Student
from models.updaters import UpdaterConfig, matched_updater
from pipeline.corpora import load_corpus
from pipeline.executors import SerialExecutor
from pipeline.relabel import RelabelConfig, relabel
from storage.checkpoints import load_student, load_teacher
from storage.reader import TargetSet
from storage.rounds import RunSource, rounds_bucket
from storage.run_dir import RunDir, unflatten_optimizer
from storage.stream import ShardStream
from tests.trainers.test_dmt import _label
from trainers.common import OptimConfig
from trainers.dmt import LockstepDMTConfig, OnlineDMT, OnlineDMTConfig, RefreshConfig, dmt_online
from trainers.dmt.actor import DMTLoop, DMTLoopConfig
from trainers.dmt.mixing import StreamConfig, teacher_share
from trainers.dmt.online import dmt_inputs, dmt_losses
from trainers.dmt.stability import EMA
from trainers.student import Loop, StudentRun, StudentTrainConfig, build_state, run_training

SPEC = "retrieval:T=12,vocab=8,n=48"


@pytest.fixture()
def labeled(tmp_path) -> dict:
    return _label(tmp_path)


def _stream(**kw) -> StreamConfig:
    return StreamConfig(batch_size=32, shuffle_buffer=128, seed=3, prefetch=0, **kw)


def _smt(d: dict, steps: int = 20) -> None:
    run_training(StudentRun(d["targets"], d["teacher"], d["run"]),
                 StudentTrainConfig( updater=UpdaterConfig(arch="mlp"), stream=_stream(), steps=steps, checkpoint_every=steps, device="cpu"),
                 quiet=True)


def _dmt_cfg(steps: int, start: int, every: int, rounds: int, **dmt) -> tuple[StudentTrainConfig, list]:
    """The DMT phase's training config and its lockstep hooks (refresh on, like the pipeline's)."""
    cfg = StudentTrainConfig(updater=UpdaterConfig(arch="mlp"), stream=_stream(round_weights={"0": 1.0, "dmt": 2.0}),
                             steps=steps, checkpoint_every=2 * every, device="cpu", phase_start=start,
                             optim=OptimConfig(lr=1e-4, warmup_steps=2, schedule="cosine"))
    return cfg, LockstepDMTConfig(every=every, rounds=rounds, wait_seconds=60, refresh=RefreshConfig(enabled=True),
                                  **dmt).hooks()


def _started(d: dict, cfg: StudentTrainConfig, hook):
    """The run's train state as a resume builds it, after `hook.start` (what the loop does first)."""
    rd = RunDir(d["run"])
    state = build_state(TargetSet.open(d["targets"], d["fp"]), load_teacher(d["teacher"])[0], d["fp"], cfg, rd)
    hook.start(Loop(state, rd, None, True, None))
    return state


def _student(d: dict, seed: int) -> Student:
    torch.manual_seed(seed)
    return Student.from_teacher(d["model"], matched_updater(d["model"].cfg, UpdaterConfig(arch="mlp"))).eval()


# ------------------------------------------------------------------------------------------ beta


def test_teacher_share_decays_to_its_floor():
    assert teacher_share(0.9, 10, 0) == pytest.approx(0.9)
    assert teacher_share(0.9, 10, 10) == pytest.approx(0.45)
    assert teacher_share(0.9, 10, 20, floor=1 / 3) == pytest.approx(1 / 3 + (0.9 - 1 / 3) / 4)
    assert teacher_share(0.2, 5, 0, floor=1 / 3) == pytest.approx(1 / 3)  # never below the floor
    with pytest.raises(ValueError, match="beta=1.5 must be in"):
        OnlineDMTConfig(beta=1.5)
    with pytest.raises(ValueError, match="needs positive '0' and 'dmt' weights"):
        StreamConfig(beta=0.9, round_weights={"dmt": 1.0})


def test_lockstep_beta_mixes_the_stated_share_of_round_0(labeled, tmp_path):
    """Each generation's epoch holds round-0 records in the share teacher_share(beta, half-life, newest-1,
    floor = round 0's configured share) gives, and the configured share without beta."""
    d = labeled
    from storage.checkpoints import save_student
    save_student(str(tmp_path / "s"), _student(d, 1), d["fp"], {})
    for r in (1, 2, 3):
        relabel(RelabelConfig(targets=d["targets"], run=d["run"], teacher=d["teacher"], student=str(tmp_path / "s"),
                              corpus=SPEC, round=r, sequences=12, shard_sequences=12, dtype="float32", device="cpu"),
                SerialExecutor(), quiet=True)
    source = RunSource(TargetSet.open(d["targets"], d["fp"]), rounds_bucket(d["run"]))
    for beta, want in ((None, lambda r: 1 / 3), (0.9, lambda r: teacher_share(0.9, 2.0, r - 1, floor=1 / 3))):
        stream = ShardStream(source, _stream(round_weights={"0": 1.0, "dmt": 2.0}, beta=beta, beta_halflife=2.0))
        for g in (1, 2, 3):  # the run's rounds generation g holds rounds 1..g
            plan = stream.plan(g, 0)  # computed lazily: the whole epoch's shard of every position
            shard, _ = plan.slice(0, len(plan))
            rounds = np.array([stream.target_set(g).shards[i].round for i in shard])
            assert abs((rounds == 0).mean() - want(g)) <= 1 / len(rounds), (beta, g)
        stream.close()


def test_online_beta_trains_the_stated_rows_from_teacher_states(labeled):
    d = labeled
    teacher, corpus = d["model"], load_corpus(SPEC)
    x = torch.as_tensor(corpus.sample(6, np.random.default_rng(0))[0], dtype=torch.long)
    M = teacher.encode_all(x).detach()
    policy = _student(d, 2)
    m_in = dmt_inputs(policy, M, x, 0, 12, n_teacher=2)
    torch.testing.assert_close(m_in[:2], M[:2, :12])  # teacher rows: m*_0 .. m*_11
    torch.testing.assert_close(m_in[2:], policy.rollout(x[2:], M[2:, 0])[:, :12])  # the policy's own states
    cfg = OnlineDMTConfig(steps=4, batch_size=8, beta=0.5, beta_halflife=2.0, eval_every=1, eval_size=8, device="cpu")
    r = dmt_online(_student(d, 1), teacher, corpus, cfg, quiet=True)
    rows = [h["teacher_rows"] for h in r["history"] if "teacher_rows" in h]
    assert rows == [round(8 * 0.5 * 0.5 ** ((s - 1) / 2)) for s in (1, 2, 3, 4)] == [4, 3, 2, 1]


# ------------------------------------------------------------------------------------------ EMA


def test_ema_update_and_online_rollout_use_the_ema_weights(labeled):
    d = labeled
    a, b = _student(d, 1), _student(d, 2)
    ema = EMA(a, 0.75)
    ema.update(b)
    for e, p, q in zip(ema.model.parameters(), a.parameters(), b.parameters()):
        torch.testing.assert_close(e, 0.75 * p + 0.25 * q)
    corpus = load_corpus(SPEC)
    x, y = (torch.as_tensor(v, dtype=torch.long) for v in corpus.sample(4, np.random.default_rng(1)))
    M = d["model"].encode_all(x).detach()
    own = dmt_losses(a, M, x, y, range(12), (10.0, 1.0))
    via = dmt_losses(a, M, x, y, range(12), (10.0, 1.0), policy=b)
    S = a.step(dmt_inputs(b, M, x, 0, 12).reshape(-1, M.shape[-1]), x.reshape(-1))
    torch.testing.assert_close(via["loss_state"], torch.nn.functional.mse_loss(S, M[:, 1:].reshape(-1, M.shape[-1])))
    assert not torch.isclose(own["loss_state"], via["loss_state"])
    dmt = OnlineDMT(_student(d, 1), d["model"], corpus, OnlineDMTConfig(steps=3, batch_size=4, ema=0.5, eval_every=3,
                                                                   eval_size=8, device="cpu"))
    r = dmt.run(quiet=True)
    pol = dmt.state.ema.model
    assert any(not torch.equal(p, q) for p, q in zip(pol.parameters(), r["student"].parameters()))


def test_lockstep_actor_rolls_out_the_ema_policy_and_a_resume_keeps_it(labeled):
    d = labeled
    run = d["run"]
    _smt(d)
    cfg, hooks = _dmt_cfg(30, 20, 5, 2, ema=0.5)
    t = threading.Thread(target=run_training, args=(StudentRun(d["targets"], d["teacher"], run), cfg),
                         kwargs={"quiet": True, "hooks": hooks})
    t.start()
    try:
        reps = DMTLoop(DMTLoopConfig(targets=d["targets"], run=run, corpus=SPEC, teacher=d["teacher"], rounds=2,
                                     every_steps=5, first_step=20, sequences=12, shard_sequences=6, dtype="float32",
                                     device="cpu", poll_seconds=0.05, timeout_seconds=60)).run()
    finally:
        t.join()
    # round 1 rolls out the SMT checkpoint of step 20, where the phase (and the EMA, a copy of the student)
    # starts; round 2 the EMA policy of step 25, which lags the student
    assert [Path(r["student"]).name for r in reps] == ["student", "rollout"]
    assert [r["student"].rsplit("/", 2)[-2] for r in reps] == ["step-00000020", "step-00000025"]
    pol, live = (load_student(f"{run}/policy/step-00000025/{k}")[0] for k in ("rollout", "student"))
    assert any(not torch.equal(p, q) for p, q in zip(pol.parameters(), live.parameters()))
    hook = LockstepDMTConfig(every=5, rounds=2, ema=0.5).hooks()[0]
    state = _started(d, replace(cfg, steps=40), hook)  # resumes at 30, inside the DMT phase
    want = load_student(f"{run}/checkpoints/step-00000030/rollout")[0]
    for (k, p), q in zip(hook.ema.model.state_dict().items(), want.state_dict().values()):
        assert torch.equal(p, q), k
    state.stream.close()


# ------------------------------------------------------------------------------------------ optimizer


def test_carried_optimizer_state_is_the_smt_end_state(labeled):
    d = labeled
    _smt(d)
    rd = RunDir(d["run"])
    _, tensors, meta = rd.load(rd.latest())
    smt = unflatten_optimizer(tensors, meta["optimizer"])["state"]
    teacher = load_teacher(d["teacher"])[0]
    for carry in (True, False):
        cfg, hooks = _dmt_cfg(30, 20, 5, 2, carry_optimizer=carry)
        state = _started(d, cfg, hooks[0])
        if carry:
            assert len(state.opt.state) == len(smt) == len(state.params)
            for i, p in enumerate(state.params):
                for k in ("exp_avg", "exp_avg_sq", "step"):
                    torch.testing.assert_close(state.opt.state[p][k], smt[i][k])
            assert state.opt.param_groups[0]["lr"] < 1e-4  # the DMT phase's own warm-up at its own lr
        else:
            assert not state.opt.state  # fresh moments
        state.stream.close()
    # online DMT: the updater continues SMT's moments (20 steps + 1), the readout (not trained by SMT) starts fresh
    cfg = OnlineDMTConfig(steps=1, batch_size=4, eval_every=1, eval_size=8, device="cpu", carry_optimizer=True)
    student = load_student(rd.student_url(20))[0]
    dmt = OnlineDMT(student, teacher, load_corpus(SPEC), cfg, smt_run=d["run"])
    dmt.run(quiet=True)
    opt = dmt.state.opt
    steps = {n: float(opt.state[p]["step"]) for n, p in student.named_parameters() if p in opt.state}
    assert {v for n, v in steps.items() if n.startswith("updater.")} == {21.0}
    assert {v for n, v in steps.items() if n.startswith("readout_net.")} == {1.0}
    with pytest.raises(ValueError, match="needs the SMT run"):
        dmt_online(student, teacher, load_corpus(SPEC), cfg, quiet=True)
    with pytest.raises(ValueError, match="needs phase_start"):
        LockstepDMTConfig(every=5, rounds=2, carry_optimizer=True).hooks()[0].check(StudentTrainConfig())
    assert json.loads(Path(d["run"], "checkpoints/latest.json").read_text())["step"] == 20
