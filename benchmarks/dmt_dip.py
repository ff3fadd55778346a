"""DMT without the dip: how low does the held-out accuracy fall during DMT, per variant, from one SMT student?

From the SMT student of a finished `smt demo` run (its step-400 checkpoint, with the AdamW state), optionally
trained `--smt-extra` more SMT steps (a stronger student: the case where DMT dipped most), this runs the
demo recipe's DMT once per variant, both ways the pipeline can:
- lockstep DMT (the demo's default): the pipeline's own trainer config (`jobs.pipeline_job.dmt_phase_config`,
  the recipe's `dmt` hooks) and
  DMT actor (`DMTLoop`, lockstep pins), here in one process (the actor in a thread, a serial executor);
  the pins make the result independent of timing. Valid accuracy of the student at every round boundary;
- online DMT (`--dmt-online`): `dmt_online` with the pipeline's config (`jobs.pipeline_job.online_config`),
  valid accuracy every `--online-every` steps.
Variants are recipe overrides of the `dmt` step: the baseline (fresh AdamW), DAgger's beta (teacher-state
transitions mixed in with a decaying share), an EMA rollout policy, carried SMT AdamW moments, and a
combination. Choices read the valid split (1024 sequences); final figures are on the test split (1024).

Usage: python benchmarks/dmt_dip.py --demo DEMO_OUT [--smt-extra 400] [--scratch DIR]
Writes benchmarks/results/dmt_dip.{json,md}. One torch thread; timings are process CPU seconds.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from dataclasses import is_dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import stamp
from jobs.pipeline_job import actor_config, dmt_phase_config, online_config
from jobs.pipeline_report import resolve_in_out
from jobs.recipes import load_recipe
from pipeline.corpora import load_corpus
from storage.checkpoints import load_student, load_teacher
from storage.run_dir import RunDir
from trainers.dmt import OnlineDMT
from trainers.dmt.actor import DMTLoop
from trainers.evaluate import eval_batch, evaluate_student
from trainers.report import markdown_table
from trainers.student import StudentRun, run_config, run_training

# the recipe's DMT before this benchmark chose (fresh AdamW at lr 3e-5), both modes; each variant changes it
BASELINE = {"dmt": {"carry_optimizer": False}, "dmt_phase": {"optim": {"lr": 3e-5}},
            "online": {"carry_optimizer": False, "optim": {"lr": 3e-5}}}
CARRY = {"dmt": {"carry_optimizer": True}, "online": {"carry_optimizer": True}}
BETA = {"dmt_phase": {"stream": {"beta": 0.9, "beta_halflife": 5.0}}, "online": {"beta": 0.9, "beta_halflife": 10.0}}
VARIANTS = {  # name -> changes of the retrieval-demo recipe tree, on top of BASELINE
    "baseline (fresh AdamW)": [],
    "beta 0.9, half-life 10 steps": [BETA],
    "EMA rollout 0.9": [{"dmt": {"ema": 0.9}, "online": {"ema": 0.9}}],
    "carry SMT AdamW": [CARRY],
    "carry SMT AdamW, lr 1e-4": [CARRY, {"dmt_phase": {"optim": {"lr": 1e-4}}, "online": {"optim": {"lr": 1e-4}}}],
    "carry + beta": [CARRY, BETA],
    # the control for the winner: its lr without the carried moments (run after the table above, `--only`)
    "fresh AdamW, lr 1e-4": [{"dmt_phase": {"optim": {"lr": 1e-4}}, "online": {"optim": {"lr": 1e-4}}}],
}
SMT_STEP = 400  # the demo's SMT phase


def changed(obj, changes: dict):
    """A copy of dataclass `obj` with the nested `changes` (dicts for nested dataclasses) applied."""
    return replace(obj, **{k: changed(getattr(obj, k), v) if isinstance(v, dict) and is_dataclass(getattr(obj, k))
                           else v for k, v in changes.items()})


def copy_run(src: Path, dst: Path, step: int) -> None:
    """A new run folder holding only `src`'s checkpoint of `step` (its config and metrics up to there)."""
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "checkpoints").mkdir(parents=True)
    shutil.copytree(src / "checkpoints" / f"step-{step:08d}", dst / "checkpoints" / f"step-{step:08d}")
    for f in src.glob("config*.json"):
        shutil.copy(f, dst / f.name)
    (dst / "checkpoints" / "latest.json").write_text(json.dumps({"step": step, "path": f"checkpoints/step-{step:08d}"}))


