"""Stage 1: joint SMT pretraining of the teacher and a reference updater, as a resumable run.

The run URL `out` (local folder, file://, s3://; through the Bucket) holds:
    run.json                       the resolved config of the newest start or resume
    checkpoints/step-XXXXXXXX/     teacher/, student/, state.safetensors, state.json (`pretrain_state.py`)
    checkpoints/latest.json        written last: the commit point of a checkpoint
    metrics.jsonl                  one row per evaluation (local runs)
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

from models.device import autocast, pick_device
from models.teacher import TeacherConfig
from models.updaters import UpdaterConfig
from storage.lease import Writer
from storage.run_dir import Retention, RunDir
from trainers.common import MetricsLog, OptimConfig, announce_resume, clip_and_step
from trainers.evaluate import eval_batch, evaluate_student, evaluate_teacher
from trainers.pretrain_state import JointObjective, batch_at, build_state, export, positions_generator, save
from trainers.smt import SMTConfig
from trainers.tracking import TrackingConfig, open_tracker


@dataclass(kw_only=True)
class PretrainConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """Teacher architecture (vocab_size is taken from the corpus)."""
    updater: UpdaterConfig = field(default_factory=UpdaterConfig)
    """Reference updater trained jointly (K, d and vocab are taken from the teacher)."""
    smt: SMTConfig = field(default_factory=SMTConfig)
    """Loss weights and position sampling."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser."""
    steps: int = 2000
    """Maximum optimiser steps."""
    seconds: float | None = None
    """Training budget in seconds of `clock` (evaluation excluded, summed over resumes); stops early when spent."""
    batch_size: int = 32
    """Sequences per step per worker."""
    eval_every: int = 50
    """Evaluate (teacher and rolled-out updater) every N steps."""
    eval_size: int = 256
    """Sequences of the valid split for the evaluations that drive the curriculum and `stop_at_acc`."""
    checkpoint_every: int = 500
    """Checkpoint the full train state to the run URL every N steps (and when the run stops)."""
    keep_last: int | None = None
    """Retention: keep the newest N checkpoints, deleting older ones after each commit (None = keep all;
    e.g. 3 for a long run on a bucket). The newest and any step another component pins always stay."""
    keep_every: int | None = None
    """Retention: also keep checkpoints whose step is a multiple of this (milestones; with keep_last)."""
    stop_at_acc: float | None = None
    """Stop once the teacher's answer accuracy on the valid split reaches this at the full length (None = never)."""
    curriculum: tuple[int, ...] = ()
    """Length curriculum: train at these sequence lengths first (ascending, each < T), moving on once the
    teacher's accuracy on the valid split reaches `curriculum_acc`; then at the corpus length. Synthetic tasks only."""
    curriculum_acc: float = 0.95
    """Teacher accuracy that ends a curriculum stage."""
    seed: int = 0
    """Random seed (model init, batches, positions)."""
    clock: str = "wall"
    """Clock of `seconds` and of logged times: 'wall', or 'process' (this process's CPU seconds)."""
    device: str = "auto"
    """'auto' (GPU when present), 'cpu' or 'cuda'."""
    allow_seed_change: bool = False
    """On resume, accept a `seed` other than the run's (refused by default: the batches and loss positions
    of every later step change, so the run is no longer the one an uninterrupted run would be)."""

    def __post_init__(self) -> None:
        Retention(keep_last=self.keep_last, keep_every=self.keep_every)  # refuses 0 or negative
        if self.steps < 1 or self.eval_every < 1 or self.checkpoint_every < 1 or self.batch_size < 1:
            raise ValueError(f"steps={self.steps}, eval_every={self.eval_every}, checkpoint_every="
                             f"{self.checkpoint_every} and batch_size={self.batch_size} must all be >= 1")
        self.smt.check_encoder(self.teacher.encoder_kind)


def with_length(corpus, T: int):
    """The same synthetic task at another sequence length (for the length curriculum)."""
    from pipeline.corpora import load_corpus

    if corpus.streaming or f"T={corpus.seq_len}" not in corpus.spec:
        raise ValueError(f"curriculum needs a synthetic task with a T parameter, not {corpus.spec!r}: drop --curriculum")
    if not 1 <= T < corpus.seq_len:
        raise ValueError(f"curriculum length {T} must be below the corpus length T={corpus.seq_len}")
    return load_corpus(re.sub(r"(?<=[:,])T=\d+", f"T={T}", corpus.spec, count=1))


