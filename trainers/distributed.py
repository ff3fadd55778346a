"""Stateless student workers on Ray Train: N TorchTrainer workers, DDP, each streaming its own split.

Each worker runs `trainers.student.run_training` with rank = its world rank: it opens the target set,
streams split `rank` of `world_size`, and DDP averages gradients (gloo on CPU, NCCL with GPUs). All
state lives in our own run URL (rank 0 writes checkpoints); Ray's checkpoint mechanism is not used,
and Ray's storage path is a throwaway local folder. This and `jobs/` are the only modules that import ray.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from trainers.student import StudentTrainConfig, run_training


def _worker(config: dict[str, Any]) -> None:
    import ray.train
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cuda = torch.cuda.is_available() and config["use_gpu"]
    device = torch.device("cuda", ctx.get_local_rank()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    def agree(n: int) -> int:  # every rank switches to the same (oldest seen) newest generation
        t = torch.tensor([n], dtype=torch.long, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        return DistributedDataParallel(module, device_ids=[device.index] if cuda else None)

    cfg: StudentTrainConfig = config["cfg"]
    if cuda:
        cfg.device = str(device)
    run_training(config["targets"], config["teacher"], config["out"], cfg, endpoint_url=config["endpoint_url"],
                 generation=config["generation"], rank=rank, world_size=world, agree=agree, wrap=wrap,
                 quiet=config["quiet"])


def train_with_ray(targets: str, teacher: str | None, out: str, cfg: StudentTrainConfig, *, workers: int,
                   endpoint_url: str | None = None, generation: int | None = None, quiet: bool = False) -> None:
    """Run `workers` Ray Train workers (starting a local Ray instance if none is running)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {} if os.environ.get("RAY_ADDRESS") else {"runtime_env": {"env_vars": {"PYTHONPATH": root}}}
        ray.init(include_dashboard=False, log_to_driver=not quiet, **env)
    use_gpu = torch.cuda.is_available() and cfg.device != "cpu"
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"targets": targets, "teacher": teacher, "out": out, "cfg": cfg, "quiet": quiet,
                           "endpoint_url": endpoint_url, "generation": generation, "use_gpu": use_gpu},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=tempfile.mkdtemp(prefix="smt-ray-train-"), name="smt-train"),
    )
    trainer.fit()
