"""Named pipeline recipes: one corpus, one teacher, and the config of every stage, as a tree of the
components' own config classes (the same ones `smt pretrain`, `smt label`, `smt train` and `smt dmt` parse).

`smt pipeline --recipe NAME` runs a named one; `--recipe FILE.json|yaml` loads a file holding the same tree
(only the fields to change from its `base:`, default the first recipe below); flags override any field by
its path in the tree (`--student.steps 300`, `--dmt.rounds 2`, `--pretrain.teacher.d-model 16`). The `-tiny`
recipes run on a laptop from offline corpora; the others are at the reference scale of the method (GPU clusters).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import sys
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from models.teacher import ConfigError, TeacherConfig
from models.updaters import UpdaterConfig
from pipeline.executors import ExecutorConfig
from pipeline.label import LabelConfig
from trainers.bptt import BPTTConfig
from trainers.common import OptimConfig
from trainers.dmt import DMTLoopConfig, LockstepDMTConfig, OnlineDMTConfig, RefreshConfig
from trainers.dmt.mixing import StreamConfig
from trainers.pretrain import PretrainConfig
from trainers.smt import SMTConfig
from trainers.student import StudentTrainConfig


def pipeline_view(name: str, cls: type, *derived: str) -> type:
    """`cls` as a stage of the recipe tree: the fields in `derived`, which `smt pipeline` sets from its earlier
    stages (`jobs.pipeline_job.wired`), are hidden from its flags and `--help`. The view is a subclass (every
    function taking `cls` takes it); `wired` hands the stage a plain `cls` with those fields set. `name` is the
    module-level name it is bound to, so a recipe pickles."""
    hints = typing.get_type_hints(cls, include_extras=True)
    by_name = {f.name: f for f in dataclasses.fields(cls)}

    def same_default(f: dataclasses.Field) -> dataclasses.Field:
        if f.default_factory is not dataclasses.MISSING:
            return field(default_factory=f.default_factory)
        return field(default=f.default)

    view = dataclasses.make_dataclass(name, [(n, Annotated[hints[n], tyro.conf.Suppress],
                                                      same_default(by_name[n])) for n in derived],
                                      bases=(cls,), kw_only=True)
    view.__doc__, view.__module__, view.__qualname__, view.derived = cls.__doc__ or "", __name__, name, derived
    return view


PipelineLabel = pipeline_view("PipelineLabel", LabelConfig, "teacher", "corpus", "out", "Tc")
PipelineDMTActor = pipeline_view("PipelineDMTActor", DMTLoopConfig, "targets", "run", "corpus", "teacher", "rounds",
                                 "every_steps", "first_step", "start", "format", "dtype")
PipelineDMTPhase = pipeline_view("PipelineDMTPhase", StudentTrainConfig, "updater", "steps", "phase_start")
PipelineOnline = pipeline_view("PipelineOnline", OnlineDMTConfig, "steps", "start")
PipelineBaseline = pipeline_view("PipelineBaseline", BPTTConfig, "updater", "shape", "batch_size", "curriculum",
                                 "curriculum_acc", "stop_at_acc", "eval_every", "eval_size", "seconds")
_VIEWS = {"label": PipelineLabel, "dmt_actor": PipelineDMTActor, "dmt_phase": PipelineDMTPhase,
          "online": PipelineOnline, "baseline": PipelineBaseline}


@dataclass(kw_only=True)
class Recipe:
    name: str = "retrieval-demo"
    """Recipe name."""
    corpus: str = "retrieval:T=64,vocab=8,n=1024"
    """Corpus spec."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Teacher pretraining (joint SMT)."""
    label: PipelineLabel = field(default_factory=PipelineLabel)
    """Labeling (teacher, corpus, bucket and Tc come from the earlier stages)."""
    label_executor: ExecutorConfig = field(default_factory=lambda: ExecutorConfig(workers=2, gpus_per_worker=0.0))
    """Labeling workers (Ray actors; 0 = in-process); its GPUs per worker also go to the DMT actors."""
    student: StudentTrainConfig = field(default_factory=lambda: _student(400))
    """Student SMT from the shards."""
    dmt: LockstepDMTConfig = field(default_factory=lambda: _lockstep(40))
    """DMT rounds after the student's SMT phase: `rounds` of them, one per `every` student steps, the newest
    round re-rolled on-policy before each step (`refresh`)."""
    dmt_actor: PipelineDMTActor = field(default_factory=lambda: _actor(64))
    """The DMT actor: sequences rolled out and relabeled per round (its schedule comes from `dmt`, the rest from
    the earlier stages)."""
    dmt_phase: PipelineDMTPhase = field(default_factory=lambda: _dmt_phase(2048))
    """The student run's DMT phase: optimiser and stream over round 0 + the DMT rounds (its updater, steps and
    phase start come from `student` and `dmt`)."""
    dmt_extra_steps: int = 20
    """Lockstep DMT: steps after the last round's boundary."""
    dmt_online: bool = False
    """Online DMT instead of lockstep: the actor relabels each round for the record and the driver takes
    `dmt.every` on-policy DMT steps between rounds (`online`)."""
    online: PipelineOnline = field(default_factory=lambda: OnlineDMTConfig(
        optim=OptimConfig(lr=1e-4, schedule="cosine", warmup_steps=10), batch_size=32, eval_every=10**9, eval_size=64))
    """With dmt_online: the online DMT steps (their count and the rollout start come from `dmt` and the corpus;
    fresh AdamW at lr 1e-4: benchmarks/results/dmt_dip.md and its lr control, dmt_dip_lr_control.md)."""
    bptt: bool = True
    """Also train the BPTT baseline: same updater, the pretraining's length curriculum and stop rule, an lr
    sweep chosen on valid, the SMT pipeline's wall-clock for the whole sweep (an equal share per lr)."""
    bptt_max_seconds: float | None = None
    """Cap on the BPTT baseline's whole budget (None: exactly the SMT pipeline's wall-clock)."""
    baseline: PipelineBaseline = field(default_factory=lambda: BPTTConfig(
        optim=OptimConfig(lr=1e-3, warmup_steps=20), steps=10**7, lrs=(3e-4, 1e-3, 3e-3)))
    """The BPTT baseline's optimiser and lr sweep (its updater, memory shape, batch, curriculum, stop rule,
    evaluation and budget come from `student`, `pretrain` and the SMT pipeline's wall-clock)."""
    eval_size: int = 1024
    """Test-split sequences for every reported figure (the whole split when smaller; >= 1024 for synthetic
    tasks, >= 256 windows for real corpora)."""

    def __post_init__(self) -> None:
        for name, view in _VIEWS.items():  # a recipe built from the plain configs holds their pipeline views
            v = getattr(self, name)
            if type(v) is not view:
                setattr(self, name, view(**{f.name: getattr(v, f.name) for f in dataclasses.fields(v)}))


