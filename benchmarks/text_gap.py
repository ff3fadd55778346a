"""Issue 16: the SMT->DMT student against BPTT on ~1 MB of held-out English text, lever by lever.

Every run is one process with one torch thread; every cost is CPU-seconds of that process
(`time.process_time`), evaluations excluded. The corpus is `english_text()`: Python's `pydoc_data.topics`
followed by the longer docstrings of the standard library's top-level modules, cut to 1,000,000 bytes,
windows of T=96 bytes every 48 (the `text-bytes-tiny` shape); train / valid / test = the first 85% / next 5% /
last 10% of the bytes. Students and BPTT are scored on the same 256 windows, on the bytes after a 64-byte
prompt (`trainers/heldout.py`); valid for every choice, test for every reported figure.

Phases (each reads the valid figures of the ones before it, so every choice is automatic and reproducible):
1. `screen`: the teacher alone at a fixed CPU budget, one lever moved at a time from the recipe (future
   length Tf, decoded positions, training context Tc, lr, batch, decoder depth, window, memory size); a
   greedy walk keeps a change only when it lowers the teacher's valid bits.
2. `split`: at the total budget, how it is split between teacher, labeling and student (and DMT), with the
   screen's best teacher; plus the joint updater of pretraining used directly (no labeling at all).
3. `bptt`: BPTT with the same updater, the lr sweep, early stopping on valid probes.
4. `amortised`: one teacher's target set, k = 1, 3, 5 students of different architectures, against BPTT
   runs of the same architectures, each charged the CPU-seconds its probe trace took to reach the
   student's test bits.
5. `--every-memory` (issue 22 item 3): the screen's best teacher with memories t >= Tc against every memory trained
   (`smt.all_memories`), same CPU budget and seed, each arm's jointly trained updater as its student.
Every bits figure is shown beside the count baselines (unigram / bigram / trigram fitted on train, on the same
targets: `trainers/ngram.py`); `--counts` recomputes them into an existing .json without running any model.
Usage: python benchmarks/text_gap.py [--seeds 0 1] [--total 80] | --counts | --every-memory [--every-seconds 60]
Writes benchmarks/results/text_gap.{json,md}; finished tasks are kept in text_gap.partial.jsonl (resume).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = 64  # bytes every scored target has read first (the recipe's Tc; fixed whatever Tc the teacher trains at)
EVAL_N = 256
T, STRIDE = 96, 48
CORPUS_BYTES = 1_000_000


def english_text(path: Path, size: int = CORPUS_BYTES) -> Path:
    """~1 MB of English from this Python: the pydoc topics, then every docstring longer than 200 characters of
    the stdlib's top-level modules (sorted by file, in source order), cut at a docstring boundary."""
    import ast
    import sysconfig
    from pydoc_data.topics import topics

    parts = ["\n\n".join(topics[k].strip("\n") for k in sorted(topics)) + "\n"]
    n = len(parts[0].encode())
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                d = ast.get_docstring(node)
                if d and len(d) > 200:
                    part = "\n" + d.strip() + "\n"
                    if n + len(part.encode()) > size:
                        path.write_bytes("".join(parts).encode())
                        return path
                    parts.append(part)
                    n += len(part.encode())
    path.write_bytes("".join(parts).encode())
    return path


# the recipe's teacher settings a lever can move (PretrainConfig paths)
LEVER_PATHS = {"Tf": ("smt", "Tf"), "dec_positions": ("smt", "dec_positions"), "Tc": ("smt", "Tc"),
               "lr": ("optim", "lr"), "batch": ("batch_size",), "decoder_depth": ("teacher", "decoder_depth"),
               "window": ("teacher", "window"), "mem_tokens": ("teacher", "mem_tokens"),
               "d_model": ("teacher", "d_model"), "w_dyn": ("smt", "w_dyn"),
               "all_memories": ("smt", "all_memories")}  # issue 22 item 3: every memory of a window trained


