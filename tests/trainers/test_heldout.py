"""Held-out figures on real corpora: recipes that resolve offline from any directory, bits per byte against a
hand computation, missing figures as null / n/a, and samplers that produce valid tokens and images."""
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.recipes import load_recipe, pydoc_text, resolve_corpus
from models.student_rnn import Student
from models.teacher import Teacher, TeacherConfig
from models.updaters import UpdaterConfig, matched_updater
from pipeline.corpora import load_corpus
from trainers.evaluate import eval_batch, evaluate_student, evaluate_teacher, generate, generate_teacher
from trainers.heldout import sample_models, score_models, split_sizes

SHAPE = {"d_model": 16, "n_heads": 2, "encoder_depth": 1, "decoder_depth": 1, "mem_tokens": 2}


def _models(vocab: int, window: int | None = None, arch: str = "mlp"):
    torch.manual_seed(0)
    t = Teacher(TeacherConfig(vocab_size=vocab, window=window, **SHAPE)).eval()
    s = Student.from_teacher(t, matched_updater(t.cfg, UpdaterConfig(arch=arch, depth=1))).eval()
    return t, s


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def foreign_cwd(tmp_path, monkeypatch):
    """A working directory outside the repository and a fresh cache folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_recipes_resolve_offline_from_a_foreign_directory(foreign_cwd):
    from pydoc_data.topics import topics

    rc = load_recipe("text-bytes-tiny")
    path = rc.corpus.split(":", 1)[1].rpartition("|")[0]
    assert Path(path).is_file() and str(foreign_cwd / "cache") in path and "{pydoc}" not in rc.corpus
    text = Path(path).read_text()
    assert 400_000 < len(text) < 600_000 and all(topics[k].strip("\n") in text for k in ("assert", "while"))
    assert pydoc_text() == path  # written once, found again
    c = load_corpus(rc.corpus)
    sizes = split_sizes(c)
    assert all(sizes[s]["sequences"] > 0 for s in ("train", "valid", "test"))
    assert sum(v["tokens"] for v in sizes.values()) <= len(text.encode()) + 2
    d = load_corpus(load_recipe("digits-pixels-tiny").corpus)
    assert d.vocab_size == 17 and d.seq_len == 64 and split_sizes(d)["test"]["sequences"] == 297
    # any text file, and the placeholder, through --corpus (the pipeline resolves the flag's value)
    (foreign_cwd / "mine.txt").write_text("hello world, " * 400)
    assert load_corpus(resolve_corpus(f"text:{foreign_cwd / 'mine.txt'}|T=96,stride=48")).with_split("test").num_sequences > 0
    assert resolve_corpus("text:{pydoc}|T=256,stride=128") == f"text:{path}|T=256,stride=128"


def test_bits_per_byte_matches_a_hand_computation(tmp_path):
    """A model whose readout ignores the memory (zero weights, a fixed bias) on a known text: the bits per byte
    of every model and rollout mode equal -mean log2 p(byte) over exactly the scored bytes, counted by hand."""
    rng = np.random.default_rng(0)
    raw = bytes(rng.choice(list(b"abcdefgh \n"), size=3000, p=[.3, .1, .1, .1, .1, .1, .05, .05, .05, .05]))
    (tmp_path / "t.txt").write_bytes(raw)
    T, stride, P = 24, 10, 16
    corpus = load_corpus(f"text:{tmp_path / 't.txt'}|T={T},stride={stride}")
    teacher, student = _models(256, window=P)
    logp = torch.log_softmax(torch.randn(256), 0)
    for dec in (teacher.decoder, student.readout_net):
        dec.to_logits.weight.data.zero_()
        dec.to_logits.bias.data.copy_(logp)
    test = corpus.with_split("test")
    data = np.asarray(test.data)
    # by hand: window i starts at i*stride of the test stream; its scored bytes follow the first P+1 bytes
    scored = [int(b) for i in range(test.num_sequences) for b in data[i * stride + P + 1:i * stride + T + 1]]
    expected = -float(np.mean([logp[b].item() for b in scored])) / math.log(2)
    res = score_models(corpus, 10**6, P, teacher, {"smt": student}, bptt=student)
    assert res["sequences"] == test.num_sequences and res["targets"] == len(scored)
    for fig in (res["teacher"], res["smt"]["from_teacher_prompt"], res["smt"]["from_m0"], res["bptt"]["from_m0"]):
        assert fig["targets"] == len(scored) and fig["bits"] == pytest.approx(expected, rel=1e-5)
    # the same scoring through the evaluation functions directly, on a sample of the split
    x, y = eval_batch(corpus, 7, 0, "test")
    mask = y[:, P:] != -1
    hand = -float(logp[y[:, P:][mask]].mean()) / math.log(2)
    assert evaluate_teacher(teacher, x, y, P)["bits_per_token"] == pytest.approx(hand, rel=1e-5)
    assert evaluate_student(student, x, y, None, P, from_m0=True)["bits_per_token"] == pytest.approx(hand, rel=1e-5)


def test_from_m0_rollout_reads_the_prompt_itself():
    """From m_0 the student's state after the prompt is its own rollout of the prompt, not the teacher's memory."""
    teacher, student = _models(17)
    x = torch.randint(0, 17, (3, 12))
    y = torch.roll(x, -1, 1)
    y[:, -1] = -1
    own = evaluate_student(student, x, y, teacher, 5, from_m0=True)
    full = evaluate_student(student, x, y)  # every position from m_0
    assert own["loss_by_pos"] == full["loss_by_pos"][5:]
    assert own["targets"] == int((y[:, 5:] != -1).sum())


def test_missing_figures_are_null_and_na(tmp_path):
    from jobs.pipeline_report import heldout_section

    corpus = load_corpus("digits:raw=1")
    teacher, student = _models(17)
    res = score_models(corpus, 16, 0, teacher, {"smt": student, "dmt": None}, bptt=None)
    assert res["bptt"] is None and res["dmt"] is None and res["smt"]["from_teacher_prompt"] is None
    assert set(res["missing"]) == {"bptt", "dmt", "smt.from_teacher_prompt"}
    text = json.dumps(res)
    assert '"bptt": null' in text and "NaN" not in text
    full = {"test": res, "unit": "pixel", "student": "mlp", "splits": split_sizes(corpus), "samples": {}}
    md = "\n".join(heldout_section(tmp_path, full))
    assert "n/a (BPTT baseline not run" in md and "n/a (not trained in this run)" in md
    assert "n/a (prefix corpus: no prompt" in md
    # the benchmark's table cells and verdicts follow the same rule
    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from real_corpora import fmt, wins

    assert fmt(None, "no probe that early") == "n/a (no probe that early)"
    row = {"corpus": "text", "arch": "mlp", "dmt_m0": {"median": 4.0, "min": 4.0, "max": 4.0, "n": 1},
           "bptt_full": {"median": 3.0, "min": 3.0, "max": 3.0, "n": 1}, "bptt_amortised": None}
    line = wins([row])[0]
    assert "BPTT wins (4.000 vs BPTT 3.000)" in line and "amortised: n/a (" in line


def test_samplers_produce_valid_tokens_and_images(tmp_path):
    from jobs.pipeline_report import _fence, image_grid

    teacher, student = _models(17)
    g = torch.Generator().manual_seed(0)
    p = torch.zeros(5, 1, dtype=torch.long)
    for out in (generate(student, p, 63, 0.8, g), generate(student, p, 63, 0.8, g, memory=student.start(5)),
                generate_teacher(teacher, p, 63, 1.0, g), generate(student, p, 63, 0.0)):
        assert out.shape == (5, 63) and int(out.min()) >= 0 and int(out.max()) < 17
    corpus = load_corpus("digits:raw=1")
    s = sample_models(corpus, 0, teacher, {"smt": student}, student, k=6)
    assert set(s) == {"prompt", "real", "teacher", "smt (own m_0)", "bptt (own m_0)"}
    assert all(v.shape == (6, 63) and int(v.min()) >= 0 and int(v.max()) <= 16 for k, v in s.items() if k != "prompt")
    png = image_grid(tmp_path / "g.png", {k: v.tolist() for k, v in s.items()})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # text: a prompt from the test split and the bytes that follow it there; any bytes render inside one fence
    (tmp_path / "t.txt").write_bytes(bytes(range(256)) * 20)
    text = load_corpus(f"text:{tmp_path / 't.txt'}|T=24,stride=12")
    t2, s2 = _models(256, window=16)
    s = sample_models(text, 16, t2, {"dmt": s2}, None, k=2, steps=20)
    assert set(s) == {"prompt", "real", "teacher", "dmt (teacher's prompt memory)", "dmt (own m_0)"}
    test = np.asarray(text.with_split("test").data)
    assert s["prompt"][0].tolist() == test[:16].tolist() and s["real"][0].tolist() == test[16:36].tolist()
    fenced = _fence(list(b"a```b\x00\x07c\n") + [200, 201])
    assert fenced.count("```") == 2 and "\\x00" in fenced


def test_benchmark_public_spec_names_no_local_path():
    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from real_corpora import _public

    spec = load_recipe("text-bytes-tiny").corpus
    assert _public(spec) == "text:{pydoc}|T=96,stride=48" and os.sep + "cache" not in _public(spec)


def test_benchmark_lr_choice_reads_valid_only_and_takes_the_lowest():
    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from real_corpora import choose_lr

    # test figures kept in the entries point the other way: the choice must follow valid bits alone
    sweep = [{"lr": 3e-4, "valid_bits": 4.2, "test_bits": 3.0},
             {"lr": 1e-3, "valid_bits": 3.9, "test_bits": 4.5},
             {"lr": 3e-3, "valid_bits": 4.0, "test_bits": 2.0}]
    assert choose_lr(sweep) == 1
    # a diverged run (nan, inf or missing) never wins, even against worse finite figures
    sweep[1]["valid_bits"] = float("nan")
    assert choose_lr(sweep) == 2
    sweep[2]["valid_bits"], sweep[0]["valid_bits"] = float("inf"), None
    with pytest.raises(ValueError, match="no run has a finite valid figure"):
        choose_lr(sweep)
    # ties go to the first entry, whatever test says
    assert choose_lr([{"lr": 1e-3, "valid_bits": 3.5, "test_bits": 9.0}, {"lr": 3e-3, "valid_bits": 3.5}]) == 0
