"""`parquet:<url or glob>|column=...`: a string column is the same stream, splits, windows and data digest as
`text:` over one file per row; a list<int> column the same windows and digest as `tokens:` over the rows
joined; read by row groups through pyarrow (local and moto S3 with an explicit endpoint) in bounded memory;
`smt pretrain` and `smt label` run on one; bad input is one line."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main as smt
from pipeline.corpora import CorpusError, load_corpus
from pipeline.lazy_tokens import LazyTokens
from storage.reader import TargetSet
from tests.label_data import read_segments

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]
WHOLE = "valid_frac=0,test_frac=0"
ROWS = [f"row {i}: " + "abcdefghij"[: i % 10] * (i % 4 + 1) + "\n" for i in range(60)]


def write_rows(path: Path, rows: list[str | None], row_group_size: int = 7) -> None:
    pq.write_table(pa.table({"text": pa.array(rows, pa.string())}), path, row_group_size=row_group_size)


def write_files(folder: Path, rows: list[str]) -> None:
    folder.mkdir()
    for i, r in enumerate(rows):
        (folder / f"{i:04d}.txt").write_text(r)


@pytest.mark.parametrize("sep", [0, -1])
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_text_column_is_text_over_one_file_per_row(tmp_path, split, sep):
    """Rows in 2 files of row groups of 7 (a null row between them is no document) against one text file per
    row: the same split cut (by documents), windows and data digest."""
    write_rows(tmp_path / "a.parquet", ROWS[:25] + [None])
    write_rows(tmp_path / "b.parquet", ROWS[25:])
    write_files(tmp_path / "txt", ROWS)
    params = f"T=16,stride=5,sep={sep},split={split}"
    p = load_corpus(f"parquet:{tmp_path}/*.parquet|{params}")
    t = load_corpus(f"text:{tmp_path}/txt/*.txt|{params}")
    assert isinstance(p.data, LazyTokens) and p.vocab_size == t.vocab_size == 256 and p.mode == "stream"
    assert p.split_info == t.split_info and p.split_info["split_by"] == "documents"
    assert p.num_sequences == t.num_sequences > 0
    idx = np.arange(p.num_sequences)
    for a, b in zip(p.get(idx), t.get(idx)):
        np.testing.assert_array_equal(a, b)
    assert p._data_digest() == t._data_digest()
    assert p.spec == f"parquet:{tmp_path}/*.parquet|column=text,T=16,stride=5,sep={sep},split={split}," \
                     "valid_frac=0.05,test_frac=0.1"
    assert load_corpus(p.spec).corpus_id == p.corpus_id  # the canonical spec reloads to the same data
    assert p.params()["num_rows"] == 60 and p.params()["num_files"] == 2
    again = pickle.loads(pickle.dumps(p))  # Ray ships corpora: open files and decoded groups stay behind
    np.testing.assert_array_equal(again.get([2, 0])[0], p.get([2, 0])[0])


def test_ids_column_is_tokens_over_the_rows_joined(tmp_path):
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 50, size=n).astype(np.int32) for n in (30, 1, 0, 77, 12)]
    pq.write_table(pa.table({"ids": pa.array([r.tolist() for r in rows], pa.list_(pa.int32())),
                             "text": ["x"] * 5}), tmp_path / "ids.parquet", row_group_size=2)
    joined = np.concatenate(rows)
    np.save(tmp_path / "ids.npy", joined)
    p = load_corpus(f"parquet:{tmp_path}/ids.parquet|column=ids,T=8,stride=3,{WHOLE}")
    t = load_corpus(f"tokens:{tmp_path}/ids.npy|T=8,stride=3,{WHOLE}")
    assert p.vocab_size == t.vocab_size == int(joined.max()) + 1 and p.data.dtype == np.int32
    assert p.num_sequences == t.num_sequences
    idx = np.arange(p.num_sequences)
    for a, b in zip(p.get(idx), t.get(idx)):
        np.testing.assert_array_equal(a, b)
    assert p._data_digest() == t._data_digest() == hashlib.sha256(b"int32" + joined.tobytes()).digest()
    assert "sep=-1" in p.spec and f"vocab={p.vocab_size}" in p.spec
    # a separator id between rows, inside the vocabulary
    s = load_corpus(f"parquet:{tmp_path}/ids.parquet|column=ids,T=8,sep=50,{WHOLE}")
    want = np.concatenate([np.append(r, 50) for r in rows])[:-1]
    np.testing.assert_array_equal(np.asarray(s.data), want)
    assert s.vocab_size == 51


def test_s3_with_an_explicit_endpoint(s3_bucket, tmp_path, monkeypatch):
    """The same files on a real S3 endpoint (moto), reached through storage_options alone."""
    import fsspec

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    bucket, endpoint = s3_bucket
    so = {"client_kwargs": {"endpoint_url": endpoint}}
    write_rows(tmp_path / "a.parquet", ROWS[:30])
    write_rows(tmp_path / "b.parquet", ROWS[30:])
    for name in ("a.parquet", "b.parquet"):
        with fsspec.open(f"{bucket}/corpus/{name}", "wb", **so) as f:
            f.write((tmp_path / name).read_bytes())
    remote = load_corpus(f"parquet:{bucket}/corpus/*.parquet|T=16,stride=4", storage_options=so)
    local = load_corpus(f"parquet:{tmp_path}/*.parquet|T=16,stride=4")
    assert remote.num_sequences == local.num_sequences and remote._data_digest() == local._data_digest()
    idx = np.arange(remote.num_sequences)
    np.testing.assert_array_equal(remote.get(idx)[0], local.get(idx)[0])
    test = remote.with_split("test")  # another split is reached with the same storage options
    np.testing.assert_array_equal(test.get([0])[0], local.with_split("test").get([0])[0])


MEASURE = """
import sys, tracemalloc
import numpy as np
import pyarrow as pa
from pipeline.corpora import load_corpus
load_corpus(sys.argv[2]).sample(4, np.random.default_rng(0))  # a tiny one first: every module imported
tracemalloc.start()  # after the imports: modules are not corpus data
c = load_corpus(sys.argv[1])
c.sample(64, np.random.default_rng(0))
c._data_digest()
_, peak = tracemalloc.get_traced_memory()
print(peak, pa.default_memory_pool().max_memory(), c.num_sequences)
"""


def test_memory_is_bounded_by_row_groups_not_the_corpus(tmp_path):
    """24 MB of text in row groups of 1 MB, a 2 MiB cache of decoded row groups (SMT_PARQUET_CACHE_MB): opening
    (one scan), sampling windows and the digest hold a few row groups: both Python's allocations (tracemalloc)
    and Arrow's memory pool peak under 8 MiB, in a fresh process."""
    rng = np.random.default_rng(2)
    rows = [rng.integers(32, 127, size=4096, dtype=np.uint8).tobytes().decode() for _ in range(6144)]  # 24 MiB
    write_rows(tmp_path / "big.parquet", rows, row_group_size=256)  # 1 MiB a row group
    assert pq.ParquetFile(tmp_path / "big.parquet").metadata.num_row_groups == 24
    del rows
    write_rows(tmp_path / "tiny.parquet", ROWS)
    spec = f"parquet:{tmp_path}/big.parquet|T=256"
    p = subprocess.run([sys.executable, "-c", MEASURE, spec, f"parquet:{tmp_path}/tiny.parquet|T=8"], cwd=REPO,
                       env={**os.environ, "SMT_PARQUET_CACHE_MB": "2"}, capture_output=True, text=True, timeout=200,
                       check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    py_peak, arrow_peak, n = map(int, p.stdout.split())
    assert n == load_corpus(spec).num_sequences > 0
    assert py_peak < 8 << 20, f"python peak {py_peak / 2**20:.1f} MiB: the corpus was read whole"
    assert arrow_peak < 8 << 20, f"arrow peak {arrow_peak / 2**20:.1f} MiB: the corpus was read whole"


def _bad(tmp_path) -> dict[str, tuple[str, str]]:
    pq.write_table(pa.table({"text": ["a", "b"], "score": [0.5, 1.0],
                             "vecs": pa.array([[0.5], [1.0]], pa.list_(pa.float32())),
                             "ids": pa.array([[1, None], [2]], pa.list_(pa.int64())),
                             "neg": pa.array([[1, -3], [2]], pa.list_(pa.int64()))}), tmp_path / "t.parquet")
    (tmp_path / "empty.parquet").write_bytes(b"")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "none.parquet")
    (tmp_path / "mixed").mkdir()
    pq.write_table(pa.table({"c": ["x"]}), tmp_path / "mixed" / "a.parquet")
    pq.write_table(pa.table({"c": pa.array([[1]], pa.list_(pa.int64()))}), tmp_path / "mixed" / "b.parquet")
    d = str(tmp_path)
    return {
        "missing column": (f"parquet:{d}/t.parquet|column=body",
                           (f"parquet: no column 'body' in {d}/t.parquet (columns: ['text', 'score', 'vecs', 'ids', "
                           "'neg']): set column=<name>")),
        "float column": (f"parquet:{d}/t.parquet|column=score",
                         (f"parquet: column 'score' of {d}/t.parquet is double: need a string column (text) or "
                         "list<int> (token ids); pick another column=")),
        "list of floats": (f"parquet:{d}/t.parquet|column=vecs", "is list<element: float>: need a string column"),
        "empty file": (f"parquet:{d}/empty.parquet",
                       (f"parquet: {d}/empty.parquet is not a readable Parquet file (ArrowInvalid: Parquet file size "
                       "is 0 bytes): remove it or fix the glob")),
        "no rows": (f"parquet:{d}/none.parquet",
                    (f"parquet: '{d}/none.parquet' has no non-null rows in column 'text' (0 rows in all): point the "
                    "spec at files with data")),
        "null token id": (f"parquet:{d}/t.parquet|column=ids", "a list holds a null token id"),
        "negative id": (f"parquet:{d}/t.parquet|column=neg", "token -3 < 0 in column 'neg'"),
        "vocab too small": (f"parquet:{d}/t.parquet|column=ids,vocab=2",
                            "parquet: token 2 outside vocab=2"),
        "mixed types": (f"parquet:{d}/mixed/*.parquet|column=c", "has different types across files"),
        "vocab on text": (f"parquet:{d}/t.parquet|vocab=9", "vocab=9 is for a list<int> column"),
        "no files": (f"parquet:{d}/nothing-*.parquet", "parquet: no files match"),
    }