# the recipe's teacher when this study ran (its levers are changes from this, whatever the recipe holds now)
BASELINE = {"Tf": 32, "dec_positions": 4, "Tc": 64, "lr": 1e-3, "batch": 32, "decoder_depth": 2, "window": 64,
            "mem_tokens": 4, "d_model": 64, "w_dyn": 0.1}


def pretrain_config(lever: dict, seconds: float, seed: int):
    """The `text-bytes-tiny` teacher config at BASELINE with `lever`'s fields set, on a CPU-second budget."""
    from jobs.recipes import load_recipe

    cfg = load_recipe("text-bytes-tiny").pretrain
    for k, v in {**BASELINE, **lever}.items():
        path = LEVER_PATHS[k]
        if len(path) == 1:
            cfg = dataclasses.replace(cfg, **{path[0]: v})
        else:
            sub = dataclasses.replace(getattr(cfg, path[0]), **{path[1]: v})
            cfg = dataclasses.replace(cfg, **{path[0]: sub})
    n_heads = 4 if cfg.teacher.d_model % 4 == 0 else 1
    cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, n_heads=n_heads))
    return dataclasses.replace(cfg, seconds=seconds, steps=10**6, clock="process", seed=seed, eval_size=128,
                               eval_every=10**6, checkpoint_every=10**6)  # one evaluation, at the end: the CPU is shared


def _setup():
    import torch

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # denormal floats can slow a CPU step many times over: every process flushes them


def _corpus(path: str, stride: int = STRIDE):
    from pipeline.corpora import load_corpus

    return load_corpus(f"text:{path}|T={T},stride={stride}")


def _split_bits(corpus, split: str, teacher=None, student=None, bptt=None) -> dict:
    """Bits on `split` (EVAL_N windows, targets after the prompt) of the teacher / a student / a BPTT model."""
    from trainers.evaluate import eval_batch, evaluate_student, evaluate_teacher

    x, y = eval_batch(corpus, EVAL_N, 0, split)
    out = {}
    if teacher is not None and student is None:
        out["teacher"] = evaluate_teacher(teacher, x, y, PROMPT)["bits_per_token"]
    if student is not None:
        out["prompt"] = evaluate_student(student, x, y, teacher, PROMPT)["bits_per_token"]
        out["m0"] = evaluate_student(student, x, y, None, PROMPT, from_m0=True)["bits_per_token"]  # no drift: no teacher
    if bptt is not None:
        out["m0"] = evaluate_student(bptt, x, y, None, PROMPT, from_m0=True)["bits_per_token"]
    return out


def task_teacher(path: str, lever: dict, seconds: float, seed: int) -> dict:
    """Pretrain the teacher alone; its valid bits along the way (from pretraining's own valid evaluations)."""
    _setup()
    from trainers.pretrain import pretrain

    corpus = _corpus(path)
    cfg = pretrain_config(lever, seconds, seed)
    pt = pretrain(corpus, cfg, quiet=True)
    trace = [{"seconds": r["time"], "step": r["step"], "valid_bits": r["teacher_loss"] / math.log(2),
              "joint_valid_bits": r["smt_loss"] / math.log(2)} for r in pt["history"]]
    return {"lever": lever, "seconds": pt["seconds"], "steps": pt["steps"], "trace": trace,
            "valid_bits": _split_bits(corpus, "valid", teacher=pt["teacher"])["teacher"],
            "bytes": pt["steps"] * cfg.batch_size * T}


