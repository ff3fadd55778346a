"""Ray Train workers for both training runs: N TorchTrainer workers, DDP, each on its own share of the data.

- Student training (`train_with_ray`): each worker runs `trainers.student.run_training` with rank = its
  world rank: it opens the target set and streams split `rank` of `world_size`.
- Teacher pretraining (`pretrain_with_ray`): each worker runs `trainers.pretrain.pretrain` on its rows of
  every global batch; rank 0 evaluates and broadcasts the curriculum and stopping decisions.
DDP averages gradients (gloo on CPU, NCCL with GPUs). All state lives in our own run URL (rank 0 writes
checkpoints; a rerun resumes from them); Ray's checkpoint mechanism is not used, and Ray's storage path is
a throwaway local folder. This module and pipeline/executors.py (`init_ray`, which jobs/ and the DMT phase
call) are the only ones that import ray.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trainers.loop import Workers
from trainers.student import Hook, Session, StudentRun, StudentTrainConfig, check_hooks, run_training
from trainers.tracking import TrackingConfig


@dataclass
class Worker:
    """What a worker body needs from its Ray Train context: rank, world size, device, and collectives."""

    rank: int
    world: int
    device: torch.device
    cuda: bool

    def agree(self, n: int) -> int:
        """The smallest `n` over all workers (e.g. every rank switches to the oldest newest generation)."""
        import torch.distributed as dist

        t = torch.tensor([n], dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def sync(self, values: list[int]) -> list[int]:
        """Rank 0's `values` on every worker (its evaluation decides the curriculum and stopping)."""
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.long, device=self.device)
        dist.broadcast(t, src=0)
        return [int(v) for v in t.tolist()]

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[self.device.index] if self.cuda else None)


def _worker(use_gpu: bool) -> Worker:
    import ray.train

    ctx = ray.train.get_context()
    cuda = torch.cuda.is_available() and use_gpu
    device = torch.device("cuda", ctx.get_local_rank()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Worker(ctx.get_world_rank(), ctx.get_world_size(), device, cuda)


def _student_worker(config: dict[str, Any]) -> None:
    w = _worker(config["use_gpu"])
    cfg: StudentTrainConfig = config["cfg"]
    if w.cuda:
        cfg.device = str(w.device)
    run_training(config["src"], cfg, quiet=config["quiet"], hooks=config["hooks"], tracking=config.get("tracking"),
                 session=Session(workers=Workers(w.rank, w.world, agree=w.agree, wrap=w.wrap),
                                 writer=config.get("writer")))


def _pretrain_worker(config: dict[str, Any]) -> None:
    from pipeline.corpora import load_corpus
    from storage.run_dir import RunDir
    from trainers.loop import Callbacks
    from trainers.pretrain import pretrain

    w = _worker(config["use_gpu"])
    cfg = config["cfg"]
    if w.cuda:
        cfg.device = str(w.device)
    pretrain(load_corpus(config["corpus"]), cfg, RunDir(config["out"], endpoint_url=config["endpoint_url"]),
             config["quiet"], callbacks=Callbacks(on_eval=config.get("on_eval")),
             workers=Workers(w.rank, w.world, sync=w.sync, wrap=w.wrap), tracking=config.get("tracking"),
             writer=config.get("writer"))


@dataclass(frozen=True)
class RayGroup:
    """A DDP worker group on Ray Train: its size, the GPUs of each worker (None: 1 when this machine has CUDA
    and the config's device allows it, else 0) and how often Ray Train restarts the whole group after a worker
    failure (a preempted node, a crash); the body then resumes from the run URL's newest checkpoint."""

    workers: int
    gpus_per_worker: float | None = None
    max_failures: int = 0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers={self.workers} must be >= 1")


def fit(body: Callable[[dict[str, Any]], None], config: dict[str, Any], group: RayGroup, *, device: str, name: str,
        quiet: bool) -> None:
    """Run `body(config)` on the Ray Train worker `group` (starting a local Ray instance if none is running)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {} if os.environ.get("RAY_ADDRESS") else {"runtime_env": {"env_vars": {"PYTHONPATH": root}}}
        ray.init(include_dashboard=False, log_to_driver=not quiet, **env)
    gpus = group.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if (torch.cuda.is_available() and device != "cpu") else 0.0
    use_gpu = gpus > 0
    scaling = ScalingConfig(num_workers=group.workers, use_gpu=use_gpu,
                            resources_per_worker={"CPU": 1, "GPU": gpus} if use_gpu else None)
    trainer = TorchTrainer(
        body, train_loop_config={**config, "use_gpu": use_gpu, "quiet": quiet},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"), scaling_config=scaling,
        run_config=RunConfig(storage_path=tempfile.mkdtemp(prefix="smt-ray-train-"), name=name,
                             failure_config=FailureConfig(max_failures=group.max_failures)),
    )
    trainer.fit()


def train_with_ray(src: StudentRun, cfg: StudentTrainConfig, group: RayGroup, *, quiet: bool = False,
                   hooks: Sequence[Hook] = (), tracking: TrackingConfig | None = None, writer=None) -> None:
    """Student SMT on the DDP worker `group`; rank r streams split r of the target set. Each worker gets its
    own copy of `hooks` (e.g. lockstep DMT: every rank waits for and switches to the same rounds)."""
    check_hooks(cfg, hooks)  # before any worker starts
    fit(_student_worker, {"src": src, "cfg": cfg, "hooks": list(hooks), "tracking": tracking, "writer": writer},
        group, device=cfg.device, name="smt-train", quiet=quiet)


def pretrain_with_ray(corpus: str, cfg, run, group: RayGroup, *, quiet: bool = False,
                      on_eval: Callable[[dict], None] | None = None, tracking: TrackingConfig | None = None,
                      writer=None) -> None:
    """Teacher pretraining on the DDP worker `group` writing one run (a `RunDir`; resumes it if it has a
    checkpoint). `corpus` is a spec: every worker opens it itself (stream corpora read their windows lazily)."""
    fit(_pretrain_worker, {"corpus": corpus, "cfg": cfg, "out": run.url, "endpoint_url": run.bucket.endpoint_url,
                           "on_eval": on_eval, "tracking": tracking, "writer": writer},
        group, device=cfg.device, name="smt-pretrain", quiet=quiet)
