"""Gradient structure of SMT, DMT and BPTT, and short real training runs."""
import numpy as np
import pytest
import torch

from models.student_rnn import Student
from models.teacher import Teacher, TeacherConfig
from models.updaters import UpdaterConfig
from pipeline.corpora import load_corpus
from trainers.bptt import BPTTConfig, bptt_loss, train_bptt
from trainers.dmt import OnlineDMTConfig, dmt_losses, dmt_online
from trainers.loop import Callbacks
from trainers.pretrain import PretrainConfig, pretrain
from trainers.smt import SMTConfig, smt_losses

SPEC = "retrieval:T=12,vocab=4"
SMALL = {"d_model": 32, "n_heads": 2, "encoder_depth": 1, "decoder_depth": 1, "mem_tokens": 2}


def setup(encoder="causal", arch="mlp"):
    torch.manual_seed(0)
    corpus = load_corpus(SPEC)
    t = Teacher(TeacherConfig(vocab_size=corpus.vocab_size, encoder=encoder, **SMALL))
    s = Student.from_teacher(t, UpdaterConfig(arch=arch, vocab_size=corpus.vocab_size, mem_tokens=2, d_model=32,
                                              depth=1, n_heads=2, hidden=64))
    x, y = (torch.as_tensor(a) for a in corpus.sample(6, np.random.default_rng(0)))
    return corpus, t, s, x, y


class CallRecorder:
    """Records every output of a module's forward, keeping their gradients."""

    def __init__(self, module):
        self.outputs = []
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, mod, inputs, out):
        self.inputs = getattr(self, "inputs", []) + [inputs[0]]
        if out.requires_grad:
            out.retain_grad()
        self.outputs.append(out)


@pytest.mark.parametrize("encoder", ["causal", "register"])
def test_smt_updater_gradient_comes_from_one_application(encoder):
    _, t, s, x, y = setup(encoder)
    rec = CallRecorder(s.updater)
    losses = smt_losses(t, s.updater, x, y, SMTConfig(), torch.Generator().manual_seed(0))
    losses["loss"].backward()
    assert len(rec.outputs) == 1, "SMT must apply the updater exactly once (batched over transitions)"
    # its input is a teacher memory: no path back through any updater application
    assert rec.inputs[0].grad_fn is not None
    seen, stack = set(), [rec.inputs[0].grad_fn]
    upd_params = {id(p) for p in s.updater.parameters()}
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        assert var is None or id(var) not in upd_params, "updater parameters reached through the input memory"
        stack.extend(f for f, _ in fn.next_functions)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in s.updater.parameters())


def test_bptt_gradient_flows_through_every_step():
    _, _, s, x, y = setup()
    rec = CallRecorder(s.updater)
    bptt_loss(s, x, y).backward()
    assert len(rec.outputs) == x.shape[1]
    norms = [o.grad.abs().sum().item() if o.grad is not None else 0.0 for o in rec.outputs]
    assert all(n > 0 for n in norms), f"some step got no gradient: {norms}"
    # truncated BPTT cuts the path: steps before the last window get no gradient from the final target
    rec2 = CallRecorder(s.updater)
    s.zero_grad()
    bptt_loss(s, x, y, truncate=4).backward()
    outs = rec2.outputs[-x.shape[1]:]
    assert outs[0].grad is None or outs[0].grad.abs().sum().item() == 0.0
    assert outs[-1].grad.abs().sum().item() > 0


def test_dmt_is_one_step_gradient_from_detached_states():
    _, t, s, x, y = setup()
    with torch.no_grad():
        M = t.encode_all(x)
    rec = CallRecorder(s.updater)
    out = dmt_losses(s, M, x, y, range(x.shape[1]), (10.0, 1.0))
    out["loss"].backward()
    assert all(not i.requires_grad for i in rec.inputs), "DMT must detach the rolled-out state between steps"
    # the rollout (T-1 steps) carries no graph; one batched application on every rolled-out state does
    rollout, trained = rec.outputs[:-1], rec.outputs[-1]
    assert len(rollout) == x.shape[1] - 1 and not any(o.requires_grad for o in rollout)
    assert trained.shape[0] == x.shape[0] * x.shape[1] and trained.grad.abs().sum(-1).gt(0).all()
    with torch.no_grad():  # and those states are the student's own rollout from m*_0
        torch.testing.assert_close(rec.inputs[-1].view(x.shape[0], x.shape[1], -1)[:, 1:],
                                   torch.stack(rollout, 1).to(rec.inputs[-1].dtype))


def test_detach_option_stops_dynamics_gradient_at_teacher():
    for detach, expect_grad in ((True, False), (False, True)):
        _, t, s, x, y = setup()
        losses = smt_losses(t, s.updater, x, y, SMTConfig(detach=detach), torch.Generator().manual_seed(0))
        losses["loss_dyn"].backward()
        g = sum(p.grad.abs().sum().item() for p in t.encoder.parameters() if p.grad is not None)
        assert (g > 0) == expect_grad, f"detach={detach}: encoder grad {g}"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.updater.parameters())


