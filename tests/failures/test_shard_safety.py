"""Hostile or damaged shards are refused against their manifest entry BEFORE anything is decoded or
allocated: a Zarr array's declared shape, dtype, chunk grid, chunk set, codecs and blosc headers, a tar
member's .npy header. And a shard fetched again is checked again (sha256), not only its size."""
from __future__ import annotations

import io
import json
import tarfile
import tracemalloc

import numpy as np
import pytest

from storage.bucket import Bucket
from storage.codec import to_columns
from storage.errors import ShardError
from storage.formats import encode_tar, shard_sha256, zarr_store, zip_store
from storage.manifest import ShardEntry, commit
from storage.reader import TargetSet
from storage.writer import write_shard
from tests.storage_data import FP, make_pairs, make_segments, writer_kwargs

HEADER = {"schema_version": 1, "teacher_fingerprint": FP, "layout": "segments", "dtype": "float16", "z": 16,
          "s": 4, "rows": 3, "round": 0}
HUGE = [20_000, 5, 1_000]  # 200 MB of float16 declared by a few hundred bytes of JSON
PATH = {"zarr": "round-000/shard-00000.zarr.zip", "wds": "round-000/shard-00000.tar"}


def _publish(tmp_path, fmt: str, data: bytes) -> tuple[TargetSet, ShardEntry]:
    """A committed shard entry that is honest about the bytes (size, sha256), so only the shard's own
    metadata lies: rows=3, S=4, Z=16, float16 segments."""
    bucket = Bucket.from_url(str(tmp_path / "set"))
    bucket.write_bytes(PATH[fmt], data)
    entry = ShardEntry(round=0, path=PATH[fmt], format=fmt, layout="segments", dtype="float16", z=16, s=4, rows=3,
                       records=12, bytes=len(data), sha256=shard_sha256({"": data}))
    commit(bucket, [entry], **writer_kwargs())
    return TargetSet.open(bucket, FP), entry


def _store() -> dict[str, bytes]:
    return zarr_store(to_columns(make_segments(n=3, S=4, Z=16), "float16"), HEADER)


def _meta(files: dict[str, bytes], col: str, **change) -> None:
    meta = json.loads(files[f"{col}/zarr.json"])
    meta.update(change)
    files[f"{col}/zarr.json"] = json.dumps(meta).encode()


def _refused_without_allocating(ts: TargetSet, entry: ShardEntry, message: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ShardError) as err:
            ts.read_shard_raw(entry)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err.value) == message
    assert peak < 2 << 20, f"{peak} bytes traced while refusing the shard"  # the declared column is 200 MB


def test_zarr_declaring_a_huge_column_without_chunks_is_refused_before_allocation(tmp_path):
    files = _store()
    _meta(files, "states", shape=HUGE, chunk_grid={"name": "regular", "configuration": {"chunk_shape": HUGE}})
    for k in [k for k in files if k.startswith("states/c/")]:
        del files[k]  # no chunks at all: zarr would fill the whole declared shape with zeros
    ts, entry = _publish(tmp_path, "zarr", zip_store(files))
    assert entry.bytes < 8192  # a few KB: the zip of the other columns plus the lying JSON
    _refused_without_allocating(
        ts, entry, f"shard {ts.bucket.url(entry.path)} disagrees with its manifest entry: column states declares "
                   "float16[20000, 5, 1000], the manifest says float16[3, 5, 16]")


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _tar(replace: dict[str, bytes]) -> bytes:
    """A one-block tar shard of make_segments(n=3, S=4, Z=16) as float16, members replaced by name."""
    cols = to_columns(make_segments(n=3, S=4, Z=16), "float16")
    members = [("_shard.json", json.dumps(HEADER).encode()), *((f"000000.{c}.npy", _npy(a)) for c, a in cols.items())]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            data = replace.get(name, data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _npy_header(descr: str, shape: tuple) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_tar_member_declaring_a_huge_array_is_refused_before_allocation(tmp_path):
    data = _tar({"000000.states.npy": _npy_header("<f2", tuple(HUGE)) + bytes(16)})  # 200 MB promised, 16 held
    ts, entry = _publish(tmp_path, "wds", data)
    _refused_without_allocating(
        ts, entry, f"shard {ts.bucket.url(entry.path)} disagrees with its manifest entry: tar member "
                   "000000.states.npy declares float16[20000, 5, 1000], the manifest says float16[<=3, 5, 16]")


def _zarr_case(case: str) -> tuple[dict[str, bytes], str]:
    files = _store()
    if case == "dtype":
        _meta(files, "tokens", data_type="int64")
        return files, "column tokens declares int64[3, 4], the manifest says int32[3, 4]"
    if case == "missing_chunk":  # one chunk per row: the last one is gone (it would read as zeros)
        rows = zarr_store(to_columns(make_segments(n=3, S=4, Z=16), "float16"), HEADER, chunk_bytes=200)
        del rows["states/c/2/0/0"]
        return rows, ("column states has chunks ['states/c/0/0/0', 'states/c/1/0/0'], its chunk grid "
                      "[1, 5, 16] needs ['states/c/0/0/0', 'states/c/1/0/0', 'states/c/2/0/0']")
    if case == "chunk_grid":
        _meta(files, "states", chunk_grid={"name": "regular", "configuration": {"chunk_shape": [3, 5, 8]}})
        return files, "column states has chunk shape [3, 5, 8]: chunks must hold whole rows of [3, 5, 16]"
    if case == "codec":
        meta = json.loads(files["y/zarr.json"])
        meta["codecs"] = [meta["codecs"][0], {"name": "gzip", "configuration": {"level": 1}}]
        files["y/zarr.json"] = json.dumps(meta).encode()
        return files, "column y uses codecs ['bytes', 'gzip']; only bytes+blosc (or the folder layout's sharding of them) are read"
    if case == "blosc_header":  # a chunk whose blosc header promises 1 GB
        chunk = bytearray(files["states/c/0/0/0"])
        chunk[4:8] = (1 << 30).to_bytes(4, "little")
        files["states/c/0/0/0"] = bytes(chunk)
        return files, (f"chunk states/c/0/0/0 promises 1073741824 bytes in {len(chunk)} (it holds {len(chunk)}); "
                       "its grid cell is 480 bytes")
    if case == "extra_column":
        files.update({f"evil/{k.split('/', 1)[1]}": v for k, v in files.items() if k.startswith("seq/")})
        return files, "columns ['evil', 'pos0', 'seq', 'states', 'tokens', 'y'] differ from the expected ['pos0', 'seq', 'states', 'tokens', 'y']"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["dtype", "missing_chunk", "chunk_grid", "codec", "blosc_header", "extra_column"])
