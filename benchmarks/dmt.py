"""DMT end to end on Ray, and what each round buys: drift at t = Td after 0..R rounds, states relabeled per
second, answer accuracy, and the online DMT of trainers/dmt/online.py from the same SMT student at the same
wall-clock budget.

    python -m benchmarks.dmt [--teacher DIR] [--rounds 40] [--every-steps 2] [--sequences 64] [--out benchmarks/results]

Flow (every worker a Ray actor on a local instance):
1. pretrain a causal teacher on retrieval:T=64,vocab=8 (or load --teacher), save it;
2. `label` round 0 with a 2-actor pool;
3. SMT: a trainer actor runs `run_training` for `smt_steps` (round 0 only) -> the SMT-only student;
4. DMT, lockstep: a trainer actor resumes the run in a new phase (`phase_start`: lr restarts at `dmt_lr`),
   checkpointing every `every_steps`; `DMTLoop` runs in its own actor and rolls out exactly those
   checkpoints (`first_step`), one round each; the trainer switches to round max(1, k) at the k-th boundary
   and waits when the actor is behind, so it never trains on a student more than 2 x every_steps old;
5. held-out evaluation (`evaluate_student` from m_0) of the SMT student and of every boundary checkpoint;
   then `dmt_online` from the SMT student for the DMT phase's wall-clock time.
Writes <out>/dmt.json and <out>/dmt.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import stamp

CORPUS = "retrieval:T=64,vocab=8"
VARIANTS = {"refresh": (True, 0.1), "stored": (False, 0.5)}  # name -> (refresh enabled, round_decay)


@dataclass(kw_only=True)
class E2EConfig:
    root: str
    """Scratch folder (bucket root, runs)."""
    teacher: str | None = None
    """A pretrained teacher folder to reuse (default: pretrain one)."""
    corpus: str = CORPUS + ",n=2048"
    """Corpus of the labeled target set."""
    pretrain_seconds: float = 300.0
    rounds: int = 40
    smt_steps: int = 600
    every_steps: int = 2
    """Lockstep DMT: the actor rolls out the checkpoint of every `every_steps`-th DMT-phase step; the trainer
    never trains on relabels more than 2x this old (it waits for the actor instead)."""
    extra_steps: int = 20
    """Steps trained after the last round's boundary (on every round)."""
    sequences: int = 64
    """Sequences rolled out per round (64 per 2 steps: online DMT's fresh-data rate of 32 per step)."""
    shard_sequences: int = 64
    lr: float = 1e-3
    """SMT phase peak lr (cosine over the SMT phase)."""
    readout_weight: float = 0.0
    """DMT phase: weight of the readout CE on the relabeled pairs (the readout stays the teacher's)."""
    dmt_lr: float = 3e-5
    """DMT phase peak lr (cosine over the DMT phase, restarted at the phase start: `phase_start`)."""
    batch_size: int = 256
    """SMT phase transitions per step."""
    dmt_batch_size: int = 2048
    """DMT phase transitions per step (online DMT's 32 sequences x 64 steps)."""
    round_weights: dict = field(default_factory=lambda: {"0": 1.0, "dmt": 2.0})
    variants: tuple = ("refresh", "stored")
    """DMT-phase variants, each from a copy of the same SMT run and bucket: 'refresh' (the trainer re-rolls the
    newest round with its current student, `RefreshConfig(enabled=True)`, round decay 0.1) and 'stored' (the actor's stored
    states, round decay 0.5). The first is the headline (top-level keys)."""
    eval_size: int = 256
    online: bool = True
    """Also run dmt_online for the same wall-clock time."""


class _Trainer:
    def train(self, targets, teacher, out, cfg, hooks=()):
        from trainers.student import StudentRun, run_training

        t0 = time.perf_counter()
        res = run_training(StudentRun(targets, teacher, out), cfg, quiet=True, hooks=hooks)
        return {**res, "seconds": time.perf_counter() - t0}


def _pretrain(root: Path, seconds: float) -> tuple[str, float, float]:
    from models.teacher import TeacherConfig
    from models.updaters import UpdaterConfig
    from pipeline.corpora import load_corpus
    from storage.checkpoints import save_teacher
    from trainers.common import OptimConfig
    from trainers.pretrain import PretrainConfig, pretrain

    r = pretrain(load_corpus(CORPUS), PretrainConfig(
        teacher=TeacherConfig(encoder="causal"), updater=UpdaterConfig(arch="mlp"),
        optim=OptimConfig(lr=1e-3, warmup_steps=20), steps=3000, seconds=seconds, curriculum=(16, 32),
        stop_at_acc=0.99, eval_every=25, device="cpu"), quiet=True)
    path = str(root / "pretrained-teacher")
    save_teacher(path, r["teacher"])
    return path, float(r["final"]["teacher_acc"]), float(r["seconds"])