def _lockstep(rounds: int, every: int = 2) -> LockstepDMTConfig:
    """The trainer never trains on relabels more than 2 x `every` steps old (it waits for the actor instead)."""
    return LockstepDMTConfig(every=every, rounds=rounds, wait_seconds=3600, refresh=RefreshConfig(enabled=True))


def _actor(sequences: int) -> DMTLoopConfig:
    return DMTLoopConfig(sequences=sequences, shard_sequences=sequences, poll_seconds=0.05)


def _dmt_phase(batch: int) -> StudentTrainConfig:
    """A fresh AdamW at lr 1e-4 with a cosine decay over the phase (`LockstepDMTConfig.carry_optimizer` is off:
    benchmarks/results/dmt_dip.md and its lr control, dmt_dip_lr_control.md); `batch` transitions per step (32 sequences of the
    rollout's length), relabeled rounds at twice the weight of round 0 and the newest rounds favoured."""
    return StudentTrainConfig(optim=OptimConfig(lr=1e-4, warmup_steps=5, schedule="cosine"), checkpoint_every=50,
                              stream=StreamConfig(batch_size=batch, round_weights={"0": 1.0, "dmt": 2.0},
                                                  round_decay=0.1, mix_shards=256, cache_shards=128))


def _student(steps: int, arch: str = "mlp", depth: int = 2, batch: int = 512, lr: float = 1e-3) -> StudentTrainConfig:
    """The student's SMT phase: AdamW with 20 warm-up steps at a constant lr, one checkpoint at the end."""
    return StudentTrainConfig(updater=UpdaterConfig(arch=arch, depth=depth), optim=OptimConfig(lr=lr, warmup_steps=20),
                              stream=StreamConfig(batch_size=batch), steps=steps, checkpoint_every=steps)


def _tiny_teacher(**kw) -> TeacherConfig:
    return TeacherConfig(d_model=64, n_heads=4, encoder_depth=2, decoder_depth=2, mem_tokens=4, **kw)


def _reference_teacher(**kw) -> TeacherConfig:
    # the paper's released configuration: d 256, 8 heads, encoder 8, decoder 4, K 16 (Z = 4096)
    return TeacherConfig(d_model=256, n_heads=8, encoder_depth=8, decoder_depth=4, mem_tokens=16, **kw)


def _reference_pretrain(teacher: TeacherConfig, smt: SMTConfig) -> PretrainConfig:
    return PretrainConfig(teacher=teacher, smt=smt, steps=150_000, batch_size=128, eval_every=1000,
                          optim=OptimConfig(lr=3e-4, warmup_frac=0.01), updater=_updater("transformer", 8))


