"""Repeated list flags all apply: `--set a=1 --set b=2` keeps both (tyro alone keeps only the last)."""
from __future__ import annotations

from jobs.common import merge_repeated, parse
from jobs.demo import DemoConfig
from jobs.pipeline import PipelineJob
from jobs.recipes import load_recipe


def test_repeated_set_flags_all_apply():
    argv = ["--recipe", "retrieval-demo", "--set", "student.steps=7", "--quiet", "--set", "dmt.rounds=5",
            "label.workers=0", "--set=student.arch=gru"]
    job = parse(PipelineJob, argv, "pipeline")
    assert job.set == ["student.steps=7", "dmt.rounds=5", "label.workers=0", "student.arch=gru"] and job.quiet
    rc = load_recipe(job.recipe, job.set)
    assert (rc.student.steps, rc.dmt.rounds, rc.label.workers, rc.student.arch) == (7, 5, 0, "gru")
    demo = parse(DemoConfig, ["--set", "dmt.rounds=2", "--student", "gru", "--set", "student.steps=3"], "demo")
    assert demo.set == ["dmt.rounds=2", "student.steps=3"] and demo.student == "gru"


def test_merge_keeps_other_flags_and_order():
    assert merge_repeated(["--out", "x", "--set", "a=1", "--set", "b=2"], {"--set"}) == \
        ["--out", "x", "--set", "a=1", "b=2"]
    assert merge_repeated(["--out", "x"], {"--set"}) == ["--out", "x"]
