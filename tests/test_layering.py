"""The house rules of the code: the import graph of pipeline/ and stages/ has no cycle, no stage imports
another stage (they meet only through artifacts), the shared floor (pipeline/) imports no stage except
through the runner's lookup by name, and every module imports in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import ROOT

PACKAGES = ("pipeline", "stages")


def modules() -> dict[str, object]:
    """module name -> path, for every module of the two packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(name: str, path, known: set[str]) -> set[str]:
    """The project modules a module imports (at any depth of its code), resolved to known names."""
    tree = ast.parse(path.read_text())
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets.add(node.module)
            targets |= {f"{node.module}.{alias.name}" for alias in node.names}
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def stage_of(module: str) -> str | None:
    """'stages.train.loop' -> 'train'; None for the shared floor."""
    parts = module.split(".")
    return parts[1] if parts[0] == "stages" and len(parts) > 1 else None


def test_no_stage_imports_another_stage():
    edges = [(a, b) for a, deps in graph().items() for b in deps
             if stage_of(a) and stage_of(b) and stage_of(a) != stage_of(b)]
    assert edges == [], f"stages meet only through artifacts; move what they share to pipeline/: {edges}"


def test_shared_floor_imports_no_stage():
    edges = [(a, b) for a, deps in graph().items() for b in deps if a.startswith("pipeline") and stage_of(b)]
    assert edges == [], f"pipeline/ is the floor every stage stands on; it must not import a stage: {edges}"


def test_import_graph_has_no_cycle():
    edges = graph()
    # A package's __init__ importing its own submodules is how packages work, not a cycle between rooms.
    edges = {a: {b for b in deps if not a == b.rpartition(".")[0] and not b == a.rpartition(".")[0]} for a, deps in edges.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == [], f"import cycles: {cycles}"


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(modules())
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
