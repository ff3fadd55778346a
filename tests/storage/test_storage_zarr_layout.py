"""Zarr shards are one zip object (a standard zipped Zarr v3 store); folder shards written before the zip
layout are still read; reads fetch exactly the objects the manifest names and never list."""
from __future__ import annotations

import dataclasses
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from storage.bucket import Bucket
from storage.codec import to_columns
from storage.errors import ManifestError, ShardError
from storage.formats import encode_zarr, shard_sha256, unzip_store, zarr_store
from storage.manifest import ShardEntry, commit, gen_path
from storage.reader import TargetSet
from storage.schema import Pairs, Segments
from storage.writer import TargetSetWriter, write_shard
from tests.storage_data import FP, make_pairs, make_segments, writer_kwargs

# Written by the folder-layout writer (before shards became one zip); regenerating it needs that code.
# Round 0: make_segments(n=3, S=4, Z=16, seed=0) as float16; round 1: make_pairs(n=10, Z=16, seed=1) as int8.
FOLDER_SET = Path(__file__).parents[1] / "data" / "zarr-folder-layout"
HEADER = {"schema_version": 1, "teacher_fingerprint": FP, "layout": "segments", "dtype": "float16", "z": 16,
          "s": 4, "rows": 3, "round": 0}


def _check_folder_set(ts: TargetSet) -> None:
    seg, pairs = ts.read_shard_raw(ts.shards[0]), ts.read_shard_raw(ts.shards[1])
    ref = make_segments(n=3, S=4, Z=16, seed=0)
    assert isinstance(seg, Segments) and np.array_equal(seg.states, ref.states)
    assert np.array_equal(seg.tokens, ref.tokens) and np.array_equal(seg.pos0, ref.pos0)
    ref_p = make_pairs(n=10, Z=16, seed=1)
    assert isinstance(pairs, Pairs) and np.array_equal(pairs.y, ref_p.y)
    ref_in = ref_p.state_in.astype(np.float32)  # int8: error <= row max / 254
    assert (np.abs(pairs.state_in - ref_in).max(-1) <= np.abs(ref_in).max(-1) / 254 * 1.0001).all()


def test_zarr_shard_is_one_zip_that_zarr_reads(tmp_path):
    import zarr

    seg = make_segments(n=5, S=4, Z=32)
    with TargetSetWriter(Bucket.from_url(str(tmp_path)), **writer_kwargs()) as w:
        entry = w.write_segments(3, seg)
    assert entry.path == "round-000/shard-00003.zarr.zip" and entry.files == {}
    assert [p.name for p in (tmp_path / "round-000").iterdir()] == ["shard-00003.zarr.zip"]
    # the object is a plain zipped Zarr v3 store: zarr's own ZipStore opens it
    group = zarr.open_group(zarr.storage.ZipStore(tmp_path / entry.path, mode="r"), mode="r")
    assert sorted(group.array_keys()) == ["pos0", "seq", "states", "tokens", "y"]
    assert np.array_equal(group["states"][...], seg.states) and group.attrs["rows"] == 5
    with zipfile.ZipFile(tmp_path / entry.path) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_zip_bytes_are_a_function_of_the_data():
    cols = to_columns(make_segments(n=4, S=4, Z=16), "bfloat16")
    a, b = encode_zarr(cols, HEADER), encode_zarr(dict(reversed(list(cols.items()))), dict(reversed(HEADER.items())))
    assert a == b
    assert {k: bytes(v) for k, v in unzip_store(a).items()} == zarr_store(cols, HEADER)


def _zarr_written(cols: dict, header: dict, chunk_bytes: int) -> dict[str, bytes]:
    """The store zarr's own writer makes of these columns (the reference `zarr_store` must match byte for byte)."""
    import zarr
    from zarr.codecs import BloscCodec
    from zarr.storage import MemoryStore

    from storage.formats import _rows_per_chunk

    store: dict = {}
    ms = MemoryStore(store)
    zarr.create_group(ms, attributes=dict(sorted(header.items())))
    for name, a in cols.items():
        arr = zarr.create_array(ms, name=name, shape=a.shape, dtype=a.dtype,
                                chunks=(_rows_per_chunk(a, chunk_bytes), *a.shape[1:]), fill_value=0,
                                compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle",
                                                       typesize=a.dtype.itemsize),
                                config={"write_empty_chunks": True})
        arr[...] = a
    return {k: v.to_bytes() for k, v in sorted(store.items())}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int8", "float32"])
@pytest.mark.parametrize("chunk_bytes", [100, 1 << 10, 16 << 20])
def test_zarr_store_is_byte_identical_to_zarrs_own_writer(dtype, chunk_bytes):
    for obj in (make_segments(n=7, S=4, Z=32, seed=2), make_pairs(n=13, Z=16, seed=3)):
        cols = to_columns(obj, dtype)
        header = {**HEADER, "layout": obj.layout, "dtype": dtype, "rows": obj.n}
        assert zarr_store(cols, header, chunk_bytes) == _zarr_written(cols, header, chunk_bytes)


