"""DMT relabeling: roll the student out on its own states and label each state with the teacher.

For a batch of sequences, the student starts from the teacher's memory at `start` (m_0 in prefix mode,
m_Tc in stream mode) and runs Td steps on the true inputs. Each step becomes a pair record
    state_in = m_hat_t (the student's own state), token = x_t, state_out = m*_{t+1} (the teacher's),
    y = y_t, drift = MSE(m_hat_t, m*_t)
so that training on these pairs is exactly the one-step DMT loss, computed offline (dataset aggregation).
Rounds belong to the student's run: round r is written to `<run>/rounds/round-RRR/` and committed as a new
generation of the run's rounds (storage/rounds.py); the shared target set (round 0) is only read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from models.device import OnDevice
from models.teacher import encoder_kind
from pipeline.corpora import load_corpus
from pipeline.stage import ModelStage, Resources, ShardRange
from storage.bucket import Bucket
from storage.checkpoints import CheckpointError, load_student, load_teacher, read_config
from storage.manifest import Generation, ShardEntry, newest_generation, read_generation
from storage.rounds import commit_rounds, register_run, rounds_bucket
from storage.schema import Pairs
from storage.settings import AtEndpoint, ShardEncoding
from storage.writer import write_shard


@torch.inference_mode()
def relabel_batch(student, teacher, x: np.ndarray, y: np.ndarray, seq_ids: np.ndarray, start: int = 0,
                  Td: int | None = None, device: torch.device | str = "cpu") -> tuple[Pairs, np.ndarray, tuple]:
    """Returns (pairs, drift_by_step [Td+1], (correct, targets)) for x, y (B, T) int arrays whose sequence
    ids are `seq_ids`. drift_by_step[k] is the mean MSE between the student's state and the teacher's after
    k steps; (correct, targets) counts the student's readout of its own states against y."""
    dev = torch.device(device)
    xt = torch.as_tensor(x, dtype=torch.long, device=dev)
    B, T = xt.shape
    Td = T - start if Td is None else Td
    if start < 0 or start + Td > T:
        raise ValueError(f"rollout start={start}, Td={Td} does not fit sequences of length T={T}: shorten Td")
    M = teacher.encode_all(xt).float()  # m*_0 .. m*_T
    m = M[:, start]
    states = [m]
    for t in range(start, start + Td):
        m = student.step(m, xt[:, t]).float()
        states.append(m)
    S = torch.stack(states, 1)  # m_hat_start .. m_hat_{start+Td}
    drift = (S - M[:, start:start + Td + 1]).pow(2).mean(-1)  # (B, Td+1)
    Z = S.shape[-1]
    yt = torch.as_tensor(y[:, start:start + Td], dtype=torch.long, device=dev)
    cols = torch.nonzero((yt != -1).any(0)).flatten()
    correct = targets = 0
    if len(cols):
        logits = student.readout(S[:, 1:][:, cols].reshape(-1, Z)).view(B, len(cols), -1)
        mask = yt[:, cols] != -1
        correct, targets = int(((logits.argmax(-1) == yt[:, cols]) & mask).sum()), int(mask.sum())
    pos = np.arange(start, start + Td)
    pairs = Pairs(
        state_in=S[:, :-1].reshape(-1, Z).cpu().numpy(),
        tokens=x[:, start:start + Td].reshape(-1),
        state_out=M[:, start + 1:start + Td + 1].reshape(-1, Z).cpu().numpy(),
        y=y[:, start:start + Td].reshape(-1),
        seq=np.repeat(np.asarray(seq_ids, dtype=np.int64), Td),
        pos=np.tile(pos, B),
        drift=drift[:, :-1].reshape(-1).cpu().numpy(),
    )
    return pairs, drift.mean(0).cpu().numpy(), (correct, targets)


# ------------------------------------------------------------------------------------------ the stage


class RelabelError(ValueError):
    """Input the relabel stage cannot use; one line naming the thing and the fix."""


