"""Corpus specs: one string names a corpus and all its parameters; this module parses them.

Spec syntax (one string names a corpus and all its parameters):

    <task>:k=v,k=v                 synthetic task (see synthetic.py), e.g. "retrieval:T=64,vocab=8"
    digits[:k=v,...]               scikit-learn's bundled 8x8 digits (offline pixel corpus)
    mnist[:<data_files>][|k=v,...] MNIST through Hugging Face `datasets` (hub "ylecun/mnist" by default)
    text:<fsspec glob>[|k=v,...]   raw bytes of the matching files
    hf:<dataset>[|k=v,...]         a text column of a Hugging Face dataset, as utf-8 bytes
    tokens:<fsspec url>[|k=v,...]  a 1-D .npy file or Zarr array of integer token ids
    parquet:<fsspec glob>[|k=v,...] a string (utf-8 bytes) or list<int> (token ids) column of Parquet files

For the located corpora (text, hf, tokens, mnist, parquet) everything after the LAST '|' is the parameter list, so a
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

Here: the spec parser (`parse_spec`, `spec_with`), the typed parameter reader `Params`, `CorpusError` and
the split names. Imports nothing else of the package.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["SPLITS", "CorpusError", "Params", "parse_spec", "spec_with", "split_param"]

SPLITS = ("train", "valid", "test")
"""The splits every corpus spec accepts (`split=`): train for labeling and training, valid for every
stopping rule and model choice, test for every reported figure."""


class CorpusError(ValueError):
    """A bad spec, bad parameter or unusable data. The message is one line: what is wrong and the fix."""


_LOCATED = ("text", "hf", "tokens", "mnist", "parquet")
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


def split_param(p: Params) -> str:
    """The `split` parameter every spec accepts (train by default)."""
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
