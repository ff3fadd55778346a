"""Count baselines (trainers/ngram.py): Witten-Bell n-grams against a hand computation, normalised
distributions, and the same scored targets as the trained models (trainers/heldout.py)."""
import math

import numpy as np
import pytest
import torch

from pipeline.corpora import load_corpus
from trainers.ngram import NGram, count_baselines, counts_line


def _bits(*p: float) -> float:
    return -sum(math.log2(v) for v in p) / len(p)


def test_witten_bell_bits_equal_a_hand_computation():
    # train: contexts x_t -> targets y_t over vocab {0, 1, 2}; the -1 target is not counted
    x = np.array([[0, 1, 0, 1, 2]])
    y = np.array([[1, 0, 1, 2, -1]])
    m = NGram(3, 3).fit(x, y)
    # unigram: c = (1, 2, 1), N = 4, N1 = 3 types: P1(w) = (c(w) + 3 * 1/3) / (4 + 3)
    p1 = {0: 2 / 7, 1: 3 / 7, 2: 2 / 7}
    # bigram: after 0 -> {1: 2} (N1 = 1), after 1 -> {0: 1, 2: 1} (N1 = 2), after 2: never seen (falls back to P1)
    p2_1_after_0 = (2 + 1 * p1[1]) / (2 + 1)  # 17/21
    p2_2_after_1 = (1 + 2 * p1[2]) / (2 + 2)  # 11/28
    # trigram (BOS before the start): (BOS,0)->1, (0,1)->0, (1,0)->1, (0,1)->2
    p3_1_after_10 = (1 + 1 * p2_1_after_0) / (1 + 1)  # 19/21
    tx, ty = np.array([[1, 0, 2, 1]]), np.array([[2, 1, 0, -1]])  # targets: (.., 1) -> 2, (1, 0) -> 1, (0, 2) -> 0
    assert m.bits(tx, ty, 1) == {"bits": pytest.approx(_bits(p1[2], p1[1], p1[0])), "targets": 3}
    assert m.bits(tx, ty, 2)["bits"] == pytest.approx(_bits(p2_2_after_1, p2_1_after_0, p1[0]))
    # (BOS, 1) unseen -> bigram P(2|1); (1, 0) seen once; (0, 2) unseen and 2 unseen -> unigram P1(0)
    assert m.bits(tx, ty)["bits"] == pytest.approx(_bits(p2_2_after_1, p3_1_after_10, p1[0]))
    assert p2_1_after_0 == pytest.approx(17 / 21) and p2_2_after_1 == pytest.approx(11 / 28)


def test_every_context_gives_a_distribution_with_finite_costs():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(4, 30))
    y = np.roll(x, -1, 1)
    m = NGram(3, 7).fit(x, y)  # targets 5, 6 never seen: still finite cost
    q = rng.integers(0, 7, size=(1, 12))
    for order in (1, 2, 3):
        total = sum(m.prob(q, np.full_like(q, w), order) for w in range(7))
        assert np.allclose(total, 1.0)
        assert np.isfinite(m.bits(q, np.full_like(q, 6), order)["bits"])


def test_count_baselines_score_the_models_targets(tmp_path):
    """The same test windows and targets y[:, prompt:] as score_models; text conditions on the previous bytes:
    a text that repeats one 5-byte pattern is predictable from two bytes (trigram ~0 bits), not from none."""
    from models.teacher import Teacher, TeacherConfig
    from trainers.heldout import score_models

    (tmp_path / "t.txt").write_bytes(b"abcde" * 600)
    corpus = load_corpus(f"text:{tmp_path / 't.txt'}|T=24,stride=10")
    c = count_baselines(corpus, 7, 16)
    torch.manual_seed(0)
    teacher = Teacher(TeacherConfig(vocab_size=256, d_model=16, n_heads=2, encoder_depth=1, decoder_depth=1,
                                    mem_tokens=2)).eval()
    assert c["targets"] == score_models(corpus, 7, 16, teacher, {})["targets"] and c["sequences"] == 7
    assert c["unigram"] == pytest.approx(math.log2(5), abs=0.02)
    assert c["bigram"] < 0.01 and c["trigram"] < 0.01 and "Witten-Bell" in c["smoothing"]
    assert counts_line(c).startswith("unigram / bigram / trigram 2.32 / 0.00 / 0.00")
    # a prefix corpus is fitted on its train sequences, every target scored (prompt 0)
    d = count_baselines(load_corpus("retrieval:T=8,vocab=4,n=64"), 16, 0)
    assert d["targets"] == 16 and all(0 < d[k] < 10 for k in ("unigram", "bigram", "trigram"))
