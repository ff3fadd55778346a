"""Held-out figures of one run on a test split: bits per token of every model on the same targets, and samples.

Models: the teacher (readout of its own memories: the ceiling of its students), students trained from its
memories (SMT, SMT->DMT) and the BPTT baseline. Every model is scored on the same sequences of the test split
(`pipeline.corpora.held_out`: all of it, or a fixed sample of `n`) and the same targets y[:, prompt:]
(`trainers/evaluate.py`).
A student is rolled out in two ways on stream corpora: from the teacher's memory of the prompt (the paper's
protocol) and from its own m_0 reading the prompt itself (a standalone RNN). On prefix corpora (no prompt)
both start at m_0, so only `from_m0` is a measurement and `from_teacher_prompt` is null with the reason.
A model that was not trained (e.g. BPTT switched off) is null with the reason, never a number.
"""
from __future__ import annotations

import math

import torch

from trainers.evaluate import (
    eval_batch,
    evaluate_student,
    evaluate_teacher,
    generate,
    generate_teacher,
    heldout_indices,
)


def token_unit(corpus) -> str:
    """What one token is: a byte (byte-level text), a pixel (digits, MNIST) or a token."""
    if corpus.kind in ("digits", "mnist"):
        return "pixel"
    return "byte" if corpus.kind in ("text", "hf") else "token"


def scored_targets(corpus, prompt: int) -> str:
    """One sentence saying exactly which tokens are scored."""
    T = corpus.seq_len
    unit = token_unit(corpus)
    if prompt:
        return (f"in each test window of {T} {unit}s, the {unit}s at positions {prompt + 1}..{T} of the window "
                f"(targets y[{prompt}..{T - 1}], {T - prompt} per window, the last one the {unit} just after the "
                f"window when the split continues), each predicted after reading at least {prompt} {unit}s "
                f"of the window; bits = mean of -log2 p(target) over all scored targets")
    return (f"in each test sequence of {T} {unit}s, {unit}s 2..{T} (targets y[0..{T - 2}]; the first {unit} has "
            f"no prediction: every model reads it first); bits = mean of -log2 p(target) over all of them")


def split_sizes(corpus) -> dict:
    """Sequences and tokens of each split of `corpus` (tokens: the split's stream length, or sequences x T)."""
    out = {}
    for split in ("train", "valid", "test"):
        c = corpus.with_split(split)
        tokens = int(c.data.shape[0]) if corpus.streaming else len(c) * c.seq_len
        out[split] = {"sequences": len(c), "tokens": tokens}
    return out


def _figure(r: dict) -> dict:
    return {"bits": r["bits_per_token"], "acc": r["acc"], "targets": r["targets"]}


def score_models(corpus, n: int, prompt: int, teacher, students: dict, bptt=None, split: str = "test",
                 seed: int = 0) -> dict:
    """Figures on `split` of `corpus` (n sequences at most): `students` maps a name (smt, dmt) to a Student
    or None (not trained)."""
    x, y = eval_batch(corpus, n, seed, split)
    corpus = corpus.with_split(split)
    out: dict = {"corpus": corpus.spec, "split": split, "sequences": int(x.shape[0]), "prompt": prompt,
                 "scored": scored_targets(corpus, prompt), "missing": {}}
    out["teacher"] = _figure(evaluate_teacher(teacher, x, y, prompt))
    for name, s in students.items():
        if s is None:
            out[name] = None
            out["missing"][name] = "not trained in this run"
            continue
        fig = {"from_m0": _figure(evaluate_student(s, x, y, teacher, prompt, from_m0=True))}
        if prompt:
            fig["from_teacher_prompt"] = _figure(evaluate_student(s, x, y, teacher, prompt))
        else:
            fig["from_teacher_prompt"] = None
            out["missing"][f"{name}.from_teacher_prompt"] = "prefix corpus: no prompt, the rollout starts at m_0"
        out[name] = fig
    if bptt is None:
        out["bptt"] = None
        out["missing"]["bptt"] = "BPTT baseline not run (recipe bptt=false)"
    else:
        out["bptt"] = {"from_m0": _figure(evaluate_student(bptt, x, y, None, prompt, from_m0=True))}
    out["targets"] = out["teacher"]["targets"]
    return out


def sample_models(corpus, prompt: int, teacher, students: dict, bptt=None, k: int = 4, steps: int = 64,
                  temperature: float = 0.8) -> dict:
    """Samples for the report: (stream) `steps` tokens after the first `prompt` tokens of `k` test windows
    spread over the test split; (prefix) whole sequences after the first token of `k` test sequences. Returns
    {name: (k, L) token ids}: "prompt", "real" (the true continuation), "teacher", one entry per rollout mode
    of each student, and "bptt (own m_0)". Sampled from one generator seeded 0: the report's samples are the
    same on every rerun."""
    gen = torch.Generator().manual_seed(0)
    corpus = corpus.with_split("test")
    start = max(1, prompt)
    steps = min(steps, corpus.seq_len - start) if prompt == 0 else steps
    idx = heldout_indices(len(corpus), k)
    real = _continuation(corpus, idx, start, steps)
    p = torch.as_tensor(corpus.get(idx)[0][:, :start], dtype=torch.long)
    out = {"prompt": p, "real": real, "teacher": generate_teacher(teacher, p, steps, temperature, gen)}
    for name, s in students.items():
        if s is None:
            continue
        if prompt:
            mem = teacher.encode_all(p)[:, -1]
            out[f"{name} (teacher's prompt memory)"] = generate(s, p, steps, temperature, gen, memory=mem)
        out[f"{name} (own m_0)"] = generate(s, p, steps, temperature, gen)
    if bptt is not None:
        out["bptt (own m_0)"] = generate(bptt, p, steps, temperature, gen)
    return out


def _continuation(corpus, idx: list[int], start: int, steps: int) -> torch.Tensor:
    """The true `steps` tokens after `start` of windows `idx` (stream corpora continue past the window)."""
    if corpus.streaming:
        import numpy as np

        data = corpus.data
        rows = []
        for i in idx:
            s0 = i * corpus.stride + start
            seg = np.asarray(data[s0:s0 + steps], dtype=np.int64)
            rows.append(np.pad(seg, (0, steps - len(seg)), constant_values=-1))
        return torch.as_tensor(np.stack(rows))
    x, _ = corpus.get(idx)
    return torch.as_tensor(x[:, start:start + steps], dtype=torch.long)


def bits_line(fig: dict | None, reason: str | None = None) -> str:
    """A figure as text: `4.123` or `n/a (reason)`."""
    if fig is None or fig.get("bits") is None or not math.isfinite(fig["bits"]):
        return f"n/a ({reason or 'not measured'})"
    return f"{fig['bits']:.3f}"
