"""Stream corpora larger than memory: `text:`, `tokens:` and `hf:` read windows lazily (ranged reads), give
the same windows and the same corpus id as the whole stream in memory, and allocate only what the
windows in use need."""
from __future__ import annotations

import hashlib
import pickle
import tracemalloc

import numpy as np
import pytest

from pipeline.corpora import load_corpus
from pipeline.lazy_tokens import LazyTokens

pytestmark = pytest.mark.timeout(120)
WHOLE = "valid_frac=0,test_frac=0"   # one split holding every document: the stream is all files joined


def windows(stream: bytes, T: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: windows cut from the whole stream in memory."""
    a = np.frombuffer(stream, dtype=np.uint8).astype(np.int64)
    starts = range(0, len(a) - T + 1, stride)
    x = np.stack([a[s:s + T] for s in starts])
    y = np.stack([np.append(a[s + 1:s + T + 1], [-1] * (s + T + 1 - len(a)))[:T] for s in starts])
    return x, y


@pytest.mark.parametrize("sep", [0, -1])
def test_text_windows_and_corpus_id_equal_the_stream_in_memory(tmp_path, sep):
    rng = np.random.default_rng(0)
    files = [rng.integers(1, 256, size=n, dtype=np.uint8).tobytes() for n in (300, 0, 1, 517, 64)]
    for i, data in enumerate(files):
        (tmp_path / f"f{i}.txt").write_bytes(data)
    c = load_corpus(f"text:{tmp_path}/*.txt|T=16,stride=5,sep={sep},{WHOLE}")
    assert isinstance(c.data, LazyTokens)
    stream = (b"" if sep < 0 else bytes([sep])).join(files)
    x, y = c.get(np.arange(c.num_sequences))
    ex, ey = windows(stream, 16, 5)
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)
    digest = hashlib.sha256(b"uint8" + stream).digest()
    assert c.corpus_id == hashlib.sha256(c.spec.encode() + b"\x00" + digest).hexdigest()[:16]
    again = pickle.loads(pickle.dumps(c))          # Ray ships corpora: open files stay behind
    np.testing.assert_array_equal(again.get([3, 0, 7])[0], ex[[3, 0, 7]])


def test_one_file_is_cut_into_contiguous_ranges_lazily(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, size=4000, dtype=np.uint8).tobytes()
    (tmp_path / "one.txt").write_bytes(data)
    parts = {s: load_corpus(f"text:{tmp_path}/one.txt|T=8,split={s}") for s in ("train", "valid", "test")}
    assert b"".join(bytes(parts[s].data) for s in ("train", "valid", "test")) == data
    tr = parts["train"]
    np.testing.assert_array_equal(tr.get([tr.num_sequences - 1])[0][0],
                                  np.frombuffer(bytes(tr.data)[-8:], dtype=np.uint8))


def test_memory_is_bounded_by_the_windows_not_the_corpus(tmp_path):
    big = tmp_path / "big.txt"                      # 24 MB of text
    big.write_bytes(np.random.default_rng(2).integers(32, 127, size=24 << 20, dtype=np.uint8).tobytes())
    npy = tmp_path / "ids.npy"
    np.save(npy, np.arange(3 << 20, dtype=np.int32) % 1000)   # 12 MB of token ids
    tracemalloc.start()
    try:
        text = load_corpus(f"text:{big}|T=256")
        toks = load_corpus(f"tokens:{npy}|T=256")   # validation scans it in bounded chunks
        for c in (text, toks):
            c.sample(64, np.random.default_rng(0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a scan holds one 2 MiB chunk and its copies; reading either corpus whole would take 12-24 MiB
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB: a corpus was read whole"
    assert toks.vocab_size == 1000 and toks.data.dtype == np.int32


def test_hf_rows_are_read_from_the_dataset_cache(tmp_path):
    import json

    rows = [{"text": f"story number {i} " * (i % 7 + 1)} for i in range(200)]
    src = tmp_path / "rows.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    c = load_corpus(f"hf:json|data_files={src},T=32,{WHOLE}", cache_dir=str(tmp_path / "cache"))
    stream = b"\x00".join(r["text"].encode() for r in rows)
    x, _ = c.get(np.arange(c.num_sequences))
    np.testing.assert_array_equal(x, windows(stream, 32, 32)[0])
    assert c.num_rows == 200
