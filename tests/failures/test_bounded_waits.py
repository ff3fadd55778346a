"""No wait is unbounded (issue 23 item 8): a work item stuck with the GIL released (a sleeping or socket-blocked
stage, as a CUDA hang or a dead peer looks) still answers heartbeats, so the Ray pool bounds items by default,
derived from the work and overridable (`--item-timeout-s`); `smt dmt` bounds its actor by progress, not by a
wall clock, and names the stuck actor."""
from __future__ import annotations

import os
import re

import pytest

from jobs.cli_common import parse
from jobs.dmt import main as dmt_main
from jobs.label import LabelJob
from jobs.label import defaults as label_defaults
from pipeline.executors import ExecutorConfig, ExecutorError, RayActorPool
from pipeline.label import LabelConfig, prepare
from tests.faults import StuckOn
from tests.label_data import PREFIX_SPEC

pytest_plugins = ["tests.label_fixtures"]
pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("how, tries", [("sleep", 2), ("recv", 1)])
def test_a_stuck_item_times_out_by_default_in_one_line(ray_local, teachers, tmp_path, how, tries):
    path, _ = teachers["causal"]
    plan = prepare(LabelConfig(teacher=path, corpus=PREFIX_SPEC, out=str(tmp_path), shard_sequences=2,
                               batch_size=2, device="cpu"))
    stuck = plan.items[2]
    # no item_timeout_s: the default bound, 10x the slowest finished item and at least item_timeout_min_s (small
    # here so that the test is short); heartbeats every 0.2 s are answered all along
    pool = RayActorPool(num_actors=1, heartbeat_s=0.2, hang_timeout_s=60.0, item_timeout_min_s=2.0,
                        task_retries=tries - 1)
    done = []
    with pytest.raises(ExecutorError) as e:
        for res in pool.map(StuckOn(plan.stage, stuck.index, how), plan.items, quiet=True):
            done.append(res["index"])
    limit = pool.stats["item_timeout_s"]
    assert str(e.value) == (
        f"label: item {stuck} ran past the item timeout ({limit:.0f} s) on {tries} of {tries} tries while its actor answered "
        "heartbeats (stuck: a hung device or a blocking socket?); if items this size take longer, raise "
        "--item-timeout-s")
    assert sorted(done) == [0, 1] and pool.stats["hung_actors"] == tries
    assert pool.stats["retried_items"] == tries - 1
    assert limit >= 2.0


def test_the_item_timeout_is_on_by_default_and_a_flag():
    pool = ExecutorConfig(workers=2).build()
    assert pool.item_timeout_s is None
    assert (pool.item_timeout(None), pool.item_timeout(30.0), pool.item_timeout(120.0)) == (600.0, 600.0, 1200.0)
    job = parse(LabelJob, ["--teacher", "t", "--corpus", "c", "--out", "o", "--workers", "2",
                           "--item-timeout-s", "45"], "label", default=label_defaults([]))
    pool = job.executor.build()
    assert pool.item_timeout_s == 45.0 and pool.item_timeout(1000.0) == 45.0


def test_a_bad_item_timeout_is_one_line(capsys):
    from jobs.label import main

    assert main(["--teacher", "t", "--corpus", "c", "--out", "o", "--item-timeout-s", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("smt label: error: --item-timeout-s=0.0 must be > 0 (seconds an item may run; leave it unset "
                   "for 10x the slowest finished item, at least 600 s)")


def test_smt_dmt_names_a_stuck_actor(ray_local, tmp_path, capsys):
    """The actor's loop blocks reading its run's rounds manifest hint (a FIFO nobody writes: I/O that never
    returns, the GIL released), so the actor still answers calls; its progress count stays still and `smt dmt`
    stops it after --stall-timeout-s, in one line naming it."""
    run = tmp_path / "run"
    (run / "rounds" / "manifest").mkdir(parents=True)
    os.mkfifo(run / "rounds" / "manifest" / "LATEST")
    argv = ["--targets", str(tmp_path / "targets"), "--run", str(run), "--corpus", PREFIX_SPEC, "--teacher",
            str(tmp_path / "teacher"), "--no-train", "--stall-timeout-s", "3", "--quiet",
            "--report", str(tmp_path / "report")]
    assert dmt_main(argv) == 2
    err = capsys.readouterr().err.strip()
    want = (f"smt dmt: error: the DMT actor ACTOR on run {run} made no progress for 3 s (no event, relabeled "
            "shard, training step or poll; last event: none yet): it is stuck (a hung device or a blocking socket?), "
            "so it was stopped; see its log, then rerun this command to resume, or raise --stall-timeout-s if one "
            "shard or step takes longer")
    assert re.fullmatch(re.escape(want).replace("ACTOR", "[0-9a-f]{32}"), err), err
    assert not (tmp_path / "report").exists()


def test_a_bad_stall_timeout_is_one_line(capsys):
    assert dmt_main(["--targets", "t", "--run", "r", "--corpus", "c", "--stall-timeout-s", "-1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "smt dmt: error: Error parsing DMTJob: --stall-timeout-s=-1.0 must be > 0 (seconds without progress before "
        "the DMT actor counts as stuck) (smt dmt --help)")
