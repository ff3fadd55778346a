"""Evaluation: teacher readout, and the updater rolled out alone with teacher-forced inputs.

Reported figures (all over targets y != -1):
- `acc`: answer accuracy (argmax of the readout of m_{t+1} against y_t);
- `loss`, `bits_per_token`: mean cross-entropy in nats and in bits;
- `loss_by_pos`: mean loss per position t (NaN-free: positions without targets are omitted -> None);
- `drift_by_pos`: MSE(m_hat_t, m_t) between the rolled-out memory and the teacher's, per t.
Prefix-mode corpora roll out from m_0; stream corpora from the teacher memory of a prompt of `prompt` tokens
(the paper's protocol) or, with `from_m0`, from the student's own m_0 reading the prompt itself (a standalone
RNN: no teacher at inference). Both score the same targets, y[:, prompt:], as `evaluate_teacher` and the BPTT
baseline do, so their bits per token are comparable: each is the mean of -log2 p(y_t) over those targets.
"""
from __future__ import annotations

import math

import torch

from trainers.losses import per_position_ce


def eval_batch(corpus, n: int, seed: int, split: str = "valid") -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed evaluation set of the corpus's `split`: valid for stopping rules and model choice (the
    default), test only for reported figures (see `pipeline.corpora.held_out`)."""
    from pipeline.corpora import held_out

    x, y = held_out(corpus, split, n, seed)
    return torch.as_tensor(x, dtype=torch.long), torch.as_tensor(y, dtype=torch.long)


def heldout_indices(n_available: int, n: int) -> list[int]:
    """`n` sequence indices spread evenly over a split of `n_available` (all of them when n >= n_available),
    e.g. the test windows whose prompts the reports continue."""
    if n_available < 1:
        raise ValueError("the held-out split holds no sequences: use a larger corpus or shorter windows")
    if n >= n_available:
        return list(range(n_available))
    return sorted({round(i * (n_available - 1) / max(1, n - 1)) for i in range(n)})


def _summary(logits: torch.Tensor, y: torch.Tensor) -> dict:
    mask = y != -1
    n = int(mask.sum())
    ce = per_position_ce(logits, y)
    acc = float(((logits.argmax(-1) == y) & mask).sum()) / max(1, n)
    loss = float(ce.sum()) / max(1, n)
    per_pos = ce.sum(0) / mask.sum(0).clamp(min=1)
    return {"acc": acc, "loss": loss, "bits_per_token": loss / math.log(2), "targets": n,
            "loss_by_pos": [float(v) if c else None for v, c in zip(per_pos, mask.sum(0))]}


@torch.no_grad()
def teacher_memories(teacher, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([teacher.encode_all(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


@torch.no_grad()
def evaluate_teacher(teacher, x: torch.Tensor, y: torch.Tensor, prompt: int = 0) -> dict:
    """Readout of the teacher's own memories. The register teacher encodes only the memories whose
    readout has a target (one encoder pass each), the causal one all of them in one pass."""
    y = y.clone()
    y[:, :prompt] = -1
    B, T = x.shape
    M, cols = teacher.encoder_kind.readout_memories(teacher, x, y)
    if M.shape[1] == 0:
        return _summary(torch.zeros(B, T, teacher.cfg.vocab_size), y)
    logits = teacher.readout(M.reshape(-1, M.shape[-1])).view(B, M.shape[1], -1)
    full = torch.zeros(B, T, logits.shape[-1], device=logits.device, dtype=logits.dtype)
    full[:, cols.to(logits.device)] = logits
    return _summary(full, y)


@torch.no_grad()
def evaluate_student(student, x: torch.Tensor, y: torch.Tensor, teacher=None, prompt: int = 0,
                     from_m0: bool = False) -> dict:
    """Roll the student's updater out alone over x and score its readout on y[:, prompt:]: from the teacher
    memory after `prompt` tokens, or (`from_m0`, or no prompt) from m_0 over the whole of x, the prompt read
    by the student itself. With a teacher, also the drift against the teacher's memories."""
    M = teacher_memories(teacher, x) if teacher is not None else None
    if prompt and not from_m0:
        if M is None:
            raise ValueError("a rollout from the prompt's memory (prompt > 0) needs the teacher: pass it, or from_m0")
        m_hat = student.rollout(x[:, prompt:], M[:, prompt])
    else:
        m_hat = student.rollout(x)[:, prompt:]
    B, T1, Z = m_hat.shape
    yy = y[:, prompt:]
    cols = torch.nonzero((yy != -1).any(0)).flatten()  # read out only where a target is (sparse tasks: 1 of T)
    logits = torch.zeros(B, T1 - 1, student.teacher_cfg.vocab_size, device=m_hat.device)
    if len(cols):
        cols = cols.to(m_hat.device)
        part = student.readout(m_hat[:, 1:][:, cols].reshape(-1, Z)).view(B, len(cols), -1)
        logits[:, cols] = part.to(logits.dtype)
    out = _summary(logits, yy)
    if M is not None:
        drift = (m_hat - M[:, prompt:]).pow(2).mean(dim=(0, 2))
        out["drift_by_pos"] = [float(v) for v in drift]
        out["drift_final"] = float(drift[-1])
    return out


def _draw(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    from models.sampling import draw

    return draw(logits, temperature, generator)


@torch.no_grad()
def generate(student, prompt: torch.Tensor, steps: int, temperature: float = 1.0,
             generator: torch.Generator | None = None, memory: torch.Tensor | None = None) -> torch.Tensor:
    """Sample `steps` tokens after `prompt` (B, P) from the student alone; returns (B, steps). The student reads
    the prompt itself from m_0, or starts from `memory` (B, Z): e.g. the teacher's memory of the prompt."""
    if memory is not None:
        m = memory
    else:
        m = student.rollout(prompt)[:, -1] if prompt.shape[1] else student.start(prompt.shape[0])
    out = []
    for _ in range(steps):
        tok = _draw(student.readout(m), temperature, generator)
        out.append(tok)
        m = student.step(m, tok)
    return torch.stack(out, 1)


@torch.no_grad()
def generate_teacher(teacher, prompt: torch.Tensor, steps: int, temperature: float = 1.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample `steps` tokens after `prompt` (B, P) from the teacher: each token from the readout of the teacher's
    memory of everything so far (re-encoded every step; causal teacher only). Returns (B, steps)."""
    if not teacher.encoder_kind.one_pass:
        raise ValueError(f"sampling from the teacher needs the causal encoder (the {teacher.cfg.encoder} one "
                         "re-encodes every memory per token)")
    seq = prompt
    for _ in range(steps):
        m = teacher.encode_all(seq)[:, -1]
        seq = torch.cat([seq, _draw(teacher.readout(m), temperature, generator)[:, None]], 1)
    return seq[:, prompt.shape[1]:]
