"""Committed results name no folder of the machine they ran on: paths in benchmarks/results are relative
to the result folder (jobs/pipeline_report.py, the benchmark scripts), never /tmp, /work or a home directory."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
TEXT = {".json", ".jsonl", ".md", ".log", ".txt", ".csv", ".yaml", ".yml"}
# an absolute local path: at the start of a token (not inside a URL such as https://host/tmp/...)
MACHINE_PATH = re.compile(r"(?<![\w.\-/])(?:file://)?/(?:tmp|work|root|home|Users|private/var|var/folders|mnt)/")


def test_the_pattern_catches_machine_paths():
    for bad in ('"bucket": "/tmp/demo3/bucket"', "file:///work/main/x", "in `/home/me/run`", "/Users/me/x"):
        assert MACHINE_PATH.search(bad), bad
    for fine in ("bucket/targets/ab/cd", "https://download.pytorch.org/whl/cpu", "s3://b/tmp/x", "ratio 3/tmp"):
        assert not MACHINE_PATH.search(fine), fine


@pytest.mark.parametrize("path", sorted(p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*")
                                        if p.is_file() and p.suffix in TEXT))
def test_result_file_names_no_machine_path(path):
    text = (RESULTS / path).read_text(errors="replace")
    hits = sorted({text[max(0, m.start() - 20):m.end() + 30] for m in MACHINE_PATH.finditer(text)})
    assert not hits, f"{path} names machine paths (write them relative to the result folder): {hits[:3]}"
