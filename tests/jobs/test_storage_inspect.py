"""Smoke tests of `smt inspect` (jobs.inspect_bucket.main)."""
from __future__ import annotations

import json

import pytest

from jobs.inspect_bucket import main
from storage.bucket import Bucket
from storage.manifest import target_set_path
from storage.settings import ShardEncoding
from storage.writer import TargetSetWriter
from tests.storage_data import CORPUS, FP, make_pairs, make_segments, writer_kwargs

pytestmark = pytest.mark.timeout(300)


def _populate(root: Bucket) -> Bucket:
    target = root.child(target_set_path(FP, CORPUS))
    with TargetSetWriter(target, encoding=ShardEncoding(format="zarr"), **writer_kwargs()) as w:
        w.write_segments(0, make_segments())
        w.write_segments(1, make_segments(seed=1))
    with TargetSetWriter(target, encoding=ShardEncoding(format="wds", dtype="int8"), round=1, **writer_kwargs()) as w:
        w.write_pairs(0, make_pairs())
    return target


def test_inspect_text_json_and_verify(tmp_path, capsys):
    target = _populate(Bucket.from_url(str(tmp_path)))
    assert main([target.url(), "--verify"]) == 0
    out = capsys.readouterr().out
    assert FP in out and "generation 2" in out and "round   1" in out and "verify: OK" in out
    assert main([str(tmp_path), "--json", "--generation", "1"]) == 0  # a bucket root: finds the set
    doc = json.loads(capsys.readouterr().out)
    (s,) = doc["target_sets"]
    assert s["generation"] == 1 and s["shards"] == 2 and s["records"] == 24 and s["fingerprint"] == FP


def test_inspect_verify_names_bad_shard(tmp_path, capsys):
    target = _populate(Bucket.from_url(str(tmp_path)))
    rel = "round-000/shard-00001.zarr.zip"
    data = bytearray(target.read_bytes(rel))
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(rel, bytes(data))
    assert main([target.url(), "--verify"]) == 1
    err = capsys.readouterr().err
    assert "shard-00001.zarr" in err and "shard-00000.zarr" not in err


def test_inspect_user_errors(tmp_path, capsys):
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no target set" in err and "Traceback" not in err
    _populate(Bucket.from_url(str(tmp_path)))
    assert main([str(tmp_path), "--generation", "9"]) == 2
    assert "no generation 9" in capsys.readouterr().err
    assert main(["ftp://x/y"]) == 2


def test_inspect_on_s3(s3_bucket, capsys):
    url, endpoint = s3_bucket
    _populate(Bucket.from_url(url, endpoint_url=endpoint))
    assert main([url, "--endpoint-url", endpoint, "--json", "--verify"]) == 0
    assert json.loads(capsys.readouterr().out)["target_sets"][0]["records"] == 34
