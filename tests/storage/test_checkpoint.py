"""Checkpoints: bit-exact round trips, fingerprints, and clear errors for bad checkpoints."""
import pytest
import torch

from models.student_rnn import Student
from models.teacher import Teacher, TeacherConfig
from models.updaters import UpdaterConfig
from storage.checkpoints import (
    CheckpointError,
    fingerprint,
    load_student,
    load_teacher,
    save_checkpoint,
    save_student,
    save_teacher,
)

CFG = {"vocab_size": 7, "d_model": 16, "n_heads": 2, "encoder_depth": 1, "decoder_depth": 1, "mem_tokens": 2}


def test_teacher_round_trip_is_bit_exact_and_fingerprint_stable(tmp_path):
    t = Teacher(TeacherConfig(**CFG))
    fp = save_teacher(str(tmp_path / "t"), t)
    t2, fp2, cfg = load_teacher(str(tmp_path / "t"))
    assert fp2 == fp and cfg["model"]["teacher"]["d_model"] == 16
    for (k, a), (k2, b) in zip(t.state_dict().items(), t2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert save_teacher(str(tmp_path / "again"), t2) == fp  # same weights + config -> same fingerprint


def test_fingerprint_changes_when_any_weight_or_config_changes():
    t = Teacher(TeacherConfig(**CFG))
    sd = t.state_dict()
    base = fingerprint("teacher", {"teacher": t.cfg.to_dict()}, sd)
    for name in list(sd)[:: max(1, len(sd) // 6)]:
        changed = dict(sd)
        w = sd[name].clone()
        w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(float("inf")))  # one ulp
        changed[name] = w
        assert fingerprint("teacher", {"teacher": t.cfg.to_dict()}, changed) != base, name
    assert fingerprint("teacher", {"teacher": {**t.cfg.to_dict(), "window": 3}}, sd) != base


def test_student_round_trip_records_teacher_fingerprint(tmp_path):
    t = Teacher(TeacherConfig(**CFG))
    s = Student.from_teacher(t, UpdaterConfig(arch="gru", vocab_size=7, mem_tokens=2, d_model=16))
    save_student(str(tmp_path / "s"), s, "abc123", {"trained_by": "smt"})
    s2, tfp, cfg = load_student(str(tmp_path / "s"))
    assert tfp == "abc123" and cfg["meta"]["trained_by"] == "smt" and s2.updater_cfg.arch == "gru"
    assert all(torch.equal(a, b) for a, b in zip(s.state_dict().values(), s2.state_dict().values()))


def test_memory_url_round_trip():
    t = Teacher(TeacherConfig(**CFG))
    fp = save_teacher("memory://ckpt-test/t", t)
    assert load_teacher("memory://ckpt-test/t")[1] == fp


def test_bad_checkpoints_fail_with_one_line_naming_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*nowhere.*smt pretrain"):
        load_teacher(str(tmp_path / "nowhere"))
    t = Teacher(TeacherConfig(**CFG))
    save_teacher(str(tmp_path / "t"), t)
    w = tmp_path / "t" / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-3] ^= 0xFF  # flip a byte inside the tensor data
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the recorded fingerprint"):
        load_teacher(str(tmp_path / "t"))
    w.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_teacher(str(tmp_path / "t"))
    s = Student.from_teacher(t, UpdaterConfig(vocab_size=7, mem_tokens=2, d_model=16))
    save_student(str(tmp_path / "s"), s, None)
    with pytest.raises(CheckpointError, match="is a 'student' checkpoint, expected teacher"):
        load_teacher(str(tmp_path / "s"))
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_teacher(str(tmp_path / "j"))


def test_checkpoint_holds_no_pickle(tmp_path):
    save_checkpoint(str(tmp_path / "c"), "teacher", {"teacher": {}}, {"w": torch.ones(2)})
    raw = (tmp_path / "c" / "weights.safetensors").read_bytes()
    assert b"\x80\x04" not in raw[:16] and raw[8:9] == b"{"  # safetensors: u64 header length, then JSON