@dataclass
class RelabelStage(ModelStage):
    """Student rollouts over corpus ranges -> one pairs shard per range, as round `cfg.round`. Config only;
    built by `RelabelConfig.build` from the config and what the driver resolved."""

    cfg: RelabelConfig
    batch_size: int = 64
    """Sequences rolled out per batch."""
    name = "relabel"

    def setup(self) -> None:
        self._device = self.worker_device()
        self._teacher, fp, _ = load_teacher(self.cfg.teacher, self._device, endpoint_url=self.cfg.endpoint_url)
        if fp != self.fingerprint:
            raise CheckpointError(f"teacher {self.cfg.teacher} has fingerprint {fp[:16]}, the target set "
                                  f"{self.fingerprint[:16]}: pass the teacher that labeled it")
        self._student, sfp, _ = load_student(self.cfg.student, self._device, endpoint_url=self.cfg.endpoint_url)
        if sfp != self.fingerprint:
            raise CheckpointError(f"student {self.cfg.student} was trained against teacher {str(sfp)[:16]}, the target "
                                  f"set is labeled by {self.fingerprint[:16]}: relabel with a matching student")
        self._corpus = load_corpus(self.corpus)
        self._bucket = Bucket.from_url(self.target, endpoint_url=self.cfg.endpoint_url)

    def run(self, item: ShardRange) -> dict:
        t0 = time.perf_counter()
        x, y = self._corpus.get(np.arange(item.start, item.stop))
        parts, drift_sum, correct, targets = [], None, 0, 0
        for i in range(0, x.shape[0], self.batch_size):
            sl = slice(i, i + self.batch_size)
            seq = np.arange(item.start + i, item.start + i + x[sl].shape[0])
            p, d, (c, n) = relabel_batch(self._student, self._teacher, x[sl], y[sl], seq, self.cfg.start, self.cfg.Td,
                                         self._device)
            parts.append(p)
            correct, targets = correct + c, targets + n
            drift_sum = d * len(seq) if drift_sum is None else drift_sum + d * len(seq)
        pairs = Pairs(**{k: np.concatenate([getattr(p, k) for p in parts])
                         for k in ("state_in", "tokens", "state_out", "y", "seq", "pos", "drift")})
        entry = write_shard(self._bucket, pairs, index=item.index, round=self.cfg.round, fmt=self.cfg.format, dtype=self.cfg.dtype,
                            teacher_fingerprint=self.fingerprint)
        return {"index": item.index, "entry": entry.to_json(), "records": entry.records, "sequences": item.size,
                "drift_sum": [float(v) for v in drift_sum], "correct": correct, "targets": targets, "seconds": time.perf_counter() - t0}


@dataclass(kw_only=True)
class RolloutWindow:
    """Where in each sequence a student is rolled out: from the teacher's memory at `start` for `Td` steps.
    Declared once for every DMT variant (`Rollouts` below, online DMT's `OnlineDMTConfig`)."""

    start: int = 0
    """Rollout start position (0 in prefix mode; Tc in stream mode)."""
    Td: int | None = None
    """Rollout steps (None = to the end of each sequence)."""


@dataclass(kw_only=True)
class Rollouts(ShardEncoding, AtEndpoint, OnDevice, RolloutWindow):  # fields: the window first
    """How a DMT round is rolled out and stored: declared once for `RelabelConfig` (one round) and the DMT
    actor's `DMTLoopConfig` (every round of a run), which builds the former from it."""

    sequences: int = 512
    """Sequences rolled out per round (a window of the corpus that moves with the round)."""
    shard_sequences: int = 128
    """Sequences per shard (one work item each)."""
    resources: Resources = field(default_factory=Resources)
    """Resources of the relabel work (each worker's, or the DMT actor's own)."""


@dataclass(kw_only=True)
class RelabelConfig(Rollouts):
    targets: str
    """Target set URL (the folder holding manifest/): round 0, only read."""
    run: str
    """Student run URL: the round is written to and committed in <run>/rounds/."""
    teacher: str
    """Teacher checkpoint that labeled the target set."""
    student: str
    """Student checkpoint to roll out."""
    corpus: str
    """Corpus spec (the one the target set was labeled from)."""
    round: int
    """DMT round number (>= 1; round 0 is the teacher's own labels)."""

    def build(self, corpus, target: str, fingerprint: str) -> RelabelStage:
        """The stage the workers run: this config plus the loaded corpus, the rounds' URL and the target set's
        teacher fingerprint."""
        return RelabelStage(self, corpus.spec, target, fingerprint)


def round_items(num_sequences: int, round: int, sequences: int, per_shard: int) -> list[ShardRange]:
    """Round r rolls out sequences [(r-1)*n, r*n) (mod the corpus), so successive rounds see new data.
    A window that wraps past the corpus end continues at sequence 0 in a new shard (a shard is one
    contiguous range), so every round holds exactly n sequences."""
    if round < 1:
        raise RelabelError(f"round={round} must be >= 1 (round 0 holds the teacher's labels)")
    if per_shard < 1 or sequences < 1:
        raise RelabelError(f"sequences={sequences} and shard_sequences={per_shard} must be >= 1")
    n = min(sequences, num_sequences)
    first = ((round - 1) * n) % num_sequences
    items: list[ShardRange] = []
    for s in range(0, n, per_shard):
        a, size = (first + s) % num_sequences, min(per_shard, n - s)
        while size:  # split at the corpus end instead of dropping the wrapped sequences
            take = min(size, num_sequences - a)
            items.append(ShardRange(len(items), a, a + take))
            a, size = 0, size - take
    return items


