"""`smt export`: a self-contained student folder, loaded with one call in a fresh process, and `smt generate` on it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jobs.cli import main as smt
from storage.checkpoints import CheckpointError, load_student
from storage.export import load_exported
from tests.jobs.test_generate import TINY, as_text, run
from trainers.evaluate import generate

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
TEXT = "Sphinx of black quartz, judge my vow. How vexingly quick daft zebras jump!\n" * 60


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    (root / "corpus.txt").write_text(TEXT)
    assert smt(["pretrain", "--corpus", f"text:{root / 'corpus.txt'}|T=24,stride=12", "--out", str(root / "run"),
                "--smt.mode", "stream", "--smt.Tc", "16", "--smt.Tf", "4", *TINY]) == 0
    return root


def test_export_writes_a_self_contained_folder_that_a_fresh_process_loads_and_samples(text_run, capsys):
    out = text_run / "exported"
    rc, printed, _ = run(["export", "--run", str(text_run / "run"), "--out", str(out)], capsys)
    assert rc == 0 and "exported the smt student (mlp updater" in printed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "export.json", "weights.safetensors"]
    info = json.loads((out / "export.json").read_text())
    assert info["format"] == "smt-student/1" and info["prompt"].startswith("read by the student's own updater from m_0")
    assert set(info["tokens"]) == {"unit", "vocab_size", "corpus"}
    assert info["tokens"]["unit"] == "byte" and info["tokens"]["vocab_size"] == 256
    assert info["tokens"]["corpus"].startswith(f"text:{text_run / 'corpus.txt'}|")
    assert info["memory"] == {"K": 2, "d": 16, "Z": 32} and info["updater"]["arch"] == "mlp"
    # the weights hold the updater, the readout and m_0, equal to the run's student
    src = load_student(f"{text_run / 'run'}/checkpoints/step-00000002/student")[0]
    w = load_file(out / "weights.safetensors")
    assert torch.equal(w["m0"], src.m0.detach()) and any(k.startswith("readout_net.") for k in w)
    assert set(w) == set(src.state_dict())
    want = generate(src, torch.tensor([list(b"How ")]), 24, 0.0)[0].tolist()
    # a fresh process: one library call loads it, then it samples; `smt generate --run DIR` prints the same text
    script = (
        "import json, sys, torch\n"
        "from storage.export import load_exported\n"
        "from models.sampling import SamplingConfig, student_tokens\n"
        "e = load_exported(sys.argv[1])\n"
        "p = torch.tensor([e.tokens.encode('How ')])\n"
        "toks = student_tokens(e.student, e.student.rollout(p)[:, -1], 24, SamplingConfig(temperature=0))\n"
        "print(json.dumps([int(t[0]) for t in toks]))\n"
        "from jobs.cli import main\n"
        "sys.exit(main(['generate', '--run', sys.argv[1], '--prompt', 'How ', '--tokens', '24', '--temperature', '0']))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env,
                          cwd=text_run, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    ids, text = proc.stdout.split("\n", 1)
    assert json.loads(ids) == want
    assert text == as_text(list(b"How ") + want) + "\n"
    assert proc.stderr.startswith(f"smt generate: smt student (mlp updater) of {out}: the prompt read by the "
                                  "student's own updater from its m_0")


def test_export_refuses_what_it_cannot_write(text_run, capsys):
    base = text_run / "twice"
    assert run(["export", "--run", str(text_run / "run"), "--out", str(base)], capsys)[0] == 0
    rc, _, err = run(["export", "--run", str(text_run / "run"), "--out", str(base)], capsys)
    assert rc == 2 and err == f"smt export: error: {base} already holds a checkpoint: pass a new --out folder (or delete it)\n"
    rc, _, err = run(["export", "--run", f"{text_run / 'run'}/teacher", "--out", str(text_run / "t")], capsys)
    assert rc == 2 and "holds a teacher and no student (updater + readout + m_0) to export" in err
    rc, _, err = run(["export", "--run", str(text_run / "nothing"), "--out", str(text_run / "n")], capsys)
    assert rc == 2 and "is not a run folder or checkpoint: expected run.json (a run) or config.json" in err
    # a checkpoint is not an export; a damaged export is refused by its fingerprint, in one line
    with pytest.raises(CheckpointError, match="is not an exported student"):
        load_exported(f"{text_run / 'run'}/student")
    data = bytearray((base / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (base / "weights.safetensors").write_bytes(bytes(data))
    rc, _, err = run(["generate", "--run", str(base), "--prompt", "x"], capsys)
    assert rc == 2 and "weights do not match the recorded fingerprint" in err and len(err.splitlines()) == 1


def test_a_bptt_student_exports_with_its_token_ids(tmp_path, capsys):
    assert smt(["bptt", "--corpus", "retrieval:T=8,vocab=4", "--updater.arch", "gru", "--out", str(tmp_path / "b"),
                "--steps", "2", "--eval-every", "1", "--eval-size", "8", "--batch-size", "4", "--quiet",
                "--shape.d-model", "16", "--shape.n-heads", "2", "--shape.mem-tokens", "2"]) == 0
    assert run(["export", "--run", str(tmp_path / "b"), "--out", str(tmp_path / "e")], capsys)[0] == 0
    e = load_exported(str(tmp_path / "e"))
    assert e.tokens.unit == "token" and e.tokens.vocab_size == 6 and e.info["teacher_fingerprint"] is None
    assert e.info["source"]["trained_by"] == "bptt"
    rc, out, _ = run(["generate", "--run", str(tmp_path / "e"), "--prompt", "1 2", "--tokens", "4",
                      "--temperature", "0"], capsys)
    want = generate(e.student, torch.tensor([[1, 2]]), 4, 0.0)[0].tolist()
    assert rc == 0 and out == "1 2 | " + " ".join(map(str, want)) + "\n"
