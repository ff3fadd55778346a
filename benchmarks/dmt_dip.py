"""Does online DMT itself dip when it starts from a strong SMT student? Accuracy over the first DMT steps.

Lockstep DMT (benchmarks/dmt.py, the demo) makes a good SMT student dip before it improves. This separates
the pipeline from the method: it runs online DMT (trainers/dmt/online.py: fresh rollouts of the current student
every step, no shards, no lag) from the SMT student of a finished `smt demo` run, and records the held-out
rolled-out accuracy and drift at t=T every 2 steps, for a few lr / warm-up settings.

Usage: python benchmarks/dmt_dip.py --demo DEMO_OUT [--steps 60]
(DEMO_OUT is the --out folder of `smt demo`; its teacher and step-400 SMT student are used.)
Writes benchmarks/results/dmt_dip.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.report import resolve_in_out
from models.checkpoint import load_student, load_teacher
from pipeline.corpora import load_corpus
from trainers.common import OptimConfig
from trainers.dmt import OnlineDMTConfig, dmt_online
from trainers.report import markdown_table

SETTINGS = [("lr 3e-5, warm-up 5", 3e-5, 5), ("lr 3e-5, warm-up 30", 3e-5, 30), ("lr 1e-5, warm-up 5", 1e-5, 5)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="the --out folder of a finished `smt demo`")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dmt_dip"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    demo = Path(args.demo)
    res = json.loads((demo / "results.json").read_text())
    teacher_url = f"{resolve_in_out(res['bucket'], demo).rstrip('/')}/teachers/{res['teacher_fingerprint']}"
    student_url = str(demo / "student" / "checkpoints" / "step-00000400" / "student")
    corpus = load_corpus(res["task"])
    t0 = time.perf_counter()
    rows, curves = [], {}
    for name, lr, warm in SETTINGS:
        teacher, _, _ = load_teacher(teacher_url)
        student, _, _ = load_student(student_url)
        r = dmt_online(student, teacher, corpus, OnlineDMTConfig(optim=OptimConfig(lr=lr, warmup_steps=warm, schedule="cosine"),
                                                          steps=args.steps, eval_every=2, eval_size=256, device="cpu"),
                       quiet=True)
        hist = [(h["step"], h["dmt_acc"], h["drift_final"]) for h in r["history"] if "dmt_acc" in h]
        curves[name] = hist
        low = min(hist, key=lambda h: h[1])
        rows.append({"setting": name, "start acc": hist[0][1], "lowest acc": low[1], "at step": low[0],
                     "final acc": hist[-1][1], "start drift_T": hist[0][2], "highest drift_T": max(h[2] for h in hist),
                     "final drift_T": hist[-1][2]})
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"demo_task": res["task"], "steps": args.steps, "rows": rows,
                                                    "curves": curves, "seconds": time.perf_counter() - t0}, indent=1))
    out.with_suffix(".md").write_text(f"""# Online DMT from a strong SMT student: the first steps

Command: `python benchmarks/dmt_dip.py --demo <smt demo --out> --steps {args.steps}` (1 thread). Online DMT
(trainers/dmt/online.py; fresh rollouts of the current student every step, batch 32 sequences, w_state 10,
readout trained) from the demo's SMT student ({res['task']}), held-out accuracy and drift at t=T (256
sequences) every 2 steps; curves in dmt_dip.json.

{markdown_table(rows, list(rows[0]))}
""")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