@pytest.mark.parametrize("case", ["missing column", "float column", "list of floats", "empty file", "no rows",
                                  "null token id", "negative id", "vocab too small", "mixed types", "vocab on text",
                                  "no files"])
def test_bad_input_is_one_line(case, tmp_path, capsys):
    spec, needle = _bad(tmp_path)[case]
    if case == "vocab too small":  # the null id is checked first: drop that row group's column from this case
        pq.write_table(pa.table({"ids": pa.array([[1], [2]], pa.list_(pa.int64()))}), tmp_path / "t.parquet")
    with pytest.raises(CorpusError) as e:
        load_corpus(spec)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    # through a job: `smt pretrain` prints that line and exits 2
    assert smt(["pretrain", "--corpus", spec, "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"smt pretrain: error: {e.value}"]
    assert not (tmp_path / "x").exists()


TINY = ["--teacher.d-model", "16", "--teacher.n-heads", "2", "--teacher.encoder-depth", "1",
        "--teacher.decoder-depth", "1", "--teacher.mem-tokens", "2", "--teacher.encoder", "causal",
        "--teacher.window", "4", "--updater.arch", "mlp", "--updater.depth", "1", "--updater.hidden", "32"]


@pytest.mark.parametrize("column", ["text", "ids"])
def test_pretrain_then_label_a_parquet_corpus(column, tmp_path, capsys):
    """`smt pretrain` and `smt label` on a tiny parquet corpus: the labeled tokens are the corpus's windows."""
    rng = np.random.default_rng(3)
    pq.write_table(pa.table({"text": ROWS, "ids": pa.array([rng.integers(0, 20, size=len(r)).tolist() for r in ROWS],
                                                             pa.list_(pa.int16()))}),
                   tmp_path / "c.parquet", row_group_size=16)
    spec = f"parquet:{tmp_path}/c.parquet|column={column},T=12,stride=6"
    run, bucket = tmp_path / "pt", tmp_path / "bucket"
    assert smt(["pretrain", "--corpus", spec, "--out", str(run), "--steps", "3", "--eval-every", "3",
                "--eval-size", "8", "--batch-size", "4", "--device", "cpu", "--smt.mode", "stream", "--smt.Tc", "4",
                "--smt.Tf", "2", "--quiet", *TINY]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3] and np.isfinite(rows[0]["loss"])
    capsys.readouterr()
    assert smt(["label", "--teacher", str(run / "teacher"), "--corpus", spec, "--out", str(bucket), "--Tc", "4",
                "--shard-sequences", "16", "--workers", "0", "--quiet"]) == 0
    url = capsys.readouterr().out.strip().splitlines()[-1]
    corpus = load_corpus(spec)
    ts = TargetSet.open(url, None)
    assert sum(e.records for e in ts.shards) == corpus.num_sequences * (12 - 4)
    _, tokens, y, seq, pos0 = read_segments(url, ts.fingerprint)
    x, want_y = corpus.get(seq)
    assert list(seq) == list(range(corpus.num_sequences)) and set(pos0) == {4}
    np.testing.assert_array_equal(tokens, x[:, 4:])
    np.testing.assert_array_equal(y, want_y[:, 4:])
    assert corpus.vocab_size == (256 if column == "text" else 20)

