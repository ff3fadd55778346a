"""The `label` stage: run a frozen teacher over a corpus and write round-0 target shards.

Flow (driver side, `label(cfg, executor)`):
 1. `prepare(cfg)` validates everything cheap before any compute, raising one-line errors that name the
    thing and the fix: the corpus (non-empty, tokens inside the teacher's vocabulary, windows longer
    than Tc), the teacher checkpoint (present, not corrupt) and the bucket (reachable).
 2. The corpus is cut into `ShardRange`s of `shard_sequences` sequences; range i -> shard i of round 0.
 3. The executor runs `LabelStage.run` on each range (serially or on a Ray actor pool).
 4. The driver publishes the teacher to `<out>/teachers/<fp>/` (where `smt train`/`smt dmt` look for it),
    then commits ONE manifest generation holding every shard; nothing is visible before that.

Worker side (`LabelStage.run`): teacher memories for a batch of sequences under `torch.inference_mode()`
(bf16 autocast on GPU, states stored from float32), written once as trajectory segments:
 - prefix corpora: m_0..m_T of each sequence, one segment per sequence (S = T, pos0 = 0);
 - stream corpora: m_Tc..m_T, each seeing at most Tc tokens (S = T - Tc, pos0 = Tc). A causal teacher
   gets this from one pass with its sliding window (which must equal Tc); a register teacher runs one
   pass per window x[t-Tc:t].
After writing a shard the worker leaves a receipt (`receipts/round-000/shard-XXXXX.json`, invisible
to readers, which only read manifests). A rerun skips a range whose receipt names a shard that still
verifies (sha256 of its files), so a crashed driver resumes without recomputing finished shards.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from models.device import OnDevice, autocast
from pipeline.corpora import Corpus, CorpusError, load_corpus, spec_with
from pipeline.stage import ModelStage, Resources, ShardRange, shard_ranges
from storage.bucket import Bucket
from storage.checkpoints import CheckpointError, load_teacher, publish_teacher
from storage.codec import check_dtype
from storage.errors import BucketError, ObjectNotFound, StorageError
from storage.formats import FORMATS, shard_sha256
from storage.manifest import (
    Generation,
    ShardEntry,
    commit,
    fetch_shard,
    latest_readable,
    newest_generation,
    read_generation,
    shard_key,
    shard_path,
    target_set_path,
)
from storage.schema import Segments
from storage.settings import AtEndpoint, ShardEncoding
from storage.writer import write_shard

ROUND = 0


class LabelError(ValueError):
    """Input the label stage cannot use; one line naming the thing and the fix."""


@dataclass(kw_only=True)
class LabelConfig(OnDevice, AtEndpoint, ShardEncoding):
    teacher: str = ""
    """Teacher checkpoint folder or URL (holding weights.safetensors and config.json)."""
    corpus: str = ""
    """Corpus spec, e.g. 'retrieval:T=64,vocab=8' or 'tokens:/d/ids.npy|T=320'."""
    out: str = ""
    """Bucket root URL; shards go to <out>/targets/<fingerprint>/<corpus-id>/."""
    shard_sequences: int = 256
    """Corpus sequences per shard (one work item each)."""
    Tc: int | None = None
    """Stream corpora: context length of each memory (default: the causal teacher's window)."""
    stride: int | None = None
    """Stream corpora: label the windows every this many tokens (default: the corpus's own stride). A student
    reads steps x batch transitions; labeling many more costs compute the teacher could use
    (benchmarks/results/text_gap.md)."""
    batch_size: int = 32
    """Sequences per teacher forward pass."""
    resources: Resources = field(default_factory=Resources)
    """Per-worker CPUs/GPUs."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise LabelError(f"format={self.format!r} is unknown: use one of {', '.join(FORMATS)}")
        try:
            check_dtype(self.dtype)
        except ValueError as e:
            raise LabelError(f"dtype={self.dtype!r}: {e}") from None
        for name in ("shard_sequences", "batch_size"):
            if getattr(self, name) < 1:
                raise LabelError(f"{name}={getattr(self, name)} must be >= 1")
        if self.Tc is not None and self.Tc < 1:
            raise LabelError(f"Tc={self.Tc} must be >= 1 (or leave it unset)")
        if self.stride is not None and self.stride < 1:
            raise LabelError(f"stride={self.stride} must be >= 1 (or leave it unset: the corpus's stride)")

    def build(self, corpus, target: str, fingerprint: str, Tc: int | None,
              receipts: frozenset[int] | None = None) -> LabelStage:
        """The stage the workers run: this config plus what the driver resolved (the loaded corpus, the target
        set's URL, the teacher's fingerprint, the context length and the items that had a receipt when labeling
        started: only those are looked up for reuse)."""
        return LabelStage(self, corpus.spec, target, fingerprint, corpus.corpus_id, Tc, receipts)


@dataclass
class LabelPlan:
    """Everything the driver checked and decided before any compute."""

    stage: LabelStage
    items: list[ShardRange]
    target: Bucket
    fingerprint: str
    teacher_config: dict
    corpus: Corpus
    states_per_seq: int


@dataclass
class LabelReport:
    target_url: str
    generation: int
    committed: bool
    shards: int
    skipped: int
    records: int
    states: int
    seconds: float
    busy_seconds: float = 0.0
    """Largest per-worker sum of item times: wall time minus start-up and scheduling gaps."""

    def summary(self) -> str:
        rate = self.states / self.seconds if self.seconds > 0 else float("inf")
        return (f"labeled {self.records} records in {self.shards} shards ({self.skipped} skipped: already "
                f"written) in {self.seconds:.1f} s: {self.states} teacher states computed, {rate:,.0f} states/s; "
                f"generation {self.generation}{'' if self.committed else ' (unchanged)'}")


# --------------------------------------------------------------------------------------------- driver
def _load_teacher(url: str, device: str | torch.device = "cpu", endpoint_url: str | None = None):
    try:
        return load_teacher(url, device, endpoint_url=endpoint_url)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot load teacher {url} ({type(e).__name__}: {e}): check the path") from None


def resolve_Tc(corpus: Corpus, teacher_cfg, Tc: int | None) -> int | None:
    """Context length for stream corpora (None for prefix corpora); raises LabelError if unusable."""
    if not corpus.streaming:
        if Tc is not None:
            raise LabelError(f"--Tc={Tc} applies to stream corpora only; {corpus.spec!r} is a prefix corpus: "
                             "drop --Tc")
        return None
    window = teacher_cfg.encoder_kind.window(teacher_cfg)  # the context a memory sees by construction, if any
    if Tc is None:
        if window is None:
            raise LabelError(f"stream corpus {corpus.spec!r} needs a context length: pass --Tc N "
                             "(or use a causal teacher with a window)")
        Tc = window
    if window is not None and window != Tc:
        raise LabelError(f"{teacher_cfg.encoder} teacher has window={window} but Tc={Tc}: its memories see `window` tokens, "
                         f"so pass --Tc {window} or use a teacher trained with window={Tc}")
    if corpus.seq_len <= Tc:
        raise LabelError(f"corpus {corpus.spec!r} has windows of T={corpus.seq_len} tokens, not longer than "
                         f"Tc={Tc}: use T > Tc in the corpus spec or lower --Tc")
    return Tc


def prepare(cfg: LabelConfig) -> LabelPlan:
    """Validate corpus, teacher and bucket (in that order of cost); no teacher compute happens here."""
    for name in ("teacher", "corpus", "out"):
        if not getattr(cfg, name):
            raise LabelError(f"label: {name} is not set: pass --{name}")
    corpus = load_corpus(cfg.corpus)
    if cfg.stride is not None:
        if not corpus.streaming:
            raise LabelError(f"--stride={cfg.stride} applies to stream corpora only; {corpus.spec!r} is a prefix "
                             "corpus: drop --stride")
        corpus = load_corpus(spec_with(corpus.spec, stride=cfg.stride))
    if corpus.num_sequences < 1:
        raise CorpusError(f"corpus {corpus.spec!r} has no sequences: point it at non-empty data")
    teacher, fp, ckpt = _load_teacher(cfg.teacher, "cpu", cfg.endpoint_url)
    tcfg = teacher.cfg
    if corpus.vocab_size > tcfg.vocab_size:
        raise LabelError(f"corpus {corpus.spec!r} has tokens up to {corpus.vocab_size - 1} but the teacher's "
                         f"vocabulary is {tcfg.vocab_size}: use a teacher trained on this corpus's vocabulary")
    Tc = resolve_Tc(corpus, tcfg, cfg.Tc)
    root = Bucket.from_url(cfg.out, endpoint_url=cfg.endpoint_url)
    target = root.child(target_set_path(fp, corpus.corpus_id))
    try:  # reachability, before any compute
        n = newest_generation(target)
    except BucketError as e:
        raise BucketError(f"output bucket {cfg.out} is unreachable: {e}") from None
    _check_same_encoding(latest_readable(target, n), target, cfg, Tc)
    receipts = frozenset(int(r.rsplit("shard-", 1)[1].split(".")[0])  # one LIST, not one GET per item
                         for r in target.glob(f"receipts/round-{ROUND:03d}/shard-*.json"))
    stage = cfg.build(corpus, target.url(), fp, Tc, receipts)
    T = corpus.seq_len
    return LabelPlan(stage=stage, items=shard_ranges(corpus.num_sequences, cfg.shard_sequences), target=target,
                     fingerprint=fp, teacher_config=ckpt["model"]["teacher"], corpus=corpus,
                     states_per_seq=T + 1 if Tc is None else T - Tc + 1)


def _check_same_encoding(gen: Generation | None, target: Bucket, cfg: LabelConfig, Tc: int | None) -> None:
    """A target set holds each record once. Relabeling it in another format, dtype or Tc would add a
    second copy of every record (the set is named by teacher and corpus only), so it is refused here,
    before any compute; the manifest refuses the same at commit time for any other writer."""
    if gen is None:
        return
    have = {(e.format, e.dtype) for e in gen.shards if e.round == ROUND}
    label_params = (gen.corpus_params or {}).get("label") or {}
    old_Tc = label_params.get("Tc")
    if not have or (have == {(cfg.format, cfg.dtype)} and old_Tc == Tc):
        return
    fmt, dtype = min(have)
    raise LabelError(f"target set {target.url()} already holds this corpus labeled as {fmt}/{dtype} (Tc={old_Tc}); "
                     f"labeling it again as {cfg.format}/{cfg.dtype} (Tc={Tc}) would store every record twice: reuse "
                     f"it (--format {fmt} --dtype {dtype}) or label into another --out bucket")


def label(cfg: LabelConfig, executor, *, quiet: bool = False) -> LabelReport:
    """Label a corpus with `executor` (anything with `map(stage, items, total_records=, quiet=)`)."""
    plan = prepare(cfg)
    t0 = time.perf_counter()
    total = sum(it.size for it in plan.items) * (plan.states_per_seq - 1)
    results: dict[int, dict] = {}
    for res in executor.map(plan.stage, plan.items, total_records=total, quiet=quiet):
        results[res["index"]] = res
    missing = [it.index for it in plan.items if it.index not in results]
    if missing:
        raise StorageError(f"{len(missing)} work items returned no result (first: shard {missing[0]}); "
                           "rerun the same command to finish them")
    entries = [ShardEntry.from_json(results[i]["entry"], plan.target.url()) for i in sorted(results)]
    _check_corpus_unchanged(plan.corpus)
    # the teacher goes where `smt train`/`smt dmt` look for it, before the target set becomes visible
    publish_teacher(cfg.teacher, Bucket.from_url(cfg.out, endpoint_url=cfg.endpoint_url))
    gen, committed = commit_once(plan, entries, Tc=plan.stage.Tc)
    return LabelReport(target_url=plan.target.url(), generation=gen.number, committed=committed,
                       shards=len(entries), skipped=sum(bool(r["skipped"]) for r in results.values()),
                       records=sum(e.records for e in entries),
                       states=sum(r["states"] for r in results.values()),
                       seconds=time.perf_counter() - t0, busy_seconds=_busy(results.values()))


def _check_corpus_unchanged(corpus: Corpus) -> None:
    """The workers each checked the corpus id when they started; a change after that (between two items)
    is caught here, by digesting the data once more before anything is committed."""
    now = load_corpus(corpus.spec).corpus_id
    if now != corpus.corpus_id:
        raise LabelError(f"corpus {corpus.spec!r} changed while it was labeled: its corpus id is {now} now, "
                         f"{corpus.corpus_id} when labeling started; nothing was committed: keep the data fixed "
                         "while labeling, then rerun")


def _busy(results) -> float:
    per: dict = {}
    for r in results:
        per[r.get("worker")] = per.get(r.get("worker"), 0.0) + float(r.get("seconds", 0.0))
    return max(per.values(), default=0.0)


def commit_once(plan: LabelPlan, entries: list[ShardEntry], *, Tc: int | None) -> tuple[Generation, bool]:
    """Commit the entries as one new generation, unless the newest generation already holds exactly them."""
    n = newest_generation(plan.target)
    if n:
        prev = read_generation(plan.target, n)
        have = {e.path: e.sha256 for e in prev.shards}
        if all(have.get(e.path) == e.sha256 for e in entries) and prev.teacher_fingerprint == plan.fingerprint:
            return prev, False
    params = {**plan.corpus.describe(), "label": {"Tc": Tc, "pos0": Tc or 0, "round": ROUND}}
    gen = commit(plan.target, entries, teacher_fingerprint=plan.fingerprint,
                 teacher_config=plan.teacher_config, corpus_id=plan.corpus.corpus_id, corpus_params=params)
    return gen, True


# --------------------------------------------------------------------------------------------- worker
def receipt_path(index: int) -> str:
    return f"receipts/round-{ROUND:03d}/shard-{int(index):05d}.json"


@dataclass
class LabelStage(ModelStage):
    """Teacher memories of corpus ranges -> one segments shard per range. Picklable: config only.
    Built by `LabelConfig.build` from the config and what the driver resolved (corpus, target set, teacher)."""

    cfg: LabelConfig
    corpus_id: str = ""
    """The corpus id the driver digested (and names the target set by); every worker checks its own."""
    Tc: int | None = None
    """The resolved context length (None: prefix corpora)."""
    receipts: frozenset[int] | None = None
    """Items whose receipt existed when the driver listed them (None: look every item up). An item without one
    is computed without a lookup: on an object store that saves a GET per shard of a fresh target set."""
    name = "label"

    def setup(self) -> None:
        self._device = self.worker_device()
        self._model, fp, _ = _load_teacher(self.cfg.teacher, self._device, self.cfg.endpoint_url)
        if fp != self.fingerprint:
            raise CheckpointError(f"teacher {self.cfg.teacher} changed during labeling (fingerprint {fp[:12]} != "
                                  f"{self.fingerprint[:12]}): rerun")
        self._corpus = load_corpus(self.corpus)
        self._bucket = Bucket.from_url(self.target, endpoint_url=self.cfg.endpoint_url)

    # -- the work
    def run(self, item: ShardRange) -> dict:
        t0 = time.perf_counter()
        self._check_corpus()
        states_per_seq = self._corpus.seq_len + 1 - (self.Tc or 0)
        found = self._existing(item)
        if found is not None:
            res = self._result(item, found, states_per_seq, skipped=True, t0=t0)
        else:
            x, y = self._corpus.get(np.arange(item.start, item.stop))
            states = self.memories(x)
            p0 = self.Tc or 0
            segs = Segments(states=states, tokens=x[:, p0:], y=y[:, p0:],
                            seq=np.arange(item.start, item.stop, dtype=np.int64),
                            pos0=np.full(item.size, p0, dtype=np.int64))
            entry = write_shard(self._bucket, segs, index=item.index, round=ROUND, fmt=self.cfg.format,
                                dtype=self.cfg.dtype, teacher_fingerprint=self.fingerprint)
            receipt = {"entry": entry.to_json(), "start": item.start, "stop": item.stop, "identity": self.identity()}
            self._bucket.write_bytes(receipt_path(item.index), json.dumps(receipt, sort_keys=True).encode())
            res = self._result(item, entry, states_per_seq, skipped=False, t0=t0)
        return res

    def _check_corpus(self) -> None:
        # The digest is computed once per worker (on its first item) and cached by the corpus object.
        got = self._corpus.corpus_id
        if self.corpus_id and got != self.corpus_id:
            raise LabelError(f"corpus {self.corpus!r} is not the data the driver labels: its corpus id is {got} "
                             f"here, {self.corpus_id} when labeling started (the data changed under it); keep the "
                             "data fixed while labeling, then rerun")

    def identity(self) -> dict:
        """Everything a shard of this stage depends on besides its range: a receipt counts only for it."""
        T = self._corpus.seq_len
        return {"Tc": self.Tc, "S": T - (self.Tc or 0), "pos0": self.Tc or 0, "teacher": self.fingerprint,
                "corpus_id": self.corpus_id, "format": self.cfg.format, "dtype": self.cfg.dtype, "round": ROUND}

    def memories(self, x: np.ndarray) -> np.ndarray:
        """Teacher states (n, S+1, Z) float32 for token rows x (n, T), batched."""
        m = self._model
        if x.size and (x.min() < 0 or x.max() >= m.cfg.vocab_size):
            raise LabelError(f"tokens outside the teacher's vocabulary 0..{m.cfg.vocab_size - 1} in corpus "
                             f"{self.corpus!r}: use a teacher trained on this vocabulary")
        out = []
        with torch.inference_mode(), autocast(self._device):
            for i in range(0, x.shape[0], self.cfg.batch_size):
                xb = torch.from_numpy(x[i:i + self.cfg.batch_size]).to(self._device)
                out.append(self._memories(xb).float().cpu().numpy())
        return np.concatenate(out)

    def _memories(self, x: torch.Tensor) -> torch.Tensor:
        m, Tc = self._model, self.Tc
        if Tc is None:
            return m.encode_all(x)
        return m.encoder_kind.stream_memories(m, x, Tc)

    # -- idempotency
    def _existing(self, item: ShardRange) -> ShardEntry | None:
        """The entry of this item's shard if a receipt says it was written by a stage of this identity (Tc,
        S, pos0, teacher, corpus id, format, dtype) and its files still match the recorded sha256; else None
        (recompute). A receipt of another identity (a crashed run with another --Tc, or one older than
        identities) is never reused: its shard's records mean something else."""
        if self.receipts is not None and item.index not in self.receipts:
            return None  # no receipt when labeling started: nothing to reuse (a later one is rewritten identically)
        try:
            receipt = json.loads(self._bucket.read_bytes(receipt_path(item.index)))
            entry = ShardEntry.from_json(receipt["entry"], self._bucket.url(receipt_path(item.index)))
        except (ObjectNotFound, ValueError, KeyError, TypeError, StorageError):
            return None
        identity = self.identity()
        if (receipt.get("start"), receipt.get("stop")) != (item.start, item.stop) or entry.dtype != self.cfg.dtype \
                or receipt.get("identity") != identity or entry.s != identity["S"] or entry.format != self.cfg.format \
                or shard_key(entry.path) != shard_key(shard_path(ROUND, item.index, self.cfg.format)):
            return None
        try:
            files = fetch_shard(self._bucket, entry)
        except (ObjectNotFound, StorageError):
            return None
        return entry if shard_sha256(files) == entry.sha256 else None

    def _result(self, item: ShardRange, entry: ShardEntry, states_per_seq: int, *, skipped: bool,
                t0: float) -> dict:
        # "states" counts teacher states computed by this call (0 for a skipped shard): the throughput unit
        return {"index": item.index, "entry": entry.to_json(), "records": entry.records,
                "states": 0 if skipped else item.size * states_per_seq, "skipped": skipped,
                "seconds": round(time.perf_counter() - t0, 4), "worker": os.getpid()}