def check_relabel(cfg: RelabelConfig) -> tuple[Generation, object, int] | None:
    """Validate a round before any work or pin: the target set exists, the corpus is the labeled one, the
    rollout fits, and the teacher and student match the set's fingerprint (config reads only). Returns
    (newest generation, corpus, Td), or None when the round is already committed."""
    target = Bucket.from_url(cfg.targets, endpoint_url=cfg.endpoint_url)
    n = newest_generation(target)
    if not n:
        raise RelabelError(f"no target set at {cfg.targets} (no manifest generation): run `smt label` first")
    gen = read_generation(target, n)
    rounds = rounds_bucket(cfg.run, cfg.endpoint_url)
    k = newest_generation(rounds)
    if k and any(e.round == cfg.round for e in read_generation(rounds, k).shards):
        return None
    corpus = load_corpus(cfg.corpus)
    if corpus.corpus_id != gen.corpus_id:
        raise RelabelError(f"corpus {corpus.spec!r} (id {corpus.corpus_id}) is not the one the target set was "
                           f"labeled from (id {gen.corpus_id}): pass the same --corpus as `smt label`")
    if cfg.start > 0 and not encoder_kind((gen.teacher_config or {}).get("encoder", "causal")).one_pass:
        raise RelabelError("stream-mode relabeling (start > 0) needs a causal teacher with window=Tc: the "
                           "rollout's targets come from one encode_all pass")
    Td = cfg.Td if cfg.Td is not None else corpus.seq_len - cfg.start
    if cfg.start < 0 or Td < 1 or cfg.start + Td > corpus.seq_len:
        raise RelabelError(f"start={cfg.start}, Td={Td} does not fit sequences of length {corpus.seq_len}: "
                           "shorten --Td or --start")
    fp = gen.teacher_fingerprint
    tfp = read_config(cfg.teacher, "teacher", endpoint_url=cfg.endpoint_url).get("fingerprint")
    if tfp != fp:
        raise RelabelError(f"teacher {cfg.teacher} has fingerprint {str(tfp)[:16]}, the target set {fp[:16]}: "
                           "pass the teacher that labeled it")
    sfp = read_config(cfg.student, "student", endpoint_url=cfg.endpoint_url)["model"].get("teacher_fingerprint")
    if sfp != fp:
        raise RelabelError(f"student {cfg.student} was trained against teacher {str(sfp)[:16]}, the target set "
                           f"is labeled by {fp[:16]}: pass the run trained on this target set")
    return gen, corpus, Td


def relabel(cfg: RelabelConfig, executor, quiet: bool = False, before_commit=None) -> dict:
    """Roll out, write round `cfg.round` of the run as pair shards, commit one generation of the run's
    rounds. Idempotent: a round already in the run's newest rounds generation is not written again, and
    a rerun after a crash before the commit rewrites the same bytes (write-once shards skip).
    `before_commit(report)` gets the round's report (without its generation) after every shard is written
    and before the commit."""
    target = Bucket.from_url(cfg.targets, endpoint_url=cfg.endpoint_url)
    rounds = rounds_bucket(cfg.run, cfg.endpoint_url)
    checked = check_relabel(cfg)
    if checked is None:
        return {"round": cfg.round, "generation": newest_generation(rounds), "committed": False, "records": 0,
                "drift_by_step": None, "note": "round already committed"}
    gen, corpus, Td = checked
    stage = cfg.build(corpus, rounds.url(), gen.teacher_fingerprint)
    items = round_items(corpus.num_sequences, cfg.round, cfg.sequences, cfg.shard_sequences)
    t0 = time.perf_counter()
    results = {}
    for res in executor.map(stage, items, total_records=sum(i.size for i in items) * Td, quiet=quiet):
        results[res["index"]] = res
    entries = [ShardEntry.from_json(results[i.index]["entry"], rounds.url()) for i in items]
    seqs = sum(r["sequences"] for r in results.values())
    drift = np.sum([r["drift_sum"] for r in results.values()], axis=0) / max(1, seqs)
    n_t = sum(r["targets"] for r in results.values())
    report = {"round": cfg.round, "generation": None, "committed": False, "student": cfg.student,
              "records": sum(e.records for e in entries), "shards": len(entries), "sequences": seqs,
              "seconds": time.perf_counter() - t0, "drift_by_step": [float(v) for v in drift],
              "rollout_acc": sum(r["correct"] for r in results.values()) / n_t if n_t else None}
    report["states_per_second"] = report["records"] / max(report["seconds"], 1e-9)
    if before_commit is not None:
        before_commit(dict(report))
    register_run(target, Bucket.from_url(cfg.run, endpoint_url=cfg.endpoint_url).url())
    new = commit_rounds(rounds, entries, gen, target.url())
    report.update(generation=new.number, committed=True)
    return report
