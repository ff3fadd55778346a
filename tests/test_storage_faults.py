"""Fault paths of committing: racing commits on a real S3 endpoint (moto), a store that ignores
create-if-absent, a torn (empty or truncated) newest generation, and a second copy of a record."""
from __future__ import annotations

import pytest
from s3fs import S3FileSystem

from storage.bucket import Bucket
from storage.errors import BucketError, ManifestError
from storage.manifest import (
    TornGeneration,
    commit,
    gen_path,
    newest_generation,
    read_generation,
    target_set_path,
)
from storage.reader import TargetSet
from storage.writer import TargetSetWriter, write_shard
from tests.storage_data import CORPUS, FP, make_segments, race_commits, writer_kwargs

pytestmark = pytest.mark.timeout(300)


class IgnoresIfNoneMatch(S3FileSystem):
    """A real S3 client talking to a store that drops the `If-None-Match: *` condition (as old s3fs
    releases and some S3-compatible stores do): every conditional put silently overwrites."""

    def _get_s3_method_kwargs(self, method, *args, **kwargs):
        out = super()._get_s3_method_kwargs(method, *args, **kwargs)
        out.pop("IfNoneMatch", None)
        return out


def _s3_target(s3_bucket) -> Bucket:
    url, endpoint = s3_bucket
    return Bucket.from_url(url, endpoint_url=endpoint, retries=1).child(target_set_path(FP, CORPUS))


def test_racing_commits_on_s3_lose_nothing(s3_bucket):
    target = _s3_target(s3_bucket)
    n_writers = 8
    done = race_commits(target, n_writers)
    assert sorted(g.number for g in done.values()) == list(range(1, n_writers + 1))  # generations unique
    final = TargetSet.open(target, FP)
    assert final.generation == n_writers
    paths = {e.path for e in final.shards}
    for i, g in done.items():  # every commit that reported success is visible, with all it built on
        assert f"round-000/shard-{i:05d}.tar" in paths
        assert {e.path for e in read_generation(target, g.number).shards} <= paths


def test_store_ignoring_create_if_absent_is_refused(s3_bucket):
    url, endpoint = s3_bucket
    fs = IgnoresIfNoneMatch(endpoint_url=endpoint, use_listings_cache=False)
    target = Bucket(fs, url.removeprefix("s3://"), protocol="s3", endpoint_url=endpoint,
                    retries=1).child(target_set_path(FP, CORPUS))
    w = TargetSetWriter(target, fmt="zarr", **writer_kwargs())
    with pytest.raises(BucketError, match="ignores conditional puts") as err:
        w.write_segments(0, make_segments())  # a shard is an exclusive create too: refused up front
    assert "\n" not in str(err.value) and "refusing to commit" in str(err.value)
    assert not target.exists(gen_path(1)) and newest_generation(target) == 0
    # the verdict is probed once per bucket and remembered; the honest client on the same bucket commits
    with pytest.raises(BucketError, match="ignores conditional puts"):
        target.create_exclusive("manifest/other.json", b"{}")
    with TargetSetWriter(_s3_target(s3_bucket), fmt="zarr", **writer_kwargs()) as honest:
        honest.write_segments(0, make_segments())
    assert honest.generation.number == 1


@pytest.mark.parametrize("torn", [b"", b'{"schema_version": 1, "generation": 2, "sha'])
def test_torn_newest_generation_does_not_block_commits(tmp_path, torn):
    target = Bucket.from_url(str(tmp_path / "b")).child(target_set_path(FP, CORPUS))
    with TargetSetWriter(target, **writer_kwargs()) as w:
        w.write_segments(0, make_segments())
    # a power loss left generation 2's name pointing at an empty or cut-short file
    (tmp_path / "b" / target_set_path(FP, CORPUS) / gen_path(2)).write_bytes(torn)
    with pytest.raises(TornGeneration, match="empty or truncated.*read generation 1"):
        TargetSet.open(target, FP)
    with TargetSetWriter(target, **writer_kwargs()) as w:
        w.write_segments(1, make_segments(seed=1))
    assert w.generation.number == 3 and w.generation.parent == 1
    ts = TargetSet.open(target, FP)
    assert ts.generation == 3
    assert [e.path for e in ts.shards] == ["round-000/shard-00000.zarr.zip", "round-000/shard-00001.zarr.zip"]


def test_a_record_is_never_committed_twice(target):
    with TargetSetWriter(target, fmt="zarr", **writer_kwargs()) as w:
        w.write_segments(0, make_segments())
    again = write_shard(target, make_segments(), index=0, round=0, fmt="wds", dtype="float16",
                        teacher_fingerprint=FP)
    with pytest.raises(ManifestError, match="duplicate the records of committed shard round-000/shard-00000.zarr.zip"):
        commit(target, [again], **writer_kwargs())
    assert newest_generation(target) == 1


pytest_plugins = ["tests.storage_fixtures"]
