"""The BPTT baseline: the same updater architectures trained end to end through time.

The student has its own readout (a fresh memory decoder of the teacher's shape) and a learned,
RMS-normalised initial memory. Full BPTT keeps the graph over the whole sequence; truncated BPTT
(`truncate=k`) detaches the state every k steps. The readout is applied only where a target exists.
It gets the same selection rules as SMT pretraining: a length curriculum (move on once the rolled-out
accuracy on the valid split reaches `curriculum_acc`) and `stop_at_acc`, both read on the valid split.
With `out` (a local folder or any URL; a `RunDir` names an S3 endpoint) a run writes, under the run's writer
lease, its record `run.json` (kind "bptt": corpus, config), its metrics (`RunDir.metrics()`) and at the end
`student/`; an lr sweep writes OUT/run.json (kind "bptt-sweep"), one such run per lr under OUT/lr-<lr>/,
OUT/selection.json and the chosen student OUT/student (layouts: storage/layout.py).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from models.device import pick_device
from models.student_rnn import Student
from models.teacher import TeacherConfig
from models.updaters import UpdaterConfig, matched_updater
from storage.checkpoints import save_student
from storage.layout import record
from storage.lease import Writer
from storage.run_dir import RunDir
from trainers.budget import Budget, LengthCurriculum
from trainers.common import OptimConfig, as_run, open_log
from trainers.evaluate import evaluate_student
from trainers.loop import Callbacks, Curriculum, Evaluation, Loop, Objective, train
from trainers.losses import masked_ce
from trainers.pretrain import with_length
from trainers.tracking import TrackingConfig


@dataclass(kw_only=True)
class BPTTConfig(LengthCurriculum, Budget):  # fields (and --help): the budget first
    updater: UpdaterConfig = field(default_factory=UpdaterConfig)
    """Updater architecture (K, d, vocab from `shape`)."""
    shape: TeacherConfig = field(default_factory=TeacherConfig)
    """Memory shape (K, d) and readout depth, matched to the SMT teacher for a fair comparison."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser."""
    truncate: int | None = None
    """Truncated BPTT: detach the state every k steps (None = full BPTT)."""
    lrs: tuple[float, ...] = ()
    """Learning-rate sweep (e.g. 3e-4 1e-3 3e-3) run by `sweep_bptt`, one run per lr with this whole config,
    chosen on valid; empty = one run at optim.lr."""


def bptt_loss(student: Student, x: torch.Tensor, y: torch.Tensor, truncate: int | None = None) -> torch.Tensor:
    B, T = x.shape
    m = student.start(B)
    kept, targets = [], []
    for t in range(T):
        if truncate and t % truncate == 0:
            m = m.detach()
        m = student.step(m, x[:, t])
        if bool((y[:, t] != -1).any()):
            kept.append(m)
            targets.append(y[:, t])
    if not kept:
        return m.sum() * 0.0
    S = torch.stack(kept, 1)
    logits = student.readout(S.reshape(-1, S.shape[-1])).view(B, len(kept), -1)
    return masked_ce(logits, torch.stack(targets, 1))


class BPTTState:
    """What the loop steps: the student, its AdamW and schedule, the data RNG, the step."""

    def __init__(self, student: Student, cfg: BPTTConfig) -> None:
        self.student, self.params = student, list(student.parameters())
        self.opt, self.sched = cfg.optim.build(self.params, cfg.steps)
        self.rng, self.step = np.random.default_rng([cfg.seed, 0xB977]), 0


class BPTT(Objective):
    """BPTT's step: sequences of the current curriculum stage, the loss through time (truncated every k)."""

    def __init__(self, student: Student, cfg: BPTTConfig, curriculum: Curriculum, device: torch.device) -> None:
        self.student, self.cfg, self.curriculum, self.device = student, cfg, curriculum, device

    def batch(self, loop: Loop) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.as_tensor(a, dtype=torch.long, device=self.device)
                     for a in self.curriculum.corpus.sample(self.cfg.batch_size, loop.state.rng))

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": bptt_loss(self.student, *batch, self.cfg.truncate)}

    def columns(self, loop: Loop) -> dict:
        return {"lr": loop.state.sched.get_last_lr()[0], "T": self.curriculum.corpus.seq_len}


def train_bptt(corpus, cfg: BPTTConfig, out: str | Path | RunDir | None = None, quiet: bool = False, *,
               callbacks: Callbacks | None = None, tracking: TrackingConfig | None = None,
               writer: Writer | None = None) -> dict:
    """Train the BPTT baseline on the loop of `trainers/loop.py`, writing the run `out` (module docstring; None:
    nothing is written) while holding its lease as `writer`; returns {"student", "history", "final", "seconds",
    "steps"}. `callbacks` as in `trainers.pretrain.pretrain` (`on_eval`, and `reporter`: report-only figures,
    off the training clock). `tracking`: also log the rows and the config to TensorBoard / W&B."""
    run = as_run(out)
    with run.writing(writer) if run is not None else contextlib.nullcontext():
        return _train_bptt(corpus, cfg, run, quiet, callbacks, tracking)


