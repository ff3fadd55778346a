"""The config pieces of trainers/budget.py are inherited with their checks: every method's config refuses a bad
budget in one line at construction (a subclass that forgot to chain `__post_init__` would let it through to the
loop), and the command refuses it before it writes anything."""
from __future__ import annotations

import pytest

from jobs.cli import main as smt
from trainers.bptt import BPTTConfig
from trainers.dmt.online import OnlineDMTConfig
from trainers.pretrain import PretrainConfig
from trainers.student import StudentTrainConfig

BUDGETED = [PretrainConfig, BPTTConfig, OnlineDMTConfig]


@pytest.mark.parametrize("cls", [*BUDGETED, StudentTrainConfig])
def test_every_config_refuses_zero_steps(cls):
    with pytest.raises(ValueError, match="steps=0 must be >= 1"):
        cls(steps=0)


@pytest.mark.parametrize("cls", BUDGETED)
@pytest.mark.parametrize("bad, says", [({"eval_every": 0}, "eval_every=0"), ({"batch_size": 0}, "batch_size=0"),
                                       ({"clock": "sundial"}, "clock='sundial' is unknown")])
def test_every_budgeted_config_refuses_a_bad_budget(cls, bad, says):
    with pytest.raises(ValueError, match=says):
        cls(**bad)


@pytest.mark.parametrize("cls", [PretrainConfig, StudentTrainConfig])
def test_checkpointing_refuses_bad_retention(cls):
    with pytest.raises(ValueError, match="keep_last=0 must be >= 1"):
        cls(keep_last=0)


def test_dmt_online_refuses_a_bad_budget_before_writing(tmp_path, capsys):
    argv = ["dmt-online", "--run", str(tmp_path / "pt"), "--corpus", "retrieval:T=8,vocab=4",
            "--out", str(tmp_path / "dmt"), "--eval-every", "0"]
    assert smt(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "eval_every=0" in err and not (tmp_path / "dmt").exists()
