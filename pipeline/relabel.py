"""DMT relabeling: roll the student out on its own states and label each state with the teacher.

For a batch of sequences, the student starts from the teacher's memory at `start` (m_0 in prefix mode,
m_Tc in stream mode) and runs Td steps on the true inputs. Each step becomes a pair record
    state_in = m_hat_t (the student's own state), token = x_t, state_out = m*_{t+1} (the teacher's),
    y = y_t, drift = MSE(m_hat_t, m*_t)
so that training on these pairs is exactly the one-step DMT loss, computed offline (dataset aggregation).
"""
from __future__ import annotations

import numpy as np
import torch

from storage.schema import Pairs


@torch.inference_mode()
def relabel_batch(student, teacher, x: np.ndarray, y: np.ndarray, seq_ids: np.ndarray, start: int = 0,
                  Td: int | None = None, device: torch.device | str = "cpu") -> tuple[Pairs, np.ndarray]:
    """Returns (pairs, drift_by_step [Td+1]) for x, y (B, T) int arrays whose sequence ids are `seq_ids`.

    drift_by_step[k] is the mean MSE between the student's state and the teacher's after k steps."""
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
    return pairs, drift.mean(0).cpu().numpy()