def task_pipeline(path: str, lever: dict, teacher_seconds: float, students: list[dict], label_stride: int,
                  dmt_seconds: float, seed: int) -> dict:
    """Teacher -> labels (every `label_stride` bytes) -> one student per entry of `students` ({arch, depth,
    steps, lrs}: lr chosen on valid) -> online DMT; also the joint updater of pretraining as it is."""
    _setup()
    from models.updaters import UpdaterConfig
    from pipeline.corpora import spec_with
    from pipeline.executors import make_executor
    from pipeline.label import LabelConfig, label
    from storage.checkpoints import load_student, save_teacher
    from storage.run_dir import RunDir
    from trainers.common import OptimConfig
    from trainers.dmt import OnlineDMTConfig, dmt_online
    from trainers.dmt.mixing import StreamConfig
    from trainers.pretrain import pretrain
    from trainers.student import StudentRun, StudentTrainConfig, run_training

    cpu = time.process_time
    corpus = _corpus(path)
    cfg = pretrain_config(lever, teacher_seconds, seed)
    work = Path(tempfile.mkdtemp(prefix="textgap-"))
    pt = pretrain(corpus, cfg, out=work / "pretrain", quiet=True)
    teacher = pt["teacher"].cpu().eval()
    url = str(work / "bucket" / "teachers" / pt["fingerprint"])
    save_teacher(url, teacher, {"corpus": corpus.spec})
    out = {"lever": lever, "teacher": {"seconds": pt["seconds"], "steps": pt["steps"],
                                        "bytes": pt["steps"] * cfg.batch_size * T,
                                        "valid": _split_bits(corpus, "valid", teacher=teacher)["teacher"],
                                        "test": _split_bits(corpus, "test", teacher=teacher)["teacher"]},
           "joint": {"valid": _split_bits(corpus, "valid", teacher, pt["student"]),
                     "test": _split_bits(corpus, "test", teacher, pt["student"])}, "students": []}
    Tc = cfg.smt.Tc

    def dmt(student) -> dict:
        d = dmt_online(student, teacher, corpus, OnlineDMTConfig(optim=OptimConfig(lr=1e-4, warmup_steps=5), steps=10**6,
                                                           seconds=dmt_seconds, batch_size=32, start=Tc,
                                                           eval_every=10**9, eval_size=16, seed=seed,
                                                           clock="process"), quiet=True)
        return {"seconds": d["seconds"], "steps": d["steps"], "bytes": d["steps"] * 32 * T,
                "valid": _split_bits(corpus, "valid", teacher, d["student"]),
                "test": _split_bits(corpus, "test", teacher, d["student"])}

    if not students:  # no labels: the joint updater of pretraining is the student (DMT'd when dmt_seconds > 0)
        if dmt_seconds > 0:
            out["dmt"] = dmt(copy.deepcopy(pt["student"]))
        return out
    lab_spec = spec_with(corpus.spec, stride=label_stride)
    c0 = cpu()
    rep = label(LabelConfig(teacher=url, corpus=lab_spec, out=str(work / "bucket"), shard_sequences=256, Tc=Tc),
                make_executor(0), quiet=True)
    windows = _corpus(path, label_stride).num_sequences
    out["label"] = {"seconds": cpu() - c0, "records": rep.records, "stride": label_stride, "bytes": windows * T}
    for s in students:
        sweep, models = [], []
        for lr in s["lrs"]:
            run_url = str(work / f"student-{s['arch']}-{s['depth']}-{lr:g}")
            scfg = StudentTrainConfig(updater=UpdaterConfig(arch=s["arch"], depth=s["depth"]), seed=seed,
                                      optim=OptimConfig(lr=lr, warmup_steps=20), steps=s["steps"],
                                      stream=StreamConfig(batch_size=512), checkpoint_every=s["steps"])
            c0 = cpu()
            run_training(StudentRun(rep.target_url, url, run_url), scfg, quiet=True)
            cost = cpu() - c0
            st = load_student(f"{run_url}/{RunDir(run_url).latest()['path']}/student")[0]
            sweep.append({"lr": lr, "seconds": cost, "valid": _split_bits(corpus, "valid", teacher, st)})
            models.append(st)
        pick = min(range(len(sweep)), key=lambda i: sweep[i]["valid"]["prompt"])
        st = models[pick]
        r = {**s, "lr": sweep[pick]["lr"], "sweep": sweep, "smt_seconds": sweep[pick]["seconds"],
             "smt_bytes": s["steps"] * 512, "smt": {"valid": sweep[pick]["valid"],
                                                      "test": _split_bits(corpus, "test", teacher, st)}}
        if dmt_seconds > 0:
            r["dmt"] = dmt(st)
        out["students"].append(r)
    return out


