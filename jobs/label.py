"""`smt label`: run a frozen teacher over a corpus and write round-0 target shards to a bucket.

    smt label --teacher ckpt/ --corpus 'retrieval:T=64,vocab=8' --out s3://bucket [--workers 2]

Writes `<out>/targets/<fingerprint>/<corpus-id>/` (shards, then one manifest generation), publishes the
teacher to `<out>/teachers/<fingerprint>/` (so `smt train`/`smt dmt` need no --teacher) and prints the
target set URL on stdout. `--workers 0` runs in-process; N > 0 runs a Ray actor pool, connecting to
the job's cluster under `ray job submit` (RAY_ADDRESS) or starting a local Ray instance. Rerunning the
same command after a crash skips the shards already written.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from jobs.common import parse, run


@dataclass(kw_only=True)
class LabelArgs:
    teacher: str
    """Teacher checkpoint folder or URL (weights.safetensors + config.json)."""
    corpus: str
    """Corpus spec, e.g. 'retrieval:T=64,vocab=8' or 'tokens:/d/ids.npy|T=320'."""
    out: str
    """Bucket root (local folder, file://, memory://, s3://); shards go under targets/<fp>/<corpus-id>/."""
    workers: int = 0
    """Ray actors; 0 = serial, in-process."""
    format: Literal["zarr", "wds"] = "zarr"
    """Shard format."""
    dtype: Literal["float32", "float16", "bfloat16", "int8"] = "float16"
    """Stored state dtype."""
    shard_sequences: int = 256
    """Corpus sequences per shard (one work item each)."""
    Tc: int | None = None
    """Stream corpora: tokens each memory sees (default: the causal teacher's window)."""
    batch_size: int = 32
    """Sequences per teacher forward pass."""
    device: str = "auto"
    """Torch device: auto (cuda if available), cpu, cuda, cuda:1, ..."""
    cpus_per_worker: float = 1.0
    """CPU cores reserved per Ray actor (and its torch threads)."""
    gpus_per_worker: float | None = None
    """GPUs per Ray actor (default: this machine's GPUs shared among the workers, at most 1 each; 0 without CUDA)."""
    max_restarts: int = 3
    """Times a dead Ray actor is restarted."""
    task_retries: int = 3
    """Times a failed work item is resubmitted to a live actor."""
    endpoint_url: str | None = None
    """S3 endpoint (default: AWS_ENDPOINT_URL)."""
    quiet: bool = False
    """No progress bar."""


def build(args: LabelArgs):
    from pipeline.executors import make_executor
    from pipeline.label import LabelConfig
    from pipeline.stage import Resources

    gpus = args.gpus_per_worker
    if gpus is None:
        import torch

        # a guess from the driver's machine: more GPUs asked for than the cluster has would never schedule
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        gpus = min(1.0, n_gpus / args.workers) if (args.workers and n_gpus) else 0.0
    cfg = LabelConfig(teacher=args.teacher, corpus=args.corpus, out=args.out, fmt=args.format,
                      dtype=args.dtype, shard_sequences=args.shard_sequences, Tc=args.Tc,
                      batch_size=args.batch_size, device=args.device, endpoint_url=args.endpoint_url,
                      resources=Resources(num_cpus=args.cpus_per_worker, num_gpus=gpus))
    pool = {} if args.workers == 0 else {"max_restarts": args.max_restarts, "task_retries": args.task_retries}
    return cfg, make_executor(args.workers, **pool)


def main(argv: list[str] | None = None) -> int:
    args = parse(LabelArgs, argv, "label", description=__doc__.splitlines()[0], flags=True)

    def body() -> int:
        from pipeline.label import label

        cfg, executor = build(args)
        report = label(cfg, executor, quiet=args.quiet)
        print(report.summary(), file=sys.stderr)
        print(report.target_url)
        return 0

    return run("label", body)


if __name__ == "__main__":
    raise SystemExit(main())
