"""DAgger Memory Training (the paper's stage 2): train the student on its own states, relabelled by the teacher.

Everything DMT is in this package, as components the rest of the system is given:
- `phase.py`: the DMT phase of a student run as one call (`DMTPhase`, `run_dmt`): lockstep (a trainer actor
  beside the DMT actor) or online; what `smt pipeline` runs after the student's SMT phase.
- `lockstep.py`: lockstep DMT inside a student run: `LockstepDMTConfig` and the `LockstepDMT` hook of the
  student loop (trainers/student.py): policy snapshots at round boundaries, bounded lag, waits
  (`DMTWaitTimeout`).
- `mixing.py`: how an epoch mixes round 0 and the DMT rounds (`StreamConfig`, the student's stream config, and
  `RoundMix`, the weight function the shard stream samples by: round weights, recency, DAgger's beta).
- `refresh.py`: the on-policy refresh, a batch transform of the same loop (`RefreshConfig`, `Refresh`).
- `actor.py`: the DMT actor's loop (`DMTLoop`, `smt dmt`): roll the run's student out, relabel with the
  teacher (the `pipeline/relabel.py` stage), append the round to the run (storage/rounds.py); alone, it
  trains the run between rounds itself (`AggregateTrainer`).
- `online.py`: online DMT without shards (`OnlineDMTConfig`, `dmt_online`, `OnlineDMT` for one schedule over
  several calls): fresh rollouts every step, on the loop of trainers/loop.py.
- `stability.py`: what keeps DMT from undoing a good SMT student (EMA policy, carried AdamW moments).
A new DMT variant: its config and loop in a module here, one mode of `phase.run_dmt` (and a recipe field).

The names below are loaded on first use (PEP 562), so trainers/student.py can import `trainers.dmt.mixing`
while `actor.py` and `lockstep.py` import trainers/student.py.
"""
from __future__ import annotations

import importlib

_WHERE = {"AggregateTrainer": "actor", "DMTLoop": "actor", "DMTLoopConfig": "actor", "DMTStalled": "actor",
          "DMTTimeout": "actor", "round_reports": "actor",
          "DMTWaitTimeout": "lockstep", "LockstepDMT": "lockstep", "LockstepDMTConfig": "lockstep",
          "OnlineDMT": "online", "OnlineDMTConfig": "online", "dmt_losses": "online", "dmt_online": "online",
          "FreshRound": "refresh", "Refresh": "refresh", "RefreshConfig": "refresh",
          "DMTPhase": "phase", "run_dmt": "phase",
          "RoundMix": "mixing", "StreamConfig": "mixing"}

__all__ = ["AggregateTrainer", "DMTLoop", "DMTLoopConfig", "DMTPhase", "DMTStalled", "DMTTimeout",
           "DMTWaitTimeout", "FreshRound", "LockstepDMT", "LockstepDMTConfig", "OnlineDMT", "OnlineDMTConfig", "Refresh",
           "RefreshConfig", "RoundMix", "StreamConfig", "dmt_losses", "dmt_online", "round_reports",
           "run_dmt"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
