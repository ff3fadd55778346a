"""Bit identity of labeling: the sha256 over (path, sha256) of every shard a tiny label run commits, in both
formats, recorded as constants on the code before issue 24's restructure and issue 26's Zarr encoder (commit
cd8ab7f) and equal after them. A change to labeling, the executors or the shard codecs that changes a byte of
any shard fails here, naming the format. CPU, one torch thread (other kernels may round differently: then
re-record on the code before a change and compare the code after it)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from models.teacher import Teacher, TeacherConfig
from pipeline.executors import SerialExecutor
from pipeline.label import LabelConfig, label
from storage.bucket import Bucket
from storage.checkpoints import save_teacher
from storage.manifest import newest_generation, read_generation

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]
SHARDS = {"zarr": "cdb01587e241c0990105d74135af7d325ea112202a7548d43214a55562ad63f2",
          "wds": "2626572f22910d8cd1394526e9a9f02a4a324a2f4ff953f7cd36ea7dd2d4181b"}


@pytest.mark.parametrize("fmt", sorted(SHARDS))
def test_labeling_writes_the_same_bytes_as_before(fmt, tmp_path):
    torch.manual_seed(0)
    teacher = Teacher(TeacherConfig(vocab_size=8, d_model=32, n_heads=2, encoder_depth=1, decoder_depth=1,
                                    mem_tokens=2, encoder="causal")).eval()
    fp = save_teacher(str(tmp_path / "t"), teacher)
    np.save(tmp_path / "ids.npy", np.random.default_rng(0).integers(0, 8, size=400).astype(np.int32))
    label(LabelConfig(teacher=str(tmp_path / "t"), corpus=f"tokens:{tmp_path}/ids.npy|T=24,stride=16,vocab=8",
                      out=str(tmp_path / "b"), format=fmt, dtype="float32", shard_sequences=8, device="cpu", Tc=8),
          SerialExecutor(), quiet=True)
    sets = Bucket.from_url(str(tmp_path / "b" / "targets" / fp))
    (manifest,) = sets.glob("*/manifest/gen-*.json")
    target_set = sets.child(manifest.split("/")[0])
    shards = read_generation(target_set, newest_generation(target_set)).shards
    assert len(shards) > 1
    got = hashlib.sha256(json.dumps(sorted((e.path, e.sha256) for e in shards)).encode()).hexdigest()
    assert got == SHARDS[fmt], f"{fmt} shards changed: {got}"
