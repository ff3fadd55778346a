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
from dataclasses import dataclass, field
from typing import Annotated

import tyro

from jobs.cli_common import FLAT, Quiet, job_main
from pipeline.executors import ExecutorConfig
from pipeline.label import LabelConfig


@dataclass(kw_only=True)
class LabelJob(Quiet):
    label: Annotated[LabelConfig, FLAT] = field(default_factory=LabelConfig)
    """The label stage: teacher, corpus, bucket, shard format and dtype."""
    executor: Annotated[ExecutorConfig, FLAT] = field(default_factory=ExecutorConfig)
    """Where the shards are labeled: in-process or a Ray actor pool."""

    def execute(self) -> int:
        from pipeline.label import label

        report = label(self.label, self.executor.build(), quiet=self.quiet)
        print(report.summary(), file=sys.stderr)
        print(report.target_url)
        return 0


def defaults(argv: list[str]) -> LabelJob:
    """Teacher, corpus and bucket are required here (the pipeline sets them from its earlier stages)."""
    return LabelJob(label=LabelConfig(teacher=tyro.MISSING, corpus=tyro.MISSING, out=tyro.MISSING))


main = job_main("label", LabelJob, __doc__.splitlines()[0], defaults)

if __name__ == "__main__":
    raise SystemExit(main())
