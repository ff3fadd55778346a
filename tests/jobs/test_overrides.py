"""One override language: a recipe's tree is the parser's defaults, flags and recipe files name its fields alike."""
from __future__ import annotations

import json
import pickle

import pytest

from jobs.cli_common import parse
from jobs.pipeline_job import PipelineJob, defaults, wired
from jobs.recipes import RECIPES, load_recipe
from models.teacher import ConfigError


def _parse(argv: list[str]) -> PipelineJob:
    return parse(PipelineJob, argv, "pipeline", default=defaults(argv))


def test_flags_override_the_named_recipe_and_keep_its_other_values():
    job = _parse(["--recipe", "text-bytes-tiny", "--student.steps", "7", "--quiet", "--dmt.rounds", "5",
                  "--label-executor.workers", "0", "--student.updater.arch", "gru", "--dmt.refresh.no-enabled"])
    rc, base = job.tree, RECIPES["text-bytes-tiny"]
    assert job.recipe == "text-bytes-tiny" and job.quiet
    assert (rc.student.steps, rc.dmt.rounds, rc.label_executor.workers, rc.student.updater.arch) == (7, 5, 0, "gru")
    assert not rc.dmt.refresh.enabled and base.dmt.refresh.enabled  # the named recipe itself is unchanged
    # what no flag names keeps the recipe's value, not the class default
    assert rc.eval_size == base.eval_size == 256 and rc.dmt.every == base.dmt.every
    assert rc.pretrain.smt.Tc == 64 and rc.label.shard_sequences == 64 and rc.dmt_phase.stream.batch_size == 1024
    assert rc.student.updater.depth == 2 and rc.student.optim.lr == base.student.optim.lr


def test_last_of_repeated_flags_wins_and_underscores_spell_the_same_field():
    job = _parse(["--student.steps", "3", "--student.steps", "9", "--student.stream.batch_size", "64"])
    assert job.tree.student.steps == 9 and job.tree.student.stream.batch_size == 64
    assert job.recipe == "retrieval-demo" and job.tree.name == "retrieval-demo"


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_recipe_file_uses_the_flags_names(tmp_path, suffix):
    tree = {"base": "text-bytes-tiny", "student": {"steps": 7, "updater": {"arch": "gru"}}, "dmt": {"rounds": 5},
            "label_executor": {"workers": 0}, "pretrain": {"curriculum": []}}
    path = tmp_path / f"r{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(tree))
    else:
        import yaml

        path.write_text(yaml.safe_dump(tree))
    from_file = load_recipe(str(path))
    from_flags = _parse(["--recipe", "text-bytes-tiny", "--student.steps", "7", "--student.updater.arch", "gru",
                         "--dmt.rounds", "5", "--label-executor.workers", "0", "--pretrain.curriculum"]).tree
    assert from_file == from_flags
    # and the file is a recipe the flags start from
    assert _parse(["--recipe", str(path), "--dmt.rounds", "2"]).tree.student.updater.arch == "gru"


def test_bad_names_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(["--student.nosuch", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--student.nosuch" in err[0] and err[0].startswith("smt pipeline: error:")
    (tmp_path / "bad.json").write_text(json.dumps({"student": {"stepz": 1}}))
    with pytest.raises(ConfigError, match="unknown field 'stepz' of StudentTrainConfig"):
        load_recipe(str(tmp_path / "bad.json"))
    with pytest.raises(ConfigError, match="neither a named recipe"):
        load_recipe(str(tmp_path / "missing.yaml"))


def test_fields_the_pipeline_derives_are_hidden_from_its_flags_and_refused_in_a_file(tmp_path, capsys):
    from jobs.pipeline_job import main
    from jobs.recipes import _VIEWS
    from pipeline.label import LabelConfig

    with pytest.raises(SystemExit) as e:
        _parse(["--label.teacher", "somewhere"])
    assert e.value.code == 2 and "--label.teacher" in capsys.readouterr().err
    assert main(["--help"]) == 0
    shown = capsys.readouterr().out
    for name, view in _VIEWS.items():  # every field the pipeline sets is absent from --help, 28 in all
        prefix = "--" + name.replace("_", "-") + "."
        for f in view.derived:
            assert prefix + f.replace("_", "-") + " " not in shown and prefix + f + " " not in shown
    assert sum(len(v.derived) for v in _VIEWS.values()) == 28
    assert "--label.format" in shown and "--baseline.lrs" in shown and "--online.w-state" in shown
    (tmp_path / "r.json").write_text(json.dumps({"label": {"teacher": "somewhere"}}))
    rc = load_recipe(str(tmp_path / "r.json"))
    with pytest.raises(ConfigError, match="label.teacher is set by the pipeline.*drop it from the recipe file"):
        wired(rc.label, "label", teacher="t", corpus="c", out="o", Tc=None)
    rc = load_recipe("retrieval-demo")
    assert pickle.loads(pickle.dumps(rc)) == rc  # the views are importable classes: a recipe can go to a worker
    lc = wired(rc.label, "label", teacher="t", corpus="c", out="o", Tc=None)
    assert type(lc) is LabelConfig and (lc.teacher, lc.corpus, lc.out) == ("t", "c", "o")


def test_bptt_baseline_takes_the_teachers_curriculum_and_refuses_its_own(tmp_path):
    from jobs.pipeline_job import _bptt_baseline

    (tmp_path / "r.yaml").write_text("baseline:\n  curriculum: [8]\n")
    rc = load_recipe(str(tmp_path / "r.yaml"))
    with pytest.raises(ConfigError, match="baseline.curriculum is set by the pipeline.*drop it from the recipe"):
        _bptt_baseline(rc, None, 10.0, None, True, print)
    rc = _parse(["--baseline.lrs", "1e-3", "3e-3"]).tree
    assert rc.baseline.lrs == (1e-3, 3e-3) and rc.pretrain.curriculum == (16, 32)
