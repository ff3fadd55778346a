"""The `Corpus` interface every corpus implements (get, sample, params, a data digest) and its identity:
`corpus_id` hashes the canonical spec and the data, so the same spec over changed data gets a new id."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from pipeline.corpora.spec import CorpusError, spec_with

__all__ = ["Corpus"]


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
        from pipeline.corpora.registry import load_corpus  # lazy: the registry imports every corpus kind

        return load_corpus(spec_with(self.spec, split=split), **(self._reach or {}))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def _check_indices(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_sequences):
            bad = int(idx[(idx < 0) | (idx >= self.num_sequences)][0])
            raise CorpusError(f"{self.kind}: index {bad} out of range: use 0 <= i < {self.num_sequences}")
        return idx
