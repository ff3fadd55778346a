"""What each kind of run folder holds, defined once: its run record, and where its student and teacher are.

Every folder an smt command writes holds a run record, `<folder>/run.json` (`RECORD`), whose `kind` says
what the folder is; `smt eval` / `generate` / `export` read it instead of guessing from the files:

    kind         written by                          student                                teacher
    pretrain     smt pretrain --out OUT              its newest checkpoint (or --step N)    the checkpoint's teacher/
    train        smt train --out OUT (smt dmt too)   its newest checkpoint (or --step N)    found beside the run
    dmt          smt dmt --report FOLDER             the run its record names (`run`)       as that run's
    bptt         smt bptt --out OUT                  OUT/student                            none
    bptt-sweep   smt bptt --out OUT --lrs ...        OUT/student (the chosen lr)            none
    dmt-online   smt dmt-online --out OUT            OUT/student                            OUT/teacher when present
    pipeline     smt pipeline --out OUT              OUT/student (a train run)              OUT/pretrain/teacher

A bptt-sweep's `lr-<lr>/` folders are bptt runs of their own. A teacher "found beside" a student is the first
candidate whose fingerprint is the one the student was trained against. Runs written before the record had a
`kind` named it `stage` (pretrain, bptt, `dmt` for online DMT; a train run's record was its `config.json`):
`read_record` still reads those. Folders written before any record (an old pipeline OUT, BPTT sweep or DMT
report, a run with checkpoints/ but no record) read as the kind their files show, and a folder holding
student/ without a record (a pretraining checkpoint `checkpoints/step-N`) as `models`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from storage.bucket import Bucket
from storage.errors import ObjectNotFound, StorageError

RECORD = "run.json"
_LEGACY = {"pretrain": "pretrain", "train": "train", "bptt": "bptt", "dmt": "dmt-online"}  # `stage` -> kind


@dataclass(frozen=True)
class Layout:
    """Where a kind of run folder keeps its models (paths relative to the folder; ".." goes up one)."""

    checkpoints: str | None = None
    """The run with checkpoints/ whose newest (or --step) checkpoint holds the student ("" = the folder itself)."""
    student: str | None = None
    """The folder of the final student (runs without checkpoints: --step does not apply)."""
    teachers: tuple[str, ...] = ()
    """Where a teacher may sit, tried in order (after a checkpoint's own teacher/)."""
    follows: str | None = None
    """The record field naming another run folder whose models these are (smt dmt's report)."""


KINDS: dict[str, Layout] = {
    "pretrain": Layout(checkpoints="", teachers=("teacher",)),
    "train": Layout(checkpoints="", teachers=("teacher", "../teacher", "../pretrain/teacher")),
    "dmt": Layout(follows="run"),
    "bptt": Layout(student="student"),
    "bptt-sweep": Layout(student="student"),
    "dmt-online": Layout(student="student", teachers=("teacher",)),
    "pipeline": Layout(checkpoints="student", teachers=("pretrain/teacher",)),
    "models": Layout(student="student", teachers=("teacher",)),
}
"""`models` is never written: it is what a folder without a record that holds student/ (and teacher/) reads as,
e.g. a pretraining checkpoint folder `checkpoints/step-N` or an output written before run records."""


def record(kind: str, **fields) -> dict:
    """A run record of `kind` (ValueError for a kind this module does not define)."""
    if kind not in KINDS:
        raise ValueError(f"run kind {kind!r} is not one of {', '.join(KINDS)} (storage/layout.py)")
    return {"kind": kind, **fields}


def read_record(bucket: Bucket) -> dict | None:
    """The run record of the folder `bucket` is rooted at (with its `kind`), None when it has none."""
    for name in (RECORD, "config.json"):  # config.json: a train run's record before run.json
        try:
            rec = json.loads(bucket.read_bytes(name))
        except ObjectNotFound:
            continue
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StorageError(f"{bucket.url(name)} is not valid JSON ({e}): restore it or rerun the command "
                               "that wrote the folder") from None
        if not isinstance(rec, dict):
            continue
        if name == RECORD and "kind" in rec:
            return rec
        if rec.get("stage") in _LEGACY and (name == RECORD or rec["stage"] == "train"):
            return {**rec, "kind": _LEGACY[rec["stage"]]}
    return _older_record(bucket)


def _older_record(bucket: Bucket) -> dict | None:
    """The record a folder written before run records (or one no command records, a checkpoint folder holding
    student/) stands for, told by its files; None when they say nothing."""
    if bucket.exists("checkpoints/latest.json"):
        return {"kind": "train"}
    if bucket.exists("student/checkpoints/latest.json"):
        return {"kind": "pipeline"}
    if bucket.exists("selection.json") and bucket.exists("student/config.json"):
        return {"kind": "bptt-sweep"}
    if bucket.exists("dmt_rounds.json"):
        try:
            rounds = [x for x in json.loads(bucket.read_bytes("dmt_rounds.json")) if isinstance(x, dict)]
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
            rounds = []
        students = [x["student"] for x in rounds if isinstance(x.get("student"), str)]
        # a round's student is <run>/checkpoints/step-N/student or <run>/policy/step-N/student
        return {"kind": "dmt", "run": students[-1].rsplit("/", 3)[0] if students else None}
    if bucket.exists("student/config.json"):
        return {"kind": "models"}
    return None


def layout(rec: dict, where: str) -> Layout:
    """The layout of a record's kind; ValueError naming `where` for a kind this version does not know."""
    lay = KINDS.get(rec.get("kind"))
    if lay is None:
        raise ValueError(f"{where}/{RECORD} names kind {rec.get('kind')!r}, which this version does not know "
                         f"({', '.join(KINDS)}): read it with the version that wrote it")
    return lay


def join(url: str, rel: str) -> str:
    """`url`/`rel` with leading ".." parts taking one folder off `url` each (works on URLs, where the file
    system does not normalise them); "" is `url` itself."""
    url = url.rstrip("/")
    for part in rel.split("/"):
        if part == "..":
            url = url.rsplit("/", 1)[0] if "/" in url.split("://", 1)[-1] else "."
        elif part not in ("", "."):
            url = f"{url}/{part}"
    return url


def run_corpus(url: str, endpoint_url: str | None = None) -> str | None:
    """The corpus spec the record of the run folder at `url` names (a dmt report's: its run's), None when the
    folder has no record or its record names none (a checkpoint or an exported folder: their own configs)."""
    rec = read_record(Bucket.from_url(url, endpoint_url=endpoint_url))
    if rec is None:
        return None
    follows = KINDS.get(rec.get("kind"), Layout()).follows
    if follows and rec.get(follows) and rec[follows] != url:
        return run_corpus(rec[follows], endpoint_url)
    return rec.get("corpus")
