"""Fixtures for the label-stage tests: tiny saved teachers and a token-stream corpus file; loaded with
`pytest_plugins`, never imported directly."""
from __future__ import annotations

import numpy as np
import pytest

from storage.checkpoints import save_teacher
from tests.label_data import STREAM_T, STREAM_TC, VOCAB, tiny_teacher


@pytest.fixture(scope="session")
def teachers(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """{'causal': (dir, fingerprint), 'register': (dir, fingerprint)}; the causal one has window=Tc."""
    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for enc, window in (("causal", STREAM_TC), ("register", None)):
        path = str(root / enc)
        out[enc] = (path, save_teacher(path, tiny_teacher(enc, window)))
    return out


@pytest.fixture(scope="session")
def stream_spec(tmp_path_factory) -> str:
    """A token-stream corpus: windows of 24 tokens every 16 tokens of 200 random tokens < VOCAB."""
    path = tmp_path_factory.mktemp("corpus") / "ids.npy"
    np.save(path, np.random.default_rng(0).integers(0, VOCAB, size=200).astype(np.int32))
    return f"tokens:{path}|T={STREAM_T},stride=16,vocab={VOCAB}"
