"""Our codecs against the libraries that could replace them, side by side in one run (issue 25 item 5).

1. Tar shards: `storage.formats.encode_tar` / `decode_tar` against webdataset's own writer (`webdataset.TarWriter`)
   and pipeline (`webdataset.WebDataset(...).decode()`), on the same columns (Z=4096 float16 segments, as
   benchmarks/storage.py), written to and read from a local folder: write and read MB/s (median of REPEATS),
   whether the bytes are a pure function of the data, what each does with a bad shard (truncated, a member whose
   header size is wrong, a `../` member name, a pickle member), and the cost of importing each (fresh process).
2. Arrow columns: the one place we walk an Arrow column in Python, the `hf:` reader (`pipeline.lazy_tokens.Rows`):
   its open-time scan (utf-8 byte length of every row) row by row in Python against pyarrow's compute kernel
   over the dataset's Arrow batches; and random windows of the same rows through `hf:` (datasets' row access)
   against `parquet:` (pyarrow row groups, our reader).

    python3 benchmarks/formats_libs.py [--shards 8] [--segments-per-shard 48] [--rows 200000]

Writes benchmarks/results/formats_libs.json and formats_libs.md.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from array import array
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import stamp
from storage.codec import to_columns
from storage.formats import decode_tar, encode_tar
from storage.schema import SCHEMA_VERSION, Segments

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
Z, S = 4096, 16
REPEATS = 5


def columns(n: int, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    rng = np.random.default_rng(seed)
    seg = Segments(states=rng.standard_normal((n, S + 1, Z), dtype=np.float32).astype(np.float16),
                   tokens=rng.integers(0, 50000, (n, S)), y=rng.integers(-1, 50000, (n, S)),
                   seq=np.arange(n) + seed * n, pos0=rng.integers(0, 1024, n))
    header = {"schema_version": SCHEMA_VERSION, "teacher_fingerprint": "bench", "layout": "segments",
              "dtype": "float16", "z": Z, "s": S, "rows": n, "round": 0}
    return to_columns(seg, "float16"), header


# ---- webdataset's writer and pipeline on our layout ---------------------------------------------------------
def wds_write(path: Path, cols: dict[str, np.ndarray], header: dict, block_rows: int, mtime: float | None) -> None:
    import webdataset as wds

    n = next(iter(cols.values())).shape[0]
    with wds.TarWriter(str(path), mtime=mtime) as sink:
        sink.write({"__key__": "_shard", "json": header})
        for b, start in enumerate(range(0, n, block_rows)):
            sink.write({"__key__": f"{b:06d}", **{f"{k}.npy": v[start:start + block_rows] for k, v in cols.items()}})


def wds_read(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    import webdataset as wds

    header, blocks = None, []
    for sample in wds.WebDataset(str(path), shardshuffle=False).decode():
        if sample["__key__"] == "_shard":
            header = sample["json"]
        else:
            blocks.append(sample)
    names = sorted(k[:-4] for k in blocks[0] if k.endswith(".npy"))
    return {k: np.concatenate([b[f"{k}.npy"] for b in blocks]) for k in names}, header


def block_rows(cols: dict[str, np.ndarray]) -> int:
    """The rows per block our encoder picks (so both writers make the same members)."""
    from storage.formats import CHUNK_BYTES, _rows_per_chunk

    return max(1, min(_rows_per_chunk(a, CHUNK_BYTES) for a in cols.values()))


def median_time(fn) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tar_throughput(root: Path, shards: list[tuple[dict, dict]]) -> dict:
    total = sum(sum(a.nbytes for a in c.values()) for c, _ in shards)
    ours, theirs = root / "ours", root / "wds"
    ours.mkdir()
    theirs.mkdir()

    def write_ours():
        for i, (c, h) in enumerate(shards):
            (ours / f"shard-{i:05d}.tar").write_bytes(encode_tar(c, h))

    def write_wds():
        for i, (c, h) in enumerate(shards):
            wds_write(theirs / f"shard-{i:05d}.tar", c, h, block_rows(c), mtime=0.0)

    def read_ours():
        for i in range(len(shards)):
            decode_tar((ours / f"shard-{i:05d}.tar").read_bytes())

    def read_wds():
        for i in range(len(shards)):
            wds_read(theirs / f"shard-{i:05d}.tar")

    w_ours, w_wds = median_time(write_ours), median_time(write_wds)
    r_ours, r_wds = median_time(read_ours), median_time(read_wds)
    # the two read paths give the same columns, from either writer's bytes
    c0, h0 = shards[0]
    for path in (ours / "shard-00000.tar", theirs / "shard-00000.tar"):
        for got, header in (decode_tar(path.read_bytes()), wds_read(path)):
            assert header == h0 and all(np.array_equal(got[k], c0[k]) for k in c0), path
    size_ours = sum(p.stat().st_size for p in ours.iterdir())
    size_wds = sum(p.stat().st_size for p in theirs.iterdir())
    # bytes a pure function of the data: write the first shard twice, one second apart
    a = encode_tar(c0, h0)
    wds_write(root / "t1.tar", c0, h0, block_rows(c0), mtime=None)
    time.sleep(1.1)
    wds_write(root / "t2.tar", c0, h0, block_rows(c0), mtime=None)
    wds_write(root / "t3.tar", c0, h0, block_rows(c0), mtime=0.0)
    return {"payload_mb": total / 1e6, "shards": len(shards),
            "ours": {"write_mb_s": total / 1e6 / w_ours, "read_mb_s": total / 1e6 / r_ours, "bytes": size_ours,
                     "deterministic": a == encode_tar(c0, h0)},
            "webdataset": {"write_mb_s": total / 1e6 / w_wds, "read_mb_s": total / 1e6 / r_wds, "bytes": size_wds,
                           "deterministic": (root / "t1.tar").read_bytes() == (root / "t2.tar").read_bytes(),
                           "deterministic_with_mtime0": (root / "t3.tar").read_bytes() ==
                           (theirs / "shard-00000.tar").read_bytes()}}


# ---- strictness --------------------------------------------------------------------------------------------
def _tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


class Boom:
    """Unpickling this runs code (what a pickle member can do); here it only records that it ran."""

    ran = False

    def __reduce__(self):
        return (_mark, ())


def _mark():
    Boom.ran = True
    return "code ran"


def bad_shards(cols: dict, header: dict) -> dict[str, bytes]:
    good = encode_tar(cols, header)
    # a member whose header claims 512 bytes fewer than it holds: the rest is read as the next header
    with tarfile.open(fileobj=io.BytesIO(good)) as t:
        m = next(x for x in t.getmembers() if x.name.endswith(".npy"))
    wrong = bytearray(good)
    field = m.offset + 124  # ustar size field: 12 bytes of octal
    wrong[field:field + 12] = f"{m.size - 512:011o}\0".encode()
    wrong[m.offset + 148:m.offset + 156] = b" " * 8
    wrong[m.offset + 148:m.offset + 156] = f"{sum(wrong[m.offset:m.offset + 512]):06o}\0 ".encode()
    import pickle

    y = cols["y"][:2]
    return {
        "truncated (first half)": good[:len(good) // 2],
        "member size field 512 bytes short": bytes(wrong),
        "member named ../000000.y.npy": _tar([("_shard.json", json.dumps(header).encode()),
                                              ("../000000.y.npy", _npy(y))]),
        "pickle member 000000.y.pyd": _tar([("_shard.json", json.dumps(header).encode()),
                                            ("000000.y.pyd", pickle.dumps(Boom()))]),
    }


def outcome(fn, root: Path) -> str:
    Boom.ran = False
    try:
        cols, _ = fn()
        what = f"accepted: {sum(a.shape[0] for a in cols.values()) if cols else 0} column rows"
    except Exception as e:  # noqa: BLE001 - the outcome is what we record
        msg = str(e) or repr(e.__cause__ or e.__context__)
        msg = msg.replace(str(root), "<tmp>").splitlines()[0][:90]  # no machine paths in result files
        what = f"refused: {type(e).__name__}: {msg}"
    return what + (" (the pickle's code ran)" if Boom.ran else "")


def wds_read_any(path: Path) -> tuple[dict, dict]:
    """webdataset's pipeline on any tar: every sample decoded, whatever its members."""
    import webdataset as wds

    samples = list(wds.WebDataset(str(path), shardshuffle=False).decode())
    cols = {k: v for s in samples for k, v in s.items() if isinstance(v, np.ndarray)}
    return cols, {"samples": [sorted(s) for s in samples]}


