"""From a spec to a corpus: `load_corpus` (synthetic tasks, text, hf, parquet, tokens, mnist,
digits), the fixed
held-out sets `held_out`, and `manifest_json`. The top of the package: it imports every kind, none
imports it back at module level (`Corpus.with_split` reaches it lazily)."""

from __future__ import annotations

import json

import numpy as np

from pipeline.corpora import synthetic
from pipeline.corpora.base import Corpus
from pipeline.corpora.images import DigitsCorpus, MnistCorpus
from pipeline.corpora.sources import HFTextCorpus, ParquetCorpus, TextCorpus, TokensCorpus
from pipeline.corpora.spec import SPLITS, CorpusError, parse_spec

__all__ = ["held_out", "load_corpus", "manifest_json"]


def load_corpus(spec: str, *, storage_options: dict | None = None, cache_dir: str | None = None) -> Corpus:
    """Build the corpus a spec names. `storage_options` (fsspec) and `cache_dir` (datasets) are not part of
    the spec: they say how to reach the data, not what the data is."""
    name, location, raw = parse_spec(spec)
    corpus: Corpus | None = None
    if name in synthetic.TASKS:
        corpus = synthetic.TASKS[name](raw)
    elif name == "text":
        corpus = TextCorpus(location, raw, storage_options)
    elif name == "hf":
        corpus = HFTextCorpus(location, raw, cache_dir, storage_options)
    elif name == "tokens":
        corpus = TokensCorpus(location, raw, storage_options)
    elif name == "parquet":
        corpus = ParquetCorpus(location, raw, storage_options)
    elif name == "mnist":
        corpus = MnistCorpus(location, raw, cache_dir, storage_options)
    elif name == "digits":
        corpus = DigitsCorpus(raw)
    if corpus is not None:
        corpus._reach = {"storage_options": storage_options, "cache_dir": cache_dir}
        return corpus
    known = sorted(synthetic.TASKS) + ["digits", "hf", "mnist", "parquet", "text", "tokens"]
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
