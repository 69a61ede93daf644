"""Imports point one way: run_pipeline.py -> pipeline -> workers -> models, bench never into tests,
and no module imports itself back through others (read from the source, so that a lazy import
inside a function counts as much as one at the top)."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "workers", "pipeline")
FORBIDDEN = {
    "models": {"ray", "zmq", "pipeline", "workers", "tests", "bench"},
    "workers": {"pipeline", "zmq", "tests", "bench"},
    "pipeline": {"tests", "bench"},
    "bench": {"tests"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """The modules a file imports, relative imports resolved to absolute names."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import x` imports a module
    return found


def imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(package):
    wrong = {str(path.relative_to(REPO)): sorted(imported_roots(path) & FORBIDDEN[package])
             for path in sorted((REPO / package).rglob("*.py"))}
    assert {path: roots for path, roots in wrong.items() if roots} == {}


def test_the_entry_script_only_hands_over_to_the_package():
    assert imported_roots(REPO / "run_pipeline.py") == {"sys", "pipeline"}


def test_no_import_cycles():
    files = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph = {name: {m for m in imported_modules(path) if m in files and m != name} for name, path in files.items()}
    # A package's __init__ may name its own modules (lazy exports); that edge is not a cycle of code.
    graph = {name: {m for m in deps if not (name == m.rpartition(".")[0] and path_is_init(files[name]))}
             for name, deps in graph.items()}
    state, cycles = {}, []

    def visit(name, trail):
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(trail[trail.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, trail + [dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def path_is_init(path: Path) -> bool:
    return path.name == "__init__.py"
