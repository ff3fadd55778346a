"""The `smt` command: one sub-command per stage, each also runnable as `python -m <module>` (the module
`STAGES` names: `jobs.<stage>`, except `jobs.pipeline_job` and `jobs.inspect_bucket`)."""
from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help); each module has `main(argv: list[str] | None) -> int`
STAGES: dict[str, tuple[str, str]] = {
    "demo": ("jobs.demo", "run every stage on a synthetic task with embedded defaults and write a report"),
    "pipeline": ("jobs.pipeline_job", "run the whole flow from a named recipe (or a recipe file) with overrides"),
    "pretrain": ("jobs.pretrain", "joint SMT pretraining of a teacher (+ reference updater) on a corpus"),
    "label": ("jobs.label", "run the frozen teacher over a corpus and write target shards to a bucket"),
    "train": ("jobs.train", "train a student updater by SMT from target shards (stateless, resumable)"),
    "dmt": ("jobs.dmt", "DMT on a student run: roll out, relabel, append the round to the run, train on them"),
    "dmt-online": ("jobs.dmt_online", "paper-faithful online DMT on a pretrain run (no shards)"),
    "bptt": ("jobs.bptt", "train the BPTT baseline (same updater architectures, own readout)"),
    "eval": ("jobs.eval", "evaluate a teacher, an SMT/DMT student or a BPTT run on a corpus"),
    "inspect": ("jobs.inspect_bucket", "summarise and verify target sets in a bucket"),
    "generate": ("jobs.generate", "continue a prompt with a run's student or teacher, or an exported student"),
    "export": ("jobs.export", "write a run's student as a self-contained folder (weights, config, vocabulary)"),
}


def usage() -> str:
    w = max(map(len, STAGES))
    lines = ["usage: smt <stage> [--help] [options]", "", "stages:"]
    lines += [f"  {name:<{w}}  {help_}" for name, (_, help_) in STAGES.items()]
    lines += ["", "Each stage is also `python -m jobs.<stage>` with the same flags (smt pipeline: jobs.pipeline_job,",
              "smt inspect: jobs.inspect_bucket)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in STAGES:
        print(f"smt: error: unknown stage {name!r}: use one of {', '.join(STAGES)} (smt --help)", file=sys.stderr)
        return 2
    try:
        mod = importlib.import_module(STAGES[name][0])
    except ModuleNotFoundError as e:
        if e.name == STAGES[name][0]:
            print(f"smt: error: stage {name!r} is not available in this version", file=sys.stderr)
            return 2
        raise
    return int(mod.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
