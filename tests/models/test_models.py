"""Teacher, updaters and student: masking, causality, shapes, normalisation, config errors."""
import pytest
import torch

from models.student_rnn import Student
from models.teacher import ConfigError, Teacher, TeacherConfig
from models.updaters import UPDATERS, UpdaterConfig

V = 10


def tiny(encoder="causal", **kw):
    torch.manual_seed(0)
    return Teacher(TeacherConfig(vocab_size=V, d_model=32, n_heads=2, encoder_depth=2, decoder_depth=1,
                                 mem_tokens=2, encoder=encoder, **kw)).eval()


@pytest.mark.parametrize("encoder", ["causal", "register"])
def test_padding_and_empty_context_do_not_change_memory(encoder):
    t = tiny(encoder)
    x = torch.randint(0, V, (3, 7))
    with torch.no_grad():
        m = t.encode(x)
        padded = t.encode(torch.cat([torch.full((3, 5), -1), x], 1))
        torch.testing.assert_close(padded, m, atol=2e-6, rtol=0)
        empty = t.encode(torch.zeros(2, 0, dtype=torch.long))
        all_pad = t.encode(torch.full((2, 4), -1))
    torch.testing.assert_close(all_pad, empty, atol=2e-6, rtol=0)
    assert empty.shape == (2, 64) and torch.isfinite(empty).all()
    # the empty-context memory is the same for every row: it depends on the registers/start only
    torch.testing.assert_close(empty[0], empty[1])


@pytest.mark.parametrize("encoder", ["causal", "register"])
def test_encode_all_matches_per_prefix_encoding(encoder):
    t = tiny(encoder)
    x = torch.randint(0, V, (2, 6))
    with torch.no_grad():
        M = t.encode_all(x)
        for k in range(7):
            torch.testing.assert_close(M[:, k], t.encode(x[:, :k]), atol=3e-6, rtol=0)


@pytest.mark.parametrize("window", [None, 1, 3])
def test_causal_memory_ignores_later_tokens_bit_exact(window):
    t = tiny("causal", window=window)
    x = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        M = t.encode_all(x)
        for s in (0, 5, 11):
            x2 = x.clone()
            x2[:, s] = (x2[:, s] + 1) % V
            M2 = t.encode_all(x2)
            assert torch.equal(M2[:, : s + 1], M[:, : s + 1]), f"memory before position {s} changed"
            assert not torch.equal(M2[:, s + 1], M[:, s + 1])


def test_causal_window_limits_context():
    t = tiny("causal", window=3)
    x = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        M = t.encode_all(x)
        x2 = x.clone()
        x2[:, 0] = (x2[:, 0] + 1) % V
        M2 = t.encode_all(x2)
    # x_0 sits at position 1 ([start, x_0, ...]); with 2 layers of window 3 the receptive field is
    # 2*(3-1)+1 = 5 positions, so m_1..m_5 may see x_0 and m_6.. must not
    assert not torch.equal(M2[:, 1], M[:, 1]) and not torch.equal(M2[:, 5], M[:, 5])
    assert torch.equal(M2[:, 6:], M[:, 6:])


def test_memory_tokens_are_rms_normalised_and_decoder_is_causal():
    t = tiny()
    x = torch.randint(0, V, (3, 9))
    with torch.no_grad():
        M = t.encode_all(x)
        rms = M.view(3, 10, 2, 32).pow(2).mean(-1)
        torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0)
        logits = t.decode(M[:, 4], x[:, 4:])
        assert logits.shape == (3, 6, V)
        torch.testing.assert_close(logits[:, 0], t.readout(M[:, 4]), atol=1e-5, rtol=0)
        x2 = x.clone()
        x2[:, 7] = (x2[:, 7] + 1) % V
        l2 = t.decode(M[:, 4], x2[:, 4:])
        torch.testing.assert_close(l2[:, :4], logits[:, :4], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", sorted(UPDATERS))
def test_updaters_keep_memory_shape_and_norm(arch):
    t = tiny()
    s = Student.from_teacher(t, UpdaterConfig(arch=arch, vocab_size=V, mem_tokens=2, d_model=32, depth=1,
                                              n_heads=2, hidden=64))
    x = torch.randint(0, V, (4, 5))
    with torch.no_grad():
        R = s.rollout(x)
        assert R.shape == (4, 6, 64)
        rms = R[:, 1:].reshape(4, 5, 2, 32).pow(2).mean(-1)
        torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0)
        # the student starts from the teacher's memory of the empty context, reads out with its decoder
        torch.testing.assert_close(R[0, 0], t.encode(torch.zeros(1, 0, dtype=torch.long))[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(s.readout(R[:, 3]), t.readout(R[:, 3]), atol=1e-5, rtol=0)


def test_config_errors_name_the_field_and_fix():
    with pytest.raises(ConfigError, match=r"mem_size=100 != mem_tokens\*d_model"):
        TeacherConfig(d_model=32, mem_tokens=2, mem_size=100)
    with pytest.raises(ConfigError, match="encoder='rnn' is unknown"):
        TeacherConfig(encoder="rnn")
    with pytest.raises(ConfigError, match="arch='lstm' is unknown: use one of gru, mlp, transformer"):
        UpdaterConfig(arch="lstm")
    with pytest.raises(ConfigError, match="not divisible by n_heads"):
        TeacherConfig(d_model=30, n_heads=4)
