"""Corpora: the common `Corpus` interface, the spec parser `load_corpus`, and the file-backed corpora.

Spec syntax (one string names a corpus and all its parameters):

    <task>:k=v,k=v                 synthetic task (see pipeline/tasks.py), e.g. "retrieval:T=64,vocab=8"
    digits[:k=v,...]               scikit-learn's bundled 8x8 digits (offline pixel corpus)
    mnist[:<data_files>][|k=v,...] MNIST through Hugging Face `datasets` (hub "ylecun/mnist" by default)
    text:<fsspec glob>[|k=v,...]   raw bytes of the matching files
    hf:<dataset>[|k=v,...]         a text column of a Hugging Face dataset, as utf-8 bytes
    tokens:<fsspec url>[|k=v,...]  a 1-D .npy file or Zarr array of integer token ids

For the located corpora (text, hf, tokens, mnist) everything after the LAST '|' is the parameter list, so a
location may contain ':' and ',' freely; a location that itself contains '|' must be followed by a final
'|' (possibly with no parameters). Parameters are `key=value` items separated by ','; only `data_files`
may contain ',' in its value. Unknown or invalid parameters raise `CorpusError` naming the parameter.

Splits: every spec takes `split=train|valid|test` (default train: labeling and training read train).
Stream corpora hold out the tail of the stream: documents (files, rows) are assigned whole by where their
first byte falls in [0, a) train / [a, b) valid / [b, N) test (a = (1-valid_frac-test_frac) N, b =
(1-test_frac) N); when that leaves a split without a document (one file, a .npy array) the stream itself is
cut at a and b. Each split is its own stream, so no window of one split holds a token of another. Synthetic
tasks draw each split from its own seeds; digits and MNIST keep their test sets and hold every 10th
training image out as valid. The split is in the canonical spec, hence in `corpus_id`.

Token convention: data tokens are 0..V-1, special tokens follow them, `vocab_size` counts both.
Targets y are int64 with -1 meaning "no target". Stream corpora cut windows of `T` tokens every `stride`
tokens from one token stream; y[t] = x[t+1], and the last y is -1 unless the stream continues.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.lazy_tokens import ArrayDoc, FileDoc, LazyTokens, Rows, npy_doc

__all__ = [
    "SPLITS",
    "Corpus",
    "CorpusError",
    "DigitsCorpus",
    "HFTextCorpus",
    "ImageCorpus",
    "MnistCorpus",
    "Params",
    "StreamCorpus",
    "TextCorpus",
    "TokensCorpus",
    "held_out",
    "load_corpus",
    "parse_spec",
    "spec_with",
]

SPLITS = ("train", "valid", "test")
"""The splits every corpus spec accepts (`split=`): train for labeling and training, valid for every
stopping rule and model choice, test for every reported figure."""


class CorpusError(ValueError):
    """A bad spec, bad parameter or unusable data. The message is one line: what is wrong and the fix."""


# ----------------------------------------------------------------------------------------------- base


class Corpus:
    """Base class. Subclasses set the attributes in __init__ and implement `get`, `sample`, `_data_digest`."""

    spec: str
    vocab_size: int
    seq_len: int
    mode: str  # "prefix" or "stream"
    num_sequences: int
    chance: float | None = None
    kind: str = "corpus"
    split: str = "train"

    _corpus_id: str | None = None
    _reach: dict | None = None  # storage_options / cache_dir given to load_corpus (not part of the identity)

    def get(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def params(self) -> dict:
        raise NotImplementedError

    def _data_digest(self) -> bytes:
        raise NotImplementedError

    @property
    def corpus_id(self) -> str:
        if self._corpus_id is None:
            h = hashlib.sha256(self.spec.encode())
            h.update(b"\x00")
            h.update(self._data_digest())
            self._corpus_id = h.hexdigest()[:16]
        return self._corpus_id

    def describe(self) -> dict:
        """Everything a manifest needs: spec, id, shapes, chance and the parameters."""
        return {
            "spec": self.spec,
            "corpus_id": self.corpus_id,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "seq_len": self.seq_len,
            "mode": self.mode,
            "num_sequences": self.num_sequences,
            "split": self.split,
            "chance": self.chance,
            "params": self.params(),
        }

    def __len__(self) -> int:
        return self.num_sequences

    @property
    def streaming(self) -> bool:
        """Windows of one long token stream ("stream"); else independent sequences from t=0 ("prefix")."""
        return self.mode == "stream"  # the one place the mode name is read

    def with_split(self, split: str) -> Corpus:
        """The same corpus (same spec otherwise, same data source) restricted to another split."""
        if split == self.split:
            return self
        return load_corpus(spec_with(self.spec, split=split), **(self._reach or {}))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def _check_indices(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_sequences):
            bad = int(idx[(idx < 0) | (idx >= self.num_sequences)][0])
            raise CorpusError(f"{self.kind}: index {bad} out of range: use 0 <= i < {self.num_sequences}")
        return idx


# ------------------------------------------------------------------------------------------ spec parser

_LOCATED = ("text", "hf", "tokens", "mnist")
_LIST_VALUED = ("data_files",)


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """Split a spec into (name, location or None, raw params). See the module docstring for the syntax."""
    if not isinstance(spec, str) or not spec.strip():
        raise CorpusError(
            "corpus spec is empty: give e.g. 'retrieval:T=64,vocab=8' or 'text:/data/*.txt|T=256'"
        )
    spec = spec.strip()
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)([:|]?)(.*)$", spec, re.DOTALL)
    if not m:
        raise CorpusError(
            f"bad corpus spec {spec!r}: expected 'name:key=value,...' or 'name:<location>|key=value'"
        )
    name, sep, rest = m.group(1).lower(), m.group(2), m.group(3)
    location = None
    if sep == ":" and name in _LOCATED:
        if "|" in rest:
            location, _, rest = rest.rpartition("|")
        else:
            location, rest = rest, ""
        if not location:
            if name != "mnist":
                raise CorpusError(
                    f"{name}: missing location in {spec!r}: write '{name}:<path or url>|key=value'"
                )
            location = None
    elif sep == "" and rest:
        raise CorpusError(f"bad corpus spec {spec!r}: separate the name from its parameters with ':'")
    return name, location, _parse_params(name, rest)


def _parse_params(name: str, text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    last = None
    for item in text.split(",") if text.strip() else []:
        item = item.strip()
        if "=" not in item:
            if last in _LIST_VALUED:  # a comma inside data_files=...
                out[last] += "," + item
                continue
            raise CorpusError(f"{name}: bad parameter {item!r}: write key=value items separated by ','")
        k, _, v = item.partition("=")
        k = k.strip()
        if not k:
            raise CorpusError(f"{name}: bad parameter {item!r}: the key is empty")
        if k in out:
            raise CorpusError(f"{name}: parameter {k} given twice: give it once")
        out[k] = v.strip()
        last = k
    return out


def spec_with(spec: str, **params: Any) -> str:
    """`spec` with some parameters set (or replaced), e.g. spec_with(c.spec, split="test")."""
    name, location, raw = parse_spec(spec)
    raw.update({k: str(v) for k, v in params.items()})
    body = ",".join(f"{k}={v}" for k, v in raw.items())
    if name in _LOCATED:
        return f"{name}:{location}|{body}" if location is not None else f"{name}|{body}"
    return f"{name}:{body}" if body else name


def _split_param(p: Params) -> str:
    return p.str("split", "train", choices=SPLITS)


class Params:
    """Reads raw string parameters with types, defaults and bounds; remembers the canonical order."""

    def __init__(self, kind: str, raw: dict[str, str]):
        self.kind = kind
        self.raw = dict(raw)
        self.values: dict[str, Any] = {}

    def _get(self, key, default, conv: Callable[[str], Any], typename: str):
        if key in self.raw:
            s = self.raw.pop(key)
            try:
                v = conv(s)
            except (TypeError, ValueError):
                example = f": give e.g. {key}={default}" if default is not None else f": fix {key}"
                raise CorpusError(f"{self.kind}: {key}={s!r} is not {typename}{example}") from None
        else:
            v = default
        return v

    def int(
        self, key: str, default: int | None, lo: int | None = None, hi: int | None = None, why: str = ""
    ) -> int | None:
        v = self._get(key, default, _to_int, "an integer")
        if v is not None:
            if lo is not None and v < lo:
                raise CorpusError(f"{self.kind}: {key}={v} too small: need {key} >= {lo}{why}")
            if hi is not None and v > hi:
                raise CorpusError(f"{self.kind}: {key}={v} too large: need {key} <= {hi}{why}")
        self.values[key] = v
        return v

    def str(self, key: str, default: str | None, choices: Sequence[str] | None = None) -> str | None:
        v = self._get(key, default, str, "a string")
        if choices is not None and v not in choices:
            raise CorpusError(f"{self.kind}: {key}={v!r} not allowed: use one of {', '.join(choices)}")
        self.values[key] = v
        return v

    def float(self, key: str, default: float, lo: float, hi: float) -> float:
        v = self._get(key, default, float, "a number")
        if not lo <= v <= hi:
            raise CorpusError(f"{self.kind}: {key}={v} out of range: need {lo} <= {key} <= {hi}")
        self.values[key] = v
        return v

    def finish(self) -> dict[str, Any]:
        if self.raw:
            k = next(iter(self.raw))
            allowed = ", ".join(self.values) or "none"
            raise CorpusError(f"{self.kind}: unknown parameter {k!r}: allowed parameters are {allowed}")
        return self.values

    def canonical(self, skip_none: bool = True) -> str:
        return ",".join(f"{k}={v}" for k, v in self.values.items() if not (skip_none and v is None))


def _to_int(s: str) -> int:
    f = float(s)
    if not f.is_integer():
        raise ValueError(s)
    return int(f)


# ------------------------------------------------------------------------------------------ streams


def _windows(
    kind: str, data: np.ndarray, T: int, stride: int, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """x = data[s:s+T], y = data[s+1:s+T+1] (int64), -1 past the end of the stream."""
    n = data.shape[0]
    if not isinstance(data, np.ndarray):  # a LazyTokens stream: one ranged read per window
        g = np.full((len(starts), T + 1), -1, dtype=np.int64)
        for r, s in enumerate(starts.tolist()):
            w = data.read(s, min(n, s + T + 1))
            g[r, :len(w)] = w
        return g[:, :T], g[:, 1:]
    pos = starts[:, None] + np.arange(T + 1, dtype=np.int64)[None, :]
    valid = pos < n
    g = data[np.minimum(pos, n - 1)].astype(np.int64)
    g[~valid] = -1
    return g[:, :T], g[:, 1:]


class StreamCorpus(Corpus):
    """Windows of T tokens every `stride` tokens of one token stream `data` (a 1-D integer array).

    Window i starts at i*stride; only full windows are indexed: num_sequences = (N - T) // stride + 1.
    `sample` draws random window indices. y[t] = x[t+1]; the last y is the next stream token, or -1 at
    the very end of the stream.
    """

    mode = "stream"

    def _init_stream(self, data: np.ndarray, T: int, stride: int, vocab: int, what: str, info: dict | None = None):
        if data.ndim != 1:
            raise CorpusError(f"{self.kind}: {what} has shape {data.shape}: need a 1-D token array")
        n = int(data.shape[0])
        if n == 0:
            raise CorpusError(f"{self.kind}: {what} is empty (0 tokens): point the spec at non-empty data")
        if T > n:
            fix = f", raise {self.split}_frac" if self.split != "train" else ""
            raise CorpusError(
                f"{self.kind}: split={self.split} of {what} has {n} tokens, fewer than T={T}: lower T{fix} or add data"
            )
        self.data = data
        self.seq_len = T
        self.stride = stride
        self.vocab_size = vocab
        self.num_sequences = (n - T) // stride + 1
        self.split_info = info or {}

    def get(self, indices):
        idx = self._check_indices(indices)
        return _windows(self.kind, self.data, self.seq_len, self.stride, idx * self.stride)

    def sample(self, batch_size, rng):
        return self.get(rng.integers(0, self.num_sequences, size=batch_size))

    def _data_digest(self) -> bytes:
        h = hashlib.sha256(str(self.data.dtype).encode())
        for chunk in self.data.chunks() if isinstance(self.data, LazyTokens) else [self.data]:
            h.update(np.ascontiguousarray(chunk).data)  # chunk by chunk: the same digest, bounded memory
        return h.digest()


def _stream_params(p: Params, T_default: int = 256) -> tuple[int, int]:
    T = p.int("T", T_default, lo=1)
    stride = p.int("stride", T, lo=1)
    return T, stride


def _split_params(p: Params) -> tuple[str, float, float]:
    split = _split_param(p)
    vf = p.float("valid_frac", 0.05, 0.0, 0.5)
    tf = p.float("test_frac", 0.1, 0.0, 0.5)
    if split != "train" and {"valid": vf, "test": tf}[split] == 0:
        raise CorpusError(f"{p.kind}: split={split} is empty ({split}_frac=0): set {split}_frac > 0")
    return split, vf, tf


def _cuts(n: int, vf: float, tf: float) -> tuple[int, int]:
    return int(n * (1.0 - vf - tf)), int(n * (1.0 - tf))


def _split_stream(tokens: LazyTokens, split: str, vf: float, tf: float) -> tuple[LazyTokens, dict]:
    """The token stream of `split` and how it was cut (see the module docstring): whole documents when
    every non-empty split gets one, else contiguous byte ranges of the joined stream. Lazy: only document
    lengths are looked at."""
    gap = 0 if tokens.sep < 0 else 1
    lengths, starts, n = tokens.lengths, tokens.starts, tokens.size
    a, b = _cuts(n, vf, tf)
    owner = np.where(starts < a, 0, np.where(starts < b, 1, 2))
    wanted = [i for i, f in enumerate((1.0 - vf - tf, vf, tf)) if f > 0]
    k = SPLITS.index(split)
    if all((owner == i).any() for i in wanted):
        sizes = {s: int(lengths[owner == i].sum() + gap * max(0, int((owner == i).sum()) - 1))
                 for i, s in enumerate(SPLITS)}
        info = {"split_by": "documents", "split_tokens": sizes,
                "split_documents": {s: int((owner == i).sum()) for i, s in enumerate(SPLITS)}}
        return tokens.subset(np.flatnonzero(owner == k).tolist()), info
    return _cut_stream(tokens, split, vf, tf)


def _cut_stream(data: np.ndarray, split: str, vf: float, tf: float) -> tuple[np.ndarray, dict]:
    """Contiguous ranges [0, a) train, [a, b) valid, [b, N) test of one token array."""
    n = int(data.shape[0])
    a, b = _cuts(n, vf, tf)
    bounds = {"train": (0, a), "valid": (a, b), "test": (b, n)}
    info = {"split_by": "bytes", "split_tokens": {s: hi - lo for s, (lo, hi) in bounds.items()}}
    lo, hi = bounds[split]
    return data[lo:hi], info


class TextCorpus(StreamCorpus):
    """`text:<fsspec glob>|T=256,stride=T,sep=0,split=train,valid_frac=0.05,test_frac=0.1`: the bytes of all
    matching files (sorted by path), vocab 256.

    Files are joined with the separator byte `sep` (default 0x00; sep=-1 joins with nothing). The files are
    the documents of the split (module docstring): one file is cut into contiguous byte ranges.
    """

    kind = "text"

    def __init__(self, location: str, raw: dict[str, str], storage_options: dict | None = None):
        import fsspec

        p = Params(self.kind, raw)
        T, stride = _stream_params(p)
        sep = p.int("sep", 0, lo=-1, hi=255)
        self.split, vf, tf = _split_params(p)
        p.finish()
        try:
            fs, _, paths = fsspec.core.get_fs_token_paths(location, storage_options=storage_options or {})
        except Exception as e:  # noqa: BLE001 - report any filesystem failure in one line
            raise CorpusError(
                f"text: cannot open {location!r} ({type(e).__name__}: {e}): check the URL"
            ) from None
        paths = sorted(pth for pth in paths if fs.isfile(pth))
        if not paths:
            raise CorpusError(f"text: no files match {location!r}: check the path or glob")
        docs = [FileDoc(fs, pth, fs.size(pth)) for pth in paths]  # read lazily, window by window
        self.files = paths
        self.location = location
        data, info = _split_stream(LazyTokens(docs, sep), self.split, vf, tf)
        self._init_stream(data, T, stride, 256, f"{len(paths)} file(s) {location!r}", info)
        self._p = p.values
        self.spec = f"text:{location}|{p.canonical()}"

    def params(self):
        return dict(kind=self.kind, location=self.location, num_files=len(self.files), **self.split_info, **self._p)


class HFTextCorpus(StreamCorpus):
    """`hf:<dataset>|hf_split=train,field=text,T=256,stride=T,sep=0,split=train,valid_frac=0.05,test_frac=0.1
    [,name=<config>][,data_files=<glob>]`.

    Loads `datasets.load_dataset(<dataset>, name, split=hf_split, data_files=...)` (the hub by default, e.g.
    hf:roneneldan/TinyStories; or a packaged builder with local files, e.g. hf:json|data_files=/d/*.jsonl),
    encodes each row's `field` as utf-8 bytes (vocab 256) and joins rows with the byte `sep` (default 0x00,
    -1 = no separator; the reference joins TinyStories with nothing and drops non-ascii). The rows of
    `hf_split` are the documents that `split` (train|valid|test) divides (module docstring).
    """

    kind = "hf"

    def __init__(
        self,
        location: str,
        raw: dict[str, str],
        cache_dir: str | None = None,
        storage_options: dict | None = None,
    ):
        p = Params(self.kind, raw)
        split = p.str("hf_split", "train")
        field = p.str("field", "text")
        name = p.str("name", None)
        data_files = p.str("data_files", None)
        T, stride = _stream_params(p)
        sep = p.int("sep", 0, lo=-1, hi=255)
        self.split, vf, tf = _split_params(p)
        p.finish()
        ds = _hf_load(self.kind, location, name, split, data_files, cache_dir, storage_options)
        if field not in ds.column_names:
            raise CorpusError(
                f"hf: no column field={field!r} in {location!r} (columns: {ds.column_names}): "
                f"set field=<column>"
            )
        docs = Rows.scan(ds, field)  # rows stay in the memory-mapped Arrow cache
        if not len(docs):
            raise CorpusError(
                f"hf: {location!r} hf_split={split} has 0 rows: choose another hf_split or data_files"
            )
        self.location = location
        self.num_rows = len(docs)
        data, info = _split_stream(LazyTokens(docs, sep), self.split, vf, tf)
        self._init_stream(data, T, stride, 256, f"{location!r} hf_split={split}", info)
        self._p = p.values
        self.spec = f"hf:{location}|{p.canonical()}"

    def params(self):
        return dict(kind=self.kind, location=self.location, num_rows=self.num_rows, **self.split_info, **self._p)


def _hf_load(kind, path, name, split, data_files, cache_dir, storage_options):
    import datasets

    kw: dict[str, Any] = {}
    if data_files is not None:
        files = data_files.split(",") if "," in data_files else data_files
        kw["data_files"] = {split: files}
    try:
        ds = datasets.load_dataset(
            path, name, split=split, cache_dir=cache_dir, storage_options=storage_options, **kw
        )
    except Exception as e:  # noqa: BLE001 - one-line message for hub/network/file errors
        msg = str(e).splitlines()[0] if str(e) else ""
        raise CorpusError(
            f"{kind}: cannot load dataset {path!r} split={split} ({type(e).__name__}: {msg}): "
            f"check the name/split, or pass local files with data_files="
        ) from None
    return ds


class TokensCorpus(StreamCorpus):
    """`tokens:<fsspec url>|T=256,stride=T,vocab=<max+1>[,key=<array in a zarr group>],split=train,...`.

    A url ending in .npy is read with numpy; anything else is opened as a Zarr (v2/v3) array or group.
    One array is one document: the splits are contiguous token ranges (module docstring).
    """

    kind = "tokens"

    def __init__(self, location: str, raw: dict[str, str], storage_options: dict | None = None):
        p = Params(self.kind, raw)
        T, stride = _stream_params(p)
        vocab = p.int("vocab", None, lo=1)
        key = p.str("key", None)
        self.split, vf, tf = _split_params(p)
        p.finish()
        data = self._read(location, key, storage_options or {})
        if not np.issubdtype(data.dtype, np.integer):
            raise CorpusError(f"tokens: {location!r} has dtype {data.dtype}: store integer token ids")
        if data.ndim == 1 and data.size:
            lo, hi = _min_max(data)
            if lo < 0:
                raise CorpusError(f"tokens: token {lo} < 0 in {location!r}: ids must be 0..vocab-1")
            if vocab is None:
                vocab = hi + 1
                p.values["vocab"] = vocab
            elif hi >= vocab:
                raise CorpusError(
                    f"tokens: token {hi} outside vocab={vocab} in {location!r}: raise vocab to "
                    f">= {hi + 1} or drop the param"
                )
        self.location = location
        if data.ndim == 1:
            data, info = _cut_stream(data, self.split, vf, tf)
        else:
            info = {}
        self._init_stream(data, T, stride, vocab or 1, repr(location), info)
        self._p = p.values
        self.spec = f"tokens:{location}|{p.canonical()}"

    @staticmethod
    def _read(location: str, key: str | None, storage_options: dict) -> np.ndarray:
        try:
            if location.rstrip("/").endswith(".npy"):
                import fsspec

                fs, path = fsspec.core.url_to_fs(location, **storage_options)
                doc = npy_doc(fs, path)  # the header now, the tokens window by window
                return LazyTokens([doc], dtype=doc.dtype) if isinstance(doc, FileDoc) else doc
            import zarr

            node = zarr.open(store=location, mode="r", storage_options=storage_options or None)
            if hasattr(node, "array_keys"):  # a group
                keys = sorted(node.array_keys())
                if key is None:
                    if len(keys) != 1:
                        raise CorpusError(
                            f"tokens: {location!r} is a Zarr group with arrays {keys}: set key=<name>"
                        )
                    key = keys[0]
                if key not in keys:
                    raise CorpusError(
                        f"tokens: key={key!r} not in Zarr group {location!r} (arrays {keys}): fix key"
                    )
                node = node[key]
            if len(node.shape) == 1:  # Zarr slices lazily: read chunks as windows need them
                return LazyTokens([ArrayDoc(node)], dtype=node.dtype)
            return np.asarray(node[...])
        except CorpusError:
            raise
        except Exception as e:  # noqa: BLE001
            raise CorpusError(
                f"tokens: cannot read {location!r} ({type(e).__name__}: {e}): give a 1-D .npy "
                f"file or a Zarr array URL"
            ) from None

    def params(self):
        return dict(kind=self.kind, location=self.location, **self.split_info, **self._p)


def _min_max(data) -> tuple[int, int]:
    """Smallest and largest token, scanning a lazy stream chunk by chunk."""
    parts = [(int(c.min()), int(c.max())) for c in (data.chunks() if isinstance(data, LazyTokens) else [data]) if c.size]
    return min(p[0] for p in parts), max(p[1] for p in parts)


# ------------------------------------------------------------------------------------------- images


class ImageCorpus(Corpus):
    """Prefix-mode pixel corpus: image i is `images[i]` flattened in raster order (one token per pixel).

    x = pixels, y[t] = x[t+1], y[T-1] = -1. `sample` draws random image indices. `labels` holds the classes.
    """

    mode = "prefix"
    chance = None

    def _init_images(self, tokens: np.ndarray, labels: np.ndarray, vocab: int):
        if tokens.shape[0] == 0:
            raise CorpusError(f"{self.kind}: 0 images: choose another split or data path")
        self.tokens = np.ascontiguousarray(tokens, dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_sequences = int(tokens.shape[0])
        self.seq_len = int(tokens.shape[1])
        self.vocab_size = vocab

    def get(self, indices):
        idx = self._check_indices(indices)
        x = self.tokens[idx].astype(np.int64)
        y = np.full_like(x, -1)
        y[:, :-1] = x[:, 1:]
        return x, y

    def sample(self, batch_size, rng):
        return self.get(rng.integers(0, self.num_sequences, size=batch_size))

    def _select(self, split: str, tokens: np.ndarray, labels: np.ndarray) -> tuple:
        """Every 10th image of the training images is valid (deterministic, spread over the set)."""
        self.split = split
        if split == "test":  # the caller passes the test images
            return tokens, labels
        keep = (np.arange(tokens.shape[0]) % 10 == 9) == (split == "valid")
        return tokens[keep], labels[keep]

    def _data_digest(self) -> bytes:
        h = hashlib.sha256(self.tokens.data)
        h.update(self.labels.data)
        return h.digest()


class DigitsCorpus(ImageCorpus):
    """`digits:split=train,raw=0`: scikit-learn's bundled 8x8 digits (1797 images), 64 tokens, prefix mode.

    Grey levels 0..16 are scaled to 0..255 by round(v * 255 / 16), vocab 256 (raw=1 keeps 0..16, vocab 17).
    The last 297 images are test; of the first 1500, every 10th (index % 10 == 9) is valid (150), the
    other 1350 are train.
    """

    kind = "digits"

    def __init__(self, raw: dict[str, str]):
        from sklearn.datasets import load_digits

        p = Params(self.kind, raw)
        split = _split_param(p)
        keep_raw = p.int("raw", 0, lo=0, hi=1)
        p.finish()
        d = load_digits()
        img = d.images.reshape(len(d.images), 64)
        if keep_raw:
            tok, vocab = img.astype(np.uint8), 17
        else:
            tok, vocab = np.rint(img * 255.0 / 16.0).astype(np.uint8), 256
        sl = slice(1500, None) if split == "test" else slice(0, 1500)
        self._init_images(*self._select(split, tok[sl], d.target[sl]), vocab)
        self._p = p.values
        self.spec = f"digits:{p.canonical()}"

    def params(self):
        return dict(kind=self.kind, **self._p)


class MnistCorpus(ImageCorpus):
    """`mnist[:<data_files>]|split=train`: 28x28 grey levels, 784 raster-order tokens, vocab 256, prefix mode.

    Read through Hugging Face `datasets`: the hub dataset ylecun/mnist by default, or parquet files with the
    same columns (`image` as {bytes: PNG, path}, `label`) when a data_files location is given (then the
    files of that split: the training files for train and valid, the test files for test). split=test is
    MNIST's test set; every 10th training image (index % 10 == 9) is valid, the rest train.
    """

    kind = "mnist"

    def __init__(
        self,
        location: str | None,
        raw: dict[str, str],
        cache_dir: str | None = None,
        storage_options: dict | None = None,
    ):
        p = Params(self.kind, raw)
        split = _split_param(p)
        p.finish()
        hf_split = "test" if split == "test" else "train"
        if location is None:
            ds = _hf_load(self.kind, "ylecun/mnist", None, hf_split, None, cache_dir, storage_options)
        else:
            ds = _hf_load(self.kind, "parquet", None, hf_split, location, cache_dir, storage_options)
        for col in ("image", "label"):
            if col not in ds.column_names:
                raise CorpusError(
                    f"mnist: column {col!r} missing (columns: {ds.column_names}): "
                    f"use the ylecun/mnist layout (image, label)"
                )
        import datasets
        from PIL import Image

        ds = ds.cast_column("image", datasets.Image(decode=False))
        n = len(ds)
        tok = np.zeros((n, 784), dtype=np.uint8)
        for i, rec in enumerate(ds["image"]):
            im = Image.open(io.BytesIO(rec["bytes"])) if rec.get("bytes") else Image.open(rec["path"])
            a = np.asarray(im.convert("L"), dtype=np.uint8)
            if a.shape != (28, 28):
                raise CorpusError(f"mnist: image {i} has shape {a.shape}: need 28x28 grey images")
            tok[i] = a.reshape(-1)
        self.location = location
        self._init_images(*self._select(split, tok, np.asarray(ds["label"])), 256)
        self._p = p.values
        self.spec = ("mnist" if location is None else f"mnist:{location}") + f"|{p.canonical()}"

    def params(self):
        return dict(kind=self.kind, location=self.location or "ylecun/mnist", **self._p)


# ----------------------------------------------------------------------------------------- load_corpus


def load_corpus(spec: str, *, storage_options: dict | None = None, cache_dir: str | None = None) -> Corpus:
    """Build the corpus a spec names. `storage_options` (fsspec) and `cache_dir` (datasets) are not part of
    the spec: they say how to reach the data, not what the data is."""
    from pipeline import tasks

    name, location, raw = parse_spec(spec)
    corpus: Corpus | None = None
    if name in tasks.TASKS:
        corpus = tasks.TASKS[name](raw)
    elif name == "text":
        corpus = TextCorpus(location, raw, storage_options)
    elif name == "hf":
        corpus = HFTextCorpus(location, raw, cache_dir, storage_options)
    elif name == "tokens":
        corpus = TokensCorpus(location, raw, storage_options)
    elif name == "mnist":
        corpus = MnistCorpus(location, raw, cache_dir, storage_options)
    elif name == "digits":
        corpus = DigitsCorpus(raw)
    if corpus is not None:
        corpus._reach = {"storage_options": storage_options, "cache_dir": cache_dir}
        return corpus
    known = sorted(tasks.TASKS) + ["digits", "hf", "mnist", "text", "tokens"]
    raise CorpusError(f"unknown corpus {name!r}: use one of {', '.join(known)}")


def held_out(corpus: Corpus, split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed evaluation set of `split`: all of it when it has at most `n` sequences, else `n` distinct
    sequences drawn once by `seed` (sorted). The same (spec, split, n, seed) always gives the same set."""
    if split not in SPLITS:
        raise CorpusError(f"{corpus.kind}: unknown split {split!r}: use one of {', '.join(SPLITS)}")
    c = corpus.with_split(split)
    if c.num_sequences <= n:
        return c.get(np.arange(c.num_sequences))
    idx = np.random.default_rng([seed, 0xE7A1]).choice(c.num_sequences, size=n, replace=False)
    return c.get(np.sort(idx))


def manifest_json(corpus: Corpus) -> str:
    return json.dumps(corpus.describe(), sort_keys=True)
