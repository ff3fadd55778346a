"""How fresh must DMT relabels be? One-step DMT on relabeled pairs that are k optimiser steps stale.

The design's offline DMT (roll the student out, store (m_hat_t, x_t, m*_{t+1}) as a shard round, train on
the union) trains on states of an older student. This measures what staleness costs, with everything
else fixed: from one SMT student (joint pretraining on retrieval:T=64,vocab=8), run `steps` DMT updates
(MSE(f(m_hat_t, x_t), m*_{t+1}), AdamW lr 1e-4, 32 sequences = 2,048 pairs per step) where the pairs are
relabeled from the *current* student every k steps (k=1 is online DMT) and reused in between; plus the
offline recipe: pairs of 1,024 sequences from the starting student, mixed 1:2 with the teacher's own
transitions, sampled 512 at a time. Reports rolled-out accuracy and drift at t=T on 512 held-out sequences.

Usage: python benchmarks/dmt_staleness.py [--steps 100] [--ks 1 5 20 100]
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

from models.teacher import TeacherConfig
from models.updaters import UpdaterConfig
from pipeline.corpora import load_corpus
from pipeline.relabel import relabel_batch
from trainers.common import OptimConfig
from trainers.evaluate import evaluate_student
from trainers.pretrain import PretrainConfig, eval_batch, pretrain
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
    loss = torch.nn.functional.mse_loss(student.step(si, tok), so)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.updater.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def run_k(student0, teacher, corpus, k: int, steps: int, lr: float) -> dict:
    s = copy.deepcopy(student0).train()
    opt = torch.optim.AdamW(s.updater.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    d = None
    for i in range(steps):
        if i % k == 0:
            ids = (np.arange(32) + 32 * (i // k)) % corpus.num_sequences
            d = pairs_of(s.eval(), teacher, corpus, ids)
            s.train()
        step_on(s, opt, d)
    return s.eval()


def run_offline(student0, teacher, corpus, steps: int, lr: float) -> torch.nn.Module:
    s = copy.deepcopy(student0).eval()
    ids = np.arange(1024)
    dmt = pairs_of(s, teacher, corpus, ids)
    base = teacher_pairs(teacher, corpus, np.arange(1024, 2048))
    s.train()
    opt = torch.optim.AdamW(s.updater.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    g = np.random.default_rng(0)
    for _ in range(steps):
        parts = [{k: v[torch.as_tensor(g.integers(0, len(d["tok"]), n))] for k, v in d.items()}
                 for d, n in ((base, 171), (dmt, 341))]
        step_on(s, opt, {k: torch.cat([p[k] for p in parts]) for k in parts[0]})
    return s.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 5, 20, 100])
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dmt_staleness"))
    args = ap.parse_args(argv)
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

    rows = [{"variant": "SMT student (start)", **score(student0)}]
    for k in args.ks:
        rows.append({"variant": f"relabel every {k} step(s)" + (" = online DMT" if k == 1 else ""),
                     **score(run_k(student0, teacher, corpus, k, args.steps, args.lr))})
        print(rows[-1], flush=True)
    rows.append({"variant": "offline: one round from the start student, 2:1 with teacher labels",
                 **score(run_offline(student0, teacher, corpus, args.steps * 2, args.lr))})
    print(rows[-1], flush=True)
    res = {"spec": SPEC, "steps": args.steps, "lr": args.lr, "pretrain_steps": pt["steps"], "rows": rows,
           "seconds": time.perf_counter() - t0}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(f"""# DMT: what stale relabels cost

Command: `python benchmarks/dmt_staleness.py --steps {args.steps} --ks {' '.join(map(str, args.ks))}`. From one
SMT student (joint pretraining of a causal teacher + mlp updater on {SPEC}, {pt['steps']} steps), {args.steps}
DMT updates (lr {args.lr:g}, 2,048 pairs per step) on pairs relabeled from the current student every k steps;
the offline row trains {2 * args.steps} steps on one round of 1,024 rolled-out sequences from the starting
student mixed 2:1 with the teacher's own transitions (512 per step). Held-out: 512 sequences, chance 0.125.

{markdown_table(rows, ["variant", "acc", "drift_T"])}
""")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
