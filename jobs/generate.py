"""`smt generate`: continue a prompt with a trained model: an SMT/DMT or BPTT student, a teacher, or an export.

RUN is what `smt eval --run` takes (any folder an smt command writes, or a checkpoint folder) or a folder
written by `smt export`. The student (the default model) reads the prompt with its own updater from its m_0,
or from the teacher's memory of the prompt with --prompt-memory teacher; --model teacher samples from the
teacher's readout of its own memory (KV-cache decoding; --no-cache re-encodes every token). Which model and
which memory is said on stderr. Text runs stream the continuation to stdout as it is produced; pixel runs
(digits, MNIST) write a PNG grid of --samples images, each the prompt's pixels and then the sampled ones.
Prompts: text for byte-level runs, else integers (pixel grey levels, token ids) separated by spaces or commas.
Examples:
  smt generate --run runs/text/student --prompt "The " --tokens 200 --temperature 0.8 --top-p 0.95
  smt generate --run runs/digits/student --prompt "0 0 0" --samples 16 --out digits.png
"""
from __future__ import annotations

import codecs
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from jobs.cli_common import FLAT, job_main
from models.sampling import SamplingConfig
from storage.settings import AtEndpoint

DEFAULT_TOKENS = {"byte": 200, "token": 32}


@dataclass(kw_only=True)
class GenerateJob(AtEndpoint):
    run: str
    """Run folder/URL, checkpoint folder, or exported student folder (smt export)."""
    prompt: str | None = None
    """The prompt: text (byte-level runs) or integers separated by spaces or commas (pixels, token ids)."""
    prompt_file: str | None = None
    """Read the prompt from this file instead (its bytes, for byte-level runs)."""
    tokens: int | None = None
    """Tokens to generate (default: 200 bytes, 32 ids, or the rest of the image)."""
    samples: int | None = None
    """Continuations of the prompt (default: 1; 16 images for pixel runs)."""
    model: Literal["student", "teacher"] = "student"
    """Which model of the run samples: the student RNN, or the teacher (reads out its own memory)."""
    prompt_memory: Literal["own", "teacher"] = "own"
    """Student only: read the prompt with its own updater from m_0, or start from the teacher's memory of it."""
    cache: bool = True
    """Teacher only: decode with a KV cache (--no-cache re-encodes the whole sequence for every token)."""
    teacher: str | None = None
    """Teacher checkpoint (default: the one found beside the run, as smt eval finds it)."""
    step: int | None = None
    """Runs with checkpoints: the student of this step (default: newest)."""
    corpus: str | None = None
    """Corpus spec saying how tokens read (default: the one the run records, or its models do)."""
    out: str = "generated.png"
    """Pixel runs: the PNG grid to write."""
    sampling: Annotated[SamplingConfig, FLAT] = field(default_factory=SamplingConfig)
    """Temperature, top-k, top-p, seed."""

    def execute(self) -> int:
        import torch

        with torch.no_grad():  # inference only (and nothing leaks into a caller's process)
            return self._generate()

    def _generate(self) -> int:
        import torch

        t_url, s_url, fmt = locate(self)
        prompt = self._prompt(fmt)
        n = self._tokens(fmt, len(prompt))
        k = self.samples or (16 if fmt.unit == "pixel" else 1)
        if k < 1:
            raise ValueError(f"--samples {k} must be >= 1")
        sampler, what = self._sampler(t_url, s_url, fmt)
        knobs = (f"temperature {self.sampling.temperature:g}, top-k {self.sampling.top_k or 'off'}, top-p "
                 f"{self.sampling.top_p:g}, seed {self.sampling.seed}")
        say(f"{what}; {n} {fmt.unit}s after a prompt of {len(prompt)}, {knobs}")
        gen = self.sampling.generator()
        if fmt.unit == "pixel":
            p = torch.tensor([prompt] * k, dtype=torch.long)
            rows = torch.stack(list(sampler(p, n, gen)), 1) if n else torch.zeros(k, 0, dtype=torch.long)
            path = write_grid(self.out, torch.cat([p, rows], 1).tolist(), fmt)
            print(path, flush=True)
            return 0
        for i in range(k):
            if k > 1:
                print(f"{'' if i == 0 else chr(10)}--- sample {i + 1} of {k} ---", flush=True)
            stream_text(fmt, prompt, sampler(torch.tensor([prompt], dtype=torch.long), n, gen))
        return 0

    def _prompt(self, fmt) -> list[int]:
        if self.prompt is not None and self.prompt_file is not None:
            raise ValueError("both --prompt and --prompt-file given: pass one of them")
        if self.prompt_file is not None:
            path = Path(self.prompt_file)
            if not path.is_file():
                raise FileNotFoundError(f"--prompt-file {self.prompt_file}: no such file: check the path")
            ids = fmt.check(list(path.read_bytes())) if fmt.unit == "byte" else fmt.encode(path.read_text())
            if not ids:
                raise ValueError(f"--prompt-file {self.prompt_file} is empty: give at least one token")
            return ids
        if not self.prompt:
            raise ValueError("no prompt: pass --prompt TEXT (or integers for pixel and token runs) or --prompt-file "
                             "FILE; every model reads at least one token first (the readout of m_0 is never trained)")
        return fmt.encode(self.prompt)

    def _tokens(self, fmt, p: int) -> int:
        if fmt.unit == "pixel":
            room = fmt.height * fmt.width - p
            if room < 0:
                raise ValueError(f"the prompt has {p} pixels but an image has {fmt.height}x{fmt.width}="
                                 f"{fmt.height * fmt.width}: give fewer")
            n = room if self.tokens is None else self.tokens
            if n > room:
                raise ValueError(f"--tokens {n}: an image has room for {room} pixels after the prompt: pass at most that")
            return n
        n = DEFAULT_TOKENS[fmt.unit] if self.tokens is None else self.tokens
        if n < 0:
            raise ValueError(f"--tokens {n} must be >= 0")
        return n

    def _sampler(self, t_url: str | None, s_url: str | None, fmt):
        """(sampler(prompt (B, P), n, generator) -> iterator of (B,) tokens, one line saying what samples)."""
        from models.sampling import student_tokens, teacher_tokens

        cfg = self.sampling
        if self.model == "teacher":
            if t_url is None:
                raise ValueError(f"{self.run} has no teacher to read out (a BPTT run or an exported student holds "
                                 "only a student): drop --model teacher, or pass --teacher URL")
            teacher, fp = load_model(t_url, "teacher", fmt, self.endpoint_url)
            cache = self.cache and teacher.encoder_kind.one_pass
            how = ("incremental decoding with a KV cache" if cache else
                   "re-encoding the whole sequence for every token" + ("" if self.cache else ", --no-cache")
                   + ("" if teacher.encoder_kind.one_pass else f": the {teacher.cfg.encoder} encoder has no cache"))
            what = f"teacher {fp[:12]} of {t_url}: the prompt and every token read by the teacher itself ({how})"
            return (lambda p, n, gen: teacher_tokens(teacher, p, n, cfg, cache, gen)), what
        if s_url is None:
            raise ValueError(f"{self.run} holds a teacher and no student, so no student readout to sample: pass "
                             "--model teacher")
        student, meta = load_model(s_url, "student", fmt, self.endpoint_url)
        who = f"{meta.get('trained_by') or 'exported'} student ({student.updater_cfg.arch} updater) of {s_url}"
        if self.prompt_memory == "own":
            def memory(p):
                return student.rollout(p)[:, -1]
            what = f"{who}: the prompt read by the student's own updater from its m_0"
        else:
            teacher = prompt_teacher(t_url, s_url, meta, fmt, self.run, self.endpoint_url)
            what = (f"{who}: the prompt read by the teacher {t_url} (its memory of the prompt); the student "
                    "continues alone from there")

            def memory(p):
                return teacher.memory_after(p)
        return (lambda p, n, gen: student_tokens(student, memory(p), n, cfg, gen)), what


