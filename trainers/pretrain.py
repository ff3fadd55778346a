"""Stage 1: joint SMT pretraining of the teacher and a reference updater, with evaluation hooks.

Writes `<out>/teacher` (the teacher checkpoint whose fingerprint names its target shards),
`<out>/student` (the reference updater with the teacher's readout), `<out>/metrics.jsonl` and
`<out>/run.json` (the resolved config).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import save_student, save_teacher
from models.student import Student
from models.teacher import Teacher, TeacherConfig
from models.updaters import UpdaterConfig
from trainers.common import OptimConfig, autocast, clip_and_step, open_run, pick_device
from trainers.evaluate import evaluate_student, evaluate_teacher
from trainers.smt import SMTConfig, smt_losses


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
    """Training budget in seconds of `clock` (evaluation excluded); stops early when spent."""
    batch_size: int = 32
    """Sequences per step."""
    eval_every: int = 50
    """Evaluate (teacher and rolled-out updater) every N steps."""
    eval_size: int = 256
    """Sequences of the valid split for the evaluations that drive the curriculum and `stop_at_acc`."""
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


def matched_updater(teacher_cfg: TeacherConfig, updater: UpdaterConfig) -> UpdaterConfig:
    """The updater config with K, d and vocab taken from the teacher."""
    return UpdaterConfig(**{**asdict(updater), "vocab_size": teacher_cfg.vocab_size,
                            "mem_tokens": teacher_cfg.mem_tokens, "d_model": teacher_cfg.d_model})


def with_length(corpus, T: int):
    """The same synthetic task at another sequence length (for the length curriculum)."""
    from pipeline.corpora import load_corpus

    if corpus.mode != "prefix" or f"T={corpus.seq_len}" not in corpus.spec:
        raise ValueError(f"curriculum needs a synthetic task with a T parameter, not {corpus.spec!r}: drop --curriculum")
    if not 1 <= T < corpus.seq_len:
        raise ValueError(f"curriculum length {T} must be below the corpus length T={corpus.seq_len}")
    return load_corpus(re.sub(r"(?<=[:,])T=\d+", f"T={T}", corpus.spec, count=1))


def eval_batch(corpus, n: int, seed: int, split: str = "valid") -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed evaluation set of the corpus's `split`: valid for stopping rules and model choice (the
    default), test only for reported figures (see `pipeline.corpora.held_out`)."""
    from pipeline.corpora import held_out

    x, y = held_out(corpus, split, n, seed)
    return torch.as_tensor(x, dtype=torch.long), torch.as_tensor(y, dtype=torch.long)


def pretrain(corpus, cfg: PretrainConfig, out: str | Path | None = None, quiet: bool = False,
             on_eval=None, reporter=None) -> dict:
    """Train; returns {"teacher", "student", "history", "final", "seconds", "fingerprint"}.
    `reporter(student, row) -> dict`, when given, runs after each evaluation off the training clock and its
    figures join the row (for reports, e.g. on the test split; the curriculum and stop rules never read them)."""
    torch.manual_seed(cfg.seed)
    dev = pick_device(cfg.device)
    tcfg = TeacherConfig(**{**asdict(cfg.teacher), "vocab_size": corpus.vocab_size})
    cfg.smt.check_length(corpus.seq_len)
    teacher = Teacher(tcfg).to(dev)
    ucfg = matched_updater(tcfg, cfg.updater)
    student = Student.from_teacher(teacher, ucfg).to(dev)
    params = list(teacher.parameters()) + list(student.updater.parameters())
    opt, sched = cfg.optim.build(params, cfg.steps)
    rng = np.random.default_rng(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    stages = [with_length(corpus, T) for T in cfg.curriculum] + [corpus]
    stage = 0
    cur = stages[0]
    ex, ey = (t.to(dev) for t in eval_batch(cur, cfg.eval_size, cfg.seed))
    prompt = cfg.smt.Tc if cfg.smt.mode == "stream" else 0
    out, log = open_run(out, "pretrain", corpus.spec, cfg, quiet)
    final: dict = {}
    step = 0

    def evaluate() -> dict:
        with log.paused():
            return _evaluate()

    def _evaluate() -> dict:
        teacher.eval()
        student.readout_net.load_state_dict(teacher.decoder.state_dict())
        with torch.no_grad():
            student.m0.copy_(teacher.encode(ex[:1, :0])[0])
        te = evaluate_teacher(teacher, ex, ey, prompt)
        # drift needs every teacher memory: cheap for the causal encoder, one pass per prefix for register
        st = evaluate_student(student, ex, ey, teacher if (tcfg.encoder == "causal" or prompt) else None, prompt)
        teacher.train()
        return {"teacher_acc": te["acc"], "teacher_loss": te["loss"], "smt_acc": st["acc"],
                "smt_loss": st["loss"], **({"drift_final": st["drift_final"]} if "drift_final" in st else {})}

    for step in range(1, cfg.steps + 1):
        x, y = (torch.as_tensor(a, dtype=torch.long, device=dev) for a in cur.sample(cfg.batch_size, rng))
        with autocast(dev):
            losses = smt_losses(teacher, student.updater, x, y, cfg.smt, g)
        losses["loss"].backward()
        gn = clip_and_step(params, opt, sched, cfg.optim.grad_clip)
        log.advance()
        done = (cfg.seconds is not None and log.elapsed() >= cfg.seconds) or step == cfg.steps
        if step % cfg.eval_every == 0 or done:
            final = log.log(step, **losses, grad_norm=gn, lr=sched.get_last_lr()[0], T=cur.seq_len, **evaluate())
            if reporter:  # figures for the report (e.g. on the test split): never read by the rules below
                with log.paused():
                    final.update(reporter(student, final))
            if on_eval:
                with log.paused():  # a caller's extra evaluation is not training time
                    on_eval(final)
            if stage < len(stages) - 1 and final["teacher_acc"] >= cfg.curriculum_acc:
                stage += 1
                cur = stages[stage]
                ex, ey = (t.to(dev) for t in eval_batch(cur, cfg.eval_size, cfg.seed))
            elif stage == len(stages) - 1 and cfg.stop_at_acc is not None and final["teacher_acc"] >= cfg.stop_at_acc:
                done = True
        if done:
            break
    log.close()
    evaluate()  # leaves readout and m0 synced with the final teacher
    teacher.eval()
    student.eval()
    result = {"teacher": teacher, "student": student, "history": log.history, "final": final,
              "seconds": log.elapsed(), "steps": step}
    if out:
        result["fingerprint"] = save_teacher(str(out / "teacher"), teacher, {"corpus": corpus.spec, "steps": step})
        save_student(str(out / "student"), student, result["fingerprint"],
                     {"corpus": corpus.spec, "trained_by": "smt", "steps": step})
    return result