def task_bptt(path: str, arch: str, depth: int, lr: float, seconds: float, seed: int, every: int) -> dict:
    """BPTT for `seconds` CPU-s; every `every` steps a snapshot (off the clock) scored on valid and test."""
    _setup()
    from jobs.recipes import load_recipe
    from models.updaters import UpdaterConfig
    from trainers.bptt import BPTTConfig, train_bptt
    from trainers.common import OptimConfig
    from trainers.loop import Callbacks

    rc = load_recipe("text-bytes-tiny")
    corpus = _corpus(path)
    shots: list = []

    def probe(s, row) -> dict:
        shots.append(copy.deepcopy(s).cpu().eval())
        return {}

    bp = train_bptt(corpus, BPTTConfig(updater=UpdaterConfig(arch=arch, depth=depth), shape=rc.pretrain.teacher,
                                       optim=OptimConfig(lr=lr, warmup_steps=20), steps=10**7, seconds=seconds,
                                       eval_every=every, eval_size=16, batch_size=32, seed=seed, clock="process"),
                    quiet=True, callbacks=Callbacks(reporter=probe))
    probes = [{"seconds": row["time"], "step": row["step"], "bytes": row["step"] * 32 * T,
               "valid": _split_bits(corpus, "valid", bptt=s)["m0"], "test": _split_bits(corpus, "test", bptt=s)["m0"]}
              for s, row in zip(shots, bp["history"])]
    return {"arch": arch, "depth": depth, "lr": lr, "seed": seed, "seconds": bp["seconds"], "steps": bp["steps"], "probes": probes}


TASKS = {"teacher": task_teacher, "pipeline": task_pipeline, "bptt": task_bptt}


def count_figures(path: str) -> dict:
    """The count baselines (unigram / bigram / trigram, fitted on train: `trainers/ngram.py`) on the very windows and
    targets every model here is scored on: EVAL_N windows of valid (what the choices read) and of test."""
    from trainers.ngram import count_baselines

    corpus = _corpus(path)
    return {split: count_baselines(corpus, EVAL_N, PROMPT, split) for split in ("valid", "test")}


EVERY_MEMORY = "every memory trained (issue 22 item 3)"


def run_every_memory(args) -> dict:
    """Issue 22 item 3: the screen's best teacher trained on memories t >= Tc (today) against every memory of the
    window (`smt.all_memories`), at the same CPU budget and seed; the jointly trained updater is each arm's student
    (no labels), so the figures are the teacher's and its updater's test bits. Both arms run side by side."""
    res = json.loads(Path(args.out).with_suffix(".json").read_text())
    path = str(english_text(Path(tempfile.gettempdir()) / "smt-textgap-english-1mb.txt"))
    runner = Runner(Path(args.out).with_suffix(".partial.jsonl"), args.fresh)
    best, seed = res["best_lever"], args.seeds[0]
    arms = [("memories t >= Tc (today)", best), ("every memory (all_memories)", {**best, "all_memories": True})]
    w0 = time.perf_counter()
    with ProcessPoolExecutor(2, initializer=_setup) as pool:
        futs = [runner.submit(pool, "pipeline", path=path, lever=lever, teacher_seconds=args.every_seconds,
                              students=[], label_stride=0, dmt_seconds=0.0, seed=seed) for _, lever in arms]
        out = [{"arm": name, **f.result()} for (name, _), f in zip(arms, futs)]
    return {"seconds": args.every_seconds, "seed": seed, "arms": out, "denormals_flushed": True,
            "wall_minutes": (time.perf_counter() - w0) / 60,
            "command": "nice python benchmarks/text_gap.py --every-memory --every-seconds "
                       f"{args.every_seconds:g} --seeds {seed}"}


