"""A run's checkpoint pointer moves by compare-and-swap (`Bucket.read_versioned` / `replace_if`): a writer that
slipped in between another's read and its write is refused, never overwritten. S3 sends one PUT with If-Match
(moto on 127.0.0.1, behind the fault proxy that lands the other writer's PUT in that window); a local folder
compares and renames under an exclusive lock, checked here by real processes racing on one file."""
from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from storage.bucket import Bucket
from storage.run_dir import LATEST, RunConflict, RunDir
from tests.s3_proxy import S3FaultProxy


def _buckets(tmp_path, s3_bucket):
    url, endpoint = s3_bucket
    return {"local": Bucket.from_url(str(tmp_path / "b")), "memory": Bucket.from_url(f"memory://cas-{tmp_path.name}"),
            "s3": Bucket.from_url(f"{url}/b", endpoint_url=endpoint)}


@pytest.mark.parametrize("where", ["local", "memory", "s3"])
def test_replace_if_swaps_only_from_the_version_read(tmp_path, s3_bucket, where):
    b = _buckets(tmp_path, s3_bucket)[where]
    assert b.read_versioned("p.json") is None
    assert b.replace_if("p.json", b"one", None) and not b.replace_if("p.json", b"other", None)  # only if absent
    data, v1 = b.read_versioned("p.json")
    assert data == b"one"
    assert b.replace_if("p.json", b"two", v1)
    assert not b.replace_if("p.json", b"stale", v1)  # v1 is gone: refused, nothing written
    data, v2 = b.read_versioned("p.json")
    assert data == b"two" and v2 != v1


def _bump(root: str, n: int, q) -> None:
    b, won = Bucket.from_url(root), 0
    for _ in range(n):
        while True:
            got = b.read_versioned("counter")
            value = int(got[0]) if got else 0
            if b.replace_if("counter", str(value + 1).encode(), got[1] if got else None):
                won += 1
                break
    q.put(won)


def test_local_swaps_by_racing_processes_lose_no_update(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_bump, args=(str(tmp_path / "c"), 60, q)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert sum(q.get() for _ in procs) == 180
    assert Bucket.from_url(str(tmp_path / "c")).read_bytes("counter") == b"180"  # every increment landed once


def test_a_writer_landing_between_the_check_and_the_commit_is_not_overwritten(s3_bucket):
    """The other writer's pointer lands after this one checked the pointer and before its PUT: this commit is
    refused in one line and the other's pointer stays (read-compare-write would have overwritten it)."""
    url, endpoint = s3_bucket
    run = RunDir(f"{url}/run", endpoint_url=endpoint)
    run.bucket.write_bytes(LATEST, json.dumps({"step": 2, "path": "checkpoints/step-00000002"}).encode())
    other = {"step": 9, "path": "checkpoints/step-00000009", "writer": "other"}
    direct = Bucket.from_url(f"{url}/run", endpoint_url=endpoint)
    proxy = S3FaultProxy(endpoint)
    try:
        mine = RunDir(f"{url}/run", endpoint_url=proxy.url)
        assert mine.latest()["step"] == 2
        proxy.inject("PUT", r"/run/checkpoints/latest\.json$", "forward",
                     before=lambda: direct.write_bytes(LATEST, json.dumps(other).encode()))
        with pytest.raises(RunConflict, match=r"changed while this process committed step 4 \(it now names step 9"):
            mine._commit_pointer(4, "checkpoints/step-00000004")
        put = proxy.requests("PUT", r"/run/checkpoints/latest\.json$")
        assert len(put) == 1 and "If-Match" in {k.title() for k in put[0][3]}  # one conditional PUT
    finally:
        proxy.close()
    assert json.loads(direct.read_bytes(LATEST)) == other


def test_a_conditional_put_whose_reply_was_lost_finds_its_own_bytes(s3_bucket):
    url, endpoint = s3_bucket
    proxy = S3FaultProxy(endpoint)
    try:
        b = Bucket.from_url(f"{url}/lost", endpoint_url=proxy.url)
        assert b.replace_if("p.json", b"one", None)
        _, v = b.read_versioned("p.json")
        proxy.inject("PUT", r"/lost/p\.json$", "apply_then_drop")  # applied; the retry then fails its If-Match
        assert b.replace_if("p.json", b"two", v)
        assert len(proxy.requests("PUT", r"/lost/p\.json$")) == 3
    finally:
        proxy.close()
    assert Bucket.from_url(f"{url}/lost", endpoint_url=endpoint).read_bytes("p.json") == b"two"
