"""Plain helpers and constants for the label-stage tests (fixtures live in tests/label_fixtures.py)."""
from __future__ import annotations

import shutil

import numpy as np
import torch

from models.teacher import Teacher, TeacherConfig
from storage.bucket import Bucket
from storage.manifest import newest_generation, read_generation

VOCAB = 16
PREFIX_SPEC = "retrieval:T=12,vocab=8,n=10"
STREAM_T, STREAM_TC = 24, 8


def tiny_teacher(encoder: str, window: int | None = None, seed: int = 0) -> Teacher:
    torch.manual_seed(seed)
    return Teacher(TeacherConfig(vocab_size=VOCAB, d_model=32, n_heads=2, encoder_depth=1, decoder_depth=1,
                                 mem_tokens=2, encoder=encoder, window=window)).eval()


def corrupt_copy(src: str, dst: str) -> str:
    """A copy of a checkpoint folder with bytes flipped in the middle of its weights."""
    shutil.copytree(src, dst)
    w = f"{dst}/weights.safetensors"
    with open(w, "r+b") as f:
        data = bytearray(f.read())
        for i in range(len(data) // 2, len(data) // 2 + 8):
            data[i] ^= 0xFF
        f.seek(0)
        f.write(bytes(data))
    return dst


def shard_table(target_url: str, endpoint_url: str | None = None) -> list[tuple[str, str, int]]:
    """(path, sha256, records) of every shard in the newest generation."""
    b = Bucket.from_url(target_url, endpoint_url=endpoint_url)
    gen = read_generation(b, newest_generation(b))
    return [(e.path, e.sha256, e.records) for e in gen.shards]


def expected_states(teacher: Teacher, x: np.ndarray, Tc: int | None) -> np.ndarray:
    """Teacher states recomputed directly (float32, CPU): encode_all for prefix corpora; for stream
    corpora m_Tc..m_T, each from at most Tc tokens (causal: its window; register: memories_at)."""
    with torch.no_grad():
        xt = torch.from_numpy(x)
        if Tc is None:
            return teacher.encode_all(xt).numpy()
        if teacher.cfg.encoder == "causal":
            return teacher.encode_all(xt)[:, Tc:].numpy()
        return torch.stack([teacher.memories_at(xt, torch.full((len(x),), t), Tc)
                            for t in range(Tc, x.shape[1] + 1)], 1).numpy()


def read_segments(target_url: str, fingerprint: str):
    """(states float32, tokens, y, seq, pos0) concatenated over the shards of the newest generation."""
    from storage.reader import TargetSet

    ts = TargetSet.open(target_url, fingerprint)
    segs = [ts.read_shard_raw(e) for e in ts.shards]
    return (np.concatenate([s.states for s in segs]).astype(np.float32),
            *(np.concatenate([getattr(s, k) for s in segs]) for k in ("tokens", "y", "seq", "pos0")))
