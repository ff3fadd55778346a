"""Sampling tokens from a student RNN or a teacher, one token at a time (what `smt generate` streams).

`SamplingConfig` holds the knobs (temperature, top-k, top-p, seed); `draw` turns logits into tokens under
them. `student_tokens` continues from a memory with the updater and readout alone: O(1) state per token.
`teacher_tokens` continues with the teacher's readout of its own memory of everything so far, either
incrementally with a KV cache (`Teacher.incremental`, the default for a causal teacher) or by re-encoding
the whole sequence for every token (`cache=False`, the reference cost). Both are generators, so a caller can
print each token as it is produced.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from models.teacher import ConfigError


@dataclass(kw_only=True)
class SamplingConfig:
    temperature: float = 1.0
    """Softmax temperature; 0 = greedy (argmax)."""
    top_k: int = 0
    """Sample among the k most likely tokens only (0 = all of them)."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of most likely tokens whose probability reaches p (1 = all)."""
    seed: int = 0
    """Seed of the sampling generator (the same seed, prompt and model give the same tokens)."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ConfigError(f"top_k={self.top_k} must be >= 0 (0 = no cut)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1] (1 = no cut)")

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


def draw(logits: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
         top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """One token per row of logits (B, V): argmax at temperature 0, else a sample of softmax(logits / T)
    restricted to the top_k most likely tokens and to the nucleus of mass top_p (the most likely token is
    always kept). The generator lives on the CPU, so probabilities are sampled there."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if top_p < 1:
        p, idx = torch.sort(probs, -1, descending=True)
        drop = p.cumsum(-1) - p >= top_p  # the mass before a token already reaches top_p
        probs = probs.scatter(-1, idx, p.masked_fill(drop, 0.0))
    return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)


@torch.no_grad()
def student_tokens(student, memory: torch.Tensor, steps: int, cfg: SamplingConfig,
                   generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield `steps` tokens (B,) continuing from `memory` (B, Z): the student's own memory of a prompt
    (`student.rollout(prompt)[:, -1]`) or the teacher's. Each token is drawn from the readout, then read
    by the updater."""
    gen = generator if generator is not None else cfg.generator()
    m = memory
    for i in range(steps):
        tok = draw(student.readout(m), cfg.temperature, gen, cfg.top_k, cfg.top_p)
        yield tok
        if i + 1 < steps:
            m = student.step(m, tok)


@torch.no_grad()
def teacher_tokens(teacher, prompt: torch.Tensor, steps: int, cfg: SamplingConfig, cache: bool = True,
                   generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield `steps` tokens (B,) after `prompt` (B, P), each drawn from the readout of the teacher's memory
    of the prompt and the tokens so far: with a KV cache (`cache`, causal teacher) or re-encoded per token."""
    gen = generator if generator is not None else cfg.generator()
    if cache:
        inc = teacher.incremental(prompt.shape[0])
        inc.feed(prompt)
        for i in range(steps):
            tok = draw(teacher.readout(inc.memory), cfg.temperature, gen, cfg.top_k, cfg.top_p)
            yield tok
            if i + 1 < steps:
                inc.feed(tok[:, None])
        return
    seq = prompt
    for _ in range(steps):
        tok = draw(teacher.readout(teacher.memory_after(seq)), cfg.temperature, gen, cfg.top_k, cfg.top_p)
        yield tok
        seq = torch.cat([seq, tok[:, None]], 1)