def strictness(root: Path, cols: dict, header: dict) -> dict:
    out = {}
    for case, data in bad_shards(cols, header).items():
        path = root / "bad.tar"
        path.write_bytes(data)
        out[case] = {"ours": outcome(lambda d=data: decode_tar(d), root),
                     "webdataset": outcome(lambda p=path: wds_read_any(p), root)}
    return out


# ---- import cost --------------------------------------------------------------------------------------------
def import_ms(stmt: str, repeats: int = 5) -> float:
    """Median wall ms of `python -c <stmt>` minus that of `python -c pass` (fresh processes)."""
    def run(code: str) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
        return time.perf_counter() - t

    base = statistics.median(run("pass") for _ in range(repeats))
    return 1000 * (statistics.median(run(stmt) for _ in range(repeats)) - base)


# ---- Arrow columns ------------------------------------------------------------------------------------------
def scan_by_hand(ds, field: str) -> np.ndarray:
    """The hf: reader's open-time scan before this benchmark (`Rows.scan` then): each row's utf-8 length, row
    by row in Python."""
    lengths = array("q")
    for batch in ds.select_columns([field]).iter(batch_size=10_000):
        for s in batch[field]:
            if s is not None:
                lengths.append(len(s.encode("utf-8")))
    return np.frombuffer(lengths, dtype=np.int64)


