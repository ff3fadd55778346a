"""One prepared GPU check of the whole pipeline: bf16 autocast and `num_gpus` Ray actors.

Each step is timed and guarded, so one failure does not hide the others; the JSON report goes to
$OUT/gpu_check.json (or ./gpu_check.json). Steps:
 1. joint SMT pretraining of a causal teacher + mlp updater on retrieval T=64 (bf16 autocast), to >= 0.99;
 2. labeling: serial on the GPU, then a 2-actor Ray pool with num_gpus=0.5 each: checksums compared;
 3. the SMT student trained from the shards in-process on the GPU (bf16), then 1 Ray Train GPU worker;
 4. a DMT relabel round on the GPU and online DMT; rolled-out accuracy of each student;
 5. the efficiency table (benchmarks/efficiency.py, device=cuda: bf16 autocast, label actors with num_gpus): every
    stage against its bare compute on a local folder and a moto S3 endpoint, and 1 vs 2 label actors; written as
    $OUT/efficiency-gpu.{json,md} and printed (--efficiency quick|full|off).
Usage: python scripts/gpu_check.py [--pretrain-seconds 60] [--efficiency quick|full|off]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

REPORT: dict = {}


def step(name):
    def wrap(fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                out = fn(*a, **k)
                REPORT[name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 2), **(out or {})}
            except Exception as e:  # noqa: BLE001 - a check reports every failure and goes on
                REPORT[name] = {"ok": False, "seconds": round(time.perf_counter() - t0, 2),
                                "error": f"{type(e).__name__}: {e}"[:600], "trace": traceback.format_exc()[-1500:]}
            print(name, json.dumps(REPORT[name])[:600], flush=True)
            return REPORT[name]
        return run
    return wrap


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrain-seconds", type=float, default=60)
    ap.add_argument("--efficiency", default="full", choices=["quick", "full", "off"],
                    help="the efficiency table's sizes (benchmarks/efficiency.py), or off")
    args = ap.parse_args()
    from models.teacher import TeacherConfig
    from models.updaters import UpdaterConfig
    from pipeline.corpora import load_corpus
    from storage.checkpoints import load_student, save_teacher
    from trainers.common import OptimConfig
    from trainers.evaluate import eval_batch, evaluate_student
    from trainers.pretrain import PretrainConfig, pretrain

    work = Path(tempfile.mkdtemp(prefix="gpucheck"))
    spec = "retrieval:T=64,vocab=8,n=1024"
    corpus = load_corpus(spec)
    REPORT["env"] = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                     "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    state: dict = {}
    ex, ey = eval_batch(corpus, 512, 7)

    @step("pretrain_bf16")
    def _pretrain():
        r = pretrain(corpus, PretrainConfig(teacher=TeacherConfig(encoder="causal"), updater=UpdaterConfig(arch="mlp"),
                                            optim=OptimConfig(lr=1e-3, warmup_steps=20), steps=5000,
                                            seconds=args.pretrain_seconds, curriculum=(16, 32), stop_at_acc=0.99,
                                            eval_every=25), out=work / "pt", quiet=True)
        state["teacher"], state["fp"] = r["teacher"], r["fingerprint"]
        save_teacher(str(work / "bucket" / "teachers" / r["fingerprint"]), r["teacher"])
        p = next(r["teacher"].parameters())
        return {"steps": r["steps"], "train_seconds": round(r["seconds"], 1),
                "ms_per_step": round(1000 * r["seconds"] / r["steps"], 1), "param_dtype": str(p.dtype),
                "teacher_acc": r["final"].get("teacher_acc"), "smt_acc": r["final"].get("smt_acc")}

    @step("label_serial_gpu")
    def _label_serial():
        from pipeline.executors import SerialExecutor
        from pipeline.label import LabelConfig, label

        rep = label(LabelConfig(teacher=str(work / "pt" / "teacher"), corpus=spec, out=str(work / "bucket"),
                                shard_sequences=256, device="auto"), SerialExecutor(), quiet=True)
        state["targets"] = rep.target_url
        return {"states_per_s": round(rep.states / rep.seconds), "records": rep.records, "target": rep.target_url}

    @step("label_ray_2_gpu_actors")
    def _label_ray():
        import ray

        from pipeline.executors import RayActorPool
        from pipeline.label import LabelConfig, label
        from pipeline.stage import Resources
        from storage.reader import TargetSet

        ray.init(num_cpus=4, num_gpus=1, include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
        rep = label(LabelConfig(teacher=str(work / "pt" / "teacher"), corpus=spec, out=str(work / "bucket_ray"),
                                shard_sequences=256, resources=Resources(num_cpus=1, num_gpus=0.5)),
                    RayActorPool(num_actors=2), quiet=True)
        a = {e.path: e.sha256 for e in TargetSet.open(state["targets"], None).shards}
        b = {e.path: e.sha256 for e in TargetSet.open(rep.target_url, None).shards}
        return {"states_per_s": round(rep.states / rep.seconds), "same_checksums_as_serial": a == b,
                "gpus_in_cluster": ray.cluster_resources().get("GPU")}

    @step("train_student_gpu")
    def _train():
        from trainers.dmt.mixing import StreamConfig
        from trainers.student import StudentRun, StudentTrainConfig, run_training

        cfg = StudentTrainConfig(updater=UpdaterConfig(arch="mlp"), optim=OptimConfig(lr=1e-3, warmup_steps=20),
                                 stream=StreamConfig(batch_size=512), steps=600, checkpoint_every=300)
        t0 = time.perf_counter()
        r = run_training(StudentRun(state["targets"], None, str(work / "run")), cfg, quiet=True)
        s, _, _ = load_student(str(work / "run" / "checkpoints" / "step-00000600" / "student"))
        acc = evaluate_student(s, ex, ey)["acc"]
        state["student_url"] = str(work / "run" / "checkpoints" / "step-00000600" / "student")
        return {"steps": r["step"], "ms_per_step": round(1000 * (time.perf_counter() - t0) / r["step"], 1),
                "last_loss": r["last"].get("loss"), "rolled_out_acc": acc}

    @step("ray_train_1_gpu_worker")
    def _ray_train():
        from trainers.distributed import RayGroup, train_with_ray
        from trainers.dmt.mixing import StreamConfig
        from trainers.student import StudentRun, StudentTrainConfig

        train_with_ray(StudentRun(state["targets"], None, str(work / "run_ray")),
                       StudentTrainConfig(stream=StreamConfig(batch_size=256), steps=20, checkpoint_every=10),
                       RayGroup(1), quiet=True)
        return {"latest": json.loads((work / "run_ray" / "checkpoints" / "latest.json").read_text())}

    @step("dmt_relabel_gpu")
    def _relabel():
        from pipeline.executors import SerialExecutor
        from pipeline.relabel import RelabelConfig, relabel

        rep = relabel(RelabelConfig(targets=state["targets"], run=str(work / "run_relabel"), teacher=str(work / "pt" / "teacher"),
                                    student=state["student_url"], corpus=spec, round=1, sequences=512),
                      SerialExecutor(), quiet=True)
        return {k: rep[k] for k in ("records", "states_per_second", "rollout_acc")} | \
            {"drift_T": rep["drift_by_step"][-1]}

    @step("dmt_online_gpu")
    def _dmt():
        from storage.checkpoints import load_teacher
        from trainers.dmt import OnlineDMTConfig, dmt_online

        teacher, _fp, _ = load_teacher(str(work / "pt" / "teacher"))
        s, _, _ = load_student(state["student_url"])
        r = dmt_online(s, teacher, corpus, OnlineDMTConfig(optim=OptimConfig(lr=3e-4, schedule="cosine", warmup_steps=10),
                                                     steps=200, stop_at_acc=0.99, eval_every=20), quiet=True)
        return {"steps": r["steps"], "dmt_acc": r["final"]["dmt_acc"],
                "ms_per_step": round(1000 * r["seconds"] / max(1, r["steps"]), 1)}

    @step("efficiency_table_gpu")
    def _efficiency():
        from benchmarks import efficiency, stamp

        flushed = stamp.start()
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        res = efficiency.run_all(device=dev, quick=args.efficiency == "quick", repeats=2)
        res["denormals_flushed"] = flushed
        res["command"] = "python scripts/gpu_check.py " + " ".join(sys.argv[1:])
        stem = Path(os.environ.get("OUT", ".")) / "efficiency-gpu"
        stem.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float))
        stem.with_suffix(".md").write_text(efficiency.markdown(res, res["command"]))
        stamp.stamp(stem, flushed)
        print(stem.with_suffix(".md").read_text(), flush=True)
        return {"ratios": {name: {w: round(s[w]["ratio"], 3) for w in efficiency.WHERE}
                           for name, s in res["stages"].items()},
                "label_2_vs_1_actor": res.get("scaling", {}).get("executors", {}).get("2", {}).get("vs_one_actor")}

    checks = [_pretrain, _label_serial, _label_ray, _train, _ray_train, _relabel, _dmt]
    if args.efficiency != "off":
        checks.append(_efficiency)
    for fn in checks:
        fn()
    out = Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    out.write_text(json.dumps(REPORT, indent=1, default=str))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
