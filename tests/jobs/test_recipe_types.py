"""What comes from files is typed and never runs code: recipe values are checked against their fields' types
before anything runs (issue 23 item 11); the dependency floors exclude versions that execute code from data,
our code never asks for remote code, and a `tokens:` Zarr store naming an object codec is refused before a
chunk is decoded (item 12)."""
from __future__ import annotations

import json
import pickle
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from jobs.pipeline_job import main as pipeline_main
from jobs.recipes import load_recipe
from models.teacher import ConfigError
from pipeline.corpora import CorpusError, load_corpus

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str, name: str = "r.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_exponent_numbers_are_floats(tmp_path):
    """PyYAML (YAML 1.1) reads `3e-4` as the string '3e-4'; a float field takes it as the number it is."""
    path = _write(tmp_path, "base: text-bytes-tiny\nstudent:\n  optim: {lr: 3e-4}\n  stream:\n"
                            "    round_weights: {0: 1, dmt: 2}\npretrain:\n  curriculum: [8, 16]\n  seconds: 60\n")
    rc = load_recipe(path)
    assert rc.student.optim.lr == 3e-4 and type(rc.student.optim.lr) is float
    assert rc.student.stream.round_weights == {"0": 1.0, "dmt": 2.0}  # YAML's int key 0 is the round '0'
    assert rc.pretrain.curriculum == (8, 16) and rc.pretrain.seconds == 60.0 and type(rc.pretrain.seconds) is float


@pytest.mark.parametrize("text, line", [
    ("student:\n  steps: 1e3\n",
     "student.steps must be int, got '1e3' (str): write it as int, as --student.steps takes it"),
    ("student:\n  optim: {lr: fast}\n",
     "student.optim.lr must be float, got 'fast' (str): write it as float, as --student.optim.lr takes it"),
    ("student:\n  optim: {lr: .nan}\n", None),  # a float: accepted as such (YAML's own NaN), not coerced
    ("pretrain:\n  curriculum: [8, x]\n",
     ("pretrain.curriculum must be list of int, got [8, 'x'] (list): write it as list of int, as "
     "--pretrain.curriculum takes it")),
    ("dmt_online: 'yes'\n",
     "dmt_online must be bool, got 'yes' (str): write it as bool, as --dmt-online takes it"),
    ("bptt_max_seconds: [1]\n",
     ("bptt_max_seconds must be float or null, got [1] (list): write it as float or null, as "
     "--bptt-max-seconds takes it")),
    ("student: 5\n", "student must be a mapping of StudentTrainConfig fields, got 5 (int)"),
    ("student:\n  stream: {round_weights: {dmt: lots}}\n",
     ("student.stream.round_weights must be mapping of str to float or null, got {'dmt': 'lots'} (dict): write "
     "it as mapping of str to float or null, as --student.stream.round-weights takes it")),
])
def test_a_wrong_type_is_one_line_naming_file_key_type_and_value(tmp_path, text, line):
    path = _write(tmp_path, text)
    if line is None:
        assert load_recipe(path).student.optim.lr != load_recipe(path).student.optim.lr  # NaN
        return
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert str(e.value) == f"{path}: {line}"


def test_the_pipeline_refuses_a_bad_recipe_before_anything_runs(tmp_path, capsys):
    path = _write(tmp_path, json.dumps({"base": "retrieval-demo", "student": {"optim": {"lr": "3e-4 "}}}), "r.json")
    out = tmp_path / "out"
    assert pipeline_main(["--recipe", path, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"smt pipeline: error: {path}: student.optim.lr must be float, got '3e-4 ' (str): write it as "
                   "float, as --student.optim.lr takes it")
    assert not out.exists()  # nothing ran: no pretraining, no labels


# ---- item 12: dependency floors, remote code, object codecs ----------------------------------------------------

# the first versions without the problem: datasets 4.0 dropped dataset loading scripts (2.18-2.19 ran an `hf:`
# dataset's script by default); zarr 3.0.x with numcodecs <= 0.16.5 could reach pickle.loads from a v2 store;
# ray 2.11 has ActorUnavailableError, which pipeline/executors.py relies on
SAFE = {"datasets": "4.0", "zarr": "3.1", "numcodecs": "0.16.6", "ray": "2.11"}


def _floors() -> dict[str, str]:
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for d in deps:
        req = Requirement(d)
        lows = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
        out[req.name] = lows[0] if lows else None
    return out


@pytest.mark.parametrize("name", sorted(SAFE))
def test_dependency_floors_are_at_or_above_the_safe_versions(name):
    from packaging.version import Version

    floor = _floors().get(name)
    assert floor is not None, f"pyproject.toml declares no floor for {name}"
    assert Version(floor) >= Version(SAFE[name]), f"{name}>={floor} allows versions below {SAFE[name]}"
    assert Version(version(name)) >= Version(SAFE[name])  # and this environment has a safe one


def test_our_code_never_asks_for_remote_code():
    hits = [f"{p.relative_to(ROOT)}:{i}" for pkg in ("models", "storage", "pipeline", "trainers", "jobs")
            for p in sorted((ROOT / pkg).rglob("*.py"))
            for i, text in enumerate(p.read_text().splitlines(), 1) if "trust_remote_code" in text]
    assert hits == []


class _Payload:
    """Unpickling this creates the marker file: proof that a chunk was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("codec", [{"id": "pickle", "protocol": 4}, {"id": "json2", "encoding": "utf-8"}])
@pytest.mark.parametrize("where", ["array", "group"])
def test_a_tokens_store_with_an_object_codec_is_refused_unread(tmp_path, codec, where):
    import zarr

    root = tmp_path / "tokens.zarr"
    arr_dir = root / "ids" if where == "group" else root
    if where == "group":
        zarr.open_group(str(root), mode="w", zarr_format=2).create_array("ids", shape=(4, 25), chunks=(4, 25),
                                                                         dtype="int64", compressors=None)[:] = 1
    else:
        zarr.create_array(store=str(root), shape=(4, 25), chunks=(4, 25), dtype="int64", zarr_format=2,
                          compressors=None)[:] = 1
    meta = json.loads((arr_dir / ".zarray").read_text())
    meta.update(filters=[codec], dtype="|O")
    (arr_dir / ".zarray").write_text(json.dumps(meta))
    marker = tmp_path / "unpickled"
    (arr_dir / "0.0").write_bytes(pickle.dumps(_Payload(str(marker))))
    spec = f"tokens:{root}|T=8" + (",key=ids" if where == "group" else "")
    with pytest.raises(CorpusError) as e:
        load_corpus(spec)
    assert str(e.value) == (
        f"tokens: {str(root)!r} uses the codec {codec['id']!r}, which can run code when read: only adler32, astype, "
        "bitround, blosc, bytes, bz2, crc32, crc32c, delta, endian, fixedscaleoffset, fletcher32, gzip, "
        "jenkins_lookup3, lz4, lzma, packbits, sharding_indexed, shuffle, transpose, zlib, zstd are read; re-save "
        "the tokens as an integer array with one of them (or no compressor)")
    assert not marker.exists()


def test_a_tokens_store_with_safe_codecs_still_reads(tmp_path):
    import numpy as np
    import zarr

    for fmt in (2, 3):
        path = tmp_path / f"ok{fmt}.zarr"
        zarr.create_array(store=str(path), shape=(100,), chunks=(30,), dtype="uint16", zarr_format=fmt)[:] = \
            np.arange(100) % 5
        c = load_corpus(f"tokens:{path}|T=8")
        assert c.vocab_size == 5 and c.get(np.arange(1))[0].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
