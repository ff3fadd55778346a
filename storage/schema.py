"""What a stored record means: transitions, and the two layouts that hold them.

A sequence has memories m_0..m_T (m_t = teacher memory after reading x_0..x_{t-1}), tokens x_0..x_{T-1}
and readout targets y_0..y_{T-1} (-1 = ignored). Transition t is (state_in=m_t, token=x_t,
state_out=m_{t+1}, y=y_t), with provenance (corpus id, seq, pos=t, round).

* `Segments` (teacher labels): runs of S consecutive transitions share their states, so each state is
  stored once although it is the target of one transition and the input of the next.
* `Pairs` (relabels of student rollouts): independent (state_in, state_out) pairs.

Both convert to the uniform `Transitions` that trainers consume (states as float32).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMA_VERSION = 1
LAYOUTS = ("segments", "pairs")


def _floats(x: object, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (bf16 has no numpy dtype, so go through float32)
        x = x.detach().float().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise ValueError(f"{name} must hold floats, got dtype {a.dtype}")
    return a


def _ints(x: object, name: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    out = a.astype(dtype, copy=False)
    if not np.array_equal(out, a):
        raise ValueError(f"{name} has values that do not fit {np.dtype(dtype).name}")
    return out


@dataclass
class Transitions:
    """Uniform records: row i is one transition (state_in -> state_out under token)."""

    state_in: np.ndarray   # [n, Z] float32
    token: np.ndarray      # [n] int32, x_t
    state_out: np.ndarray  # [n, Z] float32
    y: np.ndarray          # [n] int32, readout target of state_out (-1 = ignored)
    seq: np.ndarray        # [n] int64
    pos: np.ndarray        # [n] int64, t
    round: np.ndarray      # [n] int32
    drift: np.ndarray | None = None  # [n] float32, pairs only (optional)

    def __len__(self) -> int:
        return int(self.token.shape[0])

    @staticmethod
    def concat(parts: list[Transitions]) -> Transitions:
        if not parts:
            raise ValueError("Transitions.concat needs at least one part")
        drift = (np.concatenate([p.drift for p in parts])
                 if all(p.drift is not None for p in parts) else None)
        return Transitions(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                             ("state_in", "token", "state_out", "y", "seq", "pos", "round")), drift=drift)


@dataclass
class Segments:
    """Trajectory segments: states [n, S+1, Z]; tokens/y [n, S]; seq/pos0 [n] (pos0 = position of states[:, 0])."""

    states: np.ndarray
    tokens: np.ndarray
    y: np.ndarray
    seq: np.ndarray
    pos0: np.ndarray

    layout = "segments"

    def __post_init__(self) -> None:
        self.states = _floats(self.states, "Segments.states")
        if self.states.ndim != 3 or self.states.shape[1] < 2:
            raise ValueError(f"Segments.states must be [n, S+1, Z] with S >= 1, got {self.states.shape}")
        n, s1, _ = self.states.shape
        self.tokens = _ints(self.tokens, "Segments.tokens", np.int32, (n, s1 - 1))
        self.y = _ints(self.y, "Segments.y", np.int32, (n, s1 - 1))
        self.seq = _ints(self.seq, "Segments.seq", np.int64, (n,))
        self.pos0 = _ints(self.pos0, "Segments.pos0", np.int64, (n,))

    @property
    def n(self) -> int:
        return int(self.states.shape[0])

    @property
    def S(self) -> int:
        return int(self.states.shape[1]) - 1

    @property
    def Z(self) -> int:
        return int(self.states.shape[2])

    @property
    def num_records(self) -> int:
        return self.n * self.S

    def to_transitions(self, round: int = 0) -> Transitions:
        n, S, Z = self.n, self.S, self.Z
        st = self.states.astype(np.float32, copy=False)
        return Transitions(
            state_in=st[:, :-1].reshape(n * S, Z).copy(),
            token=self.tokens.reshape(-1).copy(),
            state_out=st[:, 1:].reshape(n * S, Z).copy(),
            y=self.y.reshape(-1).copy(),
            seq=np.repeat(self.seq, S),
            pos=(self.pos0[:, None] + np.arange(S, dtype=np.int64)[None, :]).reshape(-1),
            round=np.full(n * S, round, dtype=np.int32),
        )


@dataclass
class Pairs:
    """Independent transitions: state_in/state_out [n, Z]; tokens/y/seq/pos [n]; optional drift [n]."""

    state_in: np.ndarray
    tokens: np.ndarray
    state_out: np.ndarray
    y: np.ndarray
    seq: np.ndarray
    pos: np.ndarray
    drift: np.ndarray | None = None

    layout = "pairs"

    def __post_init__(self) -> None:
        self.state_in = _floats(self.state_in, "Pairs.state_in")
        self.state_out = _floats(self.state_out, "Pairs.state_out")
        if self.state_in.ndim != 2 or self.state_out.shape != self.state_in.shape:
            raise ValueError(f"Pairs.state_in/state_out must both be [n, Z], got {self.state_in.shape} "
                             f"and {self.state_out.shape}")
        n = self.state_in.shape[0]
        self.tokens = _ints(self.tokens, "Pairs.tokens", np.int32, (n,))
        self.y = _ints(self.y, "Pairs.y", np.int32, (n,))
        self.seq = _ints(self.seq, "Pairs.seq", np.int64, (n,))
        self.pos = _ints(self.pos, "Pairs.pos", np.int64, (n,))
        if self.drift is not None:
            self.drift = _floats(self.drift, "Pairs.drift").astype(np.float32, copy=False)
            if self.drift.shape != (n,):
                raise ValueError(f"Pairs.drift has shape {self.drift.shape}, expected {(n,)}")

    @property
    def n(self) -> int:
        return int(self.state_in.shape[0])

    @property
    def S(self) -> int:
        return 0

    @property
    def Z(self) -> int:
        return int(self.state_in.shape[1])

    @property
    def num_records(self) -> int:
        return self.n

    def to_transitions(self, round: int = 0) -> Transitions:
        return Transitions(
            state_in=self.state_in.astype(np.float32),
            token=self.tokens.copy(),
            state_out=self.state_out.astype(np.float32),
            y=self.y.copy(),
            seq=self.seq.copy(),
            pos=self.pos.copy(),
            round=np.full(self.n, round, dtype=np.int32),
            drift=None if self.drift is None else self.drift.copy(),
        )