def test_folder_layout_still_reads_locally():
    ts = TargetSet.open(str(FOLDER_SET), FP, verify="always")
    assert [e.path for e in ts.shards] == ["round-000/shard-00000.zarr", "round-001/shard-00000.zarr"]
    assert all(e.files for e in ts.shards)
    _check_folder_set(ts)


def test_folder_and_zip_shards_mix_on_s3_with_one_get_per_zip_and_no_list(tmp_path, s3_bucket):
    url, endpoint = s3_bucket
    bucket = Bucket.from_url(f"{url}/set", endpoint_url=endpoint)
    for f in sorted(p for p in FOLDER_SET.rglob("*") if p.is_file()):
        bucket.write_bytes(f.relative_to(FOLDER_SET).as_posix(), f.read_bytes())
    with TargetSetWriter(bucket, round=2, **writer_kwargs()) as w:  # generation 3 adds a zip shard
        w.write_segments(0, make_segments(n=2, S=4, Z=16, seed=5))
    ts = TargetSet.open(bucket, FP, verify="always")
    assert ts.generation == 3 and [bool(e.files) for e in ts.shards] == [True, True, False]
    calls: list[str] = []
    bucket.fs.s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    _check_folder_set(ts)
    assert np.array_equal(ts.read_shard_raw(ts.shards[2]).states, make_segments(n=2, S=4, Z=16, seed=5).states)
    assert not [c for c in calls if c.startswith("List")], calls
    assert calls.count("GetObject") == sum(len(e.files) for e in ts.shards[:2]) + 1  # one GET for the zip


def test_folder_layout_missing_or_flipped_file_names_shard(tmp_path):
    shutil.copytree(FOLDER_SET, tmp_path / "set")
    bucket = Bucket.from_url(str(tmp_path / "set"))
    ts = TargetSet.open(bucket, FP)
    entry = ts.shards[0]
    victim = tmp_path / "set" / entry.path / "states" / "c" / "0" / "0" / "0"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=f"{entry.path}.*checksum"):
        ts.read_shard(entry)
    victim.unlink()
    with pytest.raises(ShardError, match=f"{entry.path}.*missing"):
        TargetSet.open(bucket, FP).read_shard(entry)


def _zip(members: list[tuple[str, bytes, int]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data, compression in members:
            z.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return out.getvalue()


@pytest.mark.parametrize("change", ["deflated", "foreign_member", "escaping_name", "duplicate", "truncated"])
def test_unsafe_or_damaged_zip_is_refused(tmp_path, change):
    files = zarr_store(to_columns(make_segments(n=3, S=4, Z=16), "float16"), HEADER)
    members = [(k, v, zipfile.ZIP_STORED) for k, v in sorted(files.items())]
    if change == "deflated":
        members[0] = (members[0][0], members[0][1], zipfile.ZIP_DEFLATED)
    elif change == "foreign_member":
        members.append(("states/payload.pickle", b"\x80\x04N.", zipfile.ZIP_STORED))
    elif change == "escaping_name":
        members.append(("../zarr.json", files["zarr.json"], zipfile.ZIP_STORED))
    elif change == "duplicate":
        members.append(members[0])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        data = _zip(members)
    if change == "truncated":
        data = data[: len(data) // 2]
    bucket = Bucket.from_url(str(tmp_path))
    path = "round-000/shard-00000.zarr.zip"
    bucket.write_bytes(path, data)
    entry = ShardEntry(round=0, path=path, format="zarr", layout="segments", dtype="float16", z=16, s=4,
                       rows=3, records=12, bytes=len(data), sha256=shard_sha256({"": data}))
    commit(bucket, [entry], **writer_kwargs())
    with pytest.raises(ShardError, match=f"{path} is corrupt or unreadable"):
        TargetSet.open(bucket, FP).read_shard(entry)


def test_manifest_pairs_file_lists_with_layouts(tmp_path):
    with TargetSetWriter(Bucket.from_url(str(tmp_path)), **writer_kwargs()) as w:
        entry = w.write_segments(0, make_segments())
    gen = TargetSet.open(str(tmp_path), FP).manifest
    for bad in (dataclasses.replace(entry, files={"zarr.json": 10}),  # a zip shard with a file list
                dataclasses.replace(entry, path="round-000/shard-00000.zarr")):  # a folder shard without
        doc = gen.to_json()
        doc["shards"] = [bad.to_json()]
        with pytest.raises(ManifestError, match="file list"):
            type(gen).from_json(doc, gen_path(1))


def test_zip_shard_of_a_folder_shards_records_is_refused(tmp_path):
    shutil.copytree(FOLDER_SET, tmp_path / "set")
    bucket = Bucket.from_url(str(tmp_path / "set"))
    again = write_shard(bucket, make_segments(n=3, S=4, Z=16, seed=0), index=0, round=0, fmt="zarr",
                        dtype="float16", teacher_fingerprint=FP)
    assert again.path == "round-000/shard-00000.zarr.zip"
    with pytest.raises(ManifestError, match="duplicate the records of committed shard round-000/shard-00000.zarr "):
        commit(bucket, [again], **writer_kwargs())
