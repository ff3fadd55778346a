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
  rows), and held as two int64 arrays rather than one object per row.

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
        """Byte lengths of every non-null row, in one streaming pass over the column."""
        rows, lengths = array("q"), array("q")
        row = 0
        for batch in ds.select_columns([field]).iter(batch_size=batch_size):
            for s in batch[field]:
                if s is not None:
                    rows.append(row)
                    lengths.append(len(s.encode("utf-8")))
                row += 1
        return cls(ds, field, np.frombuffer(rows, dtype=np.int64), np.frombuffer(lengths, dtype=np.int64))

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


class LazyTokens:
    """Documents joined by `sep` (-1: nothing between them) as one lazily read 1-D token array, or the
    range [start, stop) of such an array."""

    ndim = 1

    def __init__(self, docs: DocList | Rows | Sequence, sep: int = -1, dtype=np.uint8, start: int = 0,
                 stop: int | None = None, open_file: Callable | None = None) -> None:
        self.docs = docs if isinstance(docs, (DocList, Rows)) else DocList(docs)
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