def run(c: E2EConfig) -> dict:
    import torch

    from models.updaters import UpdaterConfig
    from pipeline.corpora import load_corpus
    from pipeline.executors import RayActorPool, init_ray
    from pipeline.label import LabelConfig, label
    from storage.checkpoints import load_student, load_teacher
    from storage.run_dir import RunDir
    from trainers.common import OptimConfig
    from trainers.dmt import LockstepDMTConfig, OnlineDMTConfig, RefreshConfig, dmt_online
    from trainers.dmt.actor import DMTLoop, DMTLoopConfig, round_reports
    from trainers.dmt.mixing import StreamConfig
    from trainers.evaluate import eval_batch, evaluate_student, evaluate_teacher
    from trainers.student import StudentTrainConfig

    root = Path(c.root).resolve()
    for scratch in ("bucket", "run", *VARIANTS):  # a rerun starts from nothing (the bucket would hold old rounds)
        shutil.rmtree(root / scratch, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    # the scratch folder and a reused teacher's folder are paths of this machine: recorded by name only
    out: dict = {"config": {**asdict(c), "root": root.name,
                            "teacher": None if c.teacher is None else Path(c.teacher).name}}
    t0 = time.perf_counter()
    if c.teacher is None:
        c.teacher, acc, secs = _pretrain(root, c.pretrain_seconds)
        out["pretrain"] = {"teacher_acc": acc, "seconds": secs}
    teacher, _, _ = load_teacher(c.teacher)
    corpus = load_corpus(CORPUS)
    ex, ey = eval_batch(corpus, c.eval_size, 0)  # the held-out set dmt_online evaluates on too
    out["teacher_acc"] = evaluate_teacher(teacher, ex, ey)["acc"]

    ray = init_ray()
    t = time.perf_counter()
    lab = label(LabelConfig(teacher=c.teacher, corpus=c.corpus, out=str(root / "bucket"), shard_sequences=256,
                            device="cpu"), RayActorPool(num_actors=2), quiet=True)
    out["label"] = {"seconds": time.perf_counter() - t, "records": lab.records, "shards": lab.shards}
    targets, run_url = lab.target_url, str(root / "run")

    def train_cfg(steps: int, dmt: bool = False, decay: float = 1.0) -> StudentTrainConfig:
        if not dmt:
            return StudentTrainConfig(
                updater=UpdaterConfig(arch="mlp"), optim=OptimConfig(lr=c.lr, warmup_steps=20, schedule="cosine"),
                steps=steps, checkpoint_every=100, device="cpu", stream=StreamConfig(batch_size=c.batch_size, seed=0))
        return StudentTrainConfig(
            updater=UpdaterConfig(arch="mlp"), optim=OptimConfig(lr=c.dmt_lr, warmup_steps=5, schedule="cosine"),
            steps=steps, checkpoint_every=50, device="cpu", readout_weight=c.readout_weight,
            phase_start=c.smt_steps, stream=StreamConfig(batch_size=c.dmt_batch_size, seed=0, round_weights=c.round_weights,
                                                     round_decay=decay, mix_shards=256, cache_shards=128))

    trainer = ray.remote(num_cpus=1)(_Trainer)
    t = time.perf_counter()
    smt = ray.get(trainer.remote().train.remote(targets, c.teacher, run_url, train_cfg(c.smt_steps)))
    out["smt"] = {"seconds": time.perf_counter() - t, "steps": smt["step"]}

    def held_out(step: int, run: str = run_url) -> dict:
        s, _, _ = load_student(RunDir(run).student_url(step))
        with torch.no_grad():
            r = evaluate_student(s.eval(), ex, ey, teacher)
        return {"step": step, "acc": r["acc"], "drift_final": r["drift_final"]}

    out["smt"].update(held_out(c.smt_steps))

    total = c.smt_steps + c.rounds * c.every_steps + c.extra_steps
    base_targets, base_run = targets, run_url
    out["variants"] = {}
    for v in c.variants:
        if v not in VARIANTS:
            raise ValueError(f"variant {v!r}: use one of {', '.join(VARIANTS)}")
        vroot = root / v  # a copy of the bucket and the SMT run: every variant starts from the same student
        shutil.rmtree(vroot, ignore_errors=True)
        shutil.copytree(root / "bucket", vroot / "bucket")
        shutil.copytree(base_run, vroot / "run")
        rel = base_targets[base_targets.index(str(root / "bucket")) + len(str(root / "bucket")):]
        targets = str(vroot / "bucket") + rel
        run_url = str(vroot / "run")
        refresh, decay = VARIANTS[v]
        loop_cfg = DMTLoopConfig(targets=targets, run=run_url, corpus=c.corpus, teacher=c.teacher, rounds=c.rounds,
                                 every_steps=c.every_steps, first_step=c.smt_steps, sequences=c.sequences,
                                 shard_sequences=c.shard_sequences, device="cpu", poll_seconds=0.1,
                                 timeout_seconds=300)
        t = time.perf_counter()
        tr = trainer.remote()
        lockstep = LockstepDMTConfig(every=c.every_steps, rounds=c.rounds, wait_seconds=300,
                                     refresh=RefreshConfig(enabled=refresh))
        train_ref = tr.train.remote(targets, c.teacher, run_url, train_cfg(total, dmt=True, decay=decay),
                                    lockstep.hooks())
        dmt = ray.remote(num_cpus=1)(DMTLoop).remote(loop_cfg)
        dmt_ref = dmt.run.remote(True)
        done, _ = ray.wait([train_ref, dmt_ref], num_returns=1)
        if done[0] == train_ref:
            ray.get(train_ref)  # a failed trainer raises here instead of leaving the loop waiting
        reps = ray.get(dmt_ref)
        ray.get(train_ref)
        dmt_seconds = time.perf_counter() - t
        ray.kill(dmt)
        ray.kill(tr)
        stored = round_reports(run_url)
        res: dict = {"refresh": refresh, "round_decay": decay}
        res["rounds"] = [{k: r.get(k) for k in ("round", "student_step", "generation", "records", "seconds",
                                                "states_per_second", "rollout_acc")}
                         | {"drift_T": r["drift_by_step"][-1]} for r in stored]
        # the checkpoint at s0 + jE trained its last E steps on rounds up to max(1, j-1) (the first round is
        # waited for; after that the actor relabels round j+1 while the trainer uses round j)
        checkpoints = [c.smt_steps + j * c.every_steps for j in range(1, c.rounds + 1)] + [total]
        res["after_rounds"] = [{"rounds": 0, **out["smt"]}] + [
            {"rounds": min(max(1, (s - c.smt_steps - 1) // c.every_steps), c.rounds), **held_out(s, run_url)}
            for s in checkpoints]
        accs = [a["acc"] for a in res["after_rounds"]]
        res["dmt"] = {"seconds": dmt_seconds, "final_acc": accs[-1], "min_acc": min(accs),
                      "states_per_second": sum(r["records"] for r in stored) / max(1e-9, sum(r["seconds"] for r in stored)),
                      "reports_this_call": len(reps)}
        out["variants"][v] = res
        print(f"{v}: final acc {accs[-1]:.3f}, lowest {min(accs):.3f}, {dmt_seconds:.1f} s", flush=True)
    out.update({k: out["variants"][c.variants[0]][k] for k in ("rounds", "after_rounds", "dmt")})
    dmt_seconds = out["dmt"]["seconds"]
    run_url = base_run
    if c.online:
        s, _, _ = load_student(f"{run_url}/checkpoints/step-{c.smt_steps:08d}/student")
        t = time.perf_counter()
        on = dmt_online(s, teacher, corpus, OnlineDMTConfig(steps=100000, seconds=dmt_seconds, device="cpu",
                                                     eval_size=c.eval_size, eval_every=100), quiet=True)
        final = on.get("final", {})
        with torch.no_grad():
            r = evaluate_student(s.eval(), ex, ey, teacher)
        out["online"] = {"seconds": time.perf_counter() - t, "acc": r["acc"], "drift_final": r["drift_final"],
                         "steps": final.get("step"), "reported": {k: final.get(k) for k in ("dmt_acc", "drift_final")}}
    out["seconds"] = time.perf_counter() - t0
    return out


def markdown(res: dict) -> str:
    c, V = res["config"], res["variants"]
    names = list(V)
    lines = ["# DMT: rounds of relabeled student rollouts (CPU, local Ray)", "",
             (f"Command: `python -m benchmarks.dmt` (2 CPU cores). Corpus `{c['corpus']}`, teacher acc "
              f"{res['teacher_acc']:.3f}; SMT {c['smt_steps']} steps from the labeled shards (lr {c['lr']}, cosine, batch "
              f"{c['batch_size']}), then, from copies of that run and bucket, lockstep DMT per variant: a trainer actor "
              f"and the DMT actor, {c['rounds']} rounds of {c['sequences']} sequences, one per {c['every_steps']} trainer "
              f"steps (stored states at most {2 * c['every_steps']} steps old), round weights {c['round_weights']}, fresh "
              f"AdamW lr {c['dmt_lr']} (cosine), batch {c['dmt_batch_size']} transitions. Variants: `refresh` = the "
              "trainer re-rolls the newest round's sequences with its current student before every step (round "
              "decay 0.1); `stored` = it trains on the states the actor stored (round decay 0.5). Online DMT "
              "(trainers/dmt/online.py, no shards) runs from the same SMT student for the headline variant's DMT seconds."),
             "", ("| variant | acc after 0 / 1 / 2 / 3 rounds | lowest acc | final acc | drift_T after 0 / 1 / 2 / 3 rounds "
             "| final drift_T | DMT seconds | relabeled states/s |"), "|---|---|---|---|---|---|---|---|"]

    def first4(v: dict, key: str, fmt: str) -> str:
        rows = {}
        for a in v["after_rounds"]:  # the last checkpoint trained on each round count
            rows[a["rounds"]] = a[key]
        return " / ".join(format(rows[k], fmt) for k in range(4) if k in rows)

    for n in names:
        v = V[n]
        lines.append(f"| {n} | {first4(v, 'acc', '.3f')} | {v['dmt']['min_acc']:.3f} | {v['dmt']['final_acc']:.3f} | "
                     f"{first4(v, 'drift_final', '.3f')} | {v['after_rounds'][-1]['drift_final']:.4f} | "
                     f"{v['dmt']['seconds']:.1f} | {v['dmt']['states_per_second']:.0f} |")
    if "online" in res:
        o = res["online"]
        lines.append(f"| online DMT ({o['steps']} steps) | - | - | {o['acc']:.3f} | - | {o['drift_final']:.4f} | "
                     f"{o['seconds']:.1f} | - |")
    lines += ["", "Held-out accuracy and drift at t=Td (256 sequences) at every round boundary:", "",
              "| student step | rounds trained on | " + " | ".join(f"acc {n} | drift_T {n}" for n in names) + " |",
              "|---|---|" + "---|---|" * len(names)]
    for i, a in enumerate(V[names[0]]["after_rounds"]):
        cells = " | ".join(f"{V[n]['after_rounds'][i]['acc']:.3f} | {V[n]['after_rounds'][i]['drift_final']:.4f}"
                           for n in names)
        lines.append(f"| {a['step']} | {a['rounds']} | {cells} |")
    lines += ["", (f"Label {res['label']['seconds']:.1f} s (2 actors); SMT phase {res['smt']['seconds']:.1f} s. Each round "
                   f"relabels {V[names[0]]['rounds'][0]['records']} states; per-round reports (pinned step, drift against "
                   "t, rollout accuracy on the round's sequences) are in dmt.json.")]
    return "\n".join(lines) + "\n"


def main() -> None:
    flushed = stamp.start()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--root", default="/tmp/smt-dmt-bench")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--rounds", type=int, default=E2EConfig.rounds)
    ap.add_argument("--smt-steps", type=int, default=E2EConfig.smt_steps)
    ap.add_argument("--every-steps", type=int, default=E2EConfig.every_steps)
    ap.add_argument("--extra-steps", type=int, default=E2EConfig.extra_steps)
    ap.add_argument("--sequences", type=int, default=E2EConfig.sequences)
    ap.add_argument("--dmt-lr", type=float, default=E2EConfig.dmt_lr)
    ap.add_argument("--no-online", action="store_true")
    a = ap.parse_args()
    res = run(E2EConfig(root=a.root, teacher=a.teacher, rounds=a.rounds, smt_steps=a.smt_steps, every_steps=a.every_steps,
                        extra_steps=a.extra_steps, sequences=a.sequences, shard_sequences=a.sequences,
                        dmt_lr=a.dmt_lr, online=not a.no_online))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "dmt.json").write_text(json.dumps(res, indent=1))
    (Path(a.out) / "dmt.md").write_text(markdown(res))
    stamp.stamp(Path(a.out) / "dmt", flushed)
    print(markdown(res))


if __name__ == "__main__":
    main()