AFTER_ROUND_1 = 4  # DMT steps after which the demo first reports (lockstep: the student after round 1 is trained)


def curve_stats(curve: list[tuple[int, float]], start: int) -> dict:
    """The start, the lowest point after the start (and its DMT step), the lowest from DMT step 4 on (the
    pipeline's own "lowest after round 1": a weak start is still climbing before), and the end of a curve."""
    after = [c for c in curve if c[0] > start]
    low = min(after, key=lambda c: c[1])
    return {"start acc": curve[0][1], "lowest acc": low[1], "at DMT step": low[0] - start,
            "lowest from step 4": min(a for s, a in after if s - start >= AFTER_ROUND_1), "final valid acc": after[-1][1]}


def run_lockstep(rc, base: Path, run: Path, targets: str, teacher_url: str, corpus, s0: int, valid) -> dict:
    cfg, hooks = dmt_phase_config(rc), rc.dmt.hooks()  # phase_start = rc.student.steps = s0
    copy_run(base, run, s0)
    d = rc.dmt
    loop = DMTLoop(replace(actor_config(rc, targets, str(run), corpus, teacher_url, 0, first_step=s0), poll_seconds=0.02))
    failed: list[Exception] = []

    def actor() -> None:
        try:
            loop.run()
        except Exception as e:  # noqa: BLE001 - re-raised below: a dead actor would leave the trainer waiting
            failed.append(e)

    th = threading.Thread(target=actor, daemon=True)
    c0 = time.process_time()
    th.start()
    run_training(StudentRun(targets, teacher_url, str(run)), cfg, quiet=True, hooks=hooks)
    th.join()
    if failed:
        raise failed[0]
    seconds = time.process_time() - c0
    rd = RunDir(str(run))
    # every boundary of the first 20 rounds (where lockstep DMT dipped before), then every 5th, and the end
    steps = [s0 + k * d.every for k in range(d.rounds + 1) if k <= 20 or k % 5 == 0] + [cfg.steps]
    curve = [(s, evaluate_student(load_student(rd.student_url(s))[0], *valid)["acc"]) for s in steps]
    return {"curve": curve, "final_url": rd.student_url(cfg.steps), "seconds": seconds}


def run_online(rc, base: Path, teacher, corpus, s0: int, every: int) -> dict:
    student, _, _ = load_student(str(base / "checkpoints" / f"step-{s0:08d}" / "student"))
    cfg = replace(online_config(rc, 0), eval_every=every, eval_size=1024, clock="process")
    c0 = time.process_time()
    r = OnlineDMT(student, teacher, corpus, cfg, smt_run=str(base)).run(quiet=True)
    curve = [(s0 + h["step"], h["dmt_acc"]) for h in r["history"] if "dmt_acc" in h]
    return {"curve": curve, "student": r["student"], "seconds": time.process_time() - c0}