def test_zarr_metadata_is_checked_against_the_manifest(tmp_path, case):
    files, why = _zarr_case(case)
    ts, entry = _publish(tmp_path, "zarr", zip_store(files))
    with pytest.raises(ShardError) as err:
        ts.read_shard_raw(entry)
    assert str(err.value) == f"shard {ts.bucket.url(entry.path)} disagrees with its manifest entry: {why}"


@pytest.mark.parametrize("case", ["dtype", "byte_order", "rows", "length", "fortran"])
def test_tar_npy_headers_are_checked_against_the_manifest(tmp_path, case):
    if case == "dtype":
        data = _tar({"000000.y.npy": _npy(np.zeros((3, 4), np.int64))})
        why = "tar member 000000.y.npy declares int64[3, 4], the manifest says int32[<=3, 4]"
    elif case == "byte_order":
        data = _tar({"000000.seq.npy": _npy_header(">i8", (3,)) + bytes(24)})
        why = "tar member 000000.seq.npy declares >i8[3], the manifest says int64[<=3]"
    elif case == "rows":  # two blocks of 3 rows for a 3-row entry
        cols = {k: np.concatenate([v, v]) for k, v in to_columns(make_segments(n=3, S=4, Z=16), "float16").items()}
        data = encode_tar(cols, HEADER, chunk_bytes=3 * 5 * 16 * 2)
        why = "tar member 000001.states.npy declares float16[3, 5, 16], the manifest says float16[<=0, 5, 16]"
    elif case == "length":  # a header promising 3 int64, 16 bytes of data
        data = _tar({"000000.seq.npy": _npy_header("<i8", (3,)) + bytes(16)})
        why = "tar member 000000.seq.npy holds 16 bytes of data, its header declares 24"
    else:
        data = _tar({"000000.seq.npy": _npy_header("<i8", (3,)).replace(b"False", b"True ") + bytes(24)})
        why = "tar member 000000.seq.npy is Fortran-ordered; only C order is read"
    ts, entry = _publish(tmp_path, "wds", data)
    with pytest.raises(ShardError) as err:
        ts.read_shard_raw(entry)
    assert str(err.value) == f"shard {ts.bucket.url(entry.path)} disagrees with its manifest entry: {why}"


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_refetched_shard_is_verified_again(tmp_path, fmt):
    """verify='first' (the default): a shard fetched again (the stream's cache evicted it) is hashed again,
    so a same-size replacement after the first read is refused, not decoded."""
    bucket = Bucket.from_url(str(tmp_path / "set"))
    entry = write_shard(bucket, make_pairs(n=8, seed=0), index=0, round=1, fmt=fmt, dtype="float32",
                        teacher_fingerprint=FP)
    commit(bucket, [entry], **writer_kwargs())
    ts = TargetSet.open(bucket, FP)
    assert ts.verify == "first"
    first = ts.read_shard_raw(entry)
    other = write_shard(Bucket.from_url(str(tmp_path / "other")), make_pairs(n=8, seed=1), index=0, round=1,
                        fmt=fmt, dtype="float32", teacher_fingerprint=FP)
    assert other.bytes == entry.bytes and other.sha256 != entry.sha256
    bucket.write_bytes(entry.path, Bucket.from_url(str(tmp_path / "other")).read_bytes(other.path))
    with pytest.raises(ShardError) as err:
        ts.read_shard_raw(entry)
    assert str(err.value) == (f"shard {bucket.url(entry.path)} fails its checksum (sha256 {other.sha256[:12]}, "
                              f"manifest {entry.sha256[:12]}): the data is corrupt; rewrite the shard")
    assert np.array_equal(first.state_in, make_pairs(n=8, seed=0).state_in.astype(np.float32))