def scan_arrow(ds, field: str) -> np.ndarray:
    """The same lengths from pyarrow's kernel over the dataset's Arrow batches."""
    import pyarrow.compute as pc

    parts = []
    for batch in ds.select_columns([field]).with_format("arrow").iter(batch_size=10_000):
        col = batch.column(field)
        parts.append(pc.binary_length(col.filter(pc.is_valid(col))).to_numpy())
    return np.concatenate(parts).astype(np.int64)


def arrow_columns(root: Path, n_rows: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.corpora import load_corpus
    from pipeline.lazy_tokens import Rows

    rng = np.random.default_rng(5)
    words = np.array(["the", "memory", "of", "a", "recurrent", "net", "is", "trained", "without", "time"])
    rows = [" ".join(words[rng.integers(0, 10, size=rng.integers(5, 60))]) for _ in range(n_rows)]
    pq.write_table(pa.table({"text": rows}), root / "rows.parquet", row_group_size=8192)
    files = str(root / "rows.parquet")
    hf = load_corpus(f"hf:parquet|data_files={files},T=64,valid_frac=0,test_frac=0", cache_dir=str(root / "cache"))
    ds = hf.data.docs.ds
    t = time.perf_counter()
    by_hand = scan_by_hand(ds, "text")
    t_hand = time.perf_counter() - t
    t = time.perf_counter()
    arrow = scan_arrow(ds, "text")
    t_arrow = time.perf_counter() - t
    t = time.perf_counter()
    rows_scan = Rows.scan(ds, "text")
    t_rows = time.perf_counter() - t
    assert np.array_equal(by_hand, arrow) and np.array_equal(rows_scan.lengths, arrow)
    t = time.perf_counter()
    pqc = load_corpus(f"parquet:{files}|T=64,valid_frac=0,test_frac=0")
    t_open_pq = time.perf_counter() - t
    assert hf.num_sequences == pqc.num_sequences and hf._data_digest() == pqc._data_digest()
    idx = np.random.default_rng(0).integers(0, hf.num_sequences, size=2000)

    def windows_per_s(c, cache_mb: float | None = None) -> float:
        if cache_mb is not None:
            os.environ["SMT_PARQUET_CACHE_MB"] = str(cache_mb)
        try:
            fresh = load_corpus(c.spec, cache_dir=str(root / "cache")) if c.kind == "hf" else load_corpus(c.spec)
        finally:
            os.environ.pop("SMT_PARQUET_CACHE_MB", None)
        t = time.perf_counter()
        for i in range(0, len(idx), 64):
            fresh.get(idx[i:i + 64])
        return len(idx) / (time.perf_counter() - t)

    np.testing.assert_array_equal(hf.get(idx[:64])[0], pqc.get(idx[:64])[0])
    return {"rows": n_rows, "bytes": int(arrow.sum()),
            "row_group_mb": round(pq.ParquetFile(files).metadata.row_group(0).total_byte_size / 1e6, 2),
            "scan_rows_per_s": {"row by row in Python (Rows.scan before)": n_rows / t_hand,
                                "pyarrow.compute.binary_length": n_rows / t_arrow,
                                "Rows.scan (now)": n_rows / t_rows},
            "open_parquet_s": t_open_pq,
            "random_windows_per_s": {"hf: (datasets' memory-mapped Arrow cache, row by row)": windows_per_s(hf),
                                     "parquet: (row groups, default 64 MiB cache: all kept)": windows_per_s(pqc),
                                     "parquet: (row groups, 2 MiB cache: a decode per window)": windows_per_s(pqc, 2)}}


def markdown(r: dict) -> str:
    t, s = r["tar"], r["strictness"]
    o, w = t["ours"], t["webdataset"]
    a = r["arrow"]
    lines = [
        "# Our codecs or the libraries? (tar shards: webdataset; Arrow columns: pyarrow)", "",
        (f"{t['shards']} shards, {t['payload_mb']:.1f} MB of columns (Z={Z} float16 segments, S={S}), local folder, "
        f"median of {REPEATS}; {r['machine']}. `python3 benchmarks/formats_libs.py`."), "",
        "## Tar shards: storage/formats.py against webdataset.TarWriter / webdataset.WebDataset", "",
        "| | ours (encode_tar / decode_tar) | webdataset (TarWriter / WebDataset().decode()) |",
        "|---|---|---|",
        f"| write MB/s | {o['write_mb_s']:.0f} | {w['write_mb_s']:.0f} |",
        f"| read MB/s | {o['read_mb_s']:.0f} | {w['read_mb_s']:.0f} |",
        f"| bytes on disk | {o['bytes']:,} | {w['bytes']:,} |",
        (f"| same bytes for the same data | {'yes' if o['deterministic'] else 'no'} | "
        f"{'yes' if w['deterministic'] else 'no'} by default (mtime = now); "
        f"{'yes' if w['deterministic_with_mtime0'] else 'no'} with mtime=0 |"),
        (f"| import (ms over a bare interpreter) | {r['import_ms']['storage.formats']:.0f} (storage.formats, "
        f"zarr included) | {r['import_ms']['webdataset']:.0f} |"),
    ]
    for case, v in s.items():
        lines.append(f"| {case} | {v['ours']} | {v['webdataset']} |")
    lines += [
        "", "## Arrow columns: by hand in Python against pyarrow", "",
        (f"{a['rows']:,} text rows ({a['bytes'] / 1e6:.1f} MB) in one Parquet file, row groups of 8192 rows "
        f"({a['row_group_mb']} MB)."), "",
        "| | rows/s or windows/s |", "|---|---|",
        *(f"| hf: open-time length scan, {k} | {v:,.0f} rows/s |" for k, v in a["scan_rows_per_s"].items()),
        *(f"| random 64-token windows, {k} | {v:,.0f} windows/s |" for k, v in a["random_windows_per_s"].items()),
        f"| parquet: open (scan of every row group) | {a['open_parquet_s']:.2f} s |",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--segments-per-shard", type=int, default=48)
    ap.add_argument("--rows", type=int, default=200_000)
    args = ap.parse_args()
    flushed = stamp.start()
    shards = [columns(args.segments_per_shard, i) for i in range(args.shards)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results = {"machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
                   "tar": tar_throughput(root, shards)}
        small, h = columns(4, 99)
        results["strictness"] = strictness(root, small, h)
        results["import_ms"] = {"storage.formats": import_ms("import storage.formats"),
                                "webdataset": import_ms("import webdataset"),
                                "pyarrow.parquet": import_ms("import pyarrow.parquet")}
        (root / "arrow").mkdir()
        results["arrow"] = arrow_columns(root / "arrow", args.rows)
    OUT.mkdir(exist_ok=True)
    (OUT / "formats_libs.json").write_text(json.dumps(results, indent=1))
    (OUT / "formats_libs.md").write_text(markdown(results))
    stamp.stamp(OUT / "formats_libs", flushed)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
