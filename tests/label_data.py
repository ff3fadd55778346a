"""Plain helpers and constants for the label-stage tests (fixtures live in tests/label_fixtures.py)."""
from __future__ import annotations

import shutil

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
