"""How fresh must DMT relabels be? One-step DMT on pairs rolled out by a student snapshot k steps old.

The offline DMT of the pipeline (roll the student out, store (m_hat_t, x_t, m*_{t+1}) as a shard round,
train on it) trains on the states of an older student. This measures what that lag costs, with everything
else fixed: from one SMT student (joint pretraining on retrieval:T=64,vocab=8), run `steps` DMT updates
(10 * MSE(f(m_hat_t, x_t), m*_{t+1}), AdamW, 32 fresh sequences = 2,048 pairs per step) where the pairs
are rolled out by a snapshot of the student refreshed every k steps (k=1 is online DMT); every step sees
new sequences, so only the policy lag differs. Plus the one-round offline recipe: pairs of 1,024 sequences
from the starting student, mixed 2:1 with the teacher's own transitions. Reports rolled-out accuracy and
drift at t=T on 512 held-out sequences, for each lr.

Usage: python benchmarks/dmt_staleness.py [--steps 100] [--ks 1 5 20 60] [--lrs 1e-4 3e-5]
Writes benchmarks/results/dmt_staleness.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import stamp
from models.teacher import TeacherConfig
from models.updaters import UpdaterConfig
from pipeline.corpora import load_corpus
from pipeline.relabel import relabel_batch
from trainers.common import OptimConfig
from trainers.evaluate import eval_batch, evaluate_student
from trainers.pretrain import PretrainConfig, pretrain
from trainers.report import markdown_table

SPEC = "retrieval:T=64,vocab=8,n=4096"


def pairs_of(student, teacher, corpus, ids) -> dict:
    x, y = corpus.get(ids)
    p, _, _ = relabel_batch(student, teacher, x, y, ids)
    return {"si": torch.as_tensor(p.state_in), "tok": torch.as_tensor(p.tokens).long(),
            "so": torch.as_tensor(p.state_out)}


def teacher_pairs(teacher, corpus, ids) -> dict:
    x, _ = corpus.get(ids)
    with torch.no_grad():
        M = teacher.encode_all(torch.as_tensor(x))
    Z = M.shape[-1]
    return {"si": M[:, :-1].reshape(-1, Z), "tok": torch.as_tensor(x).reshape(-1).long(), "so": M[:, 1:].reshape(-1, Z)}


def step_on(student, opt, d: dict, idx=None) -> float:
    si, tok, so = (d[k] if idx is None else d[k][idx] for k in ("si", "tok", "so"))
    loss = 10 * torch.nn.functional.mse_loss(student.step(si, tok), so)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.updater.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def run_k(student0, teacher, corpus, k: int, steps: int, lr: float) -> torch.nn.Module:
    s = copy.deepcopy(student0).train()
    opt = torch.optim.AdamW(s.updater.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    snap = None
    for i in range(steps):
        if i % k == 0:
            snap = copy.deepcopy(s).eval()
        ids = (np.arange(32) + 32 * i) % corpus.num_sequences  # fresh sequences every step
        step_on(s, opt, pairs_of(snap, teacher, corpus, ids))
    return s.eval()


def run_offline(student0, teacher, corpus, steps: int, lr: float) -> torch.nn.Module:
    s = copy.deepcopy(student0).eval()
    dmt = pairs_of(s, teacher, corpus, np.arange(1024))
    base = teacher_pairs(teacher, corpus, np.arange(1024, 2048))
    s.train()
    opt = torch.optim.AdamW(s.updater.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    g = np.random.default_rng(0)
    for _ in range(steps):
        parts = []
        for d, n in ((base, 683), (dmt, 1365)):
            idx = torch.as_tensor(g.integers(0, len(d["tok"]), n))  # one index for all fields of a pair
            parts.append({k: v[idx] for k, v in d.items()})
        step_on(s, opt, {k: torch.cat([p[k] for p in parts]) for k in parts[0]})
    return s.eval()


def main(argv=None) -> int:
    flushed = stamp.start()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 5, 20, 60])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-5])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dmt_staleness"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    corpus = load_corpus(SPEC)
    t0 = time.perf_counter()
    pt = pretrain(corpus, PretrainConfig(teacher=TeacherConfig(encoder="causal"), updater=UpdaterConfig(arch="mlp"),
                                         optim=OptimConfig(lr=1e-3, warmup_steps=20), steps=3000, curriculum=(16, 32),
                                         stop_at_acc=0.99, eval_every=25), quiet=True)
    teacher, student0 = pt["teacher"].eval(), pt["student"].eval()
    x, y = (torch.as_tensor(a) for a in eval_batch(corpus, 512, 99))

    def score(s) -> dict:
        r = evaluate_student(s, x, y, teacher)
        return {"acc": r["acc"], "drift_T": r["drift_final"]}

    start = score(student0)
    rows = []
    for k in args.ks:
        row = {"policy lag k": k}
        for lr in args.lrs:
            r = score(run_k(student0, teacher, corpus, k, args.steps, lr))
            row[f"acc @ lr {lr:g}"], row[f"drift_T @ lr {lr:g}"] = r["acc"], r["drift_T"]
        rows.append(row)
        print(row, flush=True)
    off = {"policy lag k": "offline, 1 round"}
    for lr in args.lrs:
        r = score(run_offline(student0, teacher, corpus, args.steps, lr))
        off[f"acc @ lr {lr:g}"], off[f"drift_T @ lr {lr:g}"] = r["acc"], r["drift_T"]
    rows.append(off)
    print(off, flush=True)
    res = {"spec": SPEC, "steps": args.steps, "lrs": args.lrs, "pretrain_steps": pt["steps"], "start": start,
           "rows": rows, "seconds": time.perf_counter() - t0}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    cols = ["policy lag k"] + [f"{m} @ lr {lr:g}" for lr in args.lrs for m in ("acc", "drift_T")]
    out.with_suffix(".md").write_text(f"""# DMT: what stale relabels cost

Command: `python benchmarks/dmt_staleness.py --steps {args.steps} --ks {' '.join(map(str, args.ks))} --lrs \
{' '.join(f'{lr:g}' for lr in args.lrs)}` (1 thread). From one SMT student (joint pretraining of a causal
teacher + mlp updater on {SPEC}, {pt['steps']} steps; held-out acc {start['acc']:.3f}, drift at t=T
{start['drift_T']:.3f}), {args.steps} DMT updates (2,048 pairs of 32 fresh sequences per step) on pairs rolled
out by a snapshot of the student refreshed every k steps (k = 1 is online DMT). "offline, 1 round": {args.steps}
steps on one round of 1,024 sequences rolled out by the starting student, 2:1 with the teacher's own
transitions. Held-out: 512 sequences, chance 0.125.

{markdown_table(rows, cols)}
""")
    stamp.stamp(out.with_suffix(""), flushed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
