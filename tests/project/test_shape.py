"""The library stays readable: no function longer than 80 lines or taking more than 8 parameters (a longer one
is split, a wider one takes a small config or value object), and every setting that several configs share is
declared once, in a config piece the others inherit (trainers/budget.py, models/device.py, storage/settings.py,
pipeline/relabel.py's `RolloutWindow` and `Rollouts`, trainers/dmt/stability.py's `PolicyStability`, jobs/cli_common.py's
`Quiet`/`Tracked`), so a flag, a recipe key and an attribute mean one thing everywhere. Parsed with `ast`."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ("models", "storage", "pipeline", "trainers", "jobs")
MAX_LINES, MAX_PARAMS = 80, 8
# settings with one meaning wherever they appear; each must be declared by exactly one config class
SHARED = ("steps", "seconds", "clock", "eval_every", "eval_size", "stop_at_acc", "curriculum", "curriculum_acc",
          "device", "endpoint_url", "checkpoint_every", "keep_last", "keep_every", "allow_seed_change", "format",
          "dtype", "quiet", "log", "ema", "carry_optimizer", "sequences", "start", "Td")


def library_sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for pkg in LIBRARY for p in sorted((ROOT / pkg).rglob("*.py"))}


def too_big(source: str, where: str) -> list[str]:
    """One line per function of `source` over MAX_LINES lines or MAX_PARAMS parameters (self/cls not counted)."""
    out = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = n.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs] + [x for x in (a.vararg, a.kwarg) if x]
            k = len(params) - (1 if params and params[0].arg in ("self", "cls") else 0)
            lines = n.end_lineno - n.lineno + 1
            if k > MAX_PARAMS or lines > MAX_LINES:
                out.append(f"{where}:{n.lineno} {n.name}: {k} parameters, {lines} lines")
    return out


def declarations(sources: dict[str, str]) -> dict[str, list[str]]:
    """{field: [module:Class, ...]} for the fields declared in the body of every config class: a dataclass named
    *Config or *Job, or a dataclass one of those inherits from (the shared pieces)."""
    classes: dict[str, tuple[str, ast.ClassDef]] = {}
    for where, src in sources.items():
        for n in ast.walk(ast.parse(src)):
            if isinstance(n, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in n.decorator_list):
                classes[n.name] = (where, n)
    configs = {name for name in classes if name.endswith(("Config", "Job"))}
    todo = list(configs)
    while todo:
        for b in classes[todo.pop()][1].bases:
            name = ast.unparse(b)
            if name in classes and name not in configs:
                configs.add(name)
                todo.append(name)
    found = defaultdict(list)
    for name in configs:
        where, node = classes[name]
        for s in node.body:
            if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name):
                found[s.target.id].append(f"{where}:{name}")
    return found


def test_no_function_is_too_long_or_too_wide():
    bad = [line for where, src in library_sources().items() for line in too_big(src, where)]
    assert not bad, "split these, or pass a config / value object:\n" + "\n".join(bad)


def test_the_size_checker_flags_both_kinds():
    wide = "def f(a, b, c, d, e, f, g, h, i):\n    pass\n"
    long = "def g():\n" + "    x = 1\n" * 80
    fine = "class A:\n    def m(self, a, b, c, d, e, f, g, h):\n        pass\n"
    assert len(too_big(wide, "x")) == 1 and len(too_big(long, "x")) == 1 and too_big(fine, "x") == []


def test_every_shared_setting_is_declared_once():
    found = declarations(library_sources())
    twice = {k: v for k, v in found.items() if k in SHARED and len(v) > 1}
    missing = [k for k in SHARED if k not in found]
    assert not twice, f"declare these once, in a piece the configs inherit: {twice}"
    assert not missing, f"SHARED names settings no config declares any more: {missing}"
    assert "fmt" not in found  # one spelling: `format`


@pytest.mark.parametrize("bases, n_twice", [("", 1), ("(Base)", 0)])
def test_the_declaration_checker_follows_inheritance(bases, n_twice):
    src = ("from dataclasses import dataclass\n@dataclass\nclass Base:\n    device: str = 'auto'\n"
           f"@dataclass\nclass AConfig{bases}:\n    x: int = 0\n" + ("    device: str = 'cpu'\n" if not bases else "")
           + "@dataclass\nclass BJob(Base):\n    y: int = 0\n")
    found = declarations({"m.py": src})
    assert sum(len(v) > 1 for v in found.values()) == n_twice
