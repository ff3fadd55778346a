"""The DMT pin (`<run>/rounds/dmt/intent-R.json`) is written only after the round is validated: a failed `smt dmt`
(a run trained against another teacher, another corpus, a rollout that does not fit) leaves no pin."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.dmt import main as dmt_main
from storage.rounds import rounds_bucket
from tests.trainers.test_dmt import SPEC, _label, _student


def _fake_run(d: dict, run: Path, fp: str, step: int = 100) -> str:
    """A run folder whose newest checkpoint is a student trained against teacher `fp`."""
    rel = f"checkpoints/step-{step:08d}"
    _student({**d, "fp": fp}, run / rel / "student")
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": step, "path": rel}))
    (run / "run.json").write_text(json.dumps({"kind": "train"}))  # its record, as `smt train` writes it
    return str(run)


def _dmt(d: dict, run: str, *extra: str) -> int:
    return dmt_main(["--targets", d["targets"], "--run", run, "--corpus", SPEC, "--teacher", d["teacher"],
                     "--rounds", "1", "--every-steps", "100", "--sequences", "12", "--shard-sequences", "6",
                     "--dtype", "float32", "--device", "cpu", "--no-actor", "--quiet", "--poll-seconds", "0.05",
                     "--timeout-seconds", "20", "--no-train", "--report", str(Path(run).parent / "rep"), *extra])


@pytest.mark.parametrize("fault", ["other-teacher", "other-corpus", "Td-too-long"])
def test_failed_dmt_leaves_no_pin(tmp_path, capsys, fault):
    d = _label(tmp_path)
    good = _fake_run(d, tmp_path / "good", d["fp"])
    run, extra = good, []
    if fault == "other-teacher":
        run = _fake_run(d, tmp_path / "wrong", "f" * 64)
    elif fault == "other-corpus":
        extra = ["--corpus", "retrieval:T=12,vocab=8,n=49"]
    else:
        extra = ["--Td", "99"]
    assert _dmt(d, run, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smt dmt: error:") and "\n" not in err
    assert not rounds_bucket(run).exists("dmt/intent-001.json")
    # the next, correct run is not bound by the failed one: it pins and relabels its own student
    assert _dmt(d, good) == 0
    pin = json.loads(rounds_bucket(good).read_bytes("dmt/intent-001.json"))
    assert pin == {"step": 100, "path": "policy/step-00000100"}  # a copy retention never prunes
