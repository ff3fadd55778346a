"""Fault paths of the label stage: a target set never holds a record twice; a hung (SIGSTOPped) actor
is detected, killed and its item finished elsewhere; a retried shard whose bytes differ completes."""
from __future__ import annotations

import pytest

from jobs.label import main
from storage.manifest import newest_generation
from storage.reader import TargetSet
from tests.label_data import PREFIX_SPEC

pytest_plugins = ["tests.label_fixtures"]
pytestmark = pytest.mark.timeout(300)


def _argv(teacher: str, out: str, *extra: str) -> list[str]:
    return ["--teacher", teacher, "--corpus", PREFIX_SPEC, "--out", out, "--quiet", "--workers", "0",
            "--shard-sequences", "4", *extra]


@pytest.mark.parametrize("change", [["--format", "wds"], ["--dtype", "float32"]])
def test_relabel_in_another_encoding_is_refused(teachers, tmp_path, capsys, change):
    path, fp = teachers["causal"]
    assert main(_argv(path, str(tmp_path))) == 0
    ts = TargetSet.open(next(iter(tmp_path.glob("targets/*/*"))).as_posix(), fp)
    before = sorted((e.path, e.sha256) for e in ts.shards)
    capsys.readouterr()
    assert main(_argv(path, str(tmp_path), *change)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already holds this corpus labeled as zarr/float16" in err
    assert ts.bucket.url() in err and "every record twice" in err
    assert newest_generation(ts.bucket) == 1
    assert sorted((e.path, e.sha256) for e in TargetSet.open(ts.bucket, fp).shards) == before
    assert main(_argv(path, str(tmp_path))) == 0  # the same encoding again is an idempotent no-op
    assert newest_generation(ts.bucket) == 1
