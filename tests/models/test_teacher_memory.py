"""The causal teacher's memory head (issue 22 item 2): the `attend` head gives a memory whose rank grows
with K (the old `linear` head's is at most d), one pass equals per-prefix encoding (padding, windows,
spans, the banded attention), and checkpoints written before `mem_head` existed load as `linear`."""
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from models.student_rnn import Student
from models.teacher import ConfigError, Teacher, TeacherConfig, banded_attention
from models.updaters import UpdaterConfig
from storage.checkpoints import (
    CheckpointError,
    fingerprint,
    load_student,
    load_teacher,
    save_student,
    save_teacher,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models, a shared machine
V = 16
SMALL = {"vocab_size": V, "d_model": 16, "n_heads": 2, "encoder_depth": 2, "decoder_depth": 1, "mem_tokens": 4}


def teacher(**kw) -> Teacher:
    torch.manual_seed(0)
    return Teacher(TeacherConfig(**{**SMALL, **kw})).eval()


class _LastMemory(nn.Module):
    """x (1, T) -> the memory after all of x, (Z,): a module, so that torch.func can swap its weights."""

    def __init__(self, t: Teacher):
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.t.encode(x)[0]


def memory_jacobian_rank(t: Teacher, T: int) -> int:
    """Numerical rank (float64) of d m_T / d (the embeddings of the T context tokens), a (K*d, V*d) matrix.

    The T tokens are distinct, so the Jacobian with respect to the embedding table is the one with respect
    to the per-position embeddings (unused rows give zero columns). Singular values under 1e-8 of the
    largest count as zero: RMS normalisation makes each token's radial direction a null direction, up to
    its eps (singular values ~1e-10 of the largest)."""
    f = _LastMemory(t.double())
    x = torch.randperm(V, generator=torch.Generator().manual_seed(1))[:T][None]
    W = t.embed.weight.detach().clone()
    J = torch.autograd.functional.jacobian(
        lambda w: torch.func.functional_call(f, {"t.embed.weight": w}, (x,)), W)
    return int(torch.linalg.matrix_rank(J.reshape(t.cfg.Z, -1), rtol=1e-8))


@pytest.mark.parametrize(("head", "span"), [("attend", None), ("attend", 4), ("linear", None)])
def test_memory_jacobian_rank_exceeds_d_only_for_the_attend_head(head, span):
    d, K, T = 16, 8, 14
    rank = memory_jacobian_rank(teacher(mem_tokens=K, mem_head=head, mem_span=span), T)
    if head == "linear":
        assert rank <= d, rank  # K linear images of one d-vector, whatever K is
    elif span is None:
        assert rank == K * (d - 1), rank  # full: K tokens of d, less each token's normalised radius
    else:
        assert 2 * d < rank <= (span + 1) * d, rank  # reads of `span` positions of the last block's input


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize(("head", "span"), [("attend", None), ("attend", 2), ("attend", 5), ("linear", None)])
def test_one_pass_equals_per_prefix_and_padded_contexts(head, span, window):
    """Spans 2 and 5 (window None) take the banded path; the linear head checks padding with windows too
    (before mem_head, a left-padded context shorter than the receptive field was encoded differently)."""
    t = teacher(mem_head=head, mem_span=span, window=window)
    x = torch.randint(0, V, (3, 13))
    with torch.no_grad():
        M = t.encode_all(x)
        for s in range(x.shape[1] + 1):
            ctx = x[:, :s]
            torch.testing.assert_close(t.encode(ctx), M[:, s], atol=3e-6, rtol=0)
            left = torch.cat([torch.full((3, 4), -1), ctx], 1)
            torch.testing.assert_close(t.encode(left), M[:, s], atol=3e-6, rtol=0)
            right = torch.cat([ctx, torch.full((3, 2), -1)], 1)
            torch.testing.assert_close(t.encode(right), M[:, s], atol=3e-6, rtol=0)
        # encode_all of a left-padded sequence: position p + s holds the memory after s real tokens
        P = t.encode_all(torch.cat([torch.full((3, 4), -1), x], 1))
        torch.testing.assert_close(P[:, 4:], M, atol=3e-6, rtol=0)
        torch.testing.assert_close(P[:, :5], M[:, :1].expand(-1, 5, -1), atol=3e-6, rtol=0)
        for Tc in (0, 1, 6, 13):  # the labeler's path runs the head on m_Tc.. only
            torch.testing.assert_close(t.encoder_kind.stream_memories(t, x, Tc), M[:, Tc:], atol=3e-6, rtol=0)


@pytest.mark.parametrize("span", [None, 2])
def test_attend_memory_is_causal_bit_exact_and_keeps_the_encoders_receptive_field(span):
    t = teacher(window=3, mem_span=span)
    x = torch.randint(0, V, (2, 14))
    with torch.no_grad():
        M = t.encode_all(x)
        for s in (0, 6, 13):
            x2 = x.clone()
            x2[:, s] = (x2[:, s] + 1) % V
            M2 = t.encode_all(x2)
            assert torch.equal(M2[:, : s + 1], M[:, : s + 1]), f"memory before position {s} changed"
            if s == 0:  # 2 layers of window 3: x_0 (position 1) reaches m_1..m_5 and no further
                assert not torch.equal(M2[:, 5], M[:, 5]) and torch.equal(M2[:, 6:], M[:, 6:])


@pytest.mark.parametrize("Lq", [1, 9, 30])
@pytest.mark.parametrize("width", [1, 2, 4, 7, None])
def test_banded_attention_matches_a_per_position_softmax(Lq, width):
    B, Lk, K, H, Dh = 2, 30, 3, 2, 4
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, Lq, K, H, Dh, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, H, Lk, Dh, generator=g, dtype=torch.float64) for _ in range(2))
    out = banded_attention(q, k, v, width)
    for i in range(Lq):
        p = Lk - Lq + i  # query i sits at key position p
        lo = 0 if width is None else max(0, p - width + 1)
        w = torch.einsum("bkhd,bhjd->bkhj", q[:, i], k[:, :, lo:p + 1]) / math.sqrt(Dh)
        want = torch.einsum("bkhj,bhjd->bkhd", w.softmax(-1), v[:, :, lo:p + 1])
        torch.testing.assert_close(out[:, i], want, atol=1e-12, rtol=0)