# ------------------------------------------------------------------------------------------- orchestration

class Runner:
    """Runs tasks in a process (one torch thread), caching each result by its arguments in a .jsonl."""

    def __init__(self, partial: Path, fresh: bool):
        import threading

        self.partial, self.lock = partial, threading.Lock()
        if fresh and partial.exists():
            partial.unlink()
        self.done = {}
        if partial.exists():
            for ln in partial.read_text().splitlines():
                rec = json.loads(ln)
                self.done[rec["key"]] = rec["result"]

    @staticmethod
    def key(kind: str, kw: dict) -> str:
        return json.dumps([kind, kw], sort_keys=True)

    def submit(self, pool: ProcessPoolExecutor, kind: str, **kw):
        """A future of the task's result (an already-finished one when cached)."""
        from concurrent.futures import Future

        k = self.key(kind, kw)
        if k in self.done:
            f: Future = Future()
            f.set_result(self.done[k])
            return f
        fut = pool.submit(TASKS[kind], **kw)

        def keep(f, k=k):
            if f.exception() is None:
                with self.lock:
                    self.done[k] = f.result()
                    with self.partial.open("a") as fh:
                        fh.write(json.dumps({"key": k, "result": f.result()}) + "\n")
        fut.add_done_callback(keep)
        return fut


SCREEN_ROUNDS = (  # each round moves one lever from the best so far; a change is kept only when it wins on valid
    ("future and decoded positions", [{"Tf": 8}, {"Tf": 1, "dec_positions": 32}, {"Tf": 4, "dec_positions": 16}]),
    ("training context, lr, batch", [{"Tc": 32}, {"Tc": 16}, {"lr": 3e-3}, {"batch": 64}]),
    ("decoder depth, memory size", [{"decoder_depth": 1}, {"mem_tokens": 8}]),
)
ARCH_SET = [("mlp", 2), ("gru", 2), ("transformer", 2), ("mlp", 4), ("transformer", 1)]  # k = 1, 3, 5: prefixes


def splits(total: float) -> list[dict]:
    """The budget splits tried: (name, teacher share of `total`, label stride, student steps, DMT CPU-s)."""
    return [
        {"name": "joint updater only (no labels)", "teacher": total, "students": [], "stride": 0, "dmt": 0.0},
        {"name": "joint updater + DMT", "teacher": 0.85 * total, "students": [], "stride": 0, "dmt": 0.15 * total},
        {"name": "teacher 80%, labels 1/8, student, DMT", "teacher": 0.8 * total, "stride": 384, "dmt": 0.05 * total,
         "students": [{"arch": "mlp", "depth": 2, "steps": max(5, round(1.25 * total)), "lrs": [1e-3, 3e-3]}]},
        {"name": "teacher 60%, labels 1/4, student, DMT", "teacher": 0.6 * total, "stride": 192, "dmt": 0.1 * total,
         "students": [{"arch": "mlp", "depth": 2, "steps": max(5, round(3.3 * total)), "lrs": [1e-3, 3e-3]}]},
    ]


