"""The house rules of the layout, checked on the source (no imports are executed):

* the router imports nothing from ``placement``, ``registry`` or ``capacity``; the worker
  imports none of them either (nor the router); the registry and capacity planning import no
  role; ``shoal`` (what everyone shares) imports none of the other packages;
* no import cycle between the project's modules (every ``import`` statement counts, also
  those inside functions);
* no module over ``MAX_LINES`` lines, tests and benchmarks included (generated stubs apart).
"""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shoal", "router", "worker", "placement", "registry", "capacity")
GENERATED = ("shoal/pb/",)
MAX_LINES = 450

#: package -> packages it must not import.
FORBIDDEN = {
    "router": {"placement", "registry", "capacity", "worker"},
    "worker": {"placement", "registry", "capacity", "router"},
    "registry": {"router", "worker", "placement", "capacity"},
    "capacity": {"router", "worker", "placement", "registry"},
    "shoal": {"router", "worker", "placement", "registry", "capacity"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith(GENERATED):
                out[_module_name(path)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The project modules ``name`` imports (``from a import b`` counts as ``a.b`` when that is
    a module, else as ``a``)."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_pkg else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    known = set(sources)
    return {name: set(_imports(name, path, known)) for name, path in sources.items()}


def test_roles_and_shared_code_import_only_what_they_may() -> None:
    bad = [
        f"{mod} imports {dep}"
        for mod, deps in _graph().items()
        for dep in sorted(deps)
        if dep.split(".")[0] in FORBIDDEN.get(mod.split(".")[0], set())
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def _tracked_python() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py", "*.pyi"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:  # not a git checkout (an sdist): every file on disk
        return [
            p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py") if ".venv" not in p.parts
        ]
    return out.stdout.split()


@pytest.mark.parametrize("limit", [MAX_LINES])
def test_no_module_is_longer_than_the_limit(limit: int) -> None:
    long = []
    for rel in _tracked_python():
        path = ROOT / rel
        if rel.startswith(GENERATED) or not path.exists():
            continue
        n = len(path.read_text().splitlines())
        if n > limit:
            long.append(f"{rel}: {n} lines")
    assert not long, "\n".join(long)
