"""`smt dmt`: DAgger Memory Training on a student run: roll the student out, relabel its states with the
teacher, append the round to the run (`<run>/rounds/`), and train the student on the aggregate.

    smt train --targets T --out RUN ...                       # SMT first
    smt dmt --targets T --run RUN --corpus SPEC --rounds 3 --every-steps 100

Alone (the default): round r rolls out the run's newest student, then `smt dmt` itself trains the run
--every-steps steps on round 0 + rounds 1..r (one new training phase of the run, its own stream config,
--lr to change the rate); it ends with --rounds rounds and a student trained on them (the run's newest
checkpoint). With a trainer attached, it only relabels: lockstep (--first-step S, paired with `smt train
--phase-start S --dmt-every N`: round r rolls out exactly the student of step S + (r-1)N, reproducible; see
`smt train --help`) or following (--no-train beside `smt train --follow ...`: round r waits for a
checkpoint --every-steps past round r-1's). Each round prints one line (rollout accuracy, drift at t = Td,
records, generation) as it happens, every wait says what it waits for and for how long, and
`<report>/dmt_drift.png` plots drift against t per round. The loop runs inside one Ray actor (`--actor`,
the default; connects to the job's cluster under `ray job submit`, else starts a local instance) or
in-process (`--no-actor`). Restarting after a crash completes the interrupted round exactly once (its
checkpoint is pinned) and resumes a training block exactly.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from jobs.common import parse, run


@dataclass(kw_only=True)
class DMTArgs:
    targets: str
    """Target set URL (the folder holding manifest/), as printed by `smt label`."""
    run: str
    """Student run URL written by `smt train` (holds checkpoints/latest.json)."""
    corpus: str
    """Corpus spec the target set was labeled from."""
    teacher: str | None = None
    """Teacher checkpoint (default: <bucket>/teachers/<fingerprint>)."""
    rounds: int = 3
    """Rounds to reach (already committed rounds count)."""
    every_steps: int = 100
    """Student steps between rounds."""
    first_step: int | None = None
    """Lockstep: round r rolls out exactly the checkpoint at step first_step + (r-1) * every_steps (pair it with
    `smt train --phase-start S --dmt-every N --dmt-rounds R`); default: the newest checkpoint."""
    train: bool = True
    """Without --first-step: train the student --every-steps steps on round 0 + its rounds after each round
    (--no-train: only relabel, waiting for a separately running `smt train --follow ...`)."""
    lr: float | None = None
    """Learning rate of the training phase `smt dmt` runs alone (default: the run's)."""
    sequences: int = 512
    """Sequences rolled out per round."""
    shard_sequences: int = 128
    """Sequences per shard."""
    start: int = 0
    """Rollout start (Tc for stream corpora)."""
    Td: int | None = None
    """Rollout steps (default: to the end of each sequence)."""
    timeout_seconds: float = 3600.0
    """With a trainer attached: give up when it writes no suitable checkpoint for this long."""
    poll_seconds: float = 1.0
    """How often to look for a new checkpoint."""
    dtype: str = "float16"
    """Stored state dtype of the relabeled pairs."""
    device: str = "auto"
    """Torch device for the rollouts."""
    actor: bool = True
    """Run the loop inside a Ray actor (False: in this process)."""
    cpus: float = 1.0
    """CPUs reserved by the actor."""
    gpus: float | None = None
    """GPUs reserved by the actor (default: 1 if this machine has CUDA, else 0)."""
    report: str = "dmt-report"
    """Local folder for the per-round plot and JSON."""
    endpoint_url: str | None = None
    """S3 endpoint."""
    quiet: bool = False
    """Less output."""


def default_teacher(targets_url: str, endpoint_url: str | None) -> str:
    """The teacher published for the target set (`<bucket>/teachers/<fingerprint>/`), as `smt train` finds it."""
    from storage.reader import TargetSet
    from trainers.student import resolve_teacher

    return resolve_teacher(TargetSet.open(targets_url, None, endpoint_url=endpoint_url))


def plot_rounds(reports: list[dict], folder: str) -> str | None:
    from pathlib import Path

    from trainers.report import plot_curves

    curves = {f"round {r['round']} (student step {r.get('student_step', '?')})":
              (list(range(len(r["drift_by_step"]))), r["drift_by_step"]) for r in reports if r.get("drift_by_step")}
    if not curves:
        return None
    return str(plot_curves(Path(folder) / "dmt_drift.png", curves, xlabel="rollout step t",
                           ylabel="drift MSE(m_hat_t, m*_t)", title="student drift per DMT round"))


def main(argv: list[str] | None = None) -> int:
    args = parse(DMTArgs, argv, "dmt", description=__doc__.splitlines()[0])

    def body() -> int:
        import json
        from pathlib import Path

        from pipeline.stage import Resources
        from storage.run_dir import RunDir
        from trainers.dmt.actor import AggregateTrainer, DMTLoop, DMTLoopConfig, round_reports
        from trainers.student import run_config

        gpus = args.gpus
        if gpus is None:
            import torch

            gpus = 1.0 if (args.actor and torch.cuda.is_available()) else 0.0
        teacher = args.teacher or default_teacher(args.targets, args.endpoint_url)
        cfg = DMTLoopConfig(targets=args.targets, run=args.run, corpus=args.corpus, teacher=teacher,
                            rounds=args.rounds, every_steps=args.every_steps, first_step=args.first_step,
                            sequences=args.sequences,
                            shard_sequences=args.shard_sequences, start=args.start, Td=args.Td,
                            timeout_seconds=args.timeout_seconds, poll_seconds=args.poll_seconds,
                            dtype=args.dtype, device=args.device, endpoint_url=args.endpoint_url,
                            resources=Resources(num_cpus=args.cpus, num_gpus=gpus))

        trainer = None
        if args.first_step is None and args.train:  # alone: the loop trains the run between rounds
            tcfg = run_config(RunDir(args.run, endpoint_url=args.endpoint_url))
            if args.lr is not None:
                tcfg.optim.lr = args.lr
            tcfg.device = args.device
            trainer = AggregateTrainer(targets=args.targets, teacher=teacher, run=args.run, cfg=tcfg,
                                       endpoint_url=args.endpoint_url)
            if not args.quiet:
                print(f"smt dmt: {args.rounds} rounds on {args.run}, each followed by {args.every_steps} training "
                      "steps on round 0 + the run's rounds (no trainer attached)", flush=True)

        def say(ev: dict) -> None:
            if not args.quiet:
                print(ev["text"], flush=True)

        if args.actor:
            from pipeline.executors import init_ray

            ray = init_ray()
            actor = ray.remote(num_cpus=args.cpus, num_gpus=gpus, max_restarts=2,
                               max_task_retries=2)(DMTLoop).remote(cfg, None, trainer)
            # a streaming generator: each event reaches this process (and the log) as it happens
            for ref in actor.events.options(num_returns="streaming").remote(True):
                say(ray.get(ref))
            ray.kill(actor)
        else:
            for ev in DMTLoop(cfg, trainer=trainer).events(quiet=args.quiet):
                say(ev)
        reps = round_reports(args.run, args.endpoint_url)
        Path(args.report).mkdir(parents=True, exist_ok=True)
        (Path(args.report) / "dmt_rounds.json").write_text(json.dumps(reps, indent=1))
        png = plot_rounds(reps, args.report)
        latest = RunDir(args.run, endpoint_url=args.endpoint_url).latest() or {}
        print(f"{len(reps)} DMT rounds in {args.run}; newest student: step {latest.get('step')}; "
              f"report: {png or args.report}")
        return 0

    def guarded() -> int:
        from trainers.dmt.actor import DMTTimeout

        try:
            return body()
        except DMTTimeout as e:  # a trainer that never came: one line, like every user error
            print(f"smt dmt: error: {e}", file=sys.stderr)
            return 2

    return run("dmt", guarded)


if __name__ == "__main__":
    raise SystemExit(main())