def run(args) -> dict:
    path = english_text(Path(tempfile.gettempdir()) / "smt-textgap-english-1mb.txt")
    p = str(path)
    runner = Runner(Path(args.out).with_suffix(".partial.jsonl"), args.fresh)
    lane_a = ProcessPoolExecutor(1, initializer=_setup)  # the dependent chain: screen -> split -> students
    lane_b = ProcessPoolExecutor(1, initializer=_setup)  # BPTT runs (independent of every choice)
    total, seeds = args.total, args.seeds
    bptt_runs = [(a, d, lr, s) for s in seeds for a, d in ARCH_SET[:1] for lr in args.bptt_lrs]
    bptt_runs += [(a, d, args.bptt_lrs[0], seeds[0]) for a, d in ARCH_SET[1:]]  # one lr: the CPU is shared
    bfut = [runner.submit(lane_b, "bptt", path=p, arch=a, depth=d, lr=lr, seconds=total, seed=s, every=10)
            for a, d, lr, s in bptt_runs]
    # 1. screen
    best, screen = {}, []
    base = runner.submit(lane_a, "teacher", path=p, lever={}, seconds=args.screen_seconds, seed=seeds[0]).result()
    screen.append({"round": 0, "change": {}, **base, "kept": True})
    best_bits = base["valid_bits"]
    for i, (what, changes) in enumerate(SCREEN_ROUNDS, 1):
        futs = [runner.submit(lane_a, "teacher", path=p, lever={**best, **c}, seconds=args.screen_seconds,
                              seed=seeds[0]) for c in changes]
        res = [f.result() for f in futs]
        j = min(range(len(res)), key=lambda j: res[j]["valid_bits"])
        for jj, (c, r) in enumerate(zip(changes, res)):
            screen.append({"round": i, "what": what, "change": c, **r,
                           "kept": jj == j and r["valid_bits"] < best_bits})
        if res[j]["valid_bits"] < best_bits:
            best, best_bits = {**best, **changes[j]}, res[j]["valid_bits"]
        print(f"screen round {i}: best {best} valid {best_bits:.3f}", flush=True)
    # 2. split at the total budget, with the screen's teacher
    split_res = []
    for sp in splits(total):
        r = runner.submit(lane_a, "pipeline", path=p, lever=best, teacher_seconds=sp["teacher"],
                          students=sp["students"], label_stride=sp["stride"], dmt_seconds=sp["dmt"],
                          seed=seeds[0]).result()
        split_res.append({"split": sp, **r})
        print(f"split {sp['name']}: {final_bits(r)}", flush=True)
    pick = min(range(len(split_res)), key=lambda i: final_bits(split_res[i])["valid"])
    sp = splits(total)[pick]
    # 3. one teacher's target set for k = 5 students (lane A; the lr the same-sized student of the split chose on
    # valid, one lr each so the study fits the shared CPU), and the chosen split on the other seeds (lane B, after
    # the BPTT runs)
    am_teacher = splits(total)[3]  # the split that labels most: students need a target set
    am_lr = split_res[3]["students"][0]["lr"]
    amort_f = runner.submit(lane_a, "pipeline", path=p, lever=best, teacher_seconds=am_teacher["teacher"],
                            students=[{**am_teacher["students"][0], "arch": a, "depth": d, "lrs": [am_lr]}
                                      for a, d in ARCH_SET],
                            label_stride=am_teacher["stride"], dmt_seconds=am_teacher["dmt"], seed=seeds[0])
    seed_f = [runner.submit(lane_b, "pipeline", path=p, lever=best, teacher_seconds=sp["teacher"],
                            students=sp["students"], label_stride=sp["stride"], dmt_seconds=sp["dmt"], seed=s)
              for s in seeds[1:]]
    amort = amort_f.result()
    seed_res = [split_res[pick]] + [f.result() for f in seed_f]
    bptt = [f.result() for f in bfut]
    lane_a.shutdown()
    lane_b.shutdown()
    return {"python": platform.python_version(), "corpus": {"bytes": path.stat().st_size, "T": T, "stride": STRIDE, "prompt": PROMPT, "eval_n": EVAL_N},
            "total": total, "screen_seconds": args.screen_seconds, "seeds": seeds, "bptt_lrs": args.bptt_lrs,
            "screen": screen, "best_lever": best, "splits": split_res, "chosen_split": pick, "seed_runs": seed_res,
            "amortised": amort, "bptt": bptt}