def main(argv=None) -> int:
    flushed = stamp.start()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="the --out folder of a finished `smt demo`")
    ap.add_argument("--smt-extra", type=int, nargs="+", default=[0],
                    help="start points: SMT steps trained on top of the demo's 400 (0 = the demo's own SMT student)")
    ap.add_argument("--scratch", default="/tmp/dmt_dip", help="folder for the runs (removed and rewritten)")
    ap.add_argument("--online-every", type=int, default=4, help="online DMT: evaluate every N steps")
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    ap.add_argument("--set", nargs="*", default=[], help="JSON changes of the recipe tree for every variant, e.g. "
                    "'{\"dmt\": {\"rounds\": 2}, \"dmt_extra_steps\": 2}' (a smoke run)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dmt_dip"))
    ap.add_argument("--render", action="store_true", help="only rewrite the tables from the JSON's curves")
    ap.add_argument("--control-of", default=None,
                    help="the main run's JSON: write --out's Markdown as a control run beside that run's rows")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.control_of and args.render:
        write_control_md(out, Path(args.control_of))
        stamp.stamp(out.with_suffix(""), flushed)
        return 0
    if args.render:
        meta = json.loads(out.with_suffix(".json").read_text())
        meta.setdefault("args", {"smt_extra": args.smt_extra, "online_every": args.online_every})
        for row in meta["rows"]:
            stats = curve_stats(meta["curves"][f"{row['SMT steps']} {row['DMT']}: {row['variant']}"], row["SMT steps"])
            row.update(stats)
        meta["rows"] = [{k: r[k] for k in ("SMT steps", "DMT", "variant", *stats, "final test acc",
                                           "final test drift_T", "DMT CPU s")} for r in meta["rows"]]
        out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        write_md(out.with_suffix(".md"), meta, meta["args"])
        stamp.stamp(out.with_suffix(""), flushed)
        return 0
    torch.set_num_threads(1)
    demo, scratch = Path(args.demo), Path(args.scratch)
    res = json.loads((demo / "results.json").read_text())
    bucket = resolve_in_out(res["bucket"], demo).rstrip("/")
    fp = res["teacher_fingerprint"]
    teacher_url = f"{bucket}/teachers/{fp}"
    corpus = load_corpus(res["task"])
    targets = str(next(Path(bucket, "targets", fp).iterdir()))
    teacher, _, _ = load_teacher(teacher_url)
    valid = eval_batch(corpus, 1024, 0)
    test = eval_batch(corpus, 1024, 12345, split="test")
    t0 = time.perf_counter()
    rows, curves, starts = [], {}, {}
    for extra in args.smt_extra:
        base, s0 = scratch / f"smt-{extra}", SMT_STEP + extra
        copy_run(demo / "student", base, SMT_STEP)
        if extra:  # the demo's SMT phase, continued: same config, stream and AdamW, more steps
            cfg = run_config(RunDir(str(base)))
            run_training(StudentRun(targets, teacher_url, str(base)),
                         replace(cfg, steps=s0, checkpoint_every=s0), quiet=True)
        smt_student = load_student(str(base / "checkpoints" / f"step-{s0:08d}" / "student"))[0]
        starts[s0] = {"valid acc": evaluate_student(smt_student, *valid)["acc"],
                      "test acc": evaluate_student(smt_student, *test)["acc"]}
        for mode in ("lockstep", "online"):
            for name, overrides in VARIANTS.items():
                if args.only and name not in args.only:
                    continue
                rc = changed(load_recipe("retrieval-demo"), {"student": {"steps": s0}, "dmt_online": mode == "online"})
                for c in (BASELINE, *overrides, *(json.loads(x) for x in args.set)):
                    rc = changed(rc, c)
                if mode == "lockstep":
                    r = run_lockstep(rc, base, scratch / f"run-{len(rows)}", targets, teacher_url, corpus, s0, valid)
                    final = load_student(r["final_url"])[0]
                else:
                    r = run_online(rc, base, teacher, corpus, s0, args.online_every)
                    final = r["student"]
                ft = evaluate_student(final.cpu(), *test, teacher)
                rows.append({"SMT steps": s0, "DMT": mode, "variant": name, **curve_stats(r["curve"], s0),
                             "final test acc": ft["acc"], "final test drift_T": ft["drift_final"],
                             "DMT CPU s": r["seconds"]})
                curves[f"{s0} {mode}: {name}"] = r["curve"]
                print(rows[-1], flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"demo_task": res["task"], "starts": starts, "valid_sequences": 1024,
            "test_sequences": 1024, "variants": VARIANTS, "rows": rows, "curves": curves,
            "wall_seconds": time.perf_counter() - t0,
            "args": {"smt_extra": args.smt_extra, "online_every": args.online_every}}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    if args.control_of:
        write_control_md(out, Path(args.control_of))
    else:
        write_md(out.with_suffix(".md"), meta, meta["args"])
    stamp.stamp(out.with_suffix(""), flushed)
    return 0


def write_control_md(out: Path, main_json: Path) -> None:
    """A control run (`--only`, same demo, same starts) beside the main run's rows, under the main run's rule."""
    main, ctl = json.loads(main_json.read_text()), json.loads(out.with_suffix(".json").read_text())
    if main["starts"] != ctl["starts"]:
        raise SystemExit(f"{out}: the control's starts {ctl['starts']} differ from {main_json}'s {main['starts']}")
    rows = main["rows"] + ctl["rows"]
    cols = ["DMT", "variant", "mean lowest from step 4", "worst lowest from step 4", "mean final valid acc", "chosen"]
    sel = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k in cols} for r in selection(rows)]
    names = ", ".join(sorted({r["variant"] for r in ctl["rows"]}))
    out.with_suffix(".md").write_text(f"""# DMT dip: control run ({names})

Command: `python benchmarks/dmt_dip.py --demo <smt demo --out> --smt-extra {' '.join(map(str, ctl['args']['smt_extra']))} \\
--only <variant> --out {out.name} --control-of {main_json.name}` (1 torch thread, {ctl['wall_seconds'] / 60:.0f} min wall).
The same demo task, the same two SMT starts as `{main_json.stem}.md` ({starts_line(ctl['starts'])}: identical,
checked), run after it; its rows are scored beside that run's rows by the same rule (mean over the starts of the
lowest valid accuracy from DMT step 4, ties by the final valid accuracy).

{markdown_table(ctl['rows'], list(ctl['rows'][0]))}

Choice over both runs' rows:

{markdown_table(sel, cols)}
""")