def _updater(arch: str, depth: int) -> UpdaterConfig:
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
    # The paper's released configuration, unchanged. The tiny text study (benchmarks/results/text_gap.md, issue 16)
    # says where the budget of this recipe should go, scaled up but not yet measured at this scale (a GPU run):
    # - every student ends within a few hundredths of a bit of its teacher, so the teacher's held-out bits per
    #   unit of compute bind everything downstream; pretraining gets most of the budget (150k of the ~300k
    #   steps here), and a cheaper teacher step is worth more than a larger teacher;
    # - the decoder's future length is the biggest lever on a teacher step: Tf 8 instead of 32 (a quarter of the
    #   tiny context) cut the step cost 31% and won 0.42 valid bits at equal CPU. Tf=64 here is a quarter of Tc=256;
    #   Tf=16..32 with more decoded positions per encoder pass (dec_positions) is the first sweep to run;
    #   shorter training contexts (Tc), a bigger batch at a fixed budget, a shallower decoder and more memory
    #   tokens all lost on text at the tiny scale;
    # - labels are only worth what a student reads: 150k steps x 4096 transitions = 614M, against about 380M
    #   transitions in TinyStories' windows (T - Tc = 64 per 320 bytes), so all of it is labeled (label.stride
    #   unset); at the tiny scale a student reads an eighth of the windows' transitions, hence label.stride there;
    # - the win the design exists for is amortisation: one teacher's target set serves every student
    #   architecture, each trained with one sequential step per update instead of BPTT's T = 320.
    "tinystories-bytes": Recipe(
        name="tinystories-bytes", corpus="hf:roneneldan/TinyStories|T=320,stride=320",
        pretrain=_reference_pretrain(_reference_teacher(encoder="causal", window=256),
                                     SMTConfig(mode="stream", Tc=256, Tf=64)),
        label=LabelConfig(shard_sequences=1024), label_executor=ExecutorConfig(workers=8, gpus_per_worker=1.0),
        student=_student(150_000, "transformer", 8, 4096, 3e-4), dmt=_lockstep(150, 10), dmt_actor=_actor(320),
        dmt_phase=_dmt_phase(32 * 64), dmt_extra_steps=0, bptt=False),
    # Byte-level text on any files (`--corpus 'text:<file or glob>|T=96,stride=48'`); by default the English
    # help topics every Python carries, so it runs offline from any directory. Memories see Tc=64 bytes
    # (teacher window 64, 2 layers); the last 32 bytes of each 96-byte test window are scored.
    # Defaults: the best configuration of benchmarks/results/text_gap.md (issue 16; ~1 MB of English, 80 CPU-s per
    # method): the teacher binds its students, so it gets most of the budget, with Tf=8 (not 32: a cheaper step and
    # 0.42 fewer valid bits at equal CPU); labels on every 8th window (label.stride=384: more than the student's
    # 100 steps x 512 transitions read); student lr 3e-3 (chosen on valid). BPTT still wins at this budget.
    "text-bytes-tiny": Recipe(
        name="text-bytes-tiny", corpus="text:{pydoc}|T=96,stride=48",
        pretrain=PretrainConfig(teacher=_tiny_teacher(encoder="causal", window=64), updater=_updater("mlp", 2),
                                smt=SMTConfig(mode="stream", Tc=64, Tf=8), optim=OptimConfig(lr=1e-3, warmup_steps=20),
                                steps=400, seconds=120, eval_every=50),
        label=LabelConfig(shard_sequences=64, stride=384), student=_student(100, lr=3e-3), dmt=_lockstep(10),
        dmt_phase=_dmt_phase(32 * 32), bptt=True, eval_size=256),
    "mnist-pixels": Recipe(
        name="mnist-pixels", corpus="mnist|split=train",
        pretrain=_reference_pretrain(_reference_teacher(encoder="causal"), SMTConfig(dec_positions=8, Tf=64)),
        label=LabelConfig(shard_sequences=512), label_executor=ExecutorConfig(workers=8, gpus_per_worker=1.0),
        student=_student(150_000, "transformer", 8, 4096, 3e-4), dmt=_lockstep(150, 10), dmt_actor=_actor(320),
        dmt_phase=_dmt_phase(32 * 784), dmt_extra_steps=0, bptt=False),
    "mnist-pixels-tiny": Recipe(
        name="mnist-pixels-tiny", corpus="digits:split=train",
        pretrain=_tiny_pixels_pretrain(),
        label=LabelConfig(shard_sequences=256), student=_student(200), dmt=_lockstep(10), bptt=False, eval_size=128),
    # scikit-learn's 8x8 digits as 64 raster-order pixels of 17 grey levels (raw=1: the data's own levels,
    # vocab 17); bits per pixel over the 63 pixels after the first, on the whole test split.
    "digits-pixels-tiny": Recipe(
        name="digits-pixels-tiny", corpus="digits:raw=1",
        pretrain=_tiny_pixels_pretrain(),
        label=LabelConfig(shard_sequences=256), student=_student(200), dmt=_lockstep(10), bptt=True, eval_size=512),
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


