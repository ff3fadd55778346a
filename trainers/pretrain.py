"""Stage 1: joint SMT pretraining of the teacher and a reference updater, as a resumable run.

The run URL `out` (local folder, file://, s3://; through the Bucket) holds:
    run.json                       the run record (kind "pretrain", storage/layout.py): the resolved config of the
                                   newest start or resume
    checkpoints/step-XXXXXXXX/     teacher/, student/, state.safetensors, state.json (`pretrain_state.py`)
    checkpoints/latest.json        written last: the commit point of a checkpoint
    metrics.jsonl                  one row per evaluation (`storage/metrics.py`; metrics/ on an object store)
    teacher/, student/             the finished teacher (its fingerprint names its target shards) and the
                                   reference updater with the teacher's readout
A checkpoint is written every `checkpoint_every` steps and when the run stops; rerunning the same command
resumes from the newest one and ends exactly where an uninterrupted run would. With `rank`/`world_size`
and a DDP `wrap` (see `trainers/distributed.py`) every worker trains on its own rows of each global batch;
rank 0 evaluates, decides the curriculum and stopping, and writes checkpoints and outputs.
"""
from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from models.device import pick_device
from models.teacher import TeacherConfig
from models.updaters import UpdaterConfig
from storage.lease import Writer
from storage.run_dir import RunDir
from trainers.budget import Budget, Checkpointing, LengthCurriculum
from trainers.common import MetricsLog, OptimConfig, announce_resume
from trainers.evaluate import evaluate_student, evaluate_teacher
from trainers.loop import Callbacks, Checkpoints, Curriculum, Evaluation, Loop, Objective, Workers, train
from trainers.pretrain_state import JointObjective, batch_at, build_state, export, positions_generator, save
from trainers.smt import SMTConfig
from trainers.tracking import TrackingConfig, open_tracker


@dataclass(kw_only=True)
class PretrainConfig(Checkpointing, LengthCurriculum, Budget):  # fields (and --help): the budget first
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """Teacher architecture (vocab_size is taken from the corpus)."""
    updater: UpdaterConfig = field(default_factory=UpdaterConfig)
    """Reference updater trained jointly (K, d and vocab are taken from the teacher)."""
    smt: SMTConfig = field(default_factory=SMTConfig)
    """Loss weights and position sampling."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.smt.check_encoder(self.teacher.encoder_kind)


def with_length(corpus, T: int):
    """The same synthetic task at another sequence length (for the length curriculum)."""
    from pipeline.corpora import load_corpus

    if corpus.streaming or f"T={corpus.seq_len}" not in corpus.spec:
        raise ValueError(f"curriculum needs a synthetic task with a T parameter, not {corpus.spec!r}: drop --curriculum")
    if not 1 <= T < corpus.seq_len:
        raise ValueError(f"curriculum length {T} must be below the corpus length T={corpus.seq_len}")
    return load_corpus(re.sub(r"(?<=[:,])T=\d+", f"T={T}", corpus.spec, count=1))


class JointSMT(Objective):
    """Pretraining's step: this worker's rows of the step's global batch, the joint SMT loss at the step's positions."""

    def __init__(self, model: torch.nn.Module, cfg: PretrainConfig, curriculum: Curriculum, workers: Workers) -> None:
        self.model, self.cfg, self.curriculum, self.workers = model, cfg, curriculum, workers

    def batch(self, loop: Loop) -> tuple:
        step, w = loop.state.step + 1, self.workers
        x, y = (torch.as_tensor(a, dtype=torch.long, device=loop.state.device)
                for a in batch_at(self.curriculum.corpus, self.cfg.batch_size, self.cfg.seed, step, w.rank,
                                  w.world_size))
        return x, y, positions_generator(self.cfg.seed, step, w.rank)

    def loss(self, batch: tuple) -> dict[str, torch.Tensor]:
        return self.model(*batch)

    def columns(self, loop: Loop) -> dict:
        return {"lr": loop.state.sched.get_last_lr()[0], "T": self.curriculum.corpus.seq_len}


def _figures(state, curriculum: Curriculum, prompt: int) -> dict:
    """The valid figures an evaluation reads: the teacher's readout, and the reference updater rolled out."""
    teacher = state.teacher
    teacher.eval()
    state.sync_readout()
    ex, ey = curriculum.batch
    te = evaluate_teacher(teacher, ex, ey, prompt)
    # drift needs every teacher memory: cheap for the causal encoder, one pass per prefix for register
    st = evaluate_student(state.student, ex, ey, teacher if (teacher.cfg.encoder_kind.one_pass or prompt) else None,
                          prompt)
    teacher.train()
    return {"teacher_acc": te["acc"], "teacher_loss": te["loss"], "smt_acc": st["acc"], "smt_loss": st["loss"],
            **({"drift_final": st["drift_final"]} if "drift_final" in st else {})}


def _stage_end(state, on_stage_end: Callable) -> Callable[[object, dict], None]:
    def passed(stage_corpus, row: dict) -> None:
        state.teacher.eval()
        state.sync_readout()
        on_stage_end(state.teacher, state.student, stage_corpus, row)
        state.teacher.train()
    return passed


def _open_log(state, cfg: PretrainConfig, run: RunDir | None, quiet: bool, lead: bool, record: dict,
              tracking: TrackingConfig | None) -> MetricsLog:
    """Rank 0's metrics log (and tracker); a resumed run's writer drops the rows past its checkpoint (they belong
    to the attempt that was killed)."""
    if lead and run is not None:
        announce_resume(run, state.step, state.changes)
        run.write_record(**record)
    tracker = open_tracker(tracking, "pretrain", run=run.url if run else None, start_step=state.step,
                           config=record) if lead else None
    log = MetricsLog(cfg.steps, "pretrain", quiet or not lead, cfg.clock, start=state.elapsed,
                     seconds=cfg.seconds, store=run.metrics_writer(state.step) if lead and run else None,
                     tracker=tracker)
    log.advance(state.step)
    return log


