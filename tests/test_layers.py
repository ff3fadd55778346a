"""The packages form layers, models -> storage -> pipeline -> trainers -> jobs: a module may import its own
package or one below it, never one above (that would make a cycle: every upper package imports the lower
ones). Parsed with `ast`, so lazy imports inside functions count too. Library code never imports tests/,
benchmarks/ or scripts/, and below jobs/ no two modules share a name (jobs/ are entry points named after the
stage they run). Library code holds no test hooks either."""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ("models", "storage", "pipeline", "trainers", "jobs")
OUTSIDE = ("tests", "benchmarks", "scripts")  # never imported by library code


def imported_packages(source: str, package: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in `source`, a module of `package` (relative ones resolve to
    `package` itself)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, package if node.level else (node.module or "").split(".")[0]))
    return found


def violations(source: str, package: str, where: str) -> list[str]:
    """One line per import in `source` that goes up the layer order or reaches outside the library."""
    rank = ORDER.index(package)
    bad = []
    for line, top in imported_packages(source, package):
        if top in ORDER and ORDER.index(top) > rank:
            bad.append(f"{where}:{line} imports {top}/, which is above {package}/ (order: {' -> '.join(ORDER)})")
        elif top in OUTSIDE:
            bad.append(f"{where}:{line} imports {top}/: library code must not depend on {top}/")
    return bad


def test_no_import_goes_up_the_layers():
    bad = []
    for package in ORDER:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            bad += violations(path.read_text(), package, rel)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source, package, n_bad", [
    ("from trainers.common import OptimConfig\n", "pipeline", 1),  # module level, one layer up
    ("def f():\n    import jobs.cli\n", "models", 1),  # a lazy import counts too
    ("from tests.storage_data import race_commits\n", "storage", 1),
    ("from models.device import autocast\nfrom storage.bucket import Bucket\n", "pipeline", 0),  # downward
    ("from . import tasks\nfrom pipeline.stage import Stage\n", "pipeline", 0),  # its own package
    ("import torch, numpy as np\n", "models", 0),  # third-party
])
def test_the_checker_flags_upward_imports(source, package, n_bad):
    """The guard above can fail: an upward or outside import is reported, with the file, line and the order."""
    bad = violations(source, package, "x.py")
    assert len(bad) == n_bad
    assert all("x.py:" in b for b in bad)


def test_library_module_names_are_unique():
    names = Counter(p.stem for pkg in ORDER[:-1] for p in (ROOT / pkg).rglob("*.py") if p.stem != "__init__")
    assert not [n for n, c in names.items() if c > 1], names


def test_library_code_holds_no_test_hooks():
    """Faults are injected from tests (tests/faults.py wraps stages and executors): no library module ends
    its own process or reads a test-only switch."""
    bad = []
    for package in ORDER:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                where = f"{path.relative_to(ROOT).as_posix()}:{getattr(node, 'lineno', '?')}"
                if isinstance(node, ast.Attribute) and node.attr == "_exit":
                    bad.append(f"{where} calls os._exit")
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "_TEST_" in node.value:
                    bad.append(f"{where} names a test switch {node.value!r}")
                elif isinstance(node, ast.Name) and node.id == "FaultPlan":
                    bad.append(f"{where} uses FaultPlan")
    assert not bad, "\n".join(bad)