def say(line: str) -> None:
    print(f"smt generate: {line}", file=sys.stderr, flush=True)


def locate(job: GenerateJob):
    """(teacher URL or None, student URL or None, TokenFormat) of the job's --run."""
    from jobs.eval import resolve_run
    from pipeline.corpora import token_format
    from storage.export import TokenFormat, is_exported, read_export

    ep = job.endpoint_url
    if is_exported(job.run, ep):
        if job.step is not None:
            raise ValueError(f"{job.run} is an exported student (one model, no checkpoints): drop --step")
        fmt = TokenFormat(**read_export(job.run, ep)["tokens"]) if job.corpus is None else None
        t_url, s_url = job.teacher, job.run.rstrip("/")
    else:
        t_url, s_url = resolve_run(job.run, job.step, job.teacher, ep)
        fmt = None
    if fmt is None:
        spec = job.corpus or recorded_corpus(job.run, [u for u in (s_url, t_url) if u], ep)
        if spec is None:
            raise ValueError(f"no corpus is recorded with the models of {job.run}, so how its tokens read is "
                             "unknown: pass --corpus SPEC (the corpus it was trained on)")
        vocab = model_vocab(s_url if job.model == "student" and s_url else t_url or s_url, ep)
        fmt = token_format(spec, vocab)
    return t_url, s_url, fmt


# ---- checkpoint reads: every import of the checkpoint module in this job is here -----------------------
def recorded_corpus(run: str, urls: list[str], ep: str | None = None) -> str | None:
    """The corpus spec the run folder's record names (every smt command records it; a `smt train` run the
    corpus its target set was labeled from), else the one recorded with the first of these checkpoints that
    has one."""
    from storage.checkpoints import read_config
    from storage.layout import run_corpus

    spec = run_corpus(run, ep)
    if spec:
        return spec
    for u in urls:
        spec = read_config(u, endpoint_url=ep).get("meta", {}).get("corpus")
        if spec:
            return spec
    return None


