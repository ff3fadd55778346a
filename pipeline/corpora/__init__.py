"""Corpora: everything a stage reads sequences from, named by one spec string (syntax in spec.py).

    spec.py       the spec parser, `Params`, `CorpusError`, the split names (imports nothing of the package)
    base.py       the `Corpus` interface and its identity (`corpus_id`)
    synthetic.py  the synthetic probe tasks (retrieval, copy, stack, kv, modarith, parity)
    streams.py    windows of one token stream, and how a stream is cut into train / valid / test
    sources.py    the streams' sources: text files, Hugging Face text, token arrays
    images.py     pixel corpora: digits, MNIST
    registry.py   `load_corpus`, `held_out`, `manifest_json` (the top: imports every kind)
    vocab.py      `token_format`: how a spec's token ids read (bytes, pixels, ids), from the spec alone

Each module imports only those above it in this list (base imports the registry lazily, for
`with_split`). Import the public names from `pipeline.corpora`.
"""

from pipeline.corpora.base import Corpus
from pipeline.corpora.images import DigitsCorpus, ImageCorpus, MnistCorpus
from pipeline.corpora.registry import held_out, load_corpus, manifest_json
from pipeline.corpora.sources import HFTextCorpus, TextCorpus, TokensCorpus
from pipeline.corpora.spec import SPLITS, CorpusError, Params, parse_spec, spec_with
from pipeline.corpora.streams import StreamCorpus
from pipeline.corpora.vocab import token_format

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
    "manifest_json",
    "parse_spec",
    "spec_with",
    "token_format",
]