def load_recipe(name_or_file: str) -> Recipe:
    """A named recipe, or a JSON/YAML file holding the fields to change from its `base:` recipe (the same
    names as the tree and its flags), its `{pydoc}` resolved. A fresh copy: changing it changes no other recipe."""
    if name_or_file in RECIPES:
        rc = copy.deepcopy(RECIPES[name_or_file])
        return dataclasses.replace(rc, corpus=resolve_corpus(rc.corpus))
    p = Path(name_or_file)
    if not p.exists():
        raise ConfigError(f"recipe {name_or_file!r} is neither a named recipe ({', '.join(RECIPES)}) nor a file")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    base = data.pop("base", "retrieval-demo")
    if base not in RECIPES:
        raise ConfigError(f"{name_or_file}: base {base!r} is not a named recipe: use one of {', '.join(RECIPES)}")
    rc = _apply(copy.deepcopy(RECIPES[base]), data, name_or_file)
    return dataclasses.replace(rc, corpus=resolve_corpus(rc.corpus))


def _apply(obj, changes: dict, where: str, prefix: str = ""):
    """A copy of dataclass `obj` with nested `changes` applied, each value checked against its field's type
    (`typed`); an unknown field or a wrong type names the file, the key, the expected type and the value."""
    if not isinstance(changes, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the recipe'} must be a mapping of "
                          f"{type(obj).__name__} fields, got {changes!r} ({type(changes).__name__})")
    kw = {}
    names = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for k, v in changes.items():
        k = str(k).replace("-", "_")  # a file may spell fields like the flags
        if k not in names:
            cls = type(obj).__mro__[1] if hasattr(type(obj), "derived") else type(obj)  # a view: its config's name
            raise ConfigError(f"{where}: unknown field {k!r} of {cls.__name__}: use one of {', '.join(names)}")
        cur, key = getattr(obj, k), prefix + k
        if dataclasses.is_dataclass(cur):
            kw[k] = _apply(cur, v, where, key + ".")
        else:
            kw[k] = typed(v, hints[k], where, key)
    return dataclasses.replace(obj, **kw)


# A string is taken for a float field only when it is a plain decimal number: YAML 1.2 reads `3e-4` as a float,
# PyYAML (YAML 1.1) as the string '3e-4', and nothing else could be meant. Nothing else is coerced: a string
# for an int or bool field, a float for an int field, 'nan'/'inf'/'1_000' for a float field are refused.
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def type_name(tp) -> str:
    """A field type as a recipe file spells it: float, int or null, list of int, mapping of str to float."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin in (tuple, list):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}" if args else "mapping"
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _convert(v, tp):
    """`v` as a value of `tp`, or _Mismatch."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _convert(v, args[0])
    if tp is typing.Any:
        return v
    if tp is type(None):
        if v is None:
            return None
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        for a in sorted(args, key=lambda a: a is not type(None)):  # null first, then the others in order
            try:
                return _convert(v, a)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is typing.Literal:
        if v in args:
            return v
        raise _Mismatch
    if origin in (tuple, list):
        if not isinstance(v, (list, tuple)):
            raise _Mismatch
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(v) != len(args):
                raise _Mismatch
            return tuple(_convert(x, a) for x, a in zip(v, args))
        out = [_convert(x, args[0]) if args else x for x in v]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(v, dict):
            raise _Mismatch
        kt, vt = args or (typing.Any, typing.Any)
        # YAML reads the key `0:` as the int 0: an int key of a str-keyed mapping is its digits
        return {(str(k) if kt is str and isinstance(k, int) and not isinstance(k, bool) else _convert(k, kt)):
                _convert(x, vt) for k, x in v.items()}
    if tp is bool:
        if isinstance(v, bool):
            return v
        raise _Mismatch
    if tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        raise _Mismatch
    if tp is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str) and _NUMBER.fullmatch(v):
            return float(v)
        raise _Mismatch
    if tp is str:
        if isinstance(v, str):
            return v
        raise _Mismatch
    if isinstance(tp, type) and not isinstance(v, tp):
        raise _Mismatch
    return v


def typed(value, tp, where: str, key: str):
    """`value` checked against (and, for unambiguous cases, converted to) the field type `tp`: ConfigError
    naming the file, the key, the expected type and the value otherwise."""
    try:
        return _convert(value, tp)
    except _Mismatch:
        raise ConfigError(f"{where}: {key} must be {type_name(tp)}, got {value!r} ({type(value).__name__}): "
                          f"write it as {type_name(tp)}, as --{key.replace('_', '-')} takes it") from None