def pretrain(corpus, cfg: PretrainConfig, out: str | Path | RunDir | None = None, quiet: bool = False, *,
             callbacks: Callbacks | None = None, workers: Workers | None = None,
             tracking: TrackingConfig | None = None, writer: Writer | None = None) -> dict:
    """Train (or resume the run at `out`, holding its lease as `writer`) on the loop of `trainers/loop.py`;
    returns {"teacher", "student", "history", "final", "seconds", "steps", "resumed_from", and with `out`
    "fingerprint", "run"}. Without `out` nothing is written; a `RunDir` as `out` names an S3 endpoint.
    `workers` (`trainers/loop.py`): this worker's rank, world size, `sync` (rank 0's decisions for every
    worker, needed when world_size > 1) and DDP `wrap`. `callbacks` (off the training clock, never read by the
    curriculum or stop rules): `on_eval(row)`, `reporter(student, row) -> dict` (report figures joining the row,
    e.g. on the test split), `on_stage_end(teacher, student, stage_corpus, row)` each time the teacher passes a
    curriculum stage (and when `stop_at_acc` ends the last one), e.g. a DMT copy of the student at that length
    (benchmarks/length_scaling.py). `tracking`: rank 0 also logs each metrics row and the config to
    TensorBoard / W&B (`trainers/tracking.py`)."""
    dev, w, cb = pick_device(cfg.device), workers or Workers(), callbacks or Callbacks()
    share = w.share()  # refuses several workers without `sync`
    cfg.smt.check_length(corpus.seq_len)
    run = out if isinstance(out, RunDir) or out is None else RunDir(str(out))
    lead = w.rank == 0
    with run.writing(writer) if run is not None and lead else contextlib.nullcontext():
        state = build_state(corpus, cfg, run, dev)
        resumed_from = state.step if state.starts else None
        state.starts.append(state.step)
        record = {"kind": "pretrain", "corpus": corpus.spec, "config": asdict(cfg), "world_size": w.world_size,
                  "start_step": state.step,
                  "changes": {k: {"old": a, "new": b} for k, (a, b) in state.changes.items()}}
        log = _open_log(state, cfg, run, quiet, lead, record, tracking)
        objective = JointObjective(state.teacher, state.student.updater, cfg.smt)
        curriculum = Curriculum([with_length(corpus, T) for T in cfg.curriculum] + [corpus], "teacher_acc",
                                cfg.curriculum_acc, cfg.stop_at_acc, eval_size=cfg.eval_size, seed=cfg.seed,
                                device=dev, stage=state.stage)
        loop = Loop(state, run, log, lead, None, stop=cfg.steps, seconds=cfg.seconds, share=share,
                    done=state.stays_finished(cfg) or state.step >= cfg.steps)

        def checkpoint(loop: Loop) -> None:
            state.stage, state.last_eval = curriculum.stage, loop.row or state.last_eval
            state.elapsed = log.elapsed()
            state.mark_stopped(cfg, "teacher_acc") if loop.done else state.mark_running()
            save(state, run)

        hooks = [Evaluation(cfg.eval_every, lambda: _figures(state, curriculum, cfg.smt.start), curriculum=curriculum,
                            callbacks=cb, model=state.student,
                            on_pass=_stage_end(state, cb.on_stage_end) if cb.on_stage_end else None),
                 Checkpoints(cfg.checkpoint_every, checkpoint)]
        train(loop, JointSMT(w.wrap(objective) if w.wrap else objective, cfg, curriculum, w), hooks,
              cfg.optim.grad_clip, dev)
        state.stage, state.last_eval = curriculum.stage, loop.row or state.last_eval
        return _finish(state, run, log, lead, resumed_from)


def _finish(state, run: RunDir | None, log: MetricsLog, lead: bool, resumed_from: int | None) -> dict:
    """The run's outputs (rank 0 with a run: teacher/ and student/) and what `pretrain` returns."""
    if lead:
        state.sync_readout()  # also on a resume of a finished run: outputs carry the final teacher's readout
    state.teacher.eval()
    state.student.eval()
    result = {"teacher": state.teacher, "student": state.student, "history": log.history, "final": state.last_eval,
              "seconds": log.elapsed(), "steps": state.step, "resumed_from": resumed_from}
    if lead and run is not None:
        result["fingerprint"], result["run"] = export(state, run), run.url
    return result


def run_summary(out: str, endpoint_url: str | None = None) -> dict:
    """What a pretraining run at `out` holds after `pretrain` (on any number of workers) returned: its
    teacher URL and fingerprint, steps, training seconds, last evaluation and the step of every start."""
    run = RunDir(out, endpoint_url=endpoint_url)
    pointer = run.latest()
    if pointer is None:
        raise ValueError(f"run {run.url} has no checkpoint: run `smt pretrain --out {out}` first")
    meta = json.loads(run.bucket.read_bytes(f"{pointer['path']}/state.json"))
    fp = json.loads(run.bucket.read_bytes("teacher/config.json"))["fingerprint"]
    return {"run": run.url, "teacher": run.bucket.url("teacher"), "fingerprint": fp, "steps": meta["step"],
            "seconds": meta["elapsed"], "final": meta["last_eval"], "starts": meta["starts"],
            "finished": meta["finished"]}
