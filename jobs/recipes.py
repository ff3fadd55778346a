"""Named pipeline recipes: one corpus, one teacher, and the settings of every stage.

A recipe is a `Recipe` tree of dataclasses. `smt pipeline --recipe NAME` runs a named one; `--recipe
FILE.json|yaml` loads a file holding the same tree (only the fields to change from `--base`, default the
first recipe below); `--set key.sub=value` overrides single fields. The `-tiny` recipes run on a laptop
from offline corpora; the others are at the reference scale of the method (GPU clusters).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.teacher import ConfigError, TeacherConfig
from trainers.common import OptimConfig
from trainers.pretrain import PretrainConfig
from trainers.smt import SMTConfig


@dataclass(kw_only=True)
class LabelStep:
    workers: int = 2
    """Ray actors labeling (0 = in-process)."""
    fmt: str = "zarr"
    """Shard format: zarr or wds."""
    dtype: str = "float16"
    """Stored state dtype."""
    shard_sequences: int = 256
    """Sequences per shard."""
    gpus_per_worker: float = 0.0
    """GPUs per labeling actor (set >0 on GPU clusters)."""


@dataclass(kw_only=True)
class StudentStep:
    arch: str = "mlp"
    """Student updater architecture (transformer, mlp, gru)."""
    depth: int = 2
    """Updater blocks."""
    steps: int = 400
    """SMT steps from the teacher's labels before the first DMT round."""
    batch_size: int = 512
    """Transitions per step."""
    lr: float = 1e-3
    """Learning rate (AdamW, 20 warm-up steps, constant)."""


@dataclass(kw_only=True)
class DMTStep:
    mode: str = "lockstep"
    """'lockstep': a trainer actor streams the rounds the DMT actor appends (aggregated DMT; it never trains
    on relabels more than 2 x steps_per_round steps old); 'online': the actor relabels each round for the
    record and the driver takes steps_per_round on-policy DMT steps (trainers/dmt.py)."""
    rounds: int = 40
    """DMT rounds: the DMT actor rolls the student out and appends the relabeled states as a round."""
    sequences: int = 64
    """Sequences rolled out (and relabeled) per round by the actor."""
    steps_per_round: int = 2
    """Student steps between rounds."""
    extra_steps: int = 20
    """lockstep: steps after the last round's boundary."""
    lr: float = 1e-4
    """DMT learning rate (cosine over the DMT phase; with carry_optimizer, benchmarks/results/dmt_dip.md)."""
    batch_size: int = 32
    """Sequences per DMT step (lockstep: their transitions, sequences x rollout length)."""
    refresh: bool = True
    """lockstep: the trainer re-rolls the newest round's sequences with its current student before each step
    (on-policy states, stored teacher targets); False trains on the states the actor stored."""
    round_decay: float = 0.1
    """lockstep: share of round r proportional to round_decay ** (newest - r) (0.5 suits refresh=False)."""
    dmt_weight: float = 2.0
    """lockstep: weight of the relabeled rounds against the teacher's own labels (weight 1)."""
    beta: float = 0.0
    """Share of teacher-state transitions as DMT starts (DAgger's beta, 0 = off): lockstep, round 0's share of the
    records, decaying to the share dmt_weight leaves it; online, teacher-state sequences per step, decaying to 0."""
    beta_halflife: float = 10.0
    """DMT steps over which the extra teacher-state share halves (lockstep: in rounds of steps_per_round)."""
    ema: float = 0.0
    """Roll out an EMA of the student with this decay per step (refreshes and relabels); 0 = the student."""
    carry_optimizer: bool = True
    """Start DMT from the SMT phase's AdamW moments instead of fresh ones (the lr schedule is DMT's own): with
    lr 1e-4 the least dip and the best final student (benchmarks/results/dmt_dip.md)."""

    def __post_init__(self) -> None:
        if self.mode not in ("lockstep", "online"):
            raise ValueError(f"dmt.mode={self.mode!r}: use 'lockstep' or 'online'")


