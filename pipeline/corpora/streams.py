"""Stream corpora: windows of `T` tokens every `stride` tokens of one token stream, and how a stream is
divided into train / valid / test (whole documents where every split gets one, else byte ranges; see
spec.py). The sources that fill a stream (files, HF datasets, token arrays) are in sources.py."""

from __future__ import annotations

import hashlib

import numpy as np

from pipeline.corpora.base import Corpus
from pipeline.corpora.spec import SPLITS, CorpusError, Params, split_param
from pipeline.lazy_tokens import LazyTokens

__all__ = ["StreamCorpus", "cut_stream", "split_params", "split_stream", "stream_params"]


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


def stream_params(p: Params, T_default: int = 256) -> tuple[int, int]:
    T = p.int("T", T_default, lo=1)
    stride = p.int("stride", T, lo=1)
    return T, stride


def split_params(p: Params) -> tuple[str, float, float]:
    split = split_param(p)
    vf = p.float("valid_frac", 0.05, 0.0, 0.5)
    tf = p.float("test_frac", 0.1, 0.0, 0.5)
    if split != "train" and {"valid": vf, "test": tf}[split] == 0:
        raise CorpusError(f"{p.kind}: split={split} is empty ({split}_frac=0): set {split}_frac > 0")
    return split, vf, tf


def _cuts(n: int, vf: float, tf: float) -> tuple[int, int]:
    return int(n * (1.0 - vf - tf)), int(n * (1.0 - tf))


def split_stream(tokens: LazyTokens, split: str, vf: float, tf: float) -> tuple[LazyTokens, dict]:
    """The token stream of `split` and how it was cut (see spec.py): whole documents when
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
    return cut_stream(tokens, split, vf, tf)


def cut_stream(data: np.ndarray, split: str, vf: float, tf: float) -> tuple[np.ndarray, dict]:
    """Contiguous ranges [0, a) train, [a, b) valid, [b, N) test of one token array."""
    n = int(data.shape[0])
    a, b = _cuts(n, vf, tf)
    bounds = {"train": (0, a), "valid": (a, b), "test": (b, n)}
    info = {"split_by": "bytes", "split_tokens": {s: hi - lo for s, (lo, hi) in bounds.items()}}
    lo, hi = bounds[split]
    return data[lo:hi], info
