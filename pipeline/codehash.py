"""A stage's code as one of its dependencies: the source files it runs, found from the import graph.

A stage's code is its own package (every .py file of stages/<kind>/, or stages/<kind>.py) plus every
module of pipeline/ that it imports, directly or through another pipeline/ module (imports inside
functions count too). The top-level package __init__ files are left out: they hold only the version
string, and a release that changes nothing else must not retrain anything.

Files are hashed by their source text, comments and docstrings included: the honest, simple rule (a
comment-only edit reruns the stage; telling comments from code would need a parser's opinion of what
cannot matter). Third-party libraries are not hashed; the lock records the package version beside.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

from pipeline.artifacts import hash_file

PACKAGES = ("pipeline", "stages")


def code_root() -> Path:
    """The folder holding the pipeline/ and stages/ packages (the repository, or site-packages)."""
    return Path(__file__).resolve().parents[1]


def _module_file(root: Path, name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = root.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file() and len(parts) > 1:  # a sub-package; the top-level __init__ is the version
        return base / "__init__.py"
    return None


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports, at any depth of its code (`from a.b import c` gives a.b and a.b.c)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def stage_files(kind: str, root: Path | None = None) -> list[Path]:
    """The source files of stages.<kind>: its package (or module) and the pipeline/ modules it imports."""
    root = Path(root) if root is not None else code_root()
    package = root / "stages" / kind
    todo = sorted(package.rglob("*.py")) if package.is_dir() else [root / "stages" / f"{kind}.py"]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for name in _imports(path):
            found = _module_file(root, name)
            if found is not None and found not in seen and found.parts[len(root.parts)] == "pipeline":
                todo.append(found)
    return sorted(seen)


@lru_cache(maxsize=None)
def _hashes(kind: str, root: str) -> tuple[tuple[str, str], ...]:
    base = Path(root)
    return tuple((path.relative_to(base).as_posix(), hash_file(path)) for path in stage_files(kind, base))


def code_hashes(kind: str, root: Path | None = None) -> dict[str, str]:
    """{relative path: content hash} of the stage's code, computed once per process."""
    return dict(_hashes(kind, str(Path(root) if root is not None else code_root())))


def code_groups(kind: str, paths) -> list[str]:
    """How status names changed files: the stage's own package as one entry ("stages/train"), and
    each pipeline/ module by its path."""
    own = f"stages/{kind}"
    return sorted({own if p == f"{own}.py" or p.startswith(own + "/") else p for p in paths})


def dvc_deps(kind: str, root: Path | None = None) -> list[str]:
    """The code paths dvc.yaml lists under a stage's deps: the same files, the stage package as a folder."""
    root = Path(root) if root is not None else code_root()
    own = f"stages/{kind}"
    package = (root / own).is_dir()
    return sorted({own if package and p.startswith(own + "/") else p for p in code_hashes(kind, root)})