def starts_line(starts: dict) -> str:
    return "; ".join(f"step {s}: valid acc {v['valid acc']:.3f}, test acc {v['test acc']:.3f}" for s, v in starts.items())


def selection(rows: list[dict]) -> list[dict]:
    """Per mode and variant, over the starts: the mean and the worst lowest valid accuracy from step 4, and the
    mean final valid accuracy. The choice: the highest mean lowest point, ties by final valid accuracy."""
    out = []
    for mode in dict.fromkeys(r["DMT"] for r in rows):
        for name in dict.fromkeys(r["variant"] for r in rows if r["DMT"] == mode):
            rs = [r for r in rows if r["DMT"] == mode and r["variant"] == name]
            low = [r["lowest from step 4"] for r in rs]
            out.append({"DMT": mode, "variant": name, "mean lowest from step 4": sum(low) / len(low),
                        "worst lowest from step 4": min(low),
                        "mean final valid acc": sum(r["final valid acc"] for r in rs) / len(rs)})
    for mode in dict.fromkeys(r["DMT"] for r in out):
        best = max((r for r in out if r["DMT"] == mode), key=lambda r: (round(r["mean lowest from step 4"], 3),
                                                                        r["mean final valid acc"]))
        best["chosen"] = "yes"
    return out


def write_md(path: Path, meta: dict, args) -> None:
    def r3(rs: list[dict]) -> list[dict]:
        return [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rs]

    rows, sel = r3(meta["rows"]), r3(selection(meta["rows"]))
    cols = ["DMT", "variant", "mean lowest from step 4", "worst lowest from step 4", "mean final valid acc", "chosen"]
    sel = [{k: r.get(k, "") for k in cols} for r in sel]
    path.write_text(f"""# DMT without the dip: lowest valid accuracy during DMT, per variant (one run)

Command: `python benchmarks/dmt_dip.py --demo <smt demo --out> --smt-extra {' '.join(map(str, args['smt_extra']))}`
(1 torch thread, {meta['wall_seconds'] / 60:.0f} min wall on 2 shared cores). Task {meta['demo_task']}; starts: the
demo's own SMT student (step 400) and the same SMT run trained further with its own config (a stronger
student): {starts_line(meta['starts'])}. DMT is the retrieval-demo recipe's, per mode, from the same
start: lockstep (the pipeline's trainer config and hooks beside the DMT actor, lockstep pins: 40 rounds of 64
sequences, one per 2 steps, refresh on, round weights 0:1 / dmt:2, 20 extra steps) and online (80 steps of 32
fresh rollouts); AdamW lr 3e-5 with cosine decay unless the variant says otherwise. Variants (recipe tree:
`dmt.*`, `dmt_phase.*`, `online.*`):
`beta` 0.9 = DAgger's beta, teacher-state transitions as DMT starts, halving towards the floor every 10 steps
(lockstep: round 0's share of the records, 0.9 -> the 1/3 the weights give it, per 5 rounds; online: sequences
per step trained from m*_t, 0.9 -> 0); `EMA rollout 0.9` = the refresh and the actor (online: every step) roll
out an EMA of the student (decay 0.9 per step); `carry` = the DMT phase starts from the SMT phase's AdamW
moments instead of fresh ones. Lowest = the lowest valid accuracy (1024 sequences) after the first DMT step:
lockstep at every round boundary (every 2 steps; every 10 after step 40), online every {args['online_every']}
steps; "from step 4" skips the first 2 rounds, where a weak start is still climbing (the pipeline's own
"lowest after round 1"). Final figures on 1024 test sequences. Curves in dmt_dip.json.

{markdown_table(rows, list(rows[0]))}

Choice on valid (mean over the two starts of the lowest accuracy from step 4, ties by the final valid
accuracy). The control run `dmt_dip_lr_control.md` (the winner's lr 1e-4 with a fresh AdamW, same starts)
scores higher by this rule in both modes, so the recipes' default is a fresh AdamW at lr 1e-4
(`dmt_phase.optim.lr`, `online.optim.lr`; `dmt.carry_optimizer` and `online.carry_optimizer` stay options):

{markdown_table(sel, cols)}
""")


if __name__ == "__main__":
    raise SystemExit(main())
