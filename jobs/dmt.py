"""`smt dmt`: the DMT actor. Watches a student run, relabels its rolled-out states after each new
checkpoint and appends rounds to the target set, which trainers following generations mix in.

    smt dmt --targets BUCKET/targets/<fp>/<corpus-id> --run RUN_URL --corpus SPEC [--rounds 3] [--every-steps 100]

The loop runs inside one Ray actor (`--actor`, the default; connects to the job's cluster under
`ray job submit`, else starts a local instance) or in-process (`--no-actor`). Per round it prints the
rollout accuracy and drift at t = Td, and writes `<report>/dmt_drift.png` (drift against t per round).
Restarting after a crash completes the interrupted round exactly once (its checkpoint is pinned).
With --first-step S (lockstep, paired with `smt train --phase-start S --dmt-every N`), round r rolls out
exactly the checkpoint of step S + (r-1)N, so the whole run is reproducible; see `smt train --help`.
"""
from __future__ import annotations

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
    sequences: int = 512
    """Sequences rolled out per round."""
    shard_sequences: int = 128
    """Sequences per shard."""
    start: int = 0
    """Rollout start (Tc for stream corpora)."""
    Td: int | None = None
    """Rollout steps (default: to the end of each sequence)."""
    timeout_seconds: float = 3600.0
    """Give up when the run writes no new checkpoint for this long."""
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

        from pipeline.dmt_loop import DMTLoop, DMTLoopConfig, round_reports
        from pipeline.stage import Resources

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

        def say(rep: dict) -> None:
            if not args.quiet:
                d = rep.get("drift_by_step") or [float("nan")]
                print(f"round {rep['round']}: student step {rep.get('student_step')} rollout_acc="
                      f"{rep.get('rollout_acc')} drift_T={d[-1]:.4f} records={rep['records']} "
                      f"generation={rep['generation']}", flush=True)

        if args.actor:
            from pipeline.executors import init_ray

            ray = init_ray()
            actor = ray.remote(num_cpus=args.cpus, num_gpus=gpus, max_restarts=2,
                               max_task_retries=2)(DMTLoop).remote(cfg)
            for rep in ray.get(actor.run.remote(True)):
                say(rep)
        else:
            DMTLoop(cfg).run(quiet=args.quiet, on_round=say)
        reps = round_reports(args.run, args.endpoint_url)
        Path(args.report).mkdir(parents=True, exist_ok=True)
        (Path(args.report) / "dmt_rounds.json").write_text(json.dumps(reps, indent=1))
        png = plot_rounds(reps, args.report)
        print(f"{len(reps)} DMT rounds in {args.targets}; report: {png or args.report}")
        return 0

    return run("dmt", body)


if __name__ == "__main__":
    raise SystemExit(main())
