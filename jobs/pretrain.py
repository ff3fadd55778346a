"""`smt pretrain`: joint SMT pretraining of a teacher and a reference updater on a corpus, as a resumable run.

    smt pretrain --corpus retrieval:T=64,vocab=8 --out runs/pt --curriculum 16 32
    smt pretrain --corpus SPEC --out s3://bucket/runs/pt-1 --bucket s3://bucket --workers 4 --gpus-per-worker 1

OUT (local folder, file://, s3://) gets checkpoints every --checkpoint-every steps and when the run stops
(`OUT/checkpoints/`, `latest.json` last), OUT/metrics.jsonl (local runs), OUT/run.json and at the end
OUT/teacher (checkpoint + fingerprint) and OUT/student. Rerunning the same command resumes from the newest
checkpoint and ends exactly where an uninterrupted run would. With --bucket the finished teacher is also
published to BUCKET/teachers/<fingerprint>/, where `smt train`/`smt dmt` look for it. --workers N > 1 trains
with N Ray Train DDP workers (connecting to the job's cluster under `ray job submit`, else a local Ray).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from jobs.cli_common import FLAT, RunWriterJob, figure, job_main
from trainers.pretrain import PretrainConfig


@dataclass(kw_only=True)
class PretrainJob(RunWriterJob):
    corpus: str
    """Corpus spec, e.g. retrieval:T=64,vocab=8 (see pipeline/README.md)."""
    out: str
    """Run URL (local folder, file://, s3://): checkpoints, metrics, config, then teacher/ and student/."""
    pretrain: Annotated[PretrainConfig, FLAT] = field(default_factory=PretrainConfig)
    """Joint SMT pretraining: teacher, reference updater, losses, optimiser, budget."""
    bucket: str | None = None
    """Bucket root to publish the finished teacher to (<bucket>/teachers/<fingerprint>/); none by default."""
    gpus_per_worker: float | None = None
    """GPUs per Ray Train worker (default: 1 when this machine has CUDA, else 0)."""
    max_failures: int = 0
    """With --workers > 1: times Ray Train restarts the workers after a failure (e.g. a preempted node);
    they resume from the newest checkpoint."""

    def execute(self) -> int:
        from pipeline.corpora import load_corpus
        from storage.bucket import Bucket
        from storage.checkpoints import publish_teacher
        from storage.run_dir import RunDir
        from trainers.pretrain import pretrain, run_summary

        corpus = load_corpus(self.corpus)  # validates the spec before any worker starts
        writer = self.writer()
        if self.workers > 1:
            from trainers.distributed import RayGroup, pretrain_with_ray

            group = RayGroup(self.workers, self.gpus_per_worker, self.max_failures)
            pretrain_with_ray(corpus.spec, self.pretrain, RunDir(self.out, endpoint_url=self.endpoint_url), group,
                              quiet=self.quiet, tracking=self.log, writer=writer)
        else:
            pretrain(corpus, self.pretrain, out=RunDir(self.out, endpoint_url=self.endpoint_url), quiet=self.quiet,
                     tracking=self.log, writer=writer)
        s = run_summary(self.out, self.endpoint_url)
        f = s["final"]
        how = f"resumed at step {s['starts'][-1]}, " if len(s["starts"]) > 1 else ""
        print(f"smt pretrain: {how}teacher {s['fingerprint'][:16]} -> {s['run']}/teacher  steps={s['steps']} "
              f"seconds={s['seconds']:.1f} teacher_acc={figure(f, 'teacher_acc')} smt_acc={figure(f, 'smt_acc')} "
              "(split=valid; report with smt eval)")
        if self.bucket:
            url = publish_teacher(s["teacher"], Bucket.from_url(self.bucket, endpoint_url=self.endpoint_url))
            print(f"smt pretrain: published teacher -> {url}")
        return 0


main = job_main("pretrain", PretrainJob, __doc__.splitlines()[0])

if __name__ == "__main__":
    raise SystemExit(main())
