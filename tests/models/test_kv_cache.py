"""KV-cache decoding of the causal teacher (`Teacher.incremental`) against the full forward pass, and sampling."""
from __future__ import annotations

import pytest
import torch

from models.layers import KVCache
from models.sampling import SamplingConfig, draw, teacher_tokens
from models.teacher import ConfigError, Teacher, TeacherConfig
from trainers.evaluate import generate_teacher

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SHAPES = {  # d=32, 4 heads, 2 encoder blocks, K=3
    "attend": {},
    "attend, window 8": {"window": 8},
    "attend, window 5, span 3": {"window": 5, "mem_span": 3},
    "attend, whole prefix": {"mem_span": None},
    "linear head": {"mem_head": "linear"},
    "linear head, window 4": {"mem_head": "linear", "window": 4},
}


def teacher(seed: int = 0, **kw) -> Teacher:
    torch.manual_seed(seed)
    return Teacher(TeacherConfig(vocab_size=11, d_model=32, n_heads=4, encoder_depth=2, decoder_depth=1,
                                 mem_tokens=3, **kw)).eval()


@pytest.mark.parametrize("name", SHAPES)
@torch.no_grad()
def test_incremental_memories_and_logits_equal_the_full_pass(name):
    t = teacher(**SHAPES[name])
    x = torch.randint(0, 11, (2, 50), generator=torch.Generator().manual_seed(1))
    full = t.encode_all(x)  # (2, 51, Z): m_0..m_50 in one pass
    inc = t.incremental(2)
    got, i = [inc.memory[:, None]], 0
    for L in (1, 7, 1, 1, 20, 1, 3, 16):  # prefill chunks wider than the window, and single tokens
        got.append(inc.feed(x[:, i:i + L]))
        i += L
    got = torch.cat(got, 1)
    assert i == 50 and got.shape == full.shape and inc.positions == 50
    torch.testing.assert_close(got, full, atol=2e-6, rtol=1e-5)
    logits_full = t.readout(full.reshape(-1, full.shape[-1]))
    torch.testing.assert_close(t.readout(got.reshape(-1, got.shape[-1])), logits_full, atol=2e-6, rtol=1e-5)
    # the recompute path (no cache) gives the last memory too
    torch.testing.assert_close(t.memory_after(x), full[:, -1], atol=2e-6, rtol=1e-5)


@torch.no_grad()
def test_the_cache_grows_per_token_without_a_window_and_stays_bounded_with_one():
    d, depth, B = 32, 2, 2
    per_position = 2 * B * d * 4  # keys + values of one position in one block, float32
    for window, span in ((None, 32), (8, 32)):
        t = teacher(window=window, mem_span=span)
        inc = t.incremental(B)
        sizes = []
        for n in (10, 40, 100):
            inc.feed(torch.zeros(B, n - inc.positions, dtype=torch.long))
            sizes.append(inc.nbytes)
        cached = [n + 1 if window is None else window - 1 for n in (10, 40, 100)]  # the start token is a position
        head = [min(n + 1, (window or span) - 1) for n in (10, 40, 100)]  # the memory head keeps span - 1
        assert sizes == [per_position * (depth * c + h) for c, h in zip(cached, head)], (window, sizes)


def test_kv_cache_storage_drops_its_front_in_place():
    c = KVCache(window=4)
    for n in range(1, 40):
        k = torch.full((1, 1, 1, 2), float(n))
        keys, _, mask = c.extend(k, k)
        # each query reads itself and the window - 1 positions before it: no mask needed for one token
        assert mask is None and keys[0, 0, :, 0].tolist() == [float(v) for v in range(max(1, n - 3), n + 1)]
    assert len(c) == 3 and c.nbytes == 2 * 3 * 2 * 4


def test_the_register_teacher_has_no_incremental_decoding():
    t = teacher(encoder="register")
    with pytest.raises(ConfigError, match="incremental decoding needs the causal encoder"):
        t.incremental(1)
    x = torch.randint(0, 11, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(t.memory_after(x), t.encode(x))


def test_feed_refuses_padding_and_wrong_batches():
    inc = teacher().incremental(2)
    with pytest.raises(ValueError, match="no padding"):
        inc.feed(torch.tensor([[1, -1], [2, 3]]))
    with pytest.raises(ValueError, match=r"shape \(2, L\)"):
        inc.feed(torch.tensor([[1, 2]]))


@torch.no_grad()
def test_cached_and_recomputed_teacher_sampling_equal_the_reference_sampler():
    t = teacher(window=6)
    prompt = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(2))
    greedy = SamplingConfig(temperature=0)
    cached = torch.stack(list(teacher_tokens(t, prompt, 30, greedy, cache=True)), 1)
    recomputed = torch.stack(list(teacher_tokens(t, prompt, 30, greedy, cache=False)), 1)
    reference = generate_teacher(t, prompt, 30, 0.0)  # trainers/evaluate.py: encode_all per token
    assert torch.equal(cached, reference) and torch.equal(recomputed, reference)
    cfg = SamplingConfig(temperature=0.9, seed=5)
    sampled = torch.stack(list(teacher_tokens(t, prompt, 30, cfg, cache=False)), 1)
    assert torch.equal(sampled, generate_teacher(t, prompt, 30, 0.9, torch.Generator().manual_seed(5)))


def test_top_k_and_top_p_sample_only_from_their_sets():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(400, 4)
    gen = torch.Generator().manual_seed(0)
    assert set(draw(logits, 1.0, gen, top_k=2).tolist()) == {0, 1}
    assert set(draw(logits, 1.0, gen, top_p=0.6).tolist()) == {0, 1}  # 0.5 < 0.6: the second token is needed
    assert set(draw(logits, 1.0, gen, top_p=0.5).tolist()) == {0}  # 0.5 already reaches 0.5
    assert set(draw(logits, 1.0, gen, top_p=0.9).tolist()) == {0, 1, 2}
    assert set(draw(logits, 1.0, gen).tolist()) == {0, 1, 2, 3}
    assert draw(logits, 0.0).tolist() == [0] * 400
    with pytest.raises(ConfigError, match="top_p=0"):
        SamplingConfig(top_p=0)
    with pytest.raises(ConfigError, match="temperature=-1"):
        SamplingConfig(temperature=-1)
