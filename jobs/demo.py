"""`smt demo`: every stage of the pipeline on embedded defaults, in minutes on a laptop.

Runs the `retrieval-demo` recipe (retrieval, T=64, vocabulary 8) through the real system: a local Ray
instance, a local folder as the bucket; joint SMT pretraining of a causal teacher (length curriculum
16 -> 32 -> 64), labeling by 2 Ray actors into Zarr shards, a residual-MLP student trained by SMT from
the shards, DMT rounds by the DMT actor, and the BPTT baseline with the same updater for the same
wall-clock. Prints a table; writes OUT/results.json, OUT/report.md and PNG plots.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jobs.common import parse, run


@dataclass(kw_only=True)
class DemoConfig:
    out: str = "demo-out"
    """Output folder (results, report, plots, the bucket and the runs)."""
    student: str = "mlp"
    """Student updater architecture: mlp (non-gated, the paper's case), gru or transformer."""
    bucket: str | None = None
    """Bucket URL (default: OUT/bucket)."""
    set: list[str] = field(default_factory=list)
    """Recipe overrides, key.sub=value, e.g. --set pretrain.seconds=120 dmt.rounds=2."""
    quiet: bool = False
    """No progress bars."""


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        from jobs.pipeline import run_pipeline
        from jobs.recipes import load_recipe
        from jobs.report import print_table, write_report

        cfg = parse(DemoConfig, argv, "demo", __doc__)
        rc = load_recipe("retrieval-demo", [f"student.arch={cfg.student}", *cfg.set])
        out = Path(cfg.out)
        res = run_pipeline(rc, out, cfg.bucket, cfg.quiet)
        write_report(out, res)
        print_table(res)
        return 0

    return run("demo", body)


if __name__ == "__main__":
    raise SystemExit(main())
