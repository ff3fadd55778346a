"""Lockstep DMT, on-policy: re-roll the newest DMT round's sequences with the current student every step.

A DMT round holds, for each of its sequences, the tokens, the start memory m*_start (the student's rollout
starts there, so state_in at the first position is the teacher's), the teacher targets m*_{t+1} and the
states m_hat_t of the student the actor rolled out, which is up to 2 x `every` steps old by the time the
trainer uses it. Stale states hurt (benchmarks/results/dmt.md: even a 1-2 step old student makes a good
SMT student dip before it recovers), so with the refresh (`Refresh`, a batch transform of the student
loop, `RefreshConfig.enabled`) the trainer replaces the stored state_in of the
newest round's records by its *current* student's rollout (inference only, Td sequential steps over the
round's sequences, about the cost of one relabel batch) before each step. The targets still come from the
store: the trainer never runs the teacher.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from models.device import autocast
from storage.stream import ShardStream
from trainers.student import Hook, Loop


@dataclass(kw_only=True)
class RefreshConfig:
    enabled: bool = False
    """Re-roll the newest round's sequences with the current student before every step of the DMT phase and
    train on those states (on-policy; the targets stay the stored teacher memories)."""


class Refresh(Hook):
    """The batch transform: from the phase start on, the newest round's records of each batch get the current
    student's states (`FreshRound`, rebuilt whenever the stream moves to another generation)."""

    def __init__(self, cfg: RefreshConfig, policy: Callable[[Loop], torch.nn.Module] | None = None) -> None:
        """`policy(loop)`: the student to re-roll with (default the one being trained; lockstep DMT passes
        its EMA policy when it has one)."""
        self.cfg = cfg
        self.policy = policy
        self.fresh: FreshRound | None = None

    def start(self, loop: Loop) -> None:
        self.fresh = None

    def transform(self, loop: Loop, batch: dict[str, torch.Tensor]) -> None:
        state = loop.state
        if state.step < state.cfg.phase_start:
            return
        if self.fresh is None or self.fresh.generation != state.stream.generation:
            self.fresh = FreshRound(state.stream, state.stream.generation, state.device)
        with autocast(state.device):
            self.fresh.refresh(self.policy(loop) if self.policy else state.student, batch)


class FreshRound:
    """The newest round of a generation laid out as (sequence, step) grids for on-policy refreshes. (A
    lockstep trainer is always on the oldest generation holding the round it needs: its newest round.)"""

    def __init__(self, stream: ShardStream, generation: int, device: torch.device) -> None:
        ts = stream.target_set(generation)
        r = max(e.round for e in ts.shards)
        if r < 1:
            raise ValueError(f"generation {generation} of {ts.bucket.url()} holds no DMT round to re-roll")
        shards = [i for i, e in enumerate(ts.shards) if e.round == r]
        parts = {i: stream.cache.get(ts, ts.shards[i]) for i in shards}
        seq = np.concatenate([p.seq for p in parts.values()])
        pos = np.concatenate([p.pos for p in parts.values()])
        seqs, start = np.unique(seq), int(pos.min())
        Td = int(pos.max()) - start + 1
        tokens = np.zeros((len(seqs), Td), dtype=np.int64)
        m0 = np.zeros((len(seqs), parts[shards[0]].state_in.shape[1]), dtype=np.float32)
        seen = np.zeros((len(seqs), Td), dtype=bool)
        self.where: dict[int, np.ndarray] = {}  # shard index -> per record flat index into (seq, step)
        for i, p in parts.items():
            row, col = np.searchsorted(seqs, p.seq), p.pos - start
            tokens[row, col] = p.token
            seen[row, col] = True
            first = col == 0
            m0[row[first]] = p.state_in[first]
            self.where[i] = row * Td + col
        if not seen.all():
            raise ValueError(f"round {r} of {ts.bucket.url()} does not hold every step of its {len(seqs)} sequences: "
                             "it cannot be re-rolled (was it written by the relabel stage?)")
        self.round, self.generation, self.Td = r, generation, Td
        self.tokens = torch.from_numpy(tokens).to(device)
        self.m0 = torch.from_numpy(m0).to(device)

    @torch.no_grad()
    def refresh(self, student, batch: dict[str, torch.Tensor]) -> int:
        """Overwrite batch['state_in'] of this round's records with the current student's states; returns how
        many records were refreshed."""
        shard, index = batch["shard"].cpu().numpy(), batch["index"].cpu().numpy()
        mask = np.isin(shard, list(self.where))
        if not mask.any():
            return 0
        m, states = self.m0, [self.m0]
        for t in range(self.Td - 1):
            m = student.step(m, self.tokens[:, t]).float()
            states.append(m)
        flat = torch.stack(states, 1).reshape(-1, m.shape[-1])
        rows = np.flatnonzero(mask)
        idx = np.empty(len(rows), dtype=np.int64)
        for s in np.unique(shard[rows]):
            k = shard[rows] == s
            idx[k] = self.where[int(s)][index[rows[k]]]
        dev = batch["state_in"].device
        batch["state_in"][torch.from_numpy(rows).to(dev)] = flat[torch.from_numpy(idx).to(flat.device)].to(
            device=dev, dtype=batch["state_in"].dtype)
        return len(rows)
