"""GPU check: in-process training on CUDA (bf16 autocast) and the Ray Train NCCL/use_gpu path with 1 worker."""
import json, os, sys, tempfile, time
sys.path.insert(0, os.getcwd())
import torch
print("cuda", torch.cuda.is_available(), torch.__version__, flush=True)
from tests.train_fixtures import make_target_set
from jobs.train import main
d = tempfile.mkdtemp()
ts = make_target_set(d)
for arch in ("transformer", "mlp", "gru"):
    t = time.time()
    rc = main(["--targets", ts["targets"], "--student", arch, "--out", f"{d}/{arch}", "--steps", "20",
               "--batch-size", "256", "--checkpoint-every", "10", "--quiet"])
    rows = [json.loads(l) for l in open(f"{d}/{arch}/metrics.jsonl")]
    print(arch, "rc", rc, "loss", rows[0]["loss"], "->", rows[-1]["loss"], f"{time.time()-t:.1f}s", flush=True)
from models.checkpoint import load_student
from trainers.evaluate import evaluate_student
s, fp, _ = load_student(f"{d}/mlp/checkpoints/step-00000020/student")
x, y = (torch.as_tensor(v) for v in ts["corpus"].sample(64, __import__("numpy").random.default_rng(5)))
print("eval", {k: v for k, v in evaluate_student(s, x, y, ts["teacher_model"]).items() if k in ("acc", "loss", "drift_final")})
try:
    import ray
    from trainers.distributed import train_with_ray
    from trainers.student import StudentTrainConfig
    from storage.stream import StreamConfig
    t = time.time()
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    train_with_ray(ts["targets"], ts["teacher"], f"{d}/ray", StudentTrainConfig(stream=StreamConfig(batch_size=64), steps=5, checkpoint_every=5), workers=1, quiet=True)
    print("ray gpu latest", open(f"{d}/ray/checkpoints/latest.json").read(), f"{time.time()-t:.1f}s")
except Exception as e:
    print("ray path failed:", type(e).__name__, str(e)[:500])
