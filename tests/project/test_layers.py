"""The packages form layers, models -> storage -> pipeline -> trainers -> jobs: a module may import its own
package or one below it, never one above (that would make a cycle: every upper package imports the lower
ones). Parsed with `ast`, so lazy imports inside functions count too. Library code never imports tests/,
benchmarks/ or scripts/, and below jobs/ no two modules share a name (jobs/ are entry points named after the
stage they run), and no module anywhere in the library is named after a top-level package of the project or a
standard-library module (`import inspect` or `import pipeline` would find it first when its folder is on the
path, e.g. under `python jobs/x.py`, and a reader cannot tell which is meant). Library code holds no test hooks either, and no modules import each other in a loop at module
level (inside a package too: e.g. pipeline.corpora's registry imports the synthetic tasks, never back).
Every trainer steps on the one loop of trainers/loop.py (no other loop calls backward or takes an optimiser
step), and only storage/ and pipeline/ reach files through fsspec (models/, trainers/ and jobs/ go through
storage/'s Bucket)."""
from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


def shadowing_names(paths: list[Path], packages: set[str]) -> list[str]:
    """One line per module or package folder in `paths` whose name is a top-level package of the project or a
    standard-library module."""
    bad = []
    for path in paths:
        name = path.parent.name if path.stem == "__init__" else path.stem
        clash = ("a package of this project" if name in packages else
                 "a standard-library module" if name in sys.stdlib_module_names else None)
        if clash:
            bad.append(f"{path.relative_to(ROOT).as_posix()}: {name!r} is also {clash}")
    return sorted(set(bad))


def project_packages() -> set[str]:
    return {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()} | set(ORDER) | set(OUTSIDE)


def test_no_library_module_shadows_a_package_or_the_standard_library():
    """E.g. jobs/pipeline.py beside the pipeline/ package, jobs/inspect.py shadowing `inspect`."""
    paths = [p for pkg in ORDER for p in sorted((ROOT / pkg).rglob("*.py")) if p.parent != ROOT / pkg or p.stem != "__init__"]
    bad = shadowing_names(paths, project_packages())
    assert not bad, "\n".join(bad)


def test_the_shadowing_checker_flags_both_kinds():
    """The guard above can fail: a module named after a project package or a stdlib module is reported."""
    fake = [ROOT / "jobs" / "pipeline.py", ROOT / "jobs" / "inspect.py", ROOT / "jobs" / "pipeline_job.py",
            ROOT / "trainers" / "dmt" / "__init__.py", ROOT / "storage" / "json" / "__init__.py"]
    assert shadowing_names(fake, {"pipeline", "jobs"}) == [
        "jobs/inspect.py: 'inspect' is also a standard-library module",
        "jobs/pipeline.py: 'pipeline' is also a package of this project",
        "storage/json/__init__.py: 'json' is also a standard-library module"]


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


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The library modules `name` imports when it is first imported: statements outside any function or
    class body (under `if`/`try` too). `from a.b import c` counts as a.b.c when c is a module, else a.b.
    Importing a submodule also runs its package's __init__, but Python loads that first; only named
    modules count, so a package __init__ re-exporting its submodules is not a loop."""
    base = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    todo = list(ast.parse(source).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                up = base.split(".")[: len(base.split(".")) - (node.level - 1)]
                target = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:
                if f"{target}.{a.name}" in known:
                    found.add(f"{target}.{a.name}")
                elif target in known:
                    found.add(target)
        else:
            todo += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
    return found


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One loop of the graph as [a, b, ..., a], or None when it has none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def library_import_graph() -> dict[str, set[str]]:
    paths = [p for pkg in ORDER for p in sorted((ROOT / pkg).rglob("*.py"))]
    known = {module_name(p) for p in paths}
    return {module_name(p): module_level_imports(p.read_text(), module_name(p), p.name == "__init__.py", known)
            for p in paths}


def test_no_module_level_import_cycle():
    cycle = import_cycle(library_import_graph())
    assert cycle is None, "module-level import loop: " + " -> ".join(cycle) + " (make one of them import lazily or move the shared part down)"


def test_the_cycle_checker_finds_loops():
    """The guard above can fail: a loop through a package's own modules is found, a lazy import is not one."""
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    graph = {
        "pkg": module_level_imports("from pkg.a import A\nfrom pkg import b\n", "pkg", True, known),
        "pkg.a": module_level_imports("from . import b\n", "pkg.a", False, known),
        "pkg.b": module_level_imports("import os\nfrom pkg.c import C\n", "pkg.b", False, known),
        "pkg.c": module_level_imports("try:\n    from pkg.a import A\nexcept ImportError:\n    pass\n", "pkg.c", False, known),
    }
    assert graph["pkg"] == {"pkg.a", "pkg.b"} and graph["pkg.a"] == {"pkg.b"}
    assert import_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    graph["pkg.c"] = module_level_imports("def f():\n    from pkg.a import A\n", "pkg.c", False, known)
    assert graph["pkg.c"] == set() and import_cycle(graph) is None


LOOP_MODULE = "trainers/loop.py"
STEPS = ("backward", "clip_and_step")  # a gradient, an optimiser step: what makes a loop a training loop


def training_loops(source: str, where: str) -> list[str]:
    """One line per `for`/`while` loop of `source` whose body calls `.backward()` or `clip_and_step(...)`."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            continue
        for call in ast.walk(node):
            f = call.func if isinstance(call, ast.Call) else None
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in STEPS:
                bad.append(f"{where}:{node.lineno} a loop that calls {name} (line {call.lineno}): a training loop "
                           f"outside {LOOP_MODULE}; give the method an Objective and hooks and run it there")
                break
    return bad


def test_every_training_loop_is_the_one_loop():
    bad = []
    for package in ORDER:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel != LOOP_MODULE:
                bad += training_loops(path.read_text(), rel)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source, n_bad", [
    ("for b in batches:\n    loss = f(b)\n    loss.backward()\n    opt.step()\n", 1),
    ("while step < n:\n    if True:\n        gn = clip_and_step(params, opt, sched, 1.0)\n", 1),  # nested in the body
    ("def f():\n    for i in range(3):\n        out['loss'].backward()\n", 1),
    ("loss.backward()\nfor p in params:\n    p.grad = None\n", 0),  # one backward, not in a loop
    ("for t in range(T):\n    m = student.step(m, x[:, t])\n", 0),  # a rollout is not a training step
])
def test_the_checker_flags_training_loops(source, n_bad):
    """The guard above can fail: a loop that calls backward or clip_and_step is reported with file and line."""
    bad = training_loops(source, "x.py")
    assert len(bad) == n_bad and all(b.startswith("x.py:") for b in bad)


NO_FSSPEC = ("models", "trainers", "jobs")


def fsspec_imports(source: str, where: str) -> list[str]:
    return [f"{where}:{line} imports fsspec: reach files through storage/'s Bucket (storage.bucket)"
            for line, top in imported_packages(source, "models") if top == "fsspec"]


def test_models_trainers_and_jobs_do_not_import_fsspec():
    bad = []
    for package in NO_FSSPEC:
        for path in sorted((ROOT / package).rglob("*.py")):
            bad += fsspec_imports(path.read_text(), path.relative_to(ROOT).as_posix())
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source, n_bad", [
    ("import fsspec\n", 1),
    ("def f():\n    from fsspec.core import url_to_fs\n", 1),  # a lazy import counts too
    ("import fsspec.implementations.local as loc\n", 1),
    ("from storage.bucket import Bucket\n", 0),
])
def test_the_checker_flags_fsspec_imports(source, n_bad):
    assert len(fsspec_imports(source, "x.py")) == n_bad
