"""Bad input is refused with a typed error that names the shard: corruption, pickles, unsafe paths,
the wrong teacher, an unreachable endpoint."""
from __future__ import annotations

import dataclasses
import io
import json
import pickle
import socket
import tarfile
import time

import numpy as np
import pytest

from storage.bucket import Bucket
from storage.errors import BucketError, FingerprintMismatch, ManifestError, ShardError
from storage.formats import shard_sha256
from storage.manifest import ShardEntry, commit, gen_path
from storage.reader import TargetSet
from storage.settings import ShardEncoding
from storage.writer import TargetSetWriter
from tests.storage_data import FP, make_segments, writer_kwargs

pytest_plugins = ["tests.storage_fixtures"]  # the root_bucket and target fixtures

pytestmark = pytest.mark.timeout(300)


def _write(target: Bucket, fmt: str) -> TargetSet:
    with TargetSetWriter(target, encoding=ShardEncoding(format=fmt), **writer_kwargs()) as w:
        w.write_segments(0, make_segments(n=4, S=4, Z=32))
    return TargetSet.open(target, FP)


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_flipped_byte_names_shard(target, fmt):
    ts = _write(target, fmt)
    entry = ts.shards[0]
    rel = entry.path
    data = bytearray(target.read_bytes(rel))
    data[len(data) // 2] ^= 0x01
    target.write_bytes(rel, bytes(data))
    with pytest.raises(ShardError, match=entry.path):
        ts.read_shard(entry)


def test_truncated_tar(target):
    ts = _write(target, "wds")
    entry = ts.shards[0]
    target.write_bytes(entry.path, target.read_bytes(entry.path)[:-3000])
    with pytest.raises(ShardError, match=f"{entry.path}.*truncated"):
        ts.read_shard(entry)
    # even with a manifest that agrees with the truncated bytes, decoding refuses them
    data = target.read_bytes(entry.path)[:1536]
    forged = dataclasses.replace(entry, bytes=len(data), sha256=shard_sha256({"": data}))
    target.write_bytes(entry.path, data)
    with pytest.raises(ShardError, match=entry.path):
        TargetSet.open(target, FP, verify="never").read_shard(forged)


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_deleted_shard(target, fmt):
    ts = _write(target, fmt)
    entry = ts.shards[0]
    target.remove(entry.path)
    with pytest.raises(ShardError, match=f"{entry.path}.*missing"):
        ts.read_shard(entry)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


class _Boom:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("member", ["000000.payload.pickle", "000000.payload.pyd", "000000.states.npy"])
def test_pickle_payload_is_never_unpickled(tmp_path, member):
    bucket = Bucket.from_url(str(tmp_path / "bucket"))
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Boom(str(marker)))
    if member.endswith(".npy"):  # an object array: np.save embeds a pickle
        obj = np.empty(1, dtype=object)
        obj[0] = _Boom(str(marker))
        payload = _npy(obj)
    seg = make_segments(n=1, S=2, Z=4)
    header = {"schema_version": 1, "teacher_fingerprint": FP, "layout": "segments", "dtype": "float16",
              "z": 4, "s": 2, "rows": 1, "round": 0}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        entries = [("_shard.json", json.dumps(header).encode()), (member, payload)]
        entries += [(f"000000.{k}.npy", _npy(v)) for k, v in
                    {"states": seg.states, "tokens": seg.tokens, "y": seg.y, "seq": seg.seq,
                     "pos0": seg.pos0}.items() if f"000000.{k}.npy" != member]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = out.getvalue()
    bucket.write_bytes("round-000/shard-00000.tar", data)
    entry = ShardEntry(round=0, path="round-000/shard-00000.tar", format="wds", layout="segments",
                       dtype="float16", z=4, s=2, rows=1, records=2, bytes=len(data),
                       sha256=shard_sha256({"": data}))
    commit(bucket, [entry], **writer_kwargs())
    ts = TargetSet.open(bucket, FP)
    with pytest.raises(ShardError, match="shard-00000.tar"):
        ts.read_shard(ts.shards[0])
    assert not marker.exists()


@pytest.mark.parametrize("bad_path", ["../escape.tar", "round-000/../../x.tar", "/abs/shard.tar",
                                      "s3://evil/shard.tar", "file:///etc/passwd", "https://x/y.tar"])
def test_unsafe_manifest_paths_refused(tmp_path, bad_path):
    bucket = Bucket.from_url(str(tmp_path))
    ts = _write(bucket, "wds")
    doc = json.loads(bucket.read_bytes(gen_path(1)))
    doc["shards"][0]["path"] = bad_path
    bucket.write_bytes(gen_path(1), json.dumps(doc).encode())
    with pytest.raises(ManifestError, match="refusing"):
        TargetSet.open(bucket, FP)
    with pytest.raises(ShardError, match="refusing"):  # a hand-built entry is refused at read time too
        ts.read_shard(dataclasses.replace(ts.shards[0], path=bad_path))


def test_fingerprint_mismatch_names_both(target):
    _write(target, "wds")
    with pytest.raises(FingerprintMismatch) as e:
        TargetSet.open(target, "some-other-teacher")
    assert FP in str(e.value) and "some-other-teacher" in str(e.value)


def test_unknown_schema_version_refused(tmp_path):
    bucket = Bucket.from_url(str(tmp_path))
    _write(bucket, "zarr")
    doc = json.loads(bucket.read_bytes(gen_path(1)))
    doc["schema_version"] = 99
    bucket.write_bytes(gen_path(1), json.dumps(doc).encode())
    with pytest.raises(ManifestError, match="schema version 99"):
        TargetSet.open(bucket, FP)


def test_shape_disagreeing_with_manifest(tmp_path):
    bucket = Bucket.from_url(str(tmp_path))
    ts = _write(bucket, "zarr")
    with pytest.raises(ShardError, match="disagrees"):
        ts.read_shard(dataclasses.replace(ts.shards[0], z=64))


def test_nan_states_in_shard_refused(tmp_path):
    from storage.codec import to_columns
    from storage.formats import encode_tar
    bucket = Bucket.from_url(str(tmp_path))
    seg = make_segments(n=2, S=2, Z=4)
    cols = to_columns(seg, "float16")
    cols["states"][1, 1, 1] = np.nan  # bypasses the writer's own check, like a buggy labeler would
    header = {"schema_version": 1, "teacher_fingerprint": FP, "layout": "segments", "dtype": "float16",
              "z": 4, "s": 2, "rows": 2, "round": 0}
    data = encode_tar(cols, header)
    bucket.write_bytes("round-000/shard-00000.tar", data)
    entry = ShardEntry(round=0, path="round-000/shard-00000.tar", format="wds", layout="segments",
                       dtype="float16", z=4, s=2, rows=2, records=4, bytes=len(data),
                       sha256=shard_sha256({"": data}))
    commit(bucket, [entry], **writer_kwargs())
    with pytest.raises(ShardError, match="shard-00000.tar.*NaN"):
        TargetSet.open(bucket, FP).read_shard(entry)


def test_unreachable_endpoint_fails_fast(s3_server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with-block ends
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(BucketError) as e:
        TargetSet.open(Bucket.from_url("s3://nowhere/targets/x/y", endpoint_url=url, retries=1), FP)
    assert time.monotonic() - start < 10
    msg = str(e.value)
    assert url in msg and "\n" not in msg and "testing" not in msg  # names the endpoint, not the secrets
