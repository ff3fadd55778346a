"""Selection on valid, results on test: every stopping rule and curriculum step of SMT pretraining, DMT and
BPTT reads only the train and valid splits (a recorder wraps the corpus readers); the test split is read
only by report-only hooks, which change no decision; a missing benchmark figure is null, never a number."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from models.teacher import TeacherConfig
from pipeline.corpora import Corpus, held_out, load_corpus
from pipeline.corpora.synthetic import SyntheticTask
from trainers.bptt import BPTTConfig, train_bptt
from trainers.dmt import OnlineDMTConfig, dmt_online
from trainers.evaluate import evaluate_student
from trainers.loop import Callbacks
from trainers.pretrain import PretrainConfig, pretrain

SPEC = "retrieval:T=12,vocab=4"
SMALL = {"d_model": 32, "n_heads": 2, "encoder_depth": 1, "decoder_depth": 1, "mem_tokens": 2}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def reads(monkeypatch):
    """The splits (and lengths) whose sequences are read, in order, for every corpus object."""
    seen: list[tuple[str, int]] = []
    get, sample = SyntheticTask.get, SyntheticTask.sample

    def rec_get(self, indices):
        seen.append((self.split, self.seq_len))
        return get(self, indices)

    def rec_sample(self, batch_size, rng):
        seen.append((self.split, self.seq_len))
        return sample(self, batch_size, rng)

    monkeypatch.setattr(SyntheticTask, "get", rec_get)
    monkeypatch.setattr(SyntheticTask, "sample", rec_sample)
    return seen


def _corpus() -> Corpus:
    c = load_corpus(SPEC)
    assert c.split == "train"
    return c


def test_pretrain_curriculum_and_stop_read_only_train_and_valid(reads):
    r = pretrain(_corpus(), PretrainConfig(teacher=TeacherConfig(**SMALL), steps=6, eval_every=1, eval_size=8,
                                           batch_size=4, curriculum=(6,), curriculum_acc=0.0, stop_at_acc=0.0),
                 quiet=True)
    assert {s for s, _ in reads} == {"train", "valid"}
    assert ("valid", 6) in reads and ("valid", 12) in reads  # each stage is judged on its own valid split
    assert r["steps"] == 2  # stage 1 ends at the first evaluation, stop_at_acc=0 at the second


def test_dmt_and_bptt_rules_read_only_train_and_valid(reads):
    corpus = _corpus()
    pt = pretrain(corpus, PretrainConfig(teacher=TeacherConfig(**SMALL), steps=2, eval_every=1, eval_size=8,
                                         batch_size=4), quiet=True)
    reads.clear()
    d = dmt_online(pt["student"], pt["teacher"], corpus, OnlineDMTConfig(steps=5, eval_every=1, eval_size=8, batch_size=4,
                                                                   stop_at_acc=0.0), quiet=True)
    assert d["steps"] == 0 and {s for s, _ in reads} == {"valid"}  # it already passes: judged on valid, not trained
    reads.clear()
    d = dmt_online(pt["student"], pt["teacher"], corpus, OnlineDMTConfig(steps=2, eval_every=1, eval_size=8, batch_size=4,
                                                                   stop_at_acc=1.01), quiet=True)
    assert d["steps"] == 2 and {s for s, _ in reads} == {"train", "valid"}
    reads.clear()
    b = train_bptt(corpus, BPTTConfig(shape=TeacherConfig(**SMALL), steps=6, eval_every=1, eval_size=8, batch_size=4,
                                      curriculum=(6,), curriculum_acc=0.0, stop_at_acc=0.0), quiet=True)
    assert {s for s, _ in reads} == {"train", "valid"} and ("valid", 6) in reads and ("train", 6) in reads
    assert b["steps"] == 2 and [h["T"] for h in b["history"]] == [6, 12]


def test_bptt_curriculum_waits_for_valid_accuracy():
    b = train_bptt(_corpus(), BPTTConfig(shape=TeacherConfig(**SMALL), steps=3, eval_every=1, eval_size=8,
                                         batch_size=4, curriculum=(6, 8), curriculum_acc=1.01), quiet=True)
    assert [h["T"] for h in b["history"]] == [6, 6, 6]  # never reached: stays at the first length


def test_report_hook_reads_test_without_changing_any_decision(reads):
    corpus = _corpus()
    cfg = BPTTConfig(shape=TeacherConfig(**SMALL), steps=4, eval_every=1, eval_size=8, batch_size=4,
                     curriculum=(6,), curriculum_acc=0.0, stop_at_acc=0.6, seed=3)

    def report(student, row):
        if row["T"] != corpus.seq_len:
            return {"test_acc": None}
        xt, yt = (torch.as_tensor(a) for a in held_out(corpus, "test", 16))
        return {"test_acc": evaluate_student(student, xt, yt)["acc"]}

    plain = train_bptt(corpus, cfg, quiet=True)
    assert "test" not in {s for s, _ in reads}
    rep = train_bptt(corpus, cfg, quiet=True, callbacks=Callbacks(reporter=report))
    assert ("test", 12) in reads  # the hook did read test ...
    keys = ("step", "T", "bptt_acc", "bptt_loss")
    assert [[h[k] for k in keys] for h in rep["history"]] == [[h[k] for k in keys] for h in plain["history"]]
    assert [h["test_acc"] is None for h in rep["history"]] == [h["T"] == 6 for h in rep["history"]]  # ... only that


def test_missing_benchmark_figures_are_null_and_print_as_na(tmp_path):
    from benchmarks import smt_vs_bptt as svb

    runs = [{"T": 16, "arch": "mlp", "method": "bptt", "seed": 0, "lr": 1e-3, "budget": 10.0,
             "timeline": [[4.0, 0.2], [9.9, 0.5], [10.3, 0.99]], "test_final_acc": 0.97, "valid_final_acc": 0.99,
             "steps": 10, "seconds": 10.3},
            {"T": 16, "arch": "mlp", "method": "smt-causal-curr", "seed": 0, "lr": 1e-3, "budget": 10.0,
             "timeline": [[4.0, None], [9.0, 0.4]], "test_final_acc": None, "valid_final_acc": None,
             "missing": "pretraining never reached the full length T=16", "steps": 10, "seconds": 10.2}]
    for r in runs:
        r.update(svb.derive(r))
    assert runs[0]["t95_s"] is None  # 0.99 came after the 10 s budget: it does not count
    rows = svb.summarise(runs)
    text = json.dumps(rows)
    assert "NaN" not in text and all(not (isinstance(v, float) and math.isnan(v)) for r in rows for v in r.values())
    smt = next(r for r in rows if r["method"] == "smt-causal-curr")
    assert smt["test_final_acc_median"] is None and smt["median_t95_s"] is None
    md = svb.fmt_table(rows)
    assert "n/a (" in md and "0.000" not in md
    np.testing.assert_equal(next(r for r in rows if r["method"] == "bptt")["test_final_acc_median"], 0.97)


def test_bptt_job_lr_sweep_chooses_on_valid(tmp_path, capsys):
    from jobs.bptt import main

    out = tmp_path / "bptt"
    assert main(["--corpus", SPEC, "--out", str(out), "--steps", "3", "--eval-every", "1", "--eval-size", "8",
                 "--batch-size", "4", "--quiet", "--shape.d-model", "32", "--shape.n-heads", "2",
                 "--shape.mem-tokens", "2", "--curriculum", "6", "--curriculum-acc", "0", "--lrs", "3e-4", "3e-3"]) == 0
    sel = json.loads((out / "selection.json").read_text())
    assert [r["lr"] for r in sel["runs"]] == [3e-4, 3e-3] and "split=valid" in sel["chosen_on"]
    best = max(sel["runs"], key=lambda r: (r["T"] == 12, r["valid_acc"], -r["valid_loss"]))
    assert sel["chosen_lr"] == best["lr"]
    assert (out / "student" / "config.json").exists() and (out / "lr-0.0003" / "student" / "config.json").exists()
    assert "(split=valid; report with smt eval)" in capsys.readouterr().out


def test_lr_sweep_prefers_the_run_furthest_along_the_curriculum():
    # issue 22: an lr stuck at T=16 with a high short-length accuracy must not beat one that reached T=128
    from trainers.bptt import sweep_key

    stuck = {"T": 16, "bptt_acc": 0.94, "bptt_loss": 0.2}
    further = {"T": 128, "bptt_acc": 0.30, "bptt_loss": 1.9}
    full = {"T": 256, "bptt_acc": 0.20, "bptt_loss": 2.0}
    ranked = sorted([stuck, full, further], key=lambda f: sweep_key(f, "bptt_acc", "bptt_loss"), reverse=True)
    assert ranked == [full, further, stuck]
    # at the same stage: accuracy, then the lower loss
    a, b = {"T": 64, "bptt_acc": 0.5, "bptt_loss": 1.0}, {"T": 64, "bptt_acc": 0.5, "bptt_loss": 0.9}
    assert max([a, b], key=lambda f: sweep_key(f, "bptt_acc", "bptt_loss")) is b


def test_benchmark_lr_choice_prefers_the_run_furthest_along_the_curriculum():
    from benchmarks import smt_vs_bptt as svb

    runs = [{"lr": 3e-3, "final_T": 16, "valid_final_acc": None, "valid_t95_s": None},
            {"lr": 3e-4, "final_T": 128, "valid_final_acc": None, "valid_t95_s": None}]
    assert svb.choose(runs)["lr"] == 3e-4


def test_pretrain_stage_hook_runs_at_each_passed_stage_off_the_record():
    # the length study's DMT copies hang on this hook: it sees each passed stage's own corpus and the models,
    # and the run's decisions and weights are those of a run without it
    corpus = _corpus()
    cfg = PretrainConfig(teacher=TeacherConfig(**SMALL), steps=6, eval_every=1, eval_size=8, batch_size=4,
                         curriculum=(6,), curriculum_acc=0.0, stop_at_acc=0.0)
    seen = []

    def hook(teacher, student, stage_corpus, row):
        seen.append((stage_corpus.seq_len, row["step"], teacher.training))
        student.rollout(torch.zeros(2, 3, dtype=torch.long))  # a caller may use the models (no update)

    plain = pretrain(corpus, cfg, quiet=True)
    hooked = pretrain(corpus, cfg, quiet=True, callbacks=Callbacks(on_stage_end=hook))
    assert seen == [(6, 1, False), (12, 2, False)]  # stage 6 passed at step 1, the last stage stopped at step 2
    for (n, a), b in zip(plain["teacher"].state_dict().items(), hooked["teacher"].state_dict().values()):
        assert torch.equal(a, b), n


def test_dmt_does_not_train_a_student_that_already_passes():
    # length_scaling_warm.md: a student at 0.96 valid before its first DMT step was trained down to 0.25
    corpus = _corpus()
    pt = pretrain(corpus, PretrainConfig(teacher=TeacherConfig(**SMALL), steps=2, eval_every=1, eval_size=8,
                                         batch_size=4), quiet=True)
    before = {k: v.clone() for k, v in pt["student"].state_dict().items()}
    d = dmt_online(pt["student"], pt["teacher"], corpus, OnlineDMTConfig(steps=5, eval_every=1, eval_size=8,
                                                                   batch_size=4, stop_at_acc=0.0), quiet=True)
    assert d["steps"] == 0 and [h["step"] for h in d["history"]] == [0]
    assert all(torch.equal(before[k], v) for k, v in d["student"].state_dict().items())


def test_length_study_answers_from_stage_records():
    from benchmarks import length_scaling as ls

    Ls = [16, 32, 64, 128]

    def stages(seqs, cpus, passed=None):
        cum_s = np.cumsum(seqs).tolist()
        return [{"T": T, "cum_sequences": s, "cum_steps": s // 32, "cum_cpu_s": c, "test_acc": 0.99, "pretrain_sequences": s,
                 "passed": True if passed is None else passed[i]}
                for i, (T, s, c) in enumerate(zip(Ls, cum_s, cpus))]

    smt = {"method": "smt-dmt", "seed": 0, "stages": stages([100, 100, 400, 700], [5, 9, 20, 30])}
    bptt = {"method": "bptt-mlp", "seed": 0, "stages": stages([50, 50, 200, 1600], [2, 4, 25, 90])[:4]}
    for r in (smt, bptt):
        r["passed_up_to"] = ls._passed_up_to(r["stages"], Ls)
    a = ls.analyse([smt, bptt], Ls)["per_seed"][0]
    assert a["smt_passes_every_stage"] and a["smt_growth_lo_hi"] == 1.75 and a["smt_growth_at_most_2x"]
    assert a["bptt_growth_lo_hi"] == 8.0 and a["bptt_grows_2x_faster"] and not a["bptt_fails_a_stage"]
    assert a["cpu_crossover_T"] == 64  # SMT's cumulative CPU first drops below BPTT's at T=64
    bptt["stages"] = bptt["stages"][:2]  # BPTT never passed T=64: it fails a stage, SMT is ahead there
    bptt["passed_up_to"] = ls._passed_up_to(bptt["stages"], Ls)
    a = ls.analyse([smt, bptt], Ls)["per_seed"][0]
    assert a["bptt_fails_a_stage"] and a["bptt_passed_up_to"] == 32 and a["bptt_growth_lo_hi"] is None
    assert a["cpu_crossover_T"] == 64  # from T=64 on SMT stays below (BPTT never passed it)
    smt["stages"][2]["passed"] = False  # a failed DMT stage ends "passed up to"
    assert ls._passed_up_to(smt["stages"], Ls) == 32
    md = ls.markdown([smt, bptt], ls.analyse([smt, bptt], Ls), {"task": "t", "cap_cpu_s_per_run": 10,
                                                                "differences_from_reference": []}, Ls)
    assert "n/a (" in md and "None" not in md
