"""Count baselines: unigram, bigram and trigram models fitted on a corpus's train split and scored on exactly the
targets the trained models are scored on, so every bits figure can be read against what local statistics give.

Model. The n-gram of order n predicts the target y_t from the n-1 latest inputs x_{t-n+2} .. x_t of the same
sequence (for text and pixels y_t = x_{t+1}, the next token; for the synthetic tasks y_t is whatever the task
asks at t, so the counts give what those inputs alone tell about it). Positions before a sequence's start read a
begin symbol (BOS = vocab), so the first targets of a sequence have a shorter context, as every model has.
On a stream corpus the counts are fitted on the train stream itself (every position, each once), otherwise on
every train sequence's (x, y) over its targets y != -1.

Smoothing: interpolated Witten-Bell, with the uniform distribution over the vocabulary under the unigram:
    P_n(w | h) = (c(h, w) + N1(h) P_{n-1}(w | h')) / (c(h) + N1(h)),   h' = h without its oldest token,
where c(h) counts the context h, N1(h) the distinct targets seen after it, and an unseen context falls back to
P_{n-1} whole. Every event has a finite cost, and no parameter is tuned (no split but train is read to fit).
"""
from __future__ import annotations

import math

import numpy as np

ORDERS = {"unigram": 1, "bigram": 2, "trigram": 3}
SMOOTHING = ("interpolated Witten-Bell (P_n(w|h) = (c(h,w) + N1(h) P_{n-1}(w|h')) / (c(h) + N1(h)), "
             "uniform under the unigram; no tuned parameter)")
MAX_TRAIN_TOKENS = 20_000_000
"""Fit on at most this many train targets (the first ones): enough for byte n-grams, bounded memory."""


def _contexts(x: np.ndarray, k: int, bos: int) -> np.ndarray:
    """Context ids (B, T) of the k latest inputs x_{t-k+1} .. x_t (BOS before the start); k = 0: all zero."""
    B, T = x.shape
    ids = np.zeros((B, T), dtype=np.int64)
    xx = np.where(x < 0, bos, x).astype(np.int64)  # padding reads as the begin symbol
    pad = np.concatenate([np.full((B, k), bos, dtype=np.int64), xx], 1) if k else None
    for j in range(k):  # the oldest token first: id = ((a * (V+1)) + b) ...
        ids = ids * (bos + 1) + pad[:, 1 + j:1 + j + T]
    return ids


class NGram:
    """One count model of order `order` over a vocabulary of `vocab` targets (inputs in 0..vocab-1)."""

    def __init__(self, order: int, vocab: int):
        if order < 1:
            raise ValueError(f"order={order} must be >= 1")
        self.order, self.V = order, int(vocab)
        self.tables: list[dict] = []  # per order k+1 (context length k): counts of (context, target)

    def fit(self, x: np.ndarray, y: np.ndarray) -> NGram:
        """Count every target y != -1 of (B, T) arrays with its contexts (the same rows' inputs)."""
        x, y = np.atleast_2d(np.asarray(x)), np.atleast_2d(np.asarray(y))
        keep = y != -1
        w = y[keep].astype(np.int64)
        if w.size and (w.min() < 0 or w.max() >= self.V):
            raise ValueError(f"targets outside 0..{self.V - 1}: pass the corpus's vocab_size")
        self.tokens = int(w.size)
        self.tables = []
        for k in range(self.order):
            h = _contexts(x, k, self.V)[keep]
            keys, counts = np.unique(h * self.V + w, return_counts=True)
            ctx = keys // self.V
            uctx, start, types = np.unique(ctx, return_index=True, return_counts=True)
            total = np.add.reduceat(counts, start) if counts.size else counts
            self.tables.append({"keys": keys, "counts": counts, "ctx": uctx, "total": total, "types": types})
        return self

    def _lookup(self, sorted_keys: np.ndarray, values: np.ndarray, q: np.ndarray) -> np.ndarray:
        i = np.searchsorted(sorted_keys, q).clip(max=max(0, len(sorted_keys) - 1))
        hit = (sorted_keys[i] == q) if len(sorted_keys) else np.zeros(q.shape, bool)
        return np.where(hit, values[i] if len(values) else 0, 0)

    def prob(self, x: np.ndarray, y: np.ndarray, order: int | None = None) -> np.ndarray:
        """P(y_t | context) for every target y != -1 of (B, T) arrays, flattened in row order; `order` below the
        fitted one scores that lower-order model (its tables are the first ones)."""
        if not self.tables:
            raise ValueError("fit the model first")
        x, y = np.atleast_2d(np.asarray(x)), np.atleast_2d(np.asarray(y))
        keep = y != -1
        w = y[keep].astype(np.int64)
        p = np.full(w.shape, 1.0 / self.V)
        for k, tab in enumerate(self.tables[:order or self.order]):
            h = _contexts(x, k, self.V)[keep]
            c_hw = self._lookup(tab["keys"], tab["counts"], h * self.V + w)
            c_h = self._lookup(tab["ctx"], tab["total"], h)
            n1 = self._lookup(tab["ctx"], tab["types"], h)
            seen = c_h > 0
            p = np.where(seen, (c_hw + n1 * p) / np.maximum(c_h + n1, 1), p)
        return p

    def bits(self, x: np.ndarray, y: np.ndarray, order: int | None = None) -> dict:
        """Mean -log2 P over the targets y != -1, and how many there were."""
        p = self.prob(x, y, order)
        return {"bits": float(-np.log2(p).mean()) if p.size else math.nan, "targets": int(p.size)}


def train_arrays(corpus, max_tokens: int = MAX_TRAIN_TOKENS) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) to fit on from the train split: the stream as one row (x = s[:-1], y = s[1:]) for stream corpora,
    else every train sequence; at most `max_tokens` targets either way (the first ones)."""
    c = corpus.with_split("train")
    if c.streaming:
        n = min(int(c.data.shape[0]), max_tokens + 1)
        s = np.asarray(c.data[:n] if isinstance(c.data, np.ndarray) else c.data.read(0, n), dtype=np.int64)
        return s[None, :-1], s[None, 1:]
    rows = max(1, min(len(c), max_tokens // max(1, c.seq_len)))
    x, y = c.get(np.arange(rows))
    return np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)


def count_baselines(corpus, n: int, prompt: int, split: str = "test", seed: int = 0,
                    orders: dict = ORDERS) -> dict:
    """Bits per token of the count models fitted on train, on the targets `trainers/heldout.score_models` scores:
    the same `n` sequences of `split` (drawn with `seed`) and targets y[:, prompt:] != -1."""
    from pipeline.corpora import held_out

    x, y = held_out(corpus, split, n, seed)
    y = np.array(y, dtype=np.int64)
    y[:, :prompt] = -1
    tx, ty = train_arrays(corpus)
    out: dict = {"smoothing": SMOOTHING, "fit_on": f"split=train, {int((ty != -1).sum())} targets",
                 "split": split, "sequences": int(x.shape[0]), "prompt": prompt}
    model = NGram(max(orders.values()), corpus.vocab_size).fit(tx, ty)  # the lower orders are its first tables
    for name, order in orders.items():
        r = model.bits(x, y, order)
        out[name] = r["bits"]
        out["targets"] = r["targets"]
    return out


def counts_line(c: dict | None) -> str:
    """'unigram / bigram / trigram 4.68 / 3.92 / 3.27', or n/a."""
    if not c:
        return "n/a (not measured)"
    return "unigram / bigram / trigram " + " / ".join(f"{c[k]:.2f}" for k in ORDERS)
