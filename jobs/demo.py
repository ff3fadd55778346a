"""`smt demo`: every stage of the pipeline on embedded defaults, in minutes on a laptop.

Runs the `retrieval-demo` recipe (retrieval, T=64, vocabulary 8) through the real system: a local Ray
instance, a local folder as the bucket; joint SMT pretraining of a causal teacher (length curriculum
16 -> 32 -> 64), labeling by 2 Ray actors into Zarr shards, a residual-MLP student trained by SMT from
the shards, DMT rounds by the DMT actor, and the BPTT baseline with the same updater, curriculum and stop
rule, its lr (3e-4, 1e-3, 3e-3) chosen on valid, the whole sweep in the SMT pipeline's wall-clock. Prints a
table; writes OUT/results.json, OUT/report.md and PNG plots. Every field of the recipe is a flag, as in
`smt pipeline` (e.g. `--student.updater.arch gru`, `--dmt.rounds 2`).
"""
from __future__ import annotations

from dataclasses import dataclass

from jobs.cli_common import job_main
from jobs.pipeline_job import PipelineJob, recipe_flag
from jobs.recipes import load_recipe


@dataclass(kw_only=True)
class DemoJob(PipelineJob):
    out: str = "demo-out"
    """Output folder (results, report, plots, the bucket and the runs)."""


def defaults(argv: list[str]) -> DemoJob:
    name = recipe_flag(argv)  # retrieval-demo unless --recipe says otherwise
    return DemoJob(recipe=name, tree=load_recipe(name))


main = job_main("demo", DemoJob, __doc__, defaults)

if __name__ == "__main__":
    raise SystemExit(main())