def pretrain(corpus, cfg: PretrainConfig, out: str | Path | None = None, quiet: bool = False,
             on_eval: Callable[[dict], None] | None = None, *,
             reporter: Callable[[torch.nn.Module, dict], dict] | None = None,
             on_stage_end: Callable[[torch.nn.Module, torch.nn.Module, object, dict], None] | None = None,
             endpoint_url: str | None = None, rank: int = 0,
             world_size: int = 1, sync: Callable[[list[int]], list[int]] | None = None,
             wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
             tracking: TrackingConfig | None = None, writer: Writer | None = None) -> dict:
    """Train (or resume the run at `out`, holding its lease as `writer`); returns {"teacher", "student", "history", "final", "seconds",
    "steps", "resumed_from", and with `out` "fingerprint", "run"}. Without `out` nothing is written.
    `sync` broadcasts rank 0's list of ints to every worker (needed when world_size > 1).
    `reporter(student, row) -> dict`, when given, runs after each evaluation off the training clock and its
    figures join the row (for reports, e.g. on the test split; the curriculum and stop rules never read them).
    `on_stage_end(teacher, student, stage_corpus, row)`, when given, runs off the training clock each time the
    teacher passes a curriculum stage (and when `stop_at_acc` ends the last one): e.g. a DMT copy of the student
    at that length (benchmarks/length_scaling.py). It must not change the models' weights.
    `tracking`: rank 0 also logs each metrics row and the config to TensorBoard / W&B (`trainers/tracking.py`)."""
    dev = pick_device(cfg.device)
    cfg.smt.check_length(corpus.seq_len)
    run = RunDir(str(out), endpoint_url=endpoint_url) if out else None
    with run.writing(writer) if run is not None and rank == 0 else contextlib.nullcontext():
        state = build_state(corpus, cfg, run, dev)
        teacher, student, tcfg = state.teacher, state.student, state.teacher.cfg
        lead, resumed_from = rank == 0, (state.step if state.starts else None)
        state.starts.append(state.step)
        stages = [with_length(corpus, T) for T in cfg.curriculum] + [corpus]
        cur = stages[state.stage]
        ex, ey = (t.to(dev) for t in eval_batch(cur, cfg.eval_size, cfg.seed))
        prompt = cfg.smt.start
        record = {"stage": "pretrain", "corpus": corpus.spec, "config": asdict(cfg), "world_size": world_size,
                  "start_step": state.step,
                  "changes": {k: {"old": a, "new": b} for k, (a, b) in state.changes.items()}}
        if lead and run is not None:
            announce_resume(run, state.step, state.changes)
            run.write_json("run.json", record)
        tracker = open_tracker(tracking, "pretrain", run=run.url if run else None, start_step=state.step,
                               config=record) if lead else None
        # a resumed run's writer drops the rows past its checkpoint (they belong to the attempt that was killed)
        log = MetricsLog(None, cfg.steps, "pretrain", quiet or not lead, cfg.clock, start=state.elapsed,
                         seconds=cfg.seconds, store=run.metrics_writer(state.step) if lead and run else None,
                         tracker=tracker)
        log.advance(state.step)
        objective = JointObjective(teacher, student.updater, cfg.smt)
        model = wrap(objective) if wrap else objective
        if world_size > 1 and sync is None:
            raise ValueError(f"world_size={world_size} needs `sync` (rank 0's decisions for every worker)")
        share = sync if world_size > 1 else (lambda v: v)

        def evaluate() -> dict:
            with log.paused():
                teacher.eval()
                state.sync_readout()
                te = evaluate_teacher(teacher, ex, ey, prompt)
                # drift needs every teacher memory: cheap for the causal encoder, one pass per prefix for register
                st = evaluate_student(student, ex, ey, teacher if (tcfg.encoder_kind.one_pass or prompt) else None, prompt)
                teacher.train()
            return {"teacher_acc": te["acc"], "teacher_loss": te["loss"], "smt_acc": st["acc"], "smt_loss": st["loss"],
                    **({"drift_final": st["drift_final"]} if "drift_final" in st else {})}

        done = state.finished or state.step >= cfg.steps
        try:
            while not done:
                step = state.step + 1
                x, y = (torch.as_tensor(a, dtype=torch.long, device=dev)
                        for a in batch_at(cur, cfg.batch_size, cfg.seed, step, rank, world_size))
                with autocast(dev):
                    losses = model(x, y, positions_generator(cfg.seed, step, rank))
                losses["loss"].backward()
                gn = clip_and_step(state.params, state.opt, state.sched, cfg.optim.grad_clip)
                state.step = step
                log.advance()
                done = step >= cfg.steps or (cfg.seconds is not None and log.elapsed() >= cfg.seconds)
                if cfg.seconds is not None:  # clocks differ between workers: rank 0's says when the budget is spent
                    done = bool(share([int(done)])[0])
                if step % cfg.eval_every == 0 or done:
                    stage = state.stage
                    if lead:
                        state.last_eval = log.log(step, **losses, grad_norm=gn, lr=state.sched.get_last_lr()[0],
                                                  T=cur.seq_len, **evaluate())
                        if reporter:  # figures for the report (e.g. on the test split): never read by the rules below
                            with log.paused():
                                state.last_eval.update(reporter(student, state.last_eval))
                        if on_eval:
                            with log.paused():  # a caller's extra evaluation is not training time
                                on_eval(state.last_eval)
                        acc = state.last_eval["teacher_acc"]
                        passed = False
                        if stage < len(stages) - 1 and acc >= cfg.curriculum_acc:
                            stage, passed = stage + 1, True
                        elif stage == len(stages) - 1 and cfg.stop_at_acc is not None and acc >= cfg.stop_at_acc:
                            done = passed = True
                        if passed and on_stage_end:
                            with log.paused():
                                teacher.eval()
                                state.sync_readout()
                                on_stage_end(teacher, student, cur, state.last_eval)
                                teacher.train()
                    stage, done = share([stage, int(done)])
                    done = bool(done)
                    if stage != state.stage:
                        state.stage, cur = stage, stages[stage]
                        ex, ey = (t.to(dev) for t in eval_batch(cur, cfg.eval_size, cfg.seed))
                if lead and run is not None and (step % cfg.checkpoint_every == 0 or done):
                    state.elapsed, state.finished = log.elapsed(), done
                    save(state, run)
        finally:
            log.close()  # on an exception too: trackers flush and close (W&B marks the run finished)
        if lead:
            state.sync_readout()  # also on a resume of a finished run: outputs carry the final teacher's readout
        teacher.eval()
        student.eval()
        result = {"teacher": teacher, "student": student, "history": log.history, "final": state.last_eval,
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
