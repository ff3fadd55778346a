"""Teacher pretraining on 2 Ray Train DDP workers (CPU, gloo). One Ray run fails at step 10, Ray Train
restarts the workers and they resume from the step-8 checkpoint; it ends with exactly the weights and
losses of an uninterrupted 2-process run of the same code on plain torch.distributed (the oracle), across
two curriculum stage changes. A second call on the finished run trains nothing more."""
from __future__ import annotations

import functools
import json
import os
import socket

import pytest
import torch

from models.teacher import TeacherConfig
from models.updaters import UpdaterConfig
from storage.checkpoints import load_teacher
from storage.run_dir import LATEST, RunDir
from trainers.pretrain import PretrainConfig

# two Ray Train worker-group starts and a 2-process oracle: tens of seconds even on a quiet machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SPEC = "retrieval:T=12,vocab=4"


def crash_once(marker: str, row: dict) -> None:
    """Rank 0's evaluation hook (pickled by reference into the Ray worker): the first attempt dies at step 10."""
    if row["step"] == 10 and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("simulated failure at step 10")


def config() -> PretrainConfig:
    return PretrainConfig(teacher=TeacherConfig(d_model=16, n_heads=2, encoder_depth=1, decoder_depth=1,
                                                mem_tokens=2),
                          updater=UpdaterConfig(arch="mlp", depth=1, hidden=32), steps=16, eval_every=5,
                          eval_size=16, batch_size=4, checkpoint_every=4, curriculum=(6, 9), curriculum_acc=0.0,
                          device="cpu")


def _plain_rank(rank: int, out: str, port: int) -> None:
    """One of two processes of the oracle run: the same `pretrain` on a gloo group without Ray."""
    import torch.distributed as dist

    from pipeline.corpora import load_corpus
    from trainers.distributed import Worker
    from trainers.loop import Workers
    from trainers.pretrain import pretrain

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    w = Worker(rank, 2, torch.device("cpu"), False)
    try:
        pretrain(load_corpus(SPEC), config(), out=out, quiet=True,
                 workers=Workers(rank, 2, sync=w.sync, wrap=w.wrap))
    finally:
        dist.destroy_process_group()


def rows(run):
    with open(run / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_two_workers_fail_resume_and_equal_an_uninterrupted_run(ray_local, tmp_path):
    from trainers.distributed import RayGroup, pretrain_with_ray

    oracle, run = tmp_path / "oracle", tmp_path / "ray"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_plain_rank, args=(str(oracle), port), nprocs=2)

    crash = functools.partial(crash_once, str(tmp_path / "crashed"))
    pretrain_with_ray(SPEC, config(), RunDir(str(run)), RayGroup(2, max_failures=1), quiet=True, on_eval=crash)
    assert (tmp_path / "crashed").exists()                          # the first attempt did fail
    state = json.loads((run / "checkpoints" / "step-00000016" / "state.json").read_text())
    assert state["starts"] == [0, 8] and state["finished"] and state["stage"] == 2
    a, b = rows(oracle), rows(run)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [5, 10, 15, 16]   # rows of the failed attempt dropped
    assert [r["T"] for r in b] == [6, 9, 12, 12]                    # two curriculum stage changes on the way
    for ra, rb in zip(a, b):
        assert abs(ra["loss"] - rb["loss"]) <= 1e-6
    ta, _, _ = load_teacher(str(oracle / "teacher"))
    tb, _, _ = load_teacher(str(run / "teacher"))
    diff = max((p - q).abs().max().item() for p, q in zip(ta.state_dict().values(), tb.state_dict().values()))
    assert diff <= 1e-6
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    assert json.loads((run / LATEST).read_text())["step"] == 16