def _train_bptt(corpus, cfg: BPTTConfig, run: RunDir | None, quiet: bool, callbacks: Callbacks | None,
                tracking: TrackingConfig | None) -> dict:
    torch.manual_seed(cfg.seed)
    dev = pick_device(cfg.device)
    shape = TeacherConfig(**{**asdict(cfg.shape), "vocab_size": corpus.vocab_size})
    state = BPTTState(Student(matched_updater(shape, cfg.updater), shape).to(dev), cfg)
    student = state.student
    curriculum = Curriculum([with_length(corpus, T) for T in cfg.curriculum] + [corpus], "bptt_acc",
                            cfg.curriculum_acc, cfg.stop_at_acc, eval_size=cfg.eval_size, seed=cfg.seed, device=dev)
    log = open_log(run, record("bptt", corpus=corpus.spec, config=asdict(cfg)), cfg, quiet, tracking)

    def figures() -> dict:
        student.eval()
        r = evaluate_student(student, *curriculum.batch)
        student.train()
        return {"bptt_acc": r["acc"], "bptt_loss": r["loss"]}

    loop = Loop(state, run, log, True, None, stop=cfg.steps, seconds=cfg.seconds)
    final = train(loop, BPTT(student, cfg, curriculum, dev), [Evaluation(cfg.eval_every, figures, curriculum=curriculum, callbacks=callbacks,
                                               model=student)], cfg.optim.grad_clip, dev)
    student.eval()
    if run is not None:
        run.check_writer()
        save_student(run.bucket.child("student"), student, None,
                     {"corpus": corpus.spec, "trained_by": "bptt", "steps": state.step})
    return {"student": student, "history": log.history, "final": final, "seconds": log.elapsed(),
            "steps": state.step}


def sweep_key(final: dict, acc: str, loss: str) -> tuple:
    """How an lr sweep ranks its runs on valid (larger is better): the run furthest along its length curriculum
    first (the full length beats any stage below it, and when no run reached it, the longest stage reached
    wins: an lr stuck at T=16 never beats one at T=128), then the final valid accuracy, then the lower valid
    loss. `final` is a run's last evaluation row (with "T"); `acc`/`loss` name its valid figures."""
    return final.get("T") or 0, final.get(acc, -1.0), -final.get(loss, 0.0)


def sweep_bptt(corpus, cfg: BPTTConfig, out: str | Path | RunDir | None = None, quiet: bool = False,
               tracking: TrackingConfig | None = None, writer: Writer | None = None) -> dict:
    """One `train_bptt` run per lr of `cfg.lrs` (or one at optim.lr), each with the whole of `cfg` (its own
    `seconds`), under OUT/lr-<lr>/. Chosen on valid by `sweep_key`: the run furthest along the curriculum (the
    full length first), then the best final valid accuracy, then the lower valid loss. The winner goes to
    OUT/student, the sweep to OUT/selection.json, all under OUT's lease held as `writer` (each lr's run holds
    its own). Returns the winner's `train_bptt` result plus "lr" and "runs" (per lr: steps, seconds, the
    length reached, and the final valid figures, None with a `note` when the run never reached the full
    length). `tracking`: each lr's run is its own tracked run (TensorBoard under DIR/lr-<lr>)."""
    run = as_run(out)
    with run.writing(writer) if run is not None else contextlib.nullcontext():
        if run is not None:
            run.write_record("bptt-sweep", corpus=corpus.spec, config=asdict(cfg))
        lr, best, runs = _sweep(corpus, cfg, run, quiet, tracking, writer)
        if run is not None:
            run.check_writer()
            save_student(run.bucket.child("student"), best["student"], None,
                         {"corpus": corpus.spec, "trained_by": "bptt", "steps": best["steps"], "lr": lr})
            run.write_json("selection.json", {"corpus": corpus.spec, "chosen_on": corpus.with_split("valid").spec,
                                              "chosen_lr": lr, "runs": runs})
    return {**best, "lr": lr, "runs": runs}


def _sweep(corpus, cfg: BPTTConfig, run: RunDir | None, quiet: bool, tracking: TrackingConfig | None,
           writer: Writer | None) -> tuple[float, dict, list[dict]]:
    """(chosen lr, its `train_bptt` result, one row per lr) of the sweep (`sweep_bptt`)."""
    lrs = cfg.lrs or (cfg.optim.lr,)
    results = []
    for lr in lrs:
        one = replace(cfg, optim=replace(cfg.optim, lr=lr), lrs=())
        tr = tracking.child(f"lr-{lr:g}") if tracking is not None and len(lrs) > 1 else tracking
        results.append((lr, train_bptt(corpus, one, out=run.child(f"lr-{lr:g}") if run is not None else None,
                                       quiet=quiet, tracking=tr, writer=writer)))

    lr, best = max(results, key=lambda p: sweep_key(p[1]["final"], "bptt_acc", "bptt_loss"))
    runs = []
    for x, r in results:
        f, full = r["final"], r["final"].get("T") == corpus.seq_len
        runs.append({"lr": x, "folder": f"lr-{x:g}", "steps": r["steps"], "seconds": round(r["seconds"], 2),
                     "T": f.get("T"), "valid_acc": f.get("bptt_acc") if full else None,
                     "valid_loss": f.get("bptt_loss") if full else None, "chosen": x == lr,
                     **({} if full else {"note": f"the curriculum never reached T={corpus.seq_len} "
                                                  f"(stopped at T={f.get('T')})"})})
    return lr, best, runs