def final_bits(r: dict) -> dict:
    """The pipeline's student as chosen on valid (SMT or SMT->DMT, teacher prompt), with its cost."""
    opts = []
    if r["students"]:
        s = r["students"][0]
        base = r["teacher"]["seconds"] + r["label"]["seconds"] + s["smt_seconds"]
        byts = r["teacher"]["bytes"] + r["label"]["bytes"] + s["smt_bytes"]
        opts.append(("SMT", s["smt"], base, byts))
        if "dmt" in s:
            opts.append(("SMT->DMT", s["dmt"], base + s["dmt"]["seconds"], byts + s["dmt"]["bytes"]))
    else:
        opts.append(("joint updater", r["joint"], r["teacher"]["seconds"], r["teacher"]["bytes"]))
        if "dmt" in r:
            opts.append(("joint->DMT", r["dmt"], r["teacher"]["seconds"] + r["dmt"]["seconds"],
                         r["teacher"]["bytes"] + r["dmt"]["bytes"]))
    name, fig, sec, byts = min(opts, key=lambda o: o[1]["valid"]["prompt"])
    return {"stage": name, "valid": fig["valid"]["prompt"], "test": fig["test"]["prompt"],
            "test_m0": fig["test"]["m0"], "seconds": sec, "bytes": byts}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--total", type=float, default=80.0, help="CPU-s of one SMT->DMT pipeline = of one BPTT run")
    ap.add_argument("--screen-seconds", type=float, default=25.0, help="CPU-s of each teacher in the lever screen")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--bptt-lrs", nargs="+", type=float, default=[3e-3, 1e-2])
    ap.add_argument("--out", default=str(RESULTS / "text_gap"), help="output stem (.json, .md)")
    ap.add_argument("--fresh", action="store_true", help="ignore finished tasks in the .partial.jsonl")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    ap.add_argument("--counts", action="store_true",
                    help="only (re)compute the count baselines into the .json (no model is run), then rewrite the .md")
    ap.add_argument("--every-memory", action="store_true",
                    help=f"only run the '{EVERY_MEMORY}' arms (today's t >= Tc and every memory) into the .json")
    ap.add_argument("--every-seconds", type=float, default=60.0, help="CPU-s of each --every-memory arm's teacher")
    args = ap.parse_args(argv)
    import torch

    torch.set_flush_denormal(True)
    stem = Path(args.out)
    if args.counts or args.every_memory:
        res = json.loads(stem.with_suffix(".json").read_text())
        if args.every_memory:
            res["every_memory"] = run_every_memory(args)
        path = english_text(Path(tempfile.gettempdir()) / "smt-textgap-english-1mb.txt")
        if path.stat().st_size != res["corpus"]["bytes"]:
            raise SystemExit(f"this Python's english_text() has {path.stat().st_size} bytes, the study's "
                             f"{res['corpus']['bytes']}: the counts would not be on the study's corpus")
        res["counts"] = count_figures(str(path))
        stem.with_suffix(".json").write_text(json.dumps(res, indent=1))
    elif not args.render:
        w0 = time.perf_counter()
        res = run(args)
        res["wall_minutes"] = (time.perf_counter() - w0) / 60
        res["command"] = "python benchmarks/text_gap.py " + " ".join(argv if argv is not None else sys.argv[1:])
        res["denormals_flushed"] = True
        res["counts"] = count_figures(str(english_text(Path(tempfile.gettempdir()) / "smt-textgap-english-1mb.txt")))
        stem.with_suffix(".json").write_text(json.dumps(res, indent=1))
    res = json.loads(stem.with_suffix(".json").read_text())
    from benchmarks.text_gap_report import write_md

    write_md(stem.with_suffix(".md"), res)
    if stem.parent == RESULTS:  # real_corpora.md carries this study as its last section
        from benchmarks import real_corpora

        real_corpora.main(["--render"])
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
