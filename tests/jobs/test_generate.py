"""`smt generate` on real tiny runs: text streamed to stdout, pixels as a PNG grid, the student from its own m_0 or
the teacher's memory of the prompt, the teacher with and without its KV cache, and one-line errors."""
from __future__ import annotations

import codecs
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from jobs.cli import main as smt
from storage.checkpoints import load_student, load_teacher
from trainers.evaluate import generate, generate_teacher

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--steps", "2", "--eval-every", "1", "--eval-size", "8", "--batch-size", "4", "--quiet",
        "--teacher.d-model", "16", "--teacher.n-heads", "2", "--teacher.encoder-depth", "1",
        "--teacher.decoder-depth", "1", "--teacher.mem-tokens", "2"]
TEXT = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n" * 60


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny real runs: a byte-level text pretraining run, a digits one, and a BPTT run on retrieval."""
    root = tmp_path_factory.mktemp("gen")
    (root / "corpus.txt").write_text(TEXT)
    text = f"text:{root / 'corpus.txt'}|T=24,stride=12"
    assert smt(["pretrain", "--corpus", text, "--out", str(root / "text"), "--smt.mode", "stream", "--smt.Tc", "16",
                "--smt.Tf", "4", *TINY]) == 0
    assert smt(["pretrain", "--corpus", "digits", "--out", str(root / "digits"), *TINY]) == 0
    assert smt(["bptt", "--corpus", "retrieval:T=8,vocab=4", "--updater.arch", "gru", "--out", str(root / "bptt"),
                "--steps", "2", "--eval-every", "1", "--eval-size", "8", "--batch-size", "4", "--quiet",
                "--shape.d-model", "16", "--shape.n-heads", "2", "--shape.mem-tokens", "2"]) == 0
    return root


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = smt(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def as_text(ids: list[int]) -> str:
    """What the command prints for these bytes (whole-string decoding: the incremental decoder must agree)."""
    text = codecs.decode(bytes(ids), "utf-8", errors="replace")
    return "".join(c if c in "\n\t" or c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def test_text_student_continues_the_prompt_from_its_own_m0(runs, capsys):
    rc, out, err = run(["generate", "--run", str(runs / "text"), "--prompt", "The qu", "--tokens", "30",
                        "--temperature", "0.8", "--seed", "3"], capsys)
    assert rc == 0
    url = f"{runs / 'text'}/checkpoints/step-00000002/student"  # the pretraining run's newest checkpoint
    assert err.splitlines() == [
        (f"smt generate: smt student (mlp updater) of {url}: the prompt read by the student's own updater from its "
         "m_0; 30 bytes after a prompt of 6, temperature 0.8, top-k off, top-p 1, seed 3")]
    student = load_student(url)[0]
    p = torch.tensor([list(b"The qu")])
    want = generate(student, p, 30, 0.8, torch.Generator().manual_seed(3))[0].tolist()  # the report's sampler
    assert out == as_text(list(b"The qu") + want) + "\n"


def test_student_from_the_teachers_memory_and_the_teacher_itself(runs, capsys):
    rc, out, err = run(["generate", "--run", str(runs / "text"), "--prompt", "The qu", "--tokens", "25",
                        "--prompt-memory", "teacher", "--temperature", "0"], capsys)
    assert rc == 0
    ck = f"{runs / 'text'}/checkpoints/step-00000002"
    assert f"the prompt read by the teacher {ck}/teacher (its memory of the prompt); the student continues alone" in err
    student, teacher = load_student(f"{ck}/student")[0], load_teacher(f"{ck}/teacher")[0]
    p = torch.tensor([list(b"The qu")])
    with torch.no_grad():
        want = generate(student, p, 25, 0.0, memory=teacher.encode_all(p)[:, -1])[0].tolist()
    assert out == as_text(list(b"The qu") + want) + "\n"
    # the teacher reads out its own memory: KV cache by default, re-encoding with --no-cache; both = the reference
    ref = generate_teacher(teacher, p, 25, 0.0)[0].tolist()
    for flags, how in (([], "incremental decoding with a KV cache"),
                       (["--no-cache"], "re-encoding the whole sequence for every token, --no-cache")):
        rc, out, err = run(["generate", "--run", str(runs / "text"), "--prompt", "The qu", "--tokens", "25",
                            "--model", "teacher", "--temperature", "0", *flags], capsys)
        assert rc == 0 and out == as_text(list(b"The qu") + ref) + "\n" and f"({how})" in err


def test_top_k_one_is_greedy_and_samples_are_numbered(runs, capsys):
    base = ["generate", "--run", str(runs / "text"), "--prompt", "Pack", "--tokens", "20"]
    greedy = run([*base, "--temperature", "0"], capsys)[1]
    assert run([*base, "--top-k", "1", "--seed", "9"], capsys)[1] == greedy
    assert run([*base, "--top-p", "0.000001", "--seed", "4"], capsys)[1] == greedy
    rc, out, _ = run([*base, "--samples", "2", "--temperature", "0"], capsys)
    assert rc == 0 and out == f"--- sample 1 of 2 ---\n{greedy}\n--- sample 2 of 2 ---\n{greedy}"


def test_prompt_file_reads_bytes(runs, tmp_path, capsys):
    (tmp_path / "p.txt").write_bytes("Thé ".encode())
    rc, out, _ = run(["generate", "--run", str(runs / "text"), "--prompt-file", str(tmp_path / "p.txt"), "--tokens",
                      "10", "--temperature", "0"], capsys)
    assert rc == 0 and out.startswith("Thé ")
    assert out == run(["generate", "--run", str(runs / "text"), "--prompt", "Thé ", "--tokens", "10",
                       "--temperature", "0"], capsys)[1]


def test_digits_run_writes_a_png_grid_of_the_sampled_images(runs, tmp_path, capsys):
    png = tmp_path / "grid" / "digits.png"
    rc, out, err = run(["generate", "--run", str(runs / "digits"), "--prompt", "0 0 32", "--samples", "6", "--out",
                        str(png), "--seed", "1"], capsys)
    assert rc == 0 and out == f"{png}\n" and "61 pixels after a prompt of 3" in err
    img = Image.open(png)
    # 6 images -> 3 columns x 2 rows of 8x8 images drawn x8 (64 px), 8 px of white around each
    assert img.format == "PNG" and img.mode == "L" and img.size == (3 * 72 + 8, 2 * 72 + 8)
    student = load_student(f"{runs / 'digits'}/checkpoints/step-00000002/student")[0]
    p = torch.tensor([[0, 0, 32]] * 6)
    rows = torch.cat([p, generate(student, p, 61, 1.0, torch.Generator().manual_seed(1))], 1)
    a = torch.tensor(list(img.getdata()), dtype=torch.long).view(img.size[1], img.size[0])
    for i in range(6):
        r, c = divmod(i, 3)
        cell = a[8 + 72 * r:8 + 72 * r + 64:8, 8 + 72 * c:8 + 72 * c + 64:8]  # one screen pixel per image pixel
        assert torch.equal(cell.flatten(), 255 - rows[i]), i  # vocabulary 256: grey level v drawn as 255 - v
    assert int(a[:8].max()) == 255 and int(a[:8].min()) == 255  # the white border


@pytest.mark.parametrize("args, needle", [
    (["--run", "{root}/nowhere", "--prompt", "x"], "nowhere is not a run folder or checkpoint: expected run.json"),
    (["--run", "{root}", "--prompt", "x"], "is not a run folder or checkpoint"),  # a folder that is not a run
    (["--run", "{root}/digits", "--prompt", "0 300"], "prompt token 300 is outside the model's vocabulary 0..255"),
    (["--run", "{root}/digits", "--prompt", "0 ab"], "prompt item 'ab' is not an integer"),
    (["--run", "{root}/digits", "--prompt", "0 " * 65], "the prompt has 65 pixels but an image has 8x8=64"),
    (["--run", "{root}/bptt", "--prompt", "9"], "prompt token 9 is outside the model's vocabulary 0..5"),
    (["--run", "{root}/bptt", "--prompt", "1", "--model", "teacher"], "has no teacher to read out"),
    (["--run", "{root}/bptt", "--prompt", "1", "--prompt-memory", "teacher"], "was not trained on a teacher's memories"),
    (["--run", "{root}/text/teacher", "--prompt", "x"], "holds a teacher and no student, so no student readout"),
    (["--run", "{root}/text", "--prompt", "x", "--prompt-file", "f"], "both --prompt and --prompt-file given"),
    (["--run", "{root}/text"], "no prompt: pass --prompt TEXT"),
    (["--run", "{root}/text", "--prompt", "x", "--top-p", "1.5"], "top_p=1.5 must be in (0, 1]"),
    (["--run", "{root}/text", "--prompt", "x", "--prompt-memory", "nobody"], "--prompt-memory"),
])
def test_bad_input_is_one_line_naming_the_fix(runs, args, needle, capsys):
    rc, out, err = run(["generate", *[a.replace("{root}", str(runs)) for a in args]], capsys)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("smt generate: error: ") and needle in err, err


def test_bptt_student_generates_token_ids(runs, capsys):
    rc, out, err = run(["generate", "--run", str(runs / "bptt"), "--prompt", "1 2", "--tokens", "6",
                        "--temperature", "0"], capsys)
    student = load_student(str(runs / "bptt" / "student"))[0]
    want = generate(student, torch.tensor([[1, 2]]), 6, 0.0)[0].tolist()
    assert rc == 0 and out == "1 2 | " + " ".join(map(str, want)) + "\n" and "bptt student (gru updater)" in err


def test_a_train_run_reads_its_tokens_from_its_record(tmp_path, capsys):
    """`smt train` records the target set and the corpus it was labeled from in run.json: generate and export read
    the run's tokens from it, and --corpus overrides it; a run recorded without one (an older version) asks
    for --corpus in one line."""
    from tests.train_fixtures import CORPUS, make_target_set

    ts = make_target_set(str(tmp_path / "bucket"), shards=1)
    assert smt(["train", "--targets", ts["targets"], "--out", str(tmp_path / "gru"), "--steps", "2",
                "--stream.batch-size", "16", "--updater.arch", "gru", "--quiet"]) == 0
    rec = json.loads((tmp_path / "gru" / "run.json").read_text())
    assert rec["corpus"] == CORPUS and rec["targets"].rstrip("/").endswith(ts["targets"].rstrip("/").split("bucket/")[1])
    argv = ["generate", "--run", str(tmp_path / "gru"), "--prompt", "1 2 3", "--tokens", "5", "--temperature", "0"]
    student = load_student(f"{tmp_path / 'gru'}/checkpoints/step-00000002/student")[0]
    want = "1 2 3 | " + " ".join(map(str, generate(student, torch.tensor([[1, 2, 3]]), 5, 0.0)[0].tolist())) + "\n"
    for extra in ([], ["--corpus", CORPUS]):
        rc, out, err = run([*argv, *extra], capsys)
        assert rc == 0 and out == want and "smt student (gru updater)" in err
    assert smt(["export", "--run", str(tmp_path / "gru"), "--out", str(tmp_path / "exp")]) == 0
    (tmp_path / "gru" / "run.json").write_text(json.dumps({k: v for k, v in rec.items() if k != "corpus"}))
    rc, _, err = run(argv, capsys)
    assert rc == 2 and "no corpus is recorded with the models of" in err and "pass --corpus SPEC" in err


# ---- the slow tier: the demo's student and the text recipe's, in a terminal -------------------------------
def in_terminal(argv: list[str], cwd: Path) -> str:
    """Run `smt ...` in a fresh process whose stdout is a terminal (a pty); returns what the terminal showed."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", *argv], stdout=slave, stderr=subprocess.PIPE,
                            cwd=cwd, env=env)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    return shown.decode("utf-8", errors="replace")