def test_smt_samples_final_position_and_target_positions():
    from trainers.smt import _sample_positions

    y = torch.full((4, 10), -1)
    y[:, 9] = 1
    t = _sample_positions(y, 8, 0, 10, 1.0, torch.Generator().manual_seed(0), force_last=True)
    assert (t[:, 0] == 10).all() and (t == 10).all()  # only the final memory's first prediction is a target
    t = _sample_positions(y, 200, 0, 10, 0.0, torch.Generator().manual_seed(0), force_last=False)
    assert set(t.unique().tolist()) == set(range(11))  # uniform over [0, T] inclusive


@pytest.mark.parametrize("encoder", ["causal", "register"])
def test_short_pretrain_dmt_bptt_runs_write_checkpoints(tmp_path, encoder):
    corpus = load_corpus(SPEC)
    r = pretrain(corpus, PretrainConfig(teacher=TeacherConfig(encoder=encoder, **SMALL), steps=3, eval_every=2,
                                        eval_size=16, batch_size=4), out=tmp_path / "pt", quiet=True)
    assert len(r["history"]) == 2 and (tmp_path / "pt/teacher/weights.safetensors").exists()
    assert all(np.isfinite(h["loss"]) for h in r["history"])
    d = dmt_online(r["student"], r["teacher"], corpus, OnlineDMTConfig(steps=2, eval_every=1, eval_size=16,
                                                                batch_size=4), out=tmp_path / "dmt", quiet=True)
    assert d["steps"] == 2 and 0.0 <= d["final"]["dmt_acc"] <= 1.0
    b = train_bptt(corpus, BPTTConfig(shape=TeacherConfig(**SMALL), steps=2, eval_every=1, eval_size=16,
                                      batch_size=4, truncate=4), out=tmp_path / "bptt", quiet=True)
    assert b["steps"] == 2 and (tmp_path / "bptt/student/config.json").exists()


def test_curriculum_moves_through_lengths():
    corpus = load_corpus("retrieval:T=16,vocab=4")
    seen = []
    pretrain(corpus, PretrainConfig(teacher=TeacherConfig(**SMALL), steps=4, eval_every=1, eval_size=8, batch_size=4,
                                    curriculum=(6, 10), curriculum_acc=0.0), quiet=True,
             callbacks=Callbacks(on_eval=lambda f: seen.append(f["T"])))
    assert seen == [6, 10, 16, 16]


def test_all_memories_trains_every_memory_of_a_stream_window_and_refuses_the_register_teacher():
    """Stream mode trains the memories t >= Tc by default; `all_memories` every one the causal pass computes:
    T dynamics pairs (m_0 -> m_1 .. m_{T-1} -> m_T) instead of T - Tc, and the decoder at every t in 1..T
    (futures cut at the window's end) instead of dec_positions sampled in [Tc, T]; the loss stays finite."""
    from models.teacher import ConfigError

    torch.manual_seed(0)
    B, T, Tc = 3, 16, 10
    t = Teacher(TeacherConfig(vocab_size=7, window=Tc, **SMALL))
    s = Student.from_teacher(t, UpdaterConfig(arch="mlp", vocab_size=7, mem_tokens=2, d_model=32, depth=1,
                                              hidden=64))
    x = torch.randint(0, 7, (B, T))
    y = torch.roll(x, -1, 1)
    y[:, -1] = -1
    seen = {}
    for every in (False, True):
        rec_dyn, rec_dec = CallRecorder(s.updater), CallRecorder(t.decoder)
        cfg = SMTConfig(mode="stream", Tc=Tc, Tf=4, all_memories=every)
        losses = smt_losses(t, s.updater, x, y, cfg, torch.Generator().manual_seed(0))
        losses["loss"].backward()
        assert all(torch.isfinite(v) for v in losses.values())
        seen[every] = (rec_dyn.inputs[0].shape[0], rec_dec.inputs[0].shape[0])
        rec_dyn.handle.remove()
        rec_dec.handle.remove()
    assert seen[False] == (B * (T - Tc), B * 4)  # pairs t >= Tc; dec_positions = 4 memories per window
    assert seen[True] == (B * T, B * T)  # every pair from m_0; every memory m_1..m_T decoded
    with pytest.raises(ConfigError, match="all_memories=True needs the causal teacher"):
        PretrainConfig(teacher=TeacherConfig(encoder="register"), smt=SMTConfig(mode="stream", Tc=8, all_memories=True))
    with pytest.raises(ConfigError, match="is for mode='stream'"):
        SMTConfig(all_memories=True)
