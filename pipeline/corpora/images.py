"""Pixel corpora in prefix mode (one token per pixel, raster order): scikit-learn's bundled 8x8 digits
(offline) and MNIST through Hugging Face `datasets`. Both keep their test sets and hold every 10th
training image out as valid."""

from __future__ import annotations

import hashlib
import io

import numpy as np

from pipeline.corpora.base import Corpus
from pipeline.corpora.sources import hf_load
from pipeline.corpora.spec import CorpusError, Params, split_param

__all__ = ["DigitsCorpus", "ImageCorpus", "MnistCorpus"]


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
        split = split_param(p)
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
        split = split_param(p)
        p.finish()
        hf_split = "test" if split == "test" else "train"
        if location is None:
            ds = hf_load(self.kind, "ylecun/mnist", None, hf_split, None, cache_dir, storage_options)
        else:
            ds = hf_load(self.kind, "parquet", None, hf_split, location, cache_dir, storage_options)
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
