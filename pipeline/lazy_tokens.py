"""Token streams read lazily, so a stream corpus larger than memory costs memory only for the windows in use.

A stream corpus is one 1-D token array: its documents (files, dataset rows, one array) joined with a
separator token. `LazyTokens` is that array without loading it: it knows its length and dtype and reads a
range `[lo, hi)` on demand from the documents that hold it:

- `FileDoc`: a byte file (text) or the data of a .npy file (tokens), local or at any fsspec URL, read with
  positioned reads (`seek` + `read`); remote files through fsspec's LRU block cache (1 MiB blocks, at most
  `MAX_BLOCKS` per file), so memory is bounded by the blocks in use, not the file size;
- `ArrayDoc`: an array that slices lazily itself (a Zarr array);
- `Rows`: the rows of a text column of a Hugging Face dataset, whose Arrow cache is memory-mapped by
  `datasets`; rows are encoded to utf-8 one at a time (lengths in one pass at open, a small LRU of recent
  rows), and held as two int64 arrays rather than one object per row;
- `ParquetRows`: the rows of one column of Parquet files (strings as utf-8 bytes, or list<int> token ids),
  read through pyarrow a row group at a time (that column only), decoded groups kept up to 64 MiB
  (`SMT_PARQUET_CACHE_MB`).

Slicing (`tokens[a:b]`) gives a view, `subset(docs)` the stream of some documents only (what the
train/valid/test split of `pipeline/corpora/streams.py` needs), `chunks()` a bounded-memory scan (digest, min/max).
`np.asarray(tokens)` and `bytes(tokens)` materialise it (small corpora and tests only).
"""
from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import numpy as np

BLOCK = 1 << 20
MAX_BLOCKS = 16
OPEN_FILES = 64


class _LRU(OrderedDict):
    def __init__(self, size: int, make: Callable) -> None:
        super().__init__()
        self.size, self.make = size, make

    def get_or_make(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = self.make(key)
        while len(self) > self.size:
            _, old = self.popitem(last=False)
            close = getattr(old, "close", None)
            if close:
                close()
        return value


class FileDoc:
    """`length` items of `dtype` from byte `offset` of one file (fsspec filesystem + path)."""

    def __init__(self, fs, path: str, length: int, dtype=np.uint8, offset: int = 0) -> None:
        self.fs, self.path, self.length, self.dtype, self.offset = fs, path, int(length), np.dtype(dtype), int(offset)

    def read(self, lo: int, hi: int, handles: _LRU) -> np.ndarray:
        f = handles.get_or_make(self)
        size = self.dtype.itemsize
        f.seek(self.offset + lo * size)
        raw = f.read((hi - lo) * size)
        if len(raw) != (hi - lo) * size:
            raise OSError(f"{self.path}: short read at item {lo} ({len(raw)} of {(hi - lo) * size} bytes): "
                          "the file changed or is truncated")
        return np.frombuffer(raw, dtype=self.dtype)


class ArrayDoc:
    """An array-like that slices lazily (a Zarr array): `length` items."""

    def __init__(self, array) -> None:
        self.array, self.length, self.dtype = array, int(array.shape[0]), np.dtype(array.dtype)

    def read(self, lo: int, hi: int, handles: _LRU) -> np.ndarray:
        return np.asarray(self.array[lo:hi])


class DocList:
    """Documents as a list of FileDoc/ArrayDoc objects (a few thousand files at most)."""

    def __init__(self, items: Sequence) -> None:
        self.items = list(items)
        self.lengths = np.array([d.length for d in self.items], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def read(self, i: int, lo: int, hi: int, handles: _LRU) -> np.ndarray:
        return self.items[i].read(lo, hi, handles)

    def subset(self, keep: Sequence[int]) -> DocList:
        return DocList([self.items[i] for i in keep])


class Rows:
    """The non-null rows of a text column of a `datasets.Dataset` (Arrow, memory-mapped by `datasets`) as
    utf-8 documents: two int64 arrays (row ids, byte lengths), not one object per row, so millions of rows
    cost 16 bytes each."""

    def __init__(self, ds, field: str, rows: np.ndarray, lengths: np.ndarray, cache: _LRU | None = None) -> None:
        self.ds, self.field, self.rows, self.lengths = ds, field, rows, lengths
        self._cache = cache if cache is not None else _LRU(256, lambda r: self.ds[int(r)][self.field].encode("utf-8"))

    @classmethod
    def scan(cls, ds, field: str, batch_size: int = 10_000) -> Rows:
        """Byte lengths of every non-null row, in one streaming pass over the column's Arrow batches (pyarrow's
        utf-8 length kernel: ~3x the row-by-row Python loop it replaced, benchmarks/results/formats_libs.md)."""
        import pyarrow.compute as pc

        rows, lengths, start = [], [], 0
        for batch in ds.select_columns([field]).with_format("arrow").iter(batch_size=batch_size):
            col = batch.column(field)
            valid = pc.is_valid(col)
            rows.append(np.flatnonzero(valid.to_numpy(zero_copy_only=False)) + start)
            lengths.append(pc.binary_length(col.filter(valid)).to_numpy(zero_copy_only=False).astype(np.int64))
            start += len(col)
        cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))
        return cls(ds, field, cat(rows).astype(np.int64), cat(lengths))

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, i: int, lo: int, hi: int, handles: _LRU) -> np.ndarray:
        return np.frombuffer(self._cache.get_or_make(int(self.rows[i]))[lo:hi], dtype=np.uint8)

    def subset(self, keep: Sequence[int]) -> Rows:
        keep = np.asarray(keep, dtype=np.int64)
        return Rows(self.ds, self.field, self.rows[keep], self.lengths[keep], self._cache)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cache = _LRU(256, lambda r: self.ds[int(r)][self.field].encode("utf-8"))


