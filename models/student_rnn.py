"""A recurrent student: updater f, readout g (a memory decoder) and a start memory m_0.

For SMT/DMT students the readout is initialised from the teacher's decoder and m_0 is the teacher's
memory of the empty context; for the BPTT baseline the readout is fresh and m_0 is a learned parameter
(RMS-normalised like every memory).
"""
from __future__ import annotations

import torch
from torch import nn

from models.teacher import MemoryDecoder, Teacher, TeacherConfig
from models.updaters import UpdaterConfig, build_updater


class Student(nn.Module):
    def __init__(self, updater_cfg: UpdaterConfig, teacher_cfg: TeacherConfig):
        super().__init__()
        if updater_cfg.mem_size != teacher_cfg.Z or updater_cfg.vocab_size != teacher_cfg.vocab_size:
            raise ValueError(
                f"updater (Z={updater_cfg.mem_size}, vocab={updater_cfg.vocab_size}) does not match the teacher "
                f"(Z={teacher_cfg.Z}, vocab={teacher_cfg.vocab_size}): use the teacher's K, d and vocab")
        self.updater_cfg, self.teacher_cfg = updater_cfg, teacher_cfg
        self.updater = build_updater(updater_cfg)
        self.readout_net = MemoryDecoder(teacher_cfg.vocab_size, teacher_cfg.d_model, teacher_cfg.decoder_depth,
                                         teacher_cfg.n_heads, teacher_cfg.mem_tokens)
        self.m0 = nn.Parameter(torch.randn(teacher_cfg.Z) * 0.02)

    @classmethod
    def from_teacher(cls, teacher: Teacher, updater_cfg: UpdaterConfig) -> Student:
        s = cls(updater_cfg, teacher.cfg)
        s.readout_net.load_state_dict(teacher.decoder.state_dict())
        with torch.no_grad():
            dev = next(teacher.parameters()).device
            s.m0.copy_(teacher.encode(torch.zeros(1, 0, dtype=torch.long, device=dev))[0].cpu())
        return s

    def start(self, batch: int) -> torch.Tensor:
        return self.updater.normalize(self.m0.expand(batch, -1))

    def step(self, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.updater(m, x)

    def readout(self, m: torch.Tensor) -> torch.Tensor:
        return self.readout_net.readout(m)

    def rollout(self, x: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
        """Run the updater alone over x (B, T) from m (default m_0): returns m_hat_0..m_hat_T (B, T+1, Z)."""
        m = self.start(x.shape[0]) if m is None else m
        out = [m]
        for t in range(x.shape[1]):
            m = self.step(m, x[:, t])
            out.append(m)
        return torch.stack(out, 1)
