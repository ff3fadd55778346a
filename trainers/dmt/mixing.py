"""Lockstep DMT's mixing policy: how much of each epoch comes from round 0 (the teacher's labels) and from each
DMT round, as the weight function the shard stream samples by (`storage.stream.RoundWeights`).

- fixed weights by round key (`round_weights`: '0', 'dmt' = every round >= 1, 'N' = round N);
- recency (`round_decay`): within 'dmt', round r gets a share proportional to round_decay ** (newest - r)
  (relabels of an old student hurt; the recipes use 0.1);
- DAgger's beta (`beta`, `beta_halflife`): round 0's share of the '0' + 'dmt' records starts at beta once DMT
  rounds exist and decays towards its configured share, halving every `beta_halflife` rounds
  (`teacher_share`, also online DMT's per-step schedule: trainers/dmt/online.py).

`StreamConfig` is the student's stream config: the stream's own settings (`storage.stream.ShardStreamConfig`)
plus these knobs, whose `weights()` is a `RoundMix`. A new mixing variant is a new weight function here.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from storage.manifest import ShardEntry
from storage.stream import Groups, RoundWeights, ShardStreamConfig, by_round
from storage.stream import epoch_plan as _epoch_plan

__all__ = ["RoundMix", "StreamConfig", "beta_weights", "check_beta", "epoch_plan", "teacher_share"]


def teacher_share(beta: float, halflife: float, steps: float, floor: float = 0.0) -> float:
    """The share of teacher-state transitions after `steps` DMT steps (or rounds): `beta` at 0, then
    halving its distance to `floor` every `halflife`."""
    if beta <= floor:
        return floor
    return floor + (beta - floor) * 0.5 ** (max(0.0, steps) / halflife)


def check_beta(beta: float, halflife: float, what: str) -> None:
    """Refuse a share outside [0, 1] or a half-life <= 0, naming the setting."""
    if not 0.0 <= beta <= 1.0 or halflife <= 0:
        raise ValueError(f"{what}: beta={beta} must be in [0, 1] and its half-life={halflife} > 0")


def beta_weights(round_weights: Mapping[str, float], newest: int, beta: float, halflife: float) -> dict[str, float]:
    """`round_weights` with round 0's weight set so that its share of the '0' + 'dmt' records is
    teacher_share(beta, halflife, newest - 1, floor=its configured share): DAgger's decaying beta over rounds."""
    w0, wd = round_weights["0"], round_weights["dmt"]
    share = teacher_share(beta, halflife, newest - 1, floor=w0 / (w0 + wd))
    return {**round_weights, "0": wd * share / (1.0 - share) if share < 1 else wd * 1e9}


@dataclass(frozen=True)
class RoundMix:
    """The weight function of a generation's shards under this policy (see the module docstring)."""

    round_weights: Mapping[str, float]
    round_decay: float = 1.0
    beta: float | None = None
    beta_halflife: float = 5.0

    def __call__(self, shards: tuple[ShardEntry, ...]) -> Groups:
        weights = dict(self.round_weights)
        dmt_rounds = [e.round for e in shards if e.round >= 1]
        if self.beta is not None and dmt_rounds:
            weights = beta_weights(weights, max(dmt_rounds), self.beta, self.beta_halflife)
        groups = by_round(weights)(shards)
        if self.round_decay < 1 and "dmt" in groups:
            members, w = groups.pop("dmt")
            newest = max(shards[i].round for i in members)
            decay = {r: self.round_decay ** (newest - r) for r in {shards[i].round for i in members}}
            for i in members:
                r = shards[i].round
                groups.setdefault(f"dmt:{r}", ([], w * decay[r] / sum(decay.values())))[0].append(i)
        return groups


def epoch_plan(shards: tuple[ShardEntry, ...], seed: int, epoch: int, round_weights: Mapping[str, float] | None,
               mix_shards: int = 1, round_decay: float = 1.0, beta: float | None = None,
               beta_halflife: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """The whole epoch plan under this policy (`storage.stream.epoch_plan` with a `RoundMix`): tests, tools."""
    mix = None if round_weights is None else RoundMix(dict(round_weights), round_decay, beta, beta_halflife)
    return _epoch_plan(shards, seed, epoch, mix, mix_shards)


@dataclass(kw_only=True)
class StreamConfig(ShardStreamConfig):
    """The student's stream: the shard stream's settings plus the rounds' mixing (module docstring)."""

    round_weights: dict[str, float] | None = None
    """Per-epoch sampling weights by round group: keys '0' (base labels), 'dmt' (rounds >= 1) or 'N'."""
    round_decay: float = 1.0
    """Recency within the 'dmt' group: round r gets a share proportional to round_decay ** (newest - r)
    (1 = every DMT round alike; DMT relabels of an old student hurt, so the recipes' DMT phase uses 0.1)."""
    beta: float | None = None
    """Lockstep DMT, DAgger's beta: round 0's share of an epoch starts at this once DMT rounds exist and decays
    towards the share `round_weights` give it, halving every `beta_halflife` rounds (None = off)."""
    beta_halflife: float = 5.0
    """Rounds over which round 0's extra share (`beta`) halves."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.round_weights is not None:
            self.round_weights = {str(k): float(v) for k, v in self.round_weights.items()}
            for k, v in self.round_weights.items():
                if not (k == "dmt" or k.isdigit()) or v < 0:
                    raise ValueError(f"round_weights entry {k!r}: {v}: keys are '0', 'dmt' or a round "
                                     "number, weights >= 0")
            if not any(v > 0 for v in self.round_weights.values()):
                raise ValueError(f"round_weights={self.round_weights} has no positive weight")
        if not 0 < self.round_decay <= 1:
            raise ValueError(f"round_decay={self.round_decay} must be in (0, 1]")
        if self.beta is not None:
            check_beta(self.beta, self.beta_halflife, "StreamConfig")
            if not self.round_weights or self.round_weights.get("0", 0) <= 0 or self.round_weights.get("dmt", 0) <= 0:
                raise ValueError(f"beta={self.beta} mixes round 0 into DMT rounds: round_weights={self.round_weights} "
                                 "needs positive '0' and 'dmt' weights")

    def weights(self) -> RoundWeights | None:
        if self.round_weights is None:
            return None
        return RoundMix(dict(self.round_weights), self.round_decay, self.beta, self.beta_halflife)

    def layout(self) -> dict[str, Any]:
        return {**super().layout(), "round_weights": self.round_weights, "round_decay": self.round_decay,
                **({"beta": self.beta, "beta_halflife": self.beta_halflife} if self.beta is not None else {})}

    def layout_defaults(self) -> dict[str, Any]:
        return {"round_decay": 1.0}  # states saved before round_decay existed