@pytest.mark.slow
def test_demo_and_text_recipe_students_continue_a_prompt_in_a_terminal(tmp_path, ray_local, monkeypatch):
    from tests.jobs.test_cli import TINY_RECIPE

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMT_CACHE", str(tmp_path / "cache"))
    assert smt(["demo", "--out", "demo-out", "--quiet", "--corpus", "retrieval:T=8,vocab=4,n=32",
                "--pretrain.seconds", "1", *TINY_RECIPE]) == 0
    shown = in_terminal(["generate", "--run", "demo-out/student", "--prompt", "1 2 3", "--tokens", "5"], tmp_path)
    assert shown.startswith("1 2 3 |") and len(shown.split("|")[1].split()) == 5
    assert smt(["pipeline", "--recipe", "text-bytes-tiny", "--out", "text-out", "--quiet", *TINY_RECIPE,
                "--pretrain.seconds", "1", "--label.shard-sequences", "4096"]) == 0
    res = json.loads((tmp_path / "text-out" / "results.json").read_text())
    student = load_student(str(tmp_path / "text-out" / res["student_checkpoint"]))[0]
    shown = in_terminal(["generate", "--run", "text-out/student", "--prompt", "The ", "--tokens", "40",
                         "--temperature", "0"], tmp_path)
    want = generate(student, torch.tensor([list(b"The ")]), 40, 0.0)[0].tolist()
    assert shown.replace("\r\n", "\n") == as_text(list(b"The ") + want) + "\n"
