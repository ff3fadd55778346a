"""DAgger Memory Training (the paper's stage 2): train the student on its own states, relabelled by the teacher.

Everything DMT is in this package, as components the rest of the system is given:
- `lockstep.py`: lockstep DMT inside a student run: `LockstepDMTConfig` and the `LockstepDMT` hook of the
  student loop (trainers/student.py): policy snapshots at round boundaries, bounded lag, waits
  (`DMTWaitTimeout`).
- `refresh.py`: the on-policy refresh, a batch transform of the same loop (`RefreshConfig`, `Refresh`).
- `actor.py`: the DMT actor's loop (`DMTLoop`, `smt dmt`): roll the run's student out, relabel with the
  teacher (the `pipeline/relabel.py` stage), append the round to the run (storage/rounds.py); alone, it
  trains the run between rounds itself (`AggregateTrainer`).
- `online.py`: online DMT without shards (`OnlineDMTConfig`, `dmt_online`, `OnlineDMT` for one schedule over
  several calls): fresh rollouts every step, on the loop of trainers/loop.py.
"""
from trainers.dmt.actor import AggregateTrainer, DMTLoop, DMTLoopConfig, DMTStalled, DMTTimeout, round_reports
from trainers.dmt.lockstep import DMTWaitTimeout, LockstepDMT, LockstepDMTConfig
from trainers.dmt.online import OnlineDMT, OnlineDMTConfig, dmt_losses, dmt_online
from trainers.dmt.refresh import FreshRound, Refresh, RefreshConfig

__all__ = ["AggregateTrainer", "DMTLoop", "DMTLoopConfig", "DMTStalled", "DMTTimeout", "DMTWaitTimeout", "FreshRound",
           "LockstepDMT", "LockstepDMTConfig", "OnlineDMT", "OnlineDMTConfig", "Refresh", "RefreshConfig", "dmt_losses",
           "dmt_online", "round_reports"]
