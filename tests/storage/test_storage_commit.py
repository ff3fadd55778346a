"""Committing a target set, locally and on a real S3 endpoint (moto).

Semantics: concurrent, failed and retried writers, finding the newest generation, refusing another teacher or
corpus. Faults of the store: racing commits on S3, a store that ignores create-if-absent, a torn (empty or
truncated) newest generation, and a second copy of a record."""
from __future__ import annotations

import pytest
from s3fs import S3FileSystem

from storage.bucket import Bucket
from storage.errors import BucketError, FingerprintMismatch, ManifestError
from storage.manifest import (
    LATEST,
    TornGeneration,
    commit,
    gen_path,
    newest_generation,
    read_generation,
    target_set_path,
)
from storage.reader import TargetSet
from storage.settings import ShardEncoding
from storage.writer import TargetSetWriter, write_shard
from tests.storage_data import CORPUS, FP, make_pairs, make_segments, race_commits, writer_kwargs

pytest_plugins = ["tests.storage_fixtures"]  # the root_bucket and target fixtures

pytestmark = pytest.mark.timeout(300)


# ------------------------------------------------------------------------------- commit semantics

def test_concurrent_commits_all_land(target):
    n_writers = 3
    gens = [g.number for g in race_commits(target, n_writers, timeout=20).values()]
    assert sorted(gens) == [1, 2, 3]
    ts = TargetSet.open(target, FP)
    assert ts.generation == 3
    assert sorted(e.path for e in ts.shards) == [f"round-000/shard-0000{i}.tar" for i in range(n_writers)]
    assert read_generation(target, 3).parent == 2


def test_exception_in_body_commits_nothing(target):
    with TargetSetWriter(target, **writer_kwargs()) as w:
        w.write_segments(0, make_segments())
    with pytest.raises(RuntimeError, match="labeler crashed"), TargetSetWriter(target, **writer_kwargs()) as w:
        entry = w.write_segments(1, make_segments(seed=1))
        raise RuntimeError("labeler crashed")
    assert target.exists(entry.path)  # the orphan shard is there but invisible
    assert newest_generation(target) == 1
    assert [e.path for e in TargetSet.open(target, FP).shards] == ["round-000/shard-00000.zarr.zip"]


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_retry_is_deterministic_and_idempotent(target, fmt):
    seg = make_segments(n=4, S=8)
    with TargetSetWriter(target, encoding=ShardEncoding(format=fmt), round=3, **writer_kwargs()) as w:
        first = w.write_segments(7, seg)
    assert first.path == f"round-003/shard-00007.{'zarr.zip' if fmt == 'zarr' else 'tar'}"
    # a retried writer (same data) produces the same checksum, skips the existing shard, and its
    # commit does not list the shard twice
    with TargetSetWriter(target, encoding=ShardEncoding(format=fmt), round=3, **writer_kwargs()) as w:
        again = w.write_segments(7, make_segments(n=4, S=8))
    assert again == first
    ts = TargetSet.open(target, FP)
    assert ts.generation == 2 and [e.path for e in ts.shards] == [first.path]
    ts.verify_shard(ts.shards[0])
    # different data for the same shard never overwrites it: it lands under a content-named variant,
    # and the manifest refuses to commit it next to the committed copy
    other = write_shard(target, make_segments(n=4, S=8, seed=9), index=7, round=3, fmt=fmt, dtype="float16",
                        teacher_fingerprint=FP)
    assert other.path == first.path.replace("shard-00007.", f"shard-00007-{other.sha256[:12]}.")
    TargetSet.open(target, FP).verify_shard(first)  # the committed copy is untouched
    with pytest.raises(ManifestError, match="duplicate the records"):
        commit(target, [other], **writer_kwargs())


def test_retry_same_checksum_across_buckets(tmp_path):
    seg = make_segments(n=5, S=6, Z=32)
    for fmt in ("zarr", "wds"):
        a = write_shard(Bucket.from_url(str(tmp_path / "a")), seg, index=1, round=0, fmt=fmt, dtype="int8",
                        teacher_fingerprint=FP)
        b = write_shard(Bucket.from_url("memory://retry-b"), seg, index=1, round=0, fmt=fmt, dtype="int8",
                        teacher_fingerprint=FP)
        assert a.sha256 == b.sha256 and a.bytes == b.bytes


def test_driver_commits_worker_shards(target):
    entries = [write_shard(target, make_pairs(seed=i), index=i, round=1, fmt="zarr", dtype="float32",
                           teacher_fingerprint=FP) for i in range(2)]
    gen = commit(target, entries, **writer_kwargs())
    assert gen.number == 1 and gen.num_records == 20
    assert TargetSet.open(target, FP).rounds == [1]


def test_latest_hint_is_advisory(target):
    for i in range(5):
        with TargetSetWriter(target, encoding=ShardEncoding(format="wds"), **writer_kwargs()) as w:
            w.write_pairs(i, make_pairs(n=2, seed=i))
    assert target.read_bytes(LATEST) == b"5"
    for hint in (b"2", b"garbage", b"99"):
        target.write_bytes(LATEST, hint)
        assert newest_generation(target) == 5
    target.remove(LATEST)
    assert newest_generation(target) == 5 and TargetSet.open(target, FP, generation=3).generation == 3
    assert len(TargetSet.open(target, FP).shards) == 5


def test_commit_refuses_other_teacher_or_corpus(target):
    with TargetSetWriter(target, **writer_kwargs()) as w:
        w.write_segments(0, make_segments())
    other_teacher = TargetSetWriter(target, **writer_kwargs(teacher_fingerprint="other-teacher"))
    with pytest.raises(FingerprintMismatch, match="other-teacher"), other_teacher as w:
        w.write_segments(1, make_segments())
    other_corpus = TargetSetWriter(target, **writer_kwargs(corpus_id="other-corpus"))
    with pytest.raises(ManifestError, match="corpus"), other_corpus as w:
        w.write_segments(2, make_segments())
    with pytest.raises(ManifestError, match="nothing to commit"), TargetSetWriter(target, **writer_kwargs()):
        pass
    assert newest_generation(target) == 1 and not target.exists(gen_path(2))


# ------------------------------------------------------------------------------- faults of the store

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
    w = TargetSetWriter(target, encoding=ShardEncoding(format="zarr"), **writer_kwargs())
    with pytest.raises(BucketError, match="ignores conditional puts") as err:
        w.write_segments(0, make_segments())  # a shard is an exclusive create too: refused up front
    assert "\n" not in str(err.value) and "refusing to commit" in str(err.value)
    assert not target.exists(gen_path(1)) and newest_generation(target) == 0
    # the verdict is probed once per bucket and remembered; the honest client on the same bucket commits
    with pytest.raises(BucketError, match="ignores conditional puts"):
        target.create_exclusive("manifest/other.json", b"{}")
    with TargetSetWriter(_s3_target(s3_bucket), encoding=ShardEncoding(format="zarr"), **writer_kwargs()) as honest:
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
    with TargetSetWriter(target, encoding=ShardEncoding(format="zarr"), **writer_kwargs()) as w:
        w.write_segments(0, make_segments())
    again = write_shard(target, make_segments(), index=0, round=0, fmt="wds", dtype="float16",
                        teacher_fingerprint=FP)
    with pytest.raises(ManifestError, match="duplicate the records of committed shard round-000/shard-00000.zarr.zip"):
        commit(target, [again], **writer_kwargs())
    assert newest_generation(target) == 1
