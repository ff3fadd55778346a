"""Records written == records read, over every bucket backend, format, layout and state dtype."""
from __future__ import annotations

import numpy as np
import pytest

from storage.bucket import Bucket
from storage.errors import ObjectNotFound
from storage.reader import TargetSet
from storage.settings import ShardEncoding
from storage.writer import TargetSetWriter
from tests.storage_data import FP, make_pairs, make_segments, writer_kwargs

pytest_plugins = ["tests.storage_fixtures"]  # the root_bucket and target fixtures

pytestmark = pytest.mark.timeout(300)


def test_bucket_basics(root_bucket):
    b = root_bucket
    assert not b.exists("a/b.bin")
    b.write_bytes("a/b.bin", b"hello")
    assert b.exists("a/b.bin") and b.size("a/b.bin") == 5 and b.read_bytes("a/b.bin") == b"hello"
    assert b.create_exclusive("a/c.bin", b"1") is True
    assert b.create_exclusive("a/c.bin", b"2") is False
    assert b.read_bytes("a/c.bin") == b"1"
    assert b.child("a").read_bytes("c.bin") == b"1"
    assert b.read_many(["a/b.bin", "a/c.bin"]) == {"a/b.bin": b"hello", "a/c.bin": b"1"}
    with b.open("a/b.bin", "rb") as f:
        assert f.read() == b"hello"
    assert b.url("a/b.bin").endswith("/a/b.bin")
    with pytest.raises(ObjectNotFound, match="missing.bin"):
        b.read_bytes("missing.bin")
    for bad in ("../x", "/etc/passwd", "s3://other/x", "a//b"):
        with pytest.raises(ValueError):
            b.read_bytes(bad)


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
@pytest.mark.parametrize("layout", ["segments", "pairs"])
def test_roundtrip_bit_exact(target, fmt, layout):
    data = {}
    with TargetSetWriter(target, encoding=ShardEncoding(format=fmt, dtype="float16"), **writer_kwargs()) as w:
        for i in range(2):
            if layout == "segments":
                data[i] = make_segments(seed=i)
                w.write_segments(i, data[i])
            else:
                data[i] = make_pairs(seed=i)
                w.write_pairs(i, data[i])
    ts = TargetSet.open(target.url(), FP, endpoint_url=target.endpoint_url)
    assert ts.generation == 1 and len(ts.shards) == 2 and ts.rounds == [0]
    assert ts.num_records == sum(d.num_records for d in data.values())
    for i, entry in enumerate(ts.shards):
        tr, ref = ts.read_shard(entry), data[i].to_transitions()
        assert tr.state_in.dtype == np.float32 and len(tr) == entry.records
        for f in ("state_in", "token", "state_out", "y", "seq", "pos", "round"):
            np.testing.assert_array_equal(getattr(tr, f), getattr(ref, f), err_msg=f)
        raw = ts.read_shard_raw(entry)
        assert type(raw) is type(data[i]) and raw.Z == 16
        if layout == "pairs":
            np.testing.assert_array_equal(tr.drift, ref.drift)


def test_segments_semantics():
    seg = make_segments(n=2, S=3, Z=4, dtype=np.float32)
    tr = seg.to_transitions(round=2)
    # transition t of segment 1: state_in = m_t, state_out = m_{t+1}, pos = pos0 + t
    np.testing.assert_array_equal(tr.state_in[3 + 1], seg.states[1, 1])
    np.testing.assert_array_equal(tr.state_out[3 + 1], seg.states[1, 2])
    assert tr.pos[3 + 1] == seg.pos0[1] + 1 and tr.seq[3 + 1] == seg.seq[1] and set(tr.round) == {2}


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("bfloat16", 2 ** -8), ("int8", 1 / 127 / 2 + 1e-6)])
def test_roundtrip_dtypes_local(tmp_path, fmt, dtype, tol):
    b = Bucket.from_url(str(tmp_path))
    seg, pairs = make_segments(dtype=np.float32), make_pairs(dtype=np.float32)
    with TargetSetWriter(b, encoding=ShardEncoding(format=fmt, dtype=dtype), **writer_kwargs()) as w:
        w.write_segments(0, seg)
        w.write_pairs(1, pairs)
    ts = TargetSet.open(b, FP)
    for entry, ref in zip(ts.shards, (seg.to_transitions(), pairs.to_transitions())):
        tr = ts.read_shard(entry)
        assert entry.dtype == dtype
        for f in ("state_in", "state_out"):
            x, r = getattr(tr, f), getattr(ref, f)
            if dtype == "int8":  # error bound relative to each row's max |x|
                bound = tol * np.abs(r).max(axis=1, keepdims=True)
            else:
                bound = tol * np.abs(r)
            assert (np.abs(x - r) <= bound + 1e-12).all(), f
        np.testing.assert_array_equal(tr.token, ref.token)


def test_int8_zero_rows_and_bf16_rounding(tmp_path):
    from storage.codec import decode_states, encode_states
    x = np.zeros((2, 8), np.float32)
    x[1] = np.linspace(-3, 3, 8)
    back = decode_states(encode_states(x, "int8", "s"), "int8", "s")
    assert (back[0] == 0).all() and np.abs(back[1] - x[1]).max() <= 3 / 127 / 2 + 1e-6
    v = np.array([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8], np.float32)  # ties round to even
    assert decode_states(encode_states(v, "bfloat16", "s"), "bfloat16", "s").tolist() == [1.0, 1.0 + 2 ** -6]


def test_refuses_non_finite_and_empty(tmp_path):
    b = Bucket.from_url(str(tmp_path))
    seg = make_segments(dtype=np.float32)
    seg.states[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TargetSetWriter(b, **writer_kwargs()).write_segments(0, seg)
    big = make_segments(dtype=np.float32)
    big.states[0, 0, 0] = 1e6
    with pytest.raises(ValueError, match="float16"):
        TargetSetWriter(b, encoding=ShardEncoding(dtype="float16"), **writer_kwargs()).write_segments(0, big)
    with pytest.raises(ValueError, match="empty"):
        TargetSetWriter(b, **writer_kwargs()).write_segments(0, make_segments(n=0))
