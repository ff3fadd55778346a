"""The label stage, serial path: labeled states equal the teacher recomputed directly; the job's bad
inputs fail early with one line and commit nothing; a killed driver resumes; a smoke test on S3."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobs.label import main
from pipeline.corpora import load_corpus
from pipeline.executors import SerialExecutor
from pipeline.label import LabelConfig, label
from storage.checkpoints import load_teacher
from storage.reader import TargetSet
from tests.label_data import (
    PREFIX_SPEC,
    STREAM_TC,
    VOCAB,
    corrupt_copy,
    expected_states,
    read_segments,
    shard_table,
)

pytest_plugins = ["tests.label_fixtures"]
pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("encoder", ["causal", "register"])
@pytest.mark.parametrize("mode", ["prefix", "stream"])
def test_states_equal_teacher(teachers, stream_spec, tmp_path, encoder, mode):
    path, fp = teachers[encoder]
    spec, Tc = (PREFIX_SPEC, None) if mode == "prefix" else (stream_spec, STREAM_TC)
    cfg = LabelConfig(teacher=path, corpus=spec, out=str(tmp_path), Tc=Tc, shard_sequences=4, batch_size=3)
    rep = label(cfg, SerialExecutor(), quiet=True)
    corpus = load_corpus(spec)
    assert rep.shards == -(-corpus.num_sequences // 4)
    states, tokens, y_got, seq, pos0 = read_segments(rep.target_url, fp)
    assert list(seq) == list(range(corpus.num_sequences))
    x, y = corpus.get(seq)
    want = expected_states(load_teacher(path)[0], x, Tc)
    np.testing.assert_allclose(states, want, rtol=2e-3, atol=2e-3)  # stored as float16
    p0 = Tc or 0
    assert np.array_equal(tokens, x[:, p0:]) and np.array_equal(y_got, y[:, p0:])
    assert set(pos0) == {p0}
    assert rep.records == corpus.num_sequences * (x.shape[1] - p0)


def _argv(teacher: str, spec: str, out: str, *extra: str) -> list[str]:
    return ["--teacher", teacher, "--corpus", spec, "--out", out, "--quiet", *extra]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD = {
    "empty corpus": ("empty", "empty"),
    "tokens >= vocab": ("big_tokens", "vocabulary"),
    "missing teacher": ("missing_teacher", "no checkpoint"),
    "corrupt teacher": ("corrupt_teacher", "weights.safetensors|fingerprint"),
    "windows shorter than Tc": ("short_windows", "Tc=8"),
    "unreachable bucket": ("unreachable", "unreachable.*127.0.0.1"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_exit_2(case, teachers, tmp_path, capsys, monkeypatch):
    kind, pattern = BAD[case]
    reg = teachers["register"][0]
    out = str(tmp_path / "out")
    extra: list[str] = []
    teacher, spec = reg, PREFIX_SPEC
    if kind == "empty":
        np.save(tmp_path / "e.npy", np.zeros(0, np.int32))
        spec = f"tokens:{tmp_path / 'e.npy'}|T=8"
    elif kind == "big_tokens":
        np.save(tmp_path / "b.npy", np.arange(40, dtype=np.int32) % (VOCAB + 4))
        spec = f"tokens:{tmp_path / 'b.npy'}|T=8"
    elif kind == "missing_teacher":
        teacher = str(tmp_path / "nope")
    elif kind == "corrupt_teacher":
        teacher = corrupt_copy(reg, str(tmp_path / "corrupt"))
    elif kind == "short_windows":
        np.save(tmp_path / "s.npy", np.arange(40, dtype=np.int32) % VOCAB)
        spec, extra = f"tokens:{tmp_path / 's.npy'}|T=8", ["--Tc", "8"]
    elif kind == "unreachable":
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # so the closed port is what fails
            monkeypatch.setenv(k, "testing")
        out, extra = "s3://nowhere", ["--endpoint-url", f"http://127.0.0.1:{_closed_port()}"]
    rc = main(_argv(teacher, spec, out, *extra))
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("smt label: error:"), err
    assert re.search(pattern, err), err  # names the thing
    if not out.startswith("s3://"):
        assert not list(Path(out).rglob("manifest")), "nothing may be committed"


def test_killed_driver_resumes(teachers, tmp_path, capsys):
    path, _ = teachers["register"]
    spec = "retrieval:T=12,vocab=8,n=12"
    argv = _argv(path, spec, str(tmp_path / "a"), "--shard-sequences", "3")  # 4 shards
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # `smt label` itself, its driver stopping dead (os._exit(3)) after 2 of the 4 shards (tests/faults.py)
    proc = subprocess.run([sys.executable, "-m", "tests.faults", "2", "exit3", "jobs.label", *argv], check=False,
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert not list((tmp_path / "a").rglob("manifest")), "a killed driver leaves nothing visible"
    assert len(list((tmp_path / "a").rglob("shard-*.zarr.zip"))) == 2

    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "(2 skipped" in cap.err, cap.err
    resumed = shard_table(cap.out.strip().splitlines()[-1])
    assert main(_argv(path, spec, str(tmp_path / "b"), "--shard-sequences", "3")) == 0
    clean = shard_table(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed == clean and len(clean) == 4

    assert main(argv) == 0  # a third run: everything skipped, no new generation
    assert "(4 skipped" in capsys.readouterr().err


def test_smoke_s3(teachers, s3_bucket, capsys):
    url, endpoint = s3_bucket
    path, fp = teachers["causal"]
    rc = main(_argv(path, PREFIX_SPEC, url, "--shard-sequences", "5", "--endpoint-url", endpoint,
                    "--format", "wds"))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    target = cap.out.strip().splitlines()[-1]
    assert target.startswith(f"{url}/targets/{fp}/")
    ts = TargetSet.open(target, fp, endpoint_url=endpoint)
    assert len(ts.shards) == 2 and ts.num_records == 10 * 12
    assert len(list(ts)) == 2


def test_a_fresh_target_set_is_labeled_without_a_receipt_lookup_per_shard(teachers, s3_bucket):
    """The driver lists the receipts once; a shard with none is computed without a GET for it. A rerun after
    a crash still finds and reuses the receipts written before it (the moto endpoint behind the logging proxy)."""
    from tests.s3_proxy import S3FaultProxy

    url, endpoint = s3_bucket
    path, _ = teachers["causal"]
    proxy = S3FaultProxy(endpoint)
    try:
        cfg = LabelConfig(teacher=path, corpus=PREFIX_SPEC, out=url, shard_sequences=3, endpoint_url=proxy.url)
        first = label(cfg, SerialExecutor(), quiet=True)
        assert first.shards == 4 and first.skipped == 0
        assert proxy.requests("GET", r"/receipts/") == []  # one LIST instead, no GET per shard
        assert len(proxy.requests("PUT", r"/receipts/round-000/shard-\d+\.json$")) == 4
        proxy.log.clear()
        again = label(cfg, SerialExecutor(), quiet=True)  # every receipt listed: each one is read and reused
        assert again.skipped == 4 and len(proxy.requests("GET", r"/receipts/round-000/shard-")) == 4
    finally:
        proxy.close()
