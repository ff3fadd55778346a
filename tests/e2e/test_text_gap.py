"""The issue-16 text study (benchmarks/text_gap.py): its corpus is English text from this Python, every BPTT
figure is chosen on valid and reported on test within the budget, and time-to-reach and the student's stage
follow the rules the report states."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.text_gap import english_text, final_bits, pretrain_config
from benchmarks.text_gap_report import bptt_at, time_to_reach


def _run(lr, probes, arch="mlp", seed=0):
    return {"arch": arch, "depth": 2, "lr": lr, "seed": seed,
            "probes": [{"seconds": s, "step": 10 * (i + 1), "bytes": 30720 * (i + 1), "valid": v, "test": t}
                       for i, (s, v, t) in enumerate(probes)]}


RUNS = [_run(3e-3, [(10, 5.0, 5.1), (20, 4.0, 4.6), (30, 4.5, 3.9)]),
        _run(1e-2, [(10, 4.8, 4.2), (20, 4.2, 3.8), (30, 4.1, 3.7)]),
        _run(3e-3, [(10, 1.0, 1.0)], arch="gru")]


def test_bptt_figure_is_chosen_on_valid_within_the_budget():
    at20 = bptt_at(RUNS, "mlp", 2, 0, seconds=20)
    assert (at20["lr"], at20["seconds"], at20["test"]) == (3e-3, 20, 4.6)  # lowest valid, not lowest test (3.8)
    assert bptt_at(RUNS, "mlp", 2, 0, seconds=30)["test"] == 4.6  # early stopping: later probes are worse on valid
    assert bptt_at(RUNS, "mlp", 2, 0, bytes_=30720)["test"] == 4.2  # the equal-bytes axis: first probes only
    assert bptt_at(RUNS, "mlp", 2, 0, seconds=5) is None  # no probe that early: n/a, never a number
    assert bptt_at(RUNS, "mlp", 2, 1, seconds=30) is None  # another seed's runs are not this seed's


def test_time_to_reach_is_the_earliest_probe_at_or_below_the_bits():
    hit = time_to_reach(RUNS, "mlp", 2, 0, 4.2)
    assert (hit["seconds"], hit["lr"]) == (10, 1e-2)
    assert time_to_reach(RUNS, "mlp", 2, 0, 3.9)["seconds"] == 20  # lr 1e-2 at 20 s beats lr 3e-3 at 30 s
    assert time_to_reach(RUNS, "mlp", 2, 0, 3.0) is None


def test_student_stage_is_chosen_on_valid_and_charged_every_stage():
    fig = lambda v, t: {"valid": {"prompt": v, "m0": v}, "test": {"prompt": t, "m0": t + 0.01}}
    r = {"teacher": {"seconds": 50.0, "bytes": 1000}, "label": {"seconds": 5.0, "bytes": 100},
         "students": [{"smt_seconds": 10.0, "smt_bytes": 10, "smt": fig(4.0, 3.5),
                       "dmt": {"seconds": 7.0, "bytes": 7, **fig(3.9, 3.8)}}]}
    f = final_bits(r)
    assert (f["stage"], f["test"], f["seconds"], f["bytes"]) == ("SMT->DMT", 3.8, 72.0, 1117)
    r["students"][0]["dmt"].update(fig(4.1, 3.0))  # worse on valid: SMT stays, whatever test says
    assert final_bits(r)["stage"] == "SMT" and final_bits(r)["seconds"] == 65.0
    joint = {"teacher": {"seconds": 80.0, "bytes": 800}, "students": [], "joint": fig(4.5, 4.4)}
    assert final_bits(joint) == {"stage": "joint updater", "valid": 4.5, "test": 4.4, "test_m0": 4.41,
                                 "seconds": 80.0, "bytes": 800}


def test_english_text_is_the_pydoc_topics_then_stdlib_docstrings(tmp_path):
    from pydoc_data.topics import topics

    p = english_text(tmp_path / "a.txt", size=520_000)
    data = p.read_bytes()
    assert 470_000 < len(data) <= 520_000  # past the pydoc topics (about 465 KB), cut at a docstring boundary
    first = min(topics)
    assert data.decode("utf-8").startswith(topics[first].strip("\n")[:200])
    assert english_text(tmp_path / "b.txt", size=520_000).read_bytes() == data  # deterministic


def test_levers_set_the_recipe_fields_they_name():
    cfg = pretrain_config({"Tf": 1, "dec_positions": 32, "lr": 3e-3, "batch": 64, "d_model": 96}, 10.0, 3)
    assert (cfg.smt.Tf, cfg.smt.dec_positions, cfg.optim.lr, cfg.batch_size, cfg.teacher.d_model) == (1, 32, 3e-3, 64, 96)
    assert (cfg.seconds, cfg.clock, cfg.seed) == (10.0, "process", 3)
    assert cfg.teacher.d_model % cfg.teacher.n_heads == 0
    assert pretrain_config({"all_memories": True}, 10.0, 0).smt.all_memories  # issue 22 item 3's arm
    assert not pretrain_config({}, 10.0, 0).smt.all_memories


def test_label_stride_labels_a_fraction_of_a_stream_corpus_and_refuses_prefix_corpora(tmp_path):
    import pytest
    import torch

    from jobs.recipes import load_recipe
    from models.teacher import Teacher, TeacherConfig
    from pipeline.corpora import load_corpus
    from pipeline.label import LabelConfig, LabelError, prepare
    from storage.checkpoints import save_teacher

    rc = load_recipe("text-bytes-tiny")
    assert rc.label.stride == 384  # the study's label share is the recipe's default
    torch.manual_seed(0)
    url = str(tmp_path / "teacher")
    save_teacher(url, Teacher(TeacherConfig(vocab_size=256, d_model=16, n_heads=2, encoder_depth=1, decoder_depth=1,
                                            mem_tokens=2, window=64)), {})
    text = load_corpus(rc.corpus)
    whole = prepare(LabelConfig(teacher=url, corpus=rc.corpus, out=str(tmp_path / "b"), Tc=64))
    part = prepare(LabelConfig(teacher=url, corpus=rc.corpus, out=str(tmp_path / "b"), Tc=64, stride=384))
    assert whole.corpus.num_sequences == text.num_sequences
    assert part.corpus.stride == 384 and part.corpus.num_sequences < text.num_sequences // 7
    with pytest.raises(LabelError, match="--stride=96 applies to stream corpora only"):
        prepare(LabelConfig(teacher=url, corpus="retrieval:T=16,vocab=8,n=64", out=str(tmp_path / "b"), stride=96))
    with pytest.raises(LabelError, match="stride=0 must be >= 1"):
        LabelConfig(stride=0)
