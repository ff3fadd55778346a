"""What `smt label` reuses and what it labels from: a receipt counts only for the stage's whole identity
(Tc, S, pos0, teacher, corpus id, format, dtype), so a rerun with other parameters after a crash redoes
the work instead of committing old shards under new parameters; and every worker checks that the corpus
it reads is the one the driver digested (and the driver checks again before its commit)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.corpora import load_corpus
from pipeline.executors import SerialExecutor
from pipeline.label import LabelConfig, LabelError, label, prepare, receipt_path
from storage.checkpoints import load_teacher
from storage.manifest import newest_generation, read_generation
from tests.faults import WrapStage
from tests.label_data import STREAM_T, VOCAB, expected_states, read_segments, shard_table

pytest_plugins = ["tests.label_fixtures"]
pytestmark = pytest.mark.timeout(300)


def _cfg(teacher: str, spec: str, out, **kw) -> LabelConfig:
    return LabelConfig(teacher=teacher, corpus=spec, out=str(out), shard_sequences=4, batch_size=4, device="cpu", **kw)


def _crash_before_commit(cfg: LabelConfig):
    """Every shard and receipt written by the real stage, then the driver dies before its commit."""
    plan = prepare(cfg)
    results = list(SerialExecutor().map(plan.stage, plan.items, quiet=True))
    assert len(results) == len(plan.items) and newest_generation(plan.target) == 0
    return plan


def test_rerun_with_another_Tc_after_a_crash_relabels_instead_of_committing_old_shards(teachers, stream_spec,
                                                                                      tmp_path):
    path, fp = teachers["register"]  # no window: any Tc is valid
    _crash_before_commit(_cfg(path, stream_spec, tmp_path, Tc=4))
    rep = label(_cfg(path, stream_spec, tmp_path, Tc=6), SerialExecutor(), quiet=True)
    assert rep.committed and rep.generation == 1 and rep.skipped == 0
    gen = read_generation(prepare(_cfg(path, stream_spec, tmp_path, Tc=6)).target, 1)
    assert gen.corpus_params["label"] == {"Tc": 6, "pos0": 6, "round": 0}
    assert {e.s for e in gen.shards} == {STREAM_T - 6}  # the manifest's Tc is the shards' Tc
    states, tokens, _, seq, pos0 = read_segments(rep.target_url, fp)
    x, _ = load_corpus(stream_spec).get(seq)
    assert set(pos0) == {6} and np.array_equal(tokens, x[:, 6:])
    np.testing.assert_allclose(states, expected_states(load_teacher(path)[0], x, 6), rtol=2e-3, atol=2e-3)
    again = label(_cfg(path, stream_spec, tmp_path, Tc=6), SerialExecutor(), quiet=True)  # receipts of Tc=6 now
    assert (again.skipped, again.committed, again.generation) == (rep.shards, False, 1)
    with pytest.raises(LabelError, match=r"already holds this corpus labeled as zarr/float16 \(Tc=6\)"):
        prepare(_cfg(path, stream_spec, tmp_path, Tc=4))


@pytest.mark.parametrize("field", ["Tc", "S", "pos0", "teacher", "corpus_id", "format", "dtype"])
def test_a_receipt_of_another_identity_is_redone(teachers, stream_spec, tmp_path, field):
    path, _ = teachers["register"]
    cfg = _cfg(path, stream_spec, tmp_path, Tc=6)
    plan = _crash_before_commit(cfg)
    receipt = json.loads(plan.target.read_bytes(receipt_path(0)))
    identity = receipt["identity"]
    assert identity == {"Tc": 6, "S": STREAM_T - 6, "pos0": 6, "teacher": plan.fingerprint,
                        "corpus_id": plan.corpus.corpus_id, "format": "zarr", "dtype": "float16", "round": 0}
    identity[field] = {"Tc": 4, "S": STREAM_T - 4, "pos0": 4, "teacher": "another-teacher",
                       "corpus_id": "another-corpus", "format": "wds", "dtype": "float32"}[field]
    plan.target.write_bytes(receipt_path(0), json.dumps(receipt, sort_keys=True).encode())
    rep = label(cfg, SerialExecutor(), quiet=True)
    assert rep.committed and rep.skipped == len(plan.items) - 1  # only shard 0 was redone
    clean = label(_cfg(path, stream_spec, tmp_path / "clean", Tc=6), SerialExecutor(), quiet=True)
    assert shard_table(rep.target_url) == shard_table(clean.target_url)


def _ids(path, seed: int) -> None:
    np.save(path, np.random.default_rng(seed).integers(0, VOCAB, size=200).astype(np.int32))


def _digested_stream(tmp_path):
    """A token file, its stream spec, and the corpus loaded (digested) now, before the test changes the file."""
    ids = tmp_path / "ids.npy"
    _ids(ids, 0)
    spec = f"tokens:{ids}|T={STREAM_T},stride=16,vocab={VOCAB}"
    before = load_corpus(spec)
    assert before.corpus_id
    return ids, spec, before


def test_worker_refuses_a_corpus_changed_after_the_driver_digested_it(teachers, tmp_path):
    path, _ = teachers["causal"]
    ids, spec, before = _digested_stream(tmp_path)

    def change_then_run(stage):  # the driver has digested the corpus; the workers start after the change
        _ids(ids, 1)
        return stage

    cfg = _cfg(path, spec, tmp_path / "out")
    with pytest.raises(LabelError) as err:
        label(cfg, WrapStage(SerialExecutor(), change_then_run), quiet=True)
    after = load_corpus(spec).corpus_id
    assert after != before.corpus_id
    assert str(err.value) == (f"corpus {before.spec!r} is not the data the driver labels: its corpus id is {after} "
                              f"here, {before.corpus_id} when labeling started (the data changed under it); keep "
                              "the data fixed while labeling, then rerun")
    assert not list((tmp_path / "out").glob("targets/*/*/manifest/gen-*.json"))
    assert not list((tmp_path / "out").glob("targets/*/*/receipts/round-000/*.json"))


def test_driver_refuses_to_commit_a_corpus_that_changed_during_labeling(teachers, tmp_path):
    """A change after the workers' check (between two items) still never reaches a commit."""
    path, _ = teachers["causal"]
    ids, spec, before = _digested_stream(tmp_path)

    class ChangesAfterFirstItem(SerialExecutor):
        def map(self, stage, items, **kw):
            for i, res in enumerate(super().map(stage, items, **kw)):
                if i == 0:
                    _ids(ids, 1)
                yield res

    with pytest.raises(LabelError) as err:
        label(_cfg(path, spec, tmp_path / "out"), ChangesAfterFirstItem(), quiet=True)
    after = load_corpus(spec).corpus_id
    assert str(err.value) == (f"corpus {before.spec!r} changed while it was labeled: its corpus id is {after} now, "
                              f"{before.corpus_id} when labeling started; nothing was committed: keep the data "
                              "fixed while labeling, then rerun")
    assert not list((tmp_path / "out").glob("targets/*/*/manifest/gen-*.json"))