@dataclass(kw_only=True)
class Recipe:
    name: str = "retrieval-demo"
    """Recipe name."""
    corpus: str = "retrieval:T=64,vocab=8,n=1024"
    """Corpus spec."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Teacher pretraining (joint SMT)."""
    label: LabelStep = field(default_factory=LabelStep)
    """Labeling."""
    student: StudentStep = field(default_factory=StudentStep)
    """Student SMT from shards."""
    dmt: DMTStep = field(default_factory=DMTStep)
    """DMT actor rounds."""
    bptt: bool = True
    """Also train the BPTT baseline (same updater, same wall-clock as the SMT pipeline)."""
    bptt_max_seconds: float | None = None
    """Cap on the BPTT baseline's budget (None: exactly the SMT pipeline's wall-clock)."""
    eval_size: int = 1024
    """Test-split sequences for every reported figure (the whole split when smaller; >= 1024 for synthetic
    tasks, >= 256 windows for real corpora)."""


def _tiny_teacher(**kw) -> TeacherConfig:
    return TeacherConfig(d_model=64, n_heads=4, encoder_depth=2, decoder_depth=2, mem_tokens=4, **kw)


def _reference_teacher(**kw) -> TeacherConfig:
    # the paper's released configuration: d 256, 8 heads, encoder 8, decoder 4, K 16 (Z = 4096)
    return TeacherConfig(d_model=256, n_heads=8, encoder_depth=8, decoder_depth=4, mem_tokens=16, **kw)


def _reference_pretrain(teacher: TeacherConfig, smt: SMTConfig) -> PretrainConfig:
    return PretrainConfig(teacher=teacher, smt=smt, steps=150_000, batch_size=128, eval_every=1000,
                          optim=OptimConfig(lr=3e-4, warmup_frac=0.01), updater=_updater("transformer", 8))


def _updater(arch: str, depth: int):
    from models.updaters import UpdaterConfig

    return UpdaterConfig(arch=arch, depth=depth)



def _tiny_pixels_pretrain() -> PretrainConfig:
    """The laptop-sized teacher for 64-pixel digits (both digits recipes)."""
    return PretrainConfig(teacher=_tiny_teacher(encoder="causal"), updater=_updater("mlp", 2),
                          smt=SMTConfig(Tf=16), optim=OptimConfig(lr=1e-3, warmup_steps=20), steps=400,
                          seconds=120, eval_every=50)

RECIPES: dict[str, Recipe] = {
    "retrieval-demo": Recipe(
        pretrain=PretrainConfig(teacher=_tiny_teacher(encoder="causal"), updater=_updater("mlp", 2),
                                optim=OptimConfig(lr=1e-3, warmup_steps=20), steps=5000, seconds=300,
                                curriculum=(16, 32), stop_at_acc=0.99, eval_every=25)),
    "tinystories-bytes": Recipe(
        name="tinystories-bytes", corpus="hf:roneneldan/TinyStories|T=320,stride=320",
        pretrain=_reference_pretrain(_reference_teacher(encoder="causal", window=256),
                                     SMTConfig(mode="stream", Tc=256, Tf=64)),
        label=LabelStep(workers=8, shard_sequences=1024, gpus_per_worker=1.0),
        student=StudentStep(arch="transformer", depth=8, steps=150_000, batch_size=4096, lr=3e-4),
        dmt=DMTStep(rounds=150, sequences=320, steps_per_round=10, extra_steps=0), bptt=False),
    # Byte-level text on any files (`--set corpus=text:<file or glob>|T=96,stride=48`); by default the English
    # help topics every Python carries, so it runs offline from any directory. Memories see Tc=64 bytes
    # (teacher window 64, 2 layers); the last 32 bytes of each 96-byte test window are scored.
    "text-bytes-tiny": Recipe(
        name="text-bytes-tiny", corpus="text:{pydoc}|T=96,stride=48",
        pretrain=PretrainConfig(teacher=_tiny_teacher(encoder="causal", window=64), updater=_updater("mlp", 2),
                                smt=SMTConfig(mode="stream", Tc=64, Tf=32), optim=OptimConfig(lr=1e-3, warmup_steps=20),
                                steps=400, seconds=120, eval_every=50),
        label=LabelStep(shard_sequences=64), student=StudentStep(steps=200),
        dmt=DMTStep(rounds=10, sequences=64, steps_per_round=2), bptt=True, eval_size=256),
    "mnist-pixels": Recipe(
        name="mnist-pixels", corpus="mnist|split=train",
        pretrain=_reference_pretrain(_reference_teacher(encoder="causal"), SMTConfig(dec_positions=8, Tf=64)),
        label=LabelStep(workers=8, shard_sequences=512, gpus_per_worker=1.0),
        student=StudentStep(arch="transformer", depth=8, steps=150_000, batch_size=4096, lr=3e-4),
        dmt=DMTStep(rounds=150, sequences=320, steps_per_round=10, extra_steps=0), bptt=False),
    "mnist-pixels-tiny": Recipe(
        name="mnist-pixels-tiny", corpus="digits:split=train",
        pretrain=_tiny_pixels_pretrain(),
        label=LabelStep(shard_sequences=256), student=StudentStep(steps=200),
        dmt=DMTStep(rounds=10, sequences=64, steps_per_round=2), bptt=False, eval_size=128),
    # scikit-learn's 8x8 digits as 64 raster-order pixels of 17 grey levels (raw=1: the data's own levels,
    # vocab 17); bits per pixel over the 63 pixels after the first, on the whole test split.
    "digits-pixels-tiny": Recipe(
        name="digits-pixels-tiny", corpus="digits:raw=1",
        pretrain=_tiny_pixels_pretrain(),
        label=LabelStep(shard_sequences=256), student=StudentStep(steps=200),
        dmt=DMTStep(rounds=10, sequences=64, steps_per_round=2), bptt=True, eval_size=512),
}


