"""File-backed corpora on real files the tests write: text, Hugging Face datasets (TinyStories and MNIST
layouts), scikit-learn digits, npy/Zarr token arrays; plus the spec parser."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from pipeline.corpora import CorpusError, held_out, load_corpus, parse_spec, spec_with

WHOLE = "valid_frac=0,test_frac=0"  # train = the whole stream (nothing held out)


def _stream_ref(data: bytes | np.ndarray, T: int, stride: int):
    a = np.frombuffer(data, dtype=np.uint8).astype(np.int64) if isinstance(data, bytes) else data
    n = (len(a) - T) // stride + 1
    xs, ys = [], []
    for i in range(n):
        s = i * stride
        xs.append(a[s : s + T])
        ys.append([a[s + t + 1] if s + t + 1 < len(a) else -1 for t in range(T)])
    return np.array(xs), np.array(ys)


# ---------------------------------------------------------------------------------------- parser


def test_parse_spec_forms():
    assert parse_spec("retrieval:T=64,vocab=8") == ("retrieval", None, {"T": "64", "vocab": "8"})
    assert parse_spec("digits") == ("digits", None, {})
    assert parse_spec("mnist|split=test") == ("mnist", None, {"split": "test"})
    assert parse_spec("text:s3://b/a:b,c/*.txt|T=8") == ("text", "s3://b/a:b,c/*.txt", {"T": "8"})
    assert parse_spec("text:/x/a|b.txt|") == ("text", "/x/a|b.txt", {})
    assert parse_spec("hf:json|data_files=/a/*.json,/b/*.json,T=4") == (
        "hf",
        "json",
        {"data_files": "/a/*.json,/b/*.json", "T": "4"},
    )
    with pytest.raises(CorpusError, match="missing location"):
        parse_spec("text:|T=4")


# ------------------------------------------------------------------------------------------ text


def test_text_windows_separator_and_id(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"world, again\n")
    (tmp_path / "a.txt").write_bytes("héllo ".encode())
    (tmp_path / "skip.md").write_bytes(b"not matched")
    spec = f"text:{tmp_path}/*.txt|T=8,stride=3,{WHOLE}"
    c = load_corpus(spec)
    stream = "héllo ".encode() + b"\x00" + b"world, again\n"
    assert c.mode == "stream" and c.vocab_size == 256 and c.chance is None and c.seq_len == 8
    assert c.spec == f"text:{tmp_path}/*.txt|T=8,stride=3,sep=0,split=train,valid_frac=0.0,test_frac=0.0"
    assert c.params()["num_files"] == 2
    xr, yr = _stream_ref(stream, 8, 3)
    assert c.num_sequences == len(xr) == (len(stream) - 8) // 3 + 1
    x, y = c.get(range(c.num_sequences))
    assert np.array_equal(x, xr) and np.array_equal(y, yr)
    # the last window ends exactly at the stream end only when the stride lands there
    c1 = load_corpus(f"text:{tmp_path}/*.txt|T={len(stream)},{WHOLE}")
    x1, y1 = c1.get([0])
    assert c1.num_sequences == 1 and y1[0, -1] == -1 and bytes(x1[0].astype(np.uint8)) == stream
    # separators are configurable
    c2 = load_corpus(f"text:{tmp_path}/*.txt|T=4,sep=-1,{WHOLE}")
    assert bytes(c2.data) == "héllo world, again\n".encode()
    assert bytes(load_corpus(f"text:{tmp_path}/*.txt|T=4,sep=10,{WHOLE}").data) == stream.replace(b"\x00", b"\n")
    # sample: random windows, reproducible
    sx, sy = c.sample(16, np.random.default_rng(0))
    assert sx.shape == (16, 8) and np.array_equal(sx, c.sample(16, np.random.default_rng(0))[0])
    rows = {tuple(r) for r in np.concatenate([x, y], axis=1)}
    assert all(tuple(r) in rows for r in np.concatenate([sx, sy], axis=1))
    # id stable across loads, changes with the data and with the parameters
    cid = c.corpus_id
    assert load_corpus(spec).corpus_id == cid
    assert c2.corpus_id != cid
    (tmp_path / "a.txt").write_bytes(b"HELLO ")
    assert load_corpus(spec).corpus_id != cid


def test_text_errors(tmp_path):
    with pytest.raises(CorpusError, match="no files match"):
        load_corpus(f"text:{tmp_path}/*.txt|T=4")
    (tmp_path / "a.txt").write_bytes(b"short")
    with pytest.raises(CorpusError, match="split=train of .* has 4 tokens, fewer than T=64"):
        load_corpus(f"text:{tmp_path}/a.txt|T=64")
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(f"text:{tmp_path}/e.txt|T=4")
    with pytest.raises(CorpusError, match="stride"):
        load_corpus(f"text:{tmp_path}/a.txt|T=4,stride=0")
    with pytest.raises(CorpusError, match="sep"):
        load_corpus(f"text:{tmp_path}/a.txt|T=4,sep=256")


# ------------------------------------------------------------------------------------ hf (text)

STORIES = ["Once upon a time, a cat sat.", "Tom had a red ball. He was happy!", "Lily saw a bird — it sang."]


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_hf_tinystories_layout(tmp_path, fmt):
    d = tmp_path / "data"
    d.mkdir()
    if fmt == "json":
        with open(d / "train.jsonl", "w") as f:
            f.writelines(json.dumps({"text": s}) + "\n" for s in STORIES)
        files = f"{d}/*.jsonl"
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": STORIES}), d / "train-00000.parquet")
        files = f"{d}/*.parquet"
    spec = f"hf:{fmt}|data_files={files},split=train,T=16,stride=16,{WHOLE}"
    c = load_corpus(spec, cache_dir=str(tmp_path / "cache"))
    stream = b"\x00".join(s.encode("utf-8") for s in STORIES)
    assert bytes(c.data) == stream and c.vocab_size == 256 and c.params()["num_rows"] == 3
    xr, yr = _stream_ref(stream, 16, 16)
    x, y = c.get(range(c.num_sequences))
    assert np.array_equal(x, xr) and np.array_equal(y, yr)
    assert c.spec == (f"hf:{fmt}|hf_split=train,field=text,data_files={files},T=16,stride=16,sep=0,split=train,"
                      f"valid_frac=0.0,test_frac=0.0")
    again = load_corpus(c.spec, cache_dir=str(tmp_path / "cache"))
    assert again.corpus_id == c.corpus_id
    with pytest.raises(CorpusError, match="field='story'"):
        load_corpus(spec + ",field=story", cache_dir=str(tmp_path / "cache"))


def test_hf_missing_files_is_a_corpus_error(tmp_path):
    with pytest.raises(CorpusError, match="cannot load dataset"):
        load_corpus(f"hf:json|data_files={tmp_path}/none/*.jsonl,T=4", cache_dir=str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------- mnist


def _write_mnist_parquet(path, n=5, seed=0):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    recs = []
    for im in imgs:
        buf = io.BytesIO()
        Image.fromarray(im, mode="L").save(buf, format="PNG")
        recs.append({"bytes": buf.getvalue(), "path": None})
    img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {"image": pa.array(recs, type=img_type), "label": pa.array(np.arange(n) % 10, pa.int64())}
    )
    pq.write_table(table, path)
    return imgs


def test_mnist_layout_parquet(tmp_path):
    imgs = _write_mnist_parquet(tmp_path / "train-00000-of-00001.parquet", n=12)
    c = load_corpus(f"mnist:{tmp_path}/train-*.parquet|split=train", cache_dir=str(tmp_path / "cache"))
    assert c.mode == "prefix" and c.seq_len == 784 and c.vocab_size == 256 and c.num_sequences == 11
    x, y = c.get(range(11))
    assert np.array_equal(x, imgs[[0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11]].reshape(11, 784))  # raster order
    assert np.array_equal(y[:, :-1], x[:, 1:]) and (y[:, -1] == -1).all()
    assert list(c.labels) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1]
    # valid: every 10th training image, disjoint from train
    v = c.with_split("valid")
    assert v.num_sequences == 1 and np.array_equal(v.get([0])[0][0], imgs[9].reshape(784))
    cid = c.corpus_id
    assert load_corpus(c.spec, cache_dir=str(tmp_path / "cache")).corpus_id == cid
    _write_mnist_parquet(tmp_path / "train-00000-of-00001.parquet", n=12, seed=1)
    assert load_corpus(c.spec, cache_dir=str(tmp_path / "cache2")).corpus_id != cid


def test_mnist_parquet_written_by_datasets(tmp_path):
    """The hub's own layout: parquet with the datasets Image feature in its schema metadata."""
    import datasets
    from PIL import Image

    imgs = np.random.default_rng(3).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a, mode="L") for a in imgs], "label": [7, 1, 0, 9]}, features=feats
    )
    ds.to_parquet(str(tmp_path / "test.parquet"))
    c = load_corpus(f"mnist:{tmp_path}/test.parquet|split=test", cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(c.get(range(4))[0], imgs.reshape(4, 784)) and list(c.labels) == [7, 1, 0, 9]


# ------------------------------------------------------------------------------------------ digits


def test_digits():
    from sklearn.datasets import load_digits

    c = load_corpus("digits")
    ref = load_digits().images.reshape(-1, 64)
    assert c.spec == "digits:split=train,raw=0" and c.num_sequences == 1350 and c.seq_len == 64
    assert c.mode == "prefix" and c.vocab_size == 256 and c.split == "train"
    x, y = c.get(range(1350))
    keep = np.arange(1500) % 10 != 9
    assert np.array_equal(x, np.rint(ref[:1500][keep] * 255 / 16).astype(np.int64))
    assert x.max() == 255 and x.min() == 0
    assert np.array_equal(y[:, :-1], x[:, 1:]) and (y[:, -1] == -1).all()
    raw = load_corpus("digits:raw=1,split=test")
    assert raw.vocab_size == 17 and raw.num_sequences == 297
    assert np.array_equal(raw.get([0])[0][0], ref[1500].astype(np.int64))
    assert load_corpus("digits|split=valid").num_sequences == 150
    assert raw.corpus_id != c.corpus_id and load_corpus("digits").corpus_id == c.corpus_id
    with pytest.raises(CorpusError, match="split='val'"):
        load_corpus("digits:split=val")


# ------------------------------------------------------------------------------------------ tokens


def test_tokens_npy_and_zarr(tmp_path):
    import zarr

    a = np.random.default_rng(0).integers(0, 1000, size=500).astype(np.uint16)
    np.save(tmp_path / "toks.npy", a)
    c = load_corpus(f"tokens:{tmp_path}/toks.npy|T=32,stride=20,{WHOLE}")
    assert c.vocab_size == int(a.max()) + 1 and f"vocab={int(a.max()) + 1}," in c.spec
    xr, yr = _stream_ref(a.astype(np.int64), 32, 20)
    x, y = c.get(range(c.num_sequences))
    assert np.array_equal(x, xr) and np.array_equal(y, yr)

    z = zarr.create_array(store=str(tmp_path / "toks.zarr"), shape=a.shape, chunks=(128,), dtype=a.dtype)
    z[:] = a
    cz = load_corpus(f"tokens:{tmp_path}/toks.zarr|T=32,stride=20,vocab=1000,{WHOLE}")
    assert cz.vocab_size == 1000
    assert np.array_equal(cz.get(range(cz.num_sequences))[0], x)
    g = zarr.open_group(str(tmp_path / "grp.zarr"), mode="w")
    g.create_array("ids", shape=a.shape, dtype=a.dtype)[:] = a
    g.create_array("other", shape=(3,), dtype="i8")[:] = 0
    cg = load_corpus(f"tokens:{tmp_path}/grp.zarr|T=32,key=ids")
    assert np.array_equal(cg.get([0])[0][0], a[:32])
    with pytest.raises(CorpusError, match="set key="):
        load_corpus(f"tokens:{tmp_path}/grp.zarr|T=32")
    # id: stable, data-dependent
    assert load_corpus(c.spec).corpus_id == c.corpus_id
    b = a.copy()
    b[7] += 1
    np.save(tmp_path / "toks.npy", b)
    assert load_corpus(c.spec).corpus_id != c.corpus_id


def test_tokens_errors(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(10))
    with pytest.raises(CorpusError, match="token 9 outside vocab=5"):
        load_corpus(f"tokens:{tmp_path}/t.npy|T=4,vocab=5")
    with pytest.raises(CorpusError, match="has 10 tokens, fewer than T=11"):
        load_corpus(f"tokens:{tmp_path}/t.npy|T=11,{WHOLE}")
    np.save(tmp_path / "f.npy", np.zeros(10, dtype=np.float32))
    with pytest.raises(CorpusError, match="dtype float32"):
        load_corpus(f"tokens:{tmp_path}/f.npy|T=4")
    np.save(tmp_path / "e.npy", np.zeros(0, dtype=np.int64))
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(f"tokens:{tmp_path}/e.npy|T=4")
    with pytest.raises(CorpusError, match="cannot read"):
        load_corpus(f"tokens:{tmp_path}/missing.npy|T=4")
    with pytest.raises(CorpusError, match="unknown parameter 'window'"):
        load_corpus(f"tokens:{tmp_path}/t.npy|window=4")


def test_tokens_and_text_over_s3(s3_bucket):
    """Any fsspec URL works: npy, Zarr and text on a real S3 endpoint (moto), reached via storage_options."""
    import fsspec
    import zarr

    bucket, endpoint = s3_bucket
    so = {"client_kwargs": {"endpoint_url": endpoint}}
    a = np.arange(100, dtype=np.int32) % 7
    buf = io.BytesIO()
    np.save(buf, a)
    with fsspec.open(f"{bucket}/t.npy", "wb", **so) as f:
        f.write(buf.getvalue())
    with fsspec.open(f"{bucket}/docs/a.txt", "wb", **so) as f:
        f.write(b"abcdefgh")
    z = zarr.create_array(store=f"{bucket}/t.zarr", shape=a.shape, dtype=a.dtype, storage_options=so)
    z[:] = a
    c = load_corpus(f"tokens:{bucket}/t.npy|T=10,{WHOLE}", storage_options=so)
    cz = load_corpus(f"tokens:{bucket}/t.zarr|T=10,{WHOLE}", storage_options=so)
    assert c.vocab_size == cz.vocab_size == 7 and c.num_sequences == 10
    assert np.array_equal(c.get(range(10))[0], cz.get(range(10))[0])
    ct = load_corpus(f"text:{bucket}/docs/*.txt|T=4,stride=4,{WHOLE}", storage_options=so)
    assert bytes(ct.get([1])[0][0].astype(np.uint8)) == b"efgh"
    # another split of a remote corpus is reached with the same storage options
    a2 = np.arange(400, dtype=np.int32) % 7
    buf = io.BytesIO()
    np.save(buf, a2)
    with fsspec.open(f"{bucket}/t2.npy", "wb", **so) as f:
        f.write(buf.getvalue())
    tr = load_corpus(f"tokens:{bucket}/t2.npy|T=10", storage_options=so)
    assert np.array_equal(tr.with_split("test").data, a2[360:])


# ------------------------------------------------------------------------------------------ splits


def _windows_of(c, T):
    """Every window of the split's stream (stride 1), as bytes."""
    a = np.asarray(c.data)
    return {a[i : i + T].tobytes() for i in range(len(a) - T + 1)}


def test_one_text_file_splits_into_contiguous_byte_ranges(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, size=20_000, dtype=np.uint8).tobytes()
    (tmp_path / "one.txt").write_bytes(data)
    spec = f"text:{tmp_path}/one.txt|T=32"
    tr, va, te = (load_corpus(spec_with(spec, split=s)) for s in ("train", "valid", "test"))
    assert tr.params()["split_by"] == "bytes" and tr.params()["split_tokens"] == {"train": 17000, "valid": 1000,
                                                                                  "test": 2000}
    assert bytes(tr.data) + bytes(va.data) + bytes(te.data) == data  # contiguous, in order, nothing lost
    wtr, wva, wte = (_windows_of(c, 32) for c in (tr, va, te))
    assert not (wte & wtr) and not (wva & wtr) and not (wte & wva)
    # every sequence a corpus hands out comes from its own split's stream
    x, _ = te.get(range(te.num_sequences))
    assert {r.astype(np.uint8).tobytes() for r in x} <= wte
    # identity: the split is in the spec and the id; reloading is deterministic
    assert "split=test" in te.spec and te.describe()["split"] == "test"
    assert len({tr.corpus_id, va.corpus_id, te.corpus_id}) == 3
    assert load_corpus(te.spec).corpus_id == te.corpus_id and bytes(load_corpus(te.spec).data) == bytes(te.data)
    # fractions are parameters
    t2 = load_corpus(spec + ",split=test,test_frac=0.25")
    assert bytes(t2.data) == data[15000:]


def test_many_text_files_split_by_whole_documents(tmp_path):
    rng = np.random.default_rng(1)
    docs = {}
    for i in range(40):
        docs[f"d{i:02d}.txt"] = rng.integers(1, 256, size=int(rng.integers(200, 400)), dtype=np.uint8).tobytes()
        (tmp_path / f"d{i:02d}.txt").write_bytes(docs[f"d{i:02d}.txt"])
    spec = f"text:{tmp_path}/*.txt|T=16"
    parts = {s: load_corpus(spec_with(spec, split=s)) for s in ("train", "valid", "test")}
    assert parts["train"].params()["split_by"] == "documents"
    owner = {}
    for s, c in parts.items():
        for d in bytes(c.data).split(b"\x00"):
            assert d in docs.values()  # documents stay whole
            owner.setdefault(d, []).append(s)
    assert len(owner) == 40 and all(len(v) == 1 for v in owner.values())  # each in exactly one split
    counts = parts["train"].params()["split_documents"]
    assert counts["valid"] >= 1 and counts["test"] >= 1 and sum(counts.values()) == 40
    assert not (_windows_of(parts["test"], 16) & _windows_of(parts["train"], 16))


def test_hf_rows_are_the_documents(tmp_path):
    rows = [f"story {i}: " + "abc" * (i % 7 + 3) for i in range(60)]
    with open(tmp_path / "train.jsonl", "w") as f:
        f.writelines(json.dumps({"text": r}) + "\n" for r in rows)
    spec = f"hf:json|data_files={tmp_path}/*.jsonl,T=8"
    got = {s: bytes(load_corpus(spec_with(spec, split=s), cache_dir=str(tmp_path / "c")).data).split(b"\x00")
           for s in ("train", "valid", "test")}
    assert sorted(d for part in got.values() for d in part) == sorted(r.encode() for r in rows)
    assert got["test"][-1] == rows[-1].encode() and got["train"][0] == rows[0].encode()
    with pytest.raises(CorpusError, match="split='validation' not allowed: use one of train, valid, test"):
        load_corpus(spec + ",split=validation", cache_dir=str(tmp_path / "c"))


def test_digits_splits_share_no_image():
    parts = {s: load_corpus(f"digits:split={s}") for s in ("train", "valid", "test")}
    assert {s: c.num_sequences for s, c in parts.items()} == {"train": 1350, "valid": 150, "test": 297}
    imgs = {s: {r.tobytes() for r in c.tokens} for s, c in parts.items()}
    assert not (imgs["train"] & imgs["test"] or imgs["train"] & imgs["valid"] or imgs["valid"] & imgs["test"])
    assert sum(len(v) for v in imgs.values()) == 1797  # together: the whole set, each image once


def test_split_errors(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x" * 1000)
    spec = f"text:{tmp_path}/a.txt|T=64"
    load_corpus(spec)  # train: 850 bytes
    with pytest.raises(CorpusError, match=r"split=valid of .* has 50 tokens, fewer than T=64: lower T, raise valid_frac"):
        load_corpus(spec + ",split=valid")
    with pytest.raises(CorpusError, match="split=test is empty"):
        load_corpus(spec + ",split=test,test_frac=0")
    with pytest.raises(CorpusError, match="valid_frac=0.9 out of range"):
        load_corpus(spec + ",valid_frac=0.9")
    with pytest.raises(CorpusError, match="split='dev' not allowed"):
        load_corpus("digits:split=dev")
    with pytest.raises(CorpusError, match="unknown split 'dev'"):
        held_out(load_corpus("digits"), "dev", 8)


def test_held_out_is_whole_split_or_fixed_sample(tmp_path):
    data = np.random.default_rng(2).integers(0, 256, size=30_000, dtype=np.uint8).tobytes()
    (tmp_path / "a.txt").write_bytes(data)
    c = load_corpus(f"text:{tmp_path}/a.txt|T=16,stride=8")
    te = c.with_split("test")
    x, _ = held_out(c, "test", 10_000)
    assert len(x) == te.num_sequences  # small split: all of it
    xs, _ = held_out(c, "test", 100, seed=3)
    assert len(xs) == 100 and len({r.tobytes() for r in xs}) == 100
    assert np.array_equal(xs, held_out(load_corpus(c.spec), "test", 100, seed=3)[0])  # fixed
    assert {r.tobytes() for r in xs} <= {r.tobytes() for r in x}