def model_vocab(url: str, ep: str | None = None) -> int:
    from storage.checkpoints import read_config

    m = read_config(url, endpoint_url=ep)["model"]
    return int(m["teacher"]["vocab_size"])


def load_model(url: str, kind: str, fmt, ep: str | None = None):
    """(teacher, fingerprint) or (student, its config's meta + teacher_fingerprint), checked against `fmt`."""
    from storage.checkpoints import load_student, load_teacher

    if kind == "teacher":
        model, fp, _ = load_teacher(url, endpoint_url=ep)
        vocab = model.cfg.vocab_size
        out = (model, fp)
    else:
        model, tfp, cfg = load_student(url, endpoint_url=ep)
        vocab = model.teacher_cfg.vocab_size
        out = (model, {**cfg.get("meta", {}), "teacher_fingerprint": tfp})
    if vocab != fmt.vocab_size:
        raise ValueError(f"{url} has vocabulary {vocab} but its corpus {fmt.corpus} reads {fmt.vocab_size} ids: "
                         "pass the --corpus it was trained on")
    return out


def prompt_teacher(t_url: str | None, s_url: str, meta: dict, fmt, run: str, ep: str | None = None):
    """The teacher whose memory of the prompt the student starts from: the one it was trained against."""
    if meta.get("teacher_fingerprint") is None:
        raise ValueError(f"the student {s_url} was not trained on a teacher's memories (a BPTT student), so a "
                         "teacher's memory means nothing to it: drop --prompt-memory teacher")
    if t_url is None:
        raise ValueError(f"no teacher of the student found beside {run}: pass --teacher URL (the teacher it was "
                         "trained against) or drop --prompt-memory teacher")
    teacher, fp = load_model(t_url, "teacher", fmt, ep)
    if fp != meta["teacher_fingerprint"]:
        raise ValueError(f"the student {s_url} was trained against teacher {meta['teacher_fingerprint'][:12]}, not "
                         f"{fp[:12]} ({t_url}): pass the matching --teacher")
    return teacher


# ---- output ------------------------------------------------------------------------------------------
def stream_text(fmt, prompt: list[int], tokens) -> None:
    """Print the prompt, then each token as it is produced (flushed), then a newline. Bytes go through an
    incremental UTF-8 decoder (a character split over bytes prints when complete); control bytes other
    than newline and tab print escaped."""
    out = sys.stdout
    if fmt.unit == "byte":
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out.write(_printable(dec.decode(bytes(prompt))))
        out.flush()
        for tok in tokens:
            out.write(_printable(dec.decode(bytes([int(tok[0])]))))
            out.flush()
        out.write(_printable(dec.decode(b"", final=True)) + "\n")
    else:
        out.write(" ".join(map(str, prompt)) + " |")
        out.flush()
        for tok in tokens:
            out.write(f" {int(tok[0])}")
            out.flush()
        out.write("\n")
    out.flush()


def _printable(text: str) -> str:
    return "".join(c if c in "\n\t" or c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def write_grid(path: str, images: list[list[int]], fmt) -> str:
    """A PNG grid of images (raster-order grey levels 0..vocab-1, ink dark on white): ceil(sqrt(n)) columns,
    each pixel drawn as a square of `grid_scale(fmt)` pixels, one source pixel of white between images."""
    import numpy as np
    from PIL import Image

    H, W, s = fmt.height, fmt.width, grid_scale(fmt)
    n = len(images)
    cols = grid_columns(n)
    rows = -(-n // cols)
    canvas = np.full((rows * (H * s + s) + s, cols * (W * s + s) + s), 255, dtype=np.uint8)
    top = max(1, fmt.vocab_size - 1)
    for i, img in enumerate(images):
        a = np.asarray(img, dtype=np.float64).reshape(H, W)
        grey = np.rint(255 - a * 255 / top).astype(np.uint8).repeat(s, 0).repeat(s, 1)
        r, c = divmod(i, cols)
        canvas[s + r * (H * s + s):s + r * (H * s + s) + H * s, s + c * (W * s + s):s + c * (W * s + s) + W * s] = grey
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas, "L").save(path, format="PNG")
    return str(path)


def grid_scale(fmt) -> int:
    """Screen pixels per image pixel: images at least 64 pixels wide (8x8 digits x8, 28x28 MNIST x2)."""
    return max(1, 64 // max(fmt.height, fmt.width))


def grid_columns(n: int) -> int:
    """ceil(sqrt(n)): a square-ish grid."""
    import math

    c = math.isqrt(max(1, n))
    return c if c * c >= n else c + 1


main = job_main("generate", GenerateJob, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
