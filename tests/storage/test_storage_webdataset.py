"""Our `wds` tar shards are WebDataset shards: the `webdataset` library reads them (one sample per block
of rows, keyed by column), and a shard written by its TarWriter with our member names reads back here."""
from __future__ import annotations

import numpy as np
import webdataset as wds

from storage.bucket import Bucket
from storage.codec import to_columns
from storage.formats import decode_tar
from storage.settings import ShardEncoding
from storage.writer import TargetSetWriter
from tests.storage_data import FP, make_pairs, make_segments, writer_kwargs


def test_webdataset_reads_our_tar_shards(tmp_path):
    seg = make_segments(n=7, S=4, Z=16)
    with TargetSetWriter(Bucket.from_url(str(tmp_path)), encoding=ShardEncoding(format="wds"), chunk_bytes=500, **writer_kwargs()) as w:
        entry = w.write_segments(0, seg)
    samples = list(wds.WebDataset(str(tmp_path / entry.path), shardshuffle=False).decode())
    header, blocks = samples[0], samples[1:]
    assert header["__key__"] == "_shard" and header["json"]["rows"] == 7
    assert header["json"]["teacher_fingerprint"] == FP and len(blocks) > 1  # chunk_bytes forces several
    assert [b["__key__"] for b in blocks] == [f"{i:06d}" for i in range(len(blocks))]
    for name, ref in to_columns(seg, "float16").items():
        got = np.concatenate([b[f"{name}.npy"] for b in blocks])
        assert got.dtype == ref.dtype and np.array_equal(got, ref), name


def test_a_webdataset_tarwriter_shard_reads_back(tmp_path):
    pairs = make_pairs(n=6, Z=8)
    cols = to_columns(pairs, "int8")
    path = tmp_path / "shard.tar"
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "_shard", "json": {"rows": 6, "layout": "pairs"}})
        for b, start in enumerate(range(0, 6, 4)):
            sink.write({"__key__": f"{b:06d}", **{f"{k}.npy": v[start:start + 4] for k, v in cols.items()}})
    got, header = decode_tar(path.read_bytes())
    assert header == {"rows": 6, "layout": "pairs"}
    assert set(got) == set(cols) and all(np.array_equal(got[k], cols[k]) for k in cols)