PARQUET_CACHE_MB = 64
"""Decoded Parquet row groups kept per corpus (MiB; env SMT_PARQUET_CACHE_MB): a window whose row group is
not kept decodes that whole row group (that column) again, so random windows over a corpus larger than this
cost a row-group decode each (benchmarks/results/formats_libs.md)."""


def parquet_cache_bytes() -> int:
    import os

    return int(float(os.environ.get("SMT_PARQUET_CACHE_MB", PARQUET_CACHE_MB)) * (1 << 20))


class _BytesLRU(_LRU):
    """An LRU of (offsets, values) pairs bounded by their bytes (`size`); the newest entry always stays."""

    nbytes = 0

    def get_or_make(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = self.make(key)
        self.nbytes += value[0].nbytes + value[1].nbytes
        while len(self) > 1 and self.nbytes > self.size:
            _, (o, v) = self.popitem(last=False)
            self.nbytes -= o.nbytes + v.nbytes
        return value


class ParquetRows:
    """The non-null rows of one column of Parquet files (local or any fsspec URL) as documents: a string
    column as utf-8 bytes, or a list<int> column as token ids. Held as int64 arrays (file, row group, row in
    the group, length: 32 bytes a row); a read decodes the row's whole row group through pyarrow (that
    column only) and keeps decoded groups up to `cache_bytes` (default SMT_PARQUET_CACHE_MB, 64 MiB), so memory
    is bounded by that budget plus one row group, not the files. `ParquetRows.scan` is the one pass at open
    that measures every row."""

    def __init__(self, fs, paths: Sequence[str], column: str, ids: bool, where: np.ndarray, lengths: np.ndarray,
                 cache_bytes: int | None = None) -> None:
        self.fs, self.paths, self.column, self.ids = fs, list(paths), column, ids
        self.where, self.lengths = where, lengths  # where: [n, 3] (file, group, row)
        self.cache_bytes = parquet_cache_bytes() if cache_bytes is None else cache_bytes
        self._reset()

    def _reset(self) -> None:
        self._files = _LRU(OPEN_FILES, self._open_parquet)
        self._groups = _BytesLRU(self.cache_bytes, self._decode)

    def _open_parquet(self, f: int):
        import pyarrow.parquet as pq

        return pq.ParquetFile(_open_file(self.fs, self.paths[f]))

    def _decode(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        f, g = key
        col = self._files.get_or_make(f).read_row_group(g, columns=[self.column]).column(0)
        return flat_column(col.combine_chunks(), self.ids)

    @classmethod
    def scan(cls, fs, paths: Sequence[str], column: str, ids: bool) -> tuple[ParquetRows, int, int, list[int]]:
        """Every row's length in one pass, a row group at a time; also the smallest and largest token id of an
        id column (0, 0 for text) and each file's row count (nulls included)."""
        import pyarrow.parquet as pq

        where, lengths, lo, hi, rows = array("q"), array("q"), None, None, []
        for f, path in enumerate(paths):
            with _open_file(fs, path) as handle:
                pf = pq.ParquetFile(handle)
                rows.append(pf.metadata.num_rows)
                for g in range(pf.metadata.num_row_groups):
                    col = pf.read_row_group(g, columns=[column]).column(0).combine_chunks()
                    offsets, values = flat_column(col, ids)
                    keep = np.flatnonzero(~np.asarray(col.is_null(), dtype=bool))
                    n = np.diff(offsets)[keep]
                    where.extend(np.stack([np.full(len(keep), f), np.full(len(keep), g), keep], 1).ravel().tolist())
                    lengths.extend(n.tolist())
                    if ids and values.size:
                        lo = int(values.min()) if lo is None else min(lo, int(values.min()))
                        hi = int(values.max()) if hi is None else max(hi, int(values.max()))
        w = np.frombuffer(where, dtype=np.int64).reshape(-1, 3)
        return cls(fs, paths, column, ids, w, np.frombuffer(lengths, dtype=np.int64)), lo or 0, hi or 0, rows

    def __len__(self) -> int:
        return len(self.lengths)

    def read(self, i: int, lo: int, hi: int, handles: _LRU) -> np.ndarray:
        f, g, r = (int(v) for v in self.where[i])
        offsets, values = self._groups.get_or_make((f, g))
        start = int(offsets[r])
        return values[start + lo:start + hi]

    def subset(self, keep: Sequence[int]) -> ParquetRows:
        keep = np.asarray(keep, dtype=np.int64)
        return ParquetRows(self.fs, self.paths, self.column, self.ids, self.where[keep], self.lengths[keep],
                           self.cache_bytes)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_files", "_groups")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()


def flat_column(col, ids: bool) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [n+1], values) of a pyarrow string / list<int> array, without copying the values: row r is
    values[offsets[r]:offsets[r+1]] (utf-8 bytes, or token ids of the list's value type)."""
    if ids:
        if col.values.null_count:
            raise ValueError("a list holds a null token id: drop or fill the nulls inside the lists")
        offsets = np.asarray(col.offsets, dtype=np.int64)  # already shifted by the array's slice offset
        values = col.values.to_numpy(zero_copy_only=True)
        return offsets, values
    bufs = col.buffers()
    wide = np.int64 if str(col.type) in ("large_string", "large_utf8") else np.int32
    offsets = np.frombuffer(bufs[1], dtype=wide)[col.offset:col.offset + len(col) + 1].astype(np.int64)
    values = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, dtype=np.uint8)
    return offsets, values


class LazyTokens:
    """Documents joined by `sep` (-1: nothing between them) as one lazily read 1-D token array, or the
    range [start, stop) of such an array."""

    ndim = 1

    def __init__(self, docs: DocList | Rows | ParquetRows | Sequence, sep: int = -1, dtype=np.uint8, start: int = 0,
                 stop: int | None = None, open_file: Callable | None = None) -> None:
        self.docs = docs if isinstance(docs, (DocList, Rows, ParquetRows)) else DocList(docs)
        self.sep, self.dtype = int(sep), np.dtype(dtype)
        self._gap = 0 if sep < 0 else 1
        lengths = self.lengths = self.docs.lengths
        self.starts = np.concatenate([[0], np.cumsum(lengths + self._gap)[:-1]]).astype(np.int64)
        total = int(lengths.sum() + self._gap * max(0, len(self.docs) - 1))
        self.start, self.stop = int(start), total if stop is None else int(stop)
        self._open = open_file or _open_file
        self._handles = _LRU(OPEN_FILES, lambda doc: self._open(doc.fs, doc.path))

    # -- array-like surface -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int]:
        return (self.stop - self.start,)

    @property
    def size(self) -> int:
        return self.stop - self.start

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> LazyTokens:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("LazyTokens supports contiguous slices only: use read(lo, hi) for data")
        lo, hi, _ = key.indices(self.size)
        view = LazyTokens.__new__(LazyTokens)
        view.__dict__.update(self.__dict__)
        view.start, view.stop = self.start + lo, self.start + max(lo, hi)
        return view

    def subset(self, keep: Sequence[int]) -> LazyTokens:
        """The stream of documents `keep` only (joined the same way)."""
        return LazyTokens(self.docs.subset(keep), self.sep, self.dtype, open_file=self._open)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.read(0, self.size)
        return out.astype(dtype) if dtype is not None else out

    def __bytes__(self) -> bytes:
        return self.read(0, self.size).tobytes()

    def chunks(self, nbytes: int = 1 << 21) -> Iterator[np.ndarray]:
        """The whole array in pieces of at most `nbytes` (a scan in bounded memory)."""
        n = max(1, nbytes // self.dtype.itemsize)
        for lo in range(0, self.size, n):
            yield self.read(lo, min(self.size, lo + n))

    # -- reads -------------------------------------------------------------------------------------
    def read(self, lo: int, hi: int) -> np.ndarray:
        """Items [lo, hi) of this (view of the) array."""
        lo, hi = self.start + max(0, lo), self.start + min(hi, self.size)
        out = np.empty(max(0, hi - lo), dtype=self.dtype)
        pos = lo
        i = int(np.searchsorted(self.starts, lo, side="right")) - 1
        while pos < hi:
            s, n = int(self.starts[i]), int(self.lengths[i])
            if pos < s + n:  # inside document i
                b = min(hi, s + n)
                out[pos - lo:b - lo] = self.docs.read(i, pos - s, b - s, self._handles)
                pos = b
            if pos < hi and self._gap and pos == s + n:  # the separator after document i
                out[pos - lo] = self.sep
                pos += 1
            i += 1
        return out

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = None  # open files stay with their process
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._handles = _LRU(OPEN_FILES, lambda doc: self._open(doc.fs, doc.path))


def _open_file(fs, path: str):
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):  # positioned reads straight from the page cache
        return fs.open(path, "rb")
    return fs.open(path, "rb", block_size=BLOCK, cache_type="blockcache", cache_options={"maxblocks": MAX_BLOCKS})


def npy_doc(fs, path: str) -> FileDoc | np.ndarray:
    """A 1-D .npy file as a FileDoc (header parsed, data read on demand); other shapes load eagerly (so
    the corpus can name the bad shape)."""
    with fs.open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        offset = f.tell()
        if len(shape) != 1 or dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
    return FileDoc(fs, path, shape[0], dtype, offset)