def pydoc_text() -> str:
    """Path of a plain-text copy of `pydoc_data.topics` (topics in sorted order, blank-line separated), written
    atomically to the cache folder on first use; the stdlib module is the source, so this works offline."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k].strip("\n") for k in sorted(topics)) + "\n"
    root = Path(os.environ.get("SMT_CACHE") or Path.home() / ".cache" / "smt-pipeline")
    name = f"pydoc-topics-py{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}.txt"
    data = text.encode("utf-8")
    for folder in (root, Path(tempfile.gettempdir()) / "smt-pipeline"):  # a read-only home falls back to /tmp
        path = folder / name
        try:
            if not path.exists() or path.read_bytes() != data:
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=name + ".")
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)  # readers see the whole file or none
            return str(path)
        except OSError:
            continue
    raise ConfigError(f"cannot write the pydoc text under {root} or the temp folder: set SMT_CACHE to a writable folder")


def resolve_corpus(spec: str) -> str:
    """The corpus spec with `{pydoc}` replaced by the cached pydoc text file (see `pydoc_text`)."""
    return spec.replace("{pydoc}", pydoc_text()) if "{pydoc}" in spec else spec


def load_recipe(name_or_file: str, overrides: list[str] = ()) -> Recipe:
    if name_or_file in RECIPES:
        rc = RECIPES[name_or_file]
        rc = dataclasses.replace(rc)  # a shallow copy; `_apply` rebuilds what it changes
    else:
        p = Path(name_or_file)
        if not p.exists():
            raise ConfigError(f"recipe {name_or_file!r} is neither a named recipe ({', '.join(RECIPES)}) nor a file")
        text = p.read_text()
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        base = RECIPES[data.pop("base", "retrieval-demo")]
        rc = _apply(base, data, name_or_file)
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not key.sub=value: e.g. --set student.steps=100")
        key, value = ov.split("=", 1)
        tree: dict[str, Any] = {}
        node = tree
        parts = key.split(".")
        for k in parts[:-1]:
            node = node.setdefault(k, {})
        try:
            node[parts[-1]] = json.loads(value)
        except json.JSONDecodeError:
            node[parts[-1]] = value  # a bare string, e.g. student.arch=gru
        rc = _apply(rc, tree, f"--set {ov}")
    return dataclasses.replace(rc, corpus=resolve_corpus(rc.corpus))


def _apply(obj, changes: dict, where: str):
    """A copy of dataclass `obj` with nested `changes` applied; unknown fields name the path and the fix."""
    kw = {}
    names = {f.name: f for f in dataclasses.fields(obj)}
    for k, v in changes.items():
        if k not in names:
            raise ConfigError(f"{where}: unknown field {k!r} of {type(obj).__name__}: use one of {', '.join(names)}")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur) and isinstance(v, dict):
            kw[k] = _apply(cur, v, where)
        elif isinstance(cur, tuple) and isinstance(v, list):
            kw[k] = tuple(v)
        else:
            kw[k] = v
    return dataclasses.replace(obj, **kw)


def to_dict(rc: Recipe) -> dict:
    return dataclasses.asdict(rc)
