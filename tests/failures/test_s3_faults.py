"""S3 faults on the commit path, injected by a real proxy (tests/s3_proxy.py) between the real s3fs client
and the moto server: 5xx errors, replies lost after the store applied the request, 412s without their
`Condition` element, and large exclusive creates. Each commit lands exactly once; an ambiguous probe is
never remembered as "this store cannot commit"."""
from __future__ import annotations

import pytest
from s3fs import S3FileSystem

from storage.bucket import Bucket
from storage.errors import BucketError
from storage.manifest import commit, gen_path, newest_generation, read_generation, target_set_path
from storage.reader import TargetSet
from storage.writer import write_shard
from tests.storage_data import CORPUS, FP, make_segments, race_commits, writer_kwargs

pytest_plugins = ["tests.storage_fixtures"]
pytestmark = pytest.mark.timeout(300)
GEN = r"/manifest/gen-{:06d}\.json$"


def _target(url: str, proxy, retries: int = 2) -> Bucket:
    return Bucket.from_url(url, endpoint_url=proxy.url, retries=retries).child(target_set_path(FP, CORPUS))


def _shard(target: Bucket, i: int):
    return write_shard(target, make_segments(seed=i), index=i, round=0, fmt="wds", dtype="float16",
                       teacher_fingerprint=FP)


def _paths(target: Bucket, n: int) -> list[str]:
    return [e.path for e in read_generation(target, n).shards]


@pytest.mark.parametrize("fault", ["503", "apply_then_500", "apply_then_drop"])
def test_commit_under_injected_faults_lands_exactly_once(s3_proxy, fault):
    url, proxy = s3_proxy
    target = _target(url, proxy)
    entry = _shard(target, 0)
    proxy.inject("PUT", GEN.format(1), fault, times=2 if fault == "503" else 1)
    gen = commit(target, [entry], **writer_kwargs())
    assert gen.number == 1 and newest_generation(target) == 1 and not target.exists(gen_path(2))
    assert _paths(target, 1) == ["round-000/shard-00000.tar"]
    assert len(proxy.requests("PUT", GEN.format(1))) >= 2  # it was retried
    TargetSet.open(target, FP).read_shard(entry)


def test_lost_reply_to_a_manifest_commit_neither_loses_nor_duplicates(s3_proxy):
    """Generation 2 is applied by the store, its reply lost; the retry's 412 is the commit's own
    generation, not a rival's: the commit reports 2 and writes no generation 3 repeating it."""
    url, proxy = s3_proxy
    target = _target(url, proxy)
    first = commit(target, [_shard(target, 0)], **writer_kwargs())
    proxy.inject("PUT", GEN.format(2), "apply_then_drop")
    second = commit(target, [_shard(target, 1)], **writer_kwargs())
    assert (first.number, second.number) == (1, 2)
    assert newest_generation(target) == 2 and not target.exists(gen_path(3))
    assert _paths(target, 2) == ["round-000/shard-00000.tar", "round-000/shard-00001.tar"]
    assert [r[0] for r in proxy.requests("PUT", GEN.format(2))] == ["PUT", "PUT"]  # applied, then retried


def test_lost_reply_to_the_probe_is_not_remembered_as_commits_off(s3_proxy):
    """The probe's first exclusive create is applied and its reply lost; the client's retry then finds the
    key. That is the probe's own key, not a broken store: commits stay on."""
    url, proxy = s3_proxy
    target = _target(url, proxy)
    proxy.inject("PUT", r"/\.smt-probe/", "apply_then_drop")
    gen = commit(target, [_shard(target, 0)], **writer_kwargs())
    assert gen.number == 1 and _paths(target, 1) == ["round-000/shard-00000.tar"]
    assert proxy.rules[0].fired == 1


def test_failed_probe_names_the_endpoint_and_is_retried_next_time(s3_proxy):
    url, proxy = s3_proxy
    target = _target(url, proxy, retries=1)
    proxy.inject("PUT", r"/\.smt-probe/", "503", times=1000)
    with pytest.raises(BucketError) as err:
        target.create_exclusive("manifest/x.json", b"{}")
    msg = str(err.value)
    assert "\n" not in msg and f"(endpoint {proxy.url})" in msg
    assert msg.startswith(f"cannot tell whether {url}/ (endpoint {proxy.url}) honours create-if-absent")
    assert "nothing was written; retry" in msg
    assert not target.exists("manifest/x.json")
    proxy.clear()  # the store recovers: the next exclusive create probes again and goes ahead
    assert target.create_exclusive("manifest/x.json", b"{}") is True
    assert target.read_bytes("manifest/x.json") == b"{}"


def test_412_without_condition_is_exists_and_racing_commits_all_land(s3_proxy):
    url, proxy = s3_proxy
    target = _target(url, proxy)
    proxy.inject("PUT", r"/manifest/gen-", "strip_condition", times=10_000)
    done = race_commits(target, 4)
    assert sorted(g.number for g in done.values()) == [1, 2, 3, 4]
    assert sorted(_paths(target, 4)) == [f"round-000/shard-{i:05d}.tar" for i in range(4)]
    assert any(r.fired for r in proxy.rules)  # some commit did lose a race and saw a bare 412


def test_large_exclusive_create_is_one_conditional_put(s3_proxy):
    """What the probe checks is what every exclusive create sends: one PUT with If-None-Match: *, also for
    objects above the client's multipart threshold (5 MiB here; 50 MiB by default)."""
    url, proxy = s3_proxy
    fs = S3FileSystem(endpoint_url=proxy.url, use_listings_cache=False, default_block_size=5 << 20)
    bucket = Bucket(fs, url.removeprefix("s3://"), protocol="s3", endpoint_url=proxy.url, retries=1)
    big = bytes(range(256)) * (6 << 12)  # 6 MiB
    assert bucket.create_exclusive("round-000/shard-00000.tar", big) is True
    assert bucket.create_exclusive("round-000/shard-00000.tar", big[::-1]) is False
    assert bucket.read_bytes("round-000/shard-00000.tar") == big
    puts = proxy.requests("PUT", r"/round-000/shard-00000\.tar$")
    assert [(q, h.get("If-None-Match")) for _, _, q, h in puts] == [("", "*"), ("", "*")]
    assert not proxy.requests("POST", r"/round-000/shard-00000\.tar$")  # no multipart upload