def _without_mem_head(url: str) -> dict:
    """Rewrite a checkpoint's config.json as the code before `mem_head` wrote it: no mem_head/mem_span in
    the teacher config, and the fingerprint computed over the config as stored (as it was then)."""
    from safetensors.torch import load_file

    path = Path(url) / "config.json"
    cfg = json.loads(path.read_text())
    for key in ("mem_head", "mem_span"):
        del cfg["model"]["teacher"][key]
    cfg["fingerprint"] = fingerprint(cfg["kind"], cfg["model"], load_file(Path(url) / "weights.safetensors"))
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return cfg


def test_checkpoints_from_before_mem_head_load_as_the_linear_head(tmp_path):
    t = teacher(mem_head="linear", window=4)
    url = str(tmp_path / "old")
    save_teacher(url, t)
    old = _without_mem_head(url)
    t2, fp, cfg = load_teacher(url)
    assert t2.cfg.mem_head == "linear" and hasattr(t2, "to_mem") and fp == old["fingerprint"]
    x = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        assert torch.equal(t2.encode_all(x), t.encode_all(x))
    # saving it again records the field, so its fingerprint changes (the config changed); the weights do not
    assert save_teacher(str(tmp_path / "again"), t2) != fp
    assert load_teacher(str(tmp_path / "again"))[0].cfg.mem_head == "linear"

    s = Student.from_teacher(t, UpdaterConfig(arch="mlp", vocab_size=V, mem_tokens=4, d_model=16, hidden=32))
    surl = str(tmp_path / "student")
    save_student(surl, s, fp)
    _without_mem_head(surl)
    s2, tfp, _ = load_student(surl)
    assert s2.teacher_cfg.mem_head == "linear" and tfp == fp

    # an edit that drops the field without the fingerprint of its time is refused like any edit
    save_teacher(url, t)
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del cfg["model"]["teacher"]["mem_head"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match the recorded fingerprint"):
        load_teacher(url)


def test_new_teachers_default_to_the_attend_head_and_the_head_is_in_the_fingerprint():
    t = teacher()
    assert t.cfg.mem_head == "attend" and not hasattr(t, "to_mem")
    sd = t.state_dict()
    base = fingerprint("teacher", {"teacher": t.cfg.to_dict()}, sd)
    assert fingerprint("teacher", {"teacher": {**t.cfg.to_dict(), "mem_head": "linear"}}, sd) != base
    assert fingerprint("teacher", {"teacher": {**t.cfg.to_dict(), "mem_span": 5}}, sd) != base


def test_mem_head_config_errors_name_the_field_and_fix():
    with pytest.raises(ConfigError, match=r"^mem_head='mlp' is unknown: use 'attend' .* or 'linear'"):
        TeacherConfig(mem_head="mlp")
    with pytest.raises(ConfigError, match=r"^mem_span=0 must be >= 1 or None$"):
        TeacherConfig(mem_span=0)
