"""GPU tier (skipped without CUDA): the label stage on a GPU (bf16 autocast) gives states close to the
float32 CPU teacher, and the same bytes when run twice. WebDataset shards, so no zarr is needed there."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.corpora import load_corpus
from pipeline.executors import SerialExecutor
from pipeline.label import LabelConfig, label
from storage.checkpoints import load_teacher
from tests.label_data import PREFIX_SPEC, STREAM_TC, expected_states, read_segments, shard_table

pytest_plugins = ["tests.label_fixtures"]
pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("encoder", ["causal", "register"])
@pytest.mark.parametrize("mode", ["prefix", "stream"])
def test_gpu_bf16_states_close_to_cpu(teachers, stream_spec, tmp_path, encoder, mode):
    path, fp = teachers[encoder]
    spec, Tc = (PREFIX_SPEC, None) if mode == "prefix" else (stream_spec, STREAM_TC)
    runs = []
    for k in range(2):
        cfg = LabelConfig(teacher=path, corpus=spec, out=str(tmp_path / str(k)), Tc=Tc, shard_sequences=4,
                          batch_size=4, device="cuda", format="wds")
        runs.append(label(cfg, SerialExecutor(), quiet=True))
    assert shard_table(runs[0].target_url) == shard_table(runs[1].target_url), "GPU labels not reproducible"
    states, *_, seq, _ = read_segments(runs[0].target_url, fp)
    x, _ = load_corpus(spec).get(seq)
    want = expected_states(load_teacher(path)[0], x, Tc)
    err = np.abs(states - want)
    print(f"{encoder}/{mode}: max |err| {err.max():.4f}, mean {err.mean():.5f}")
    assert err.mean() < 1e-2 and err.max() < 0.1  # bf16 autocast: ~3 significant digits per op
