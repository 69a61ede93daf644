"""Imports point one way: run_pipeline.py -> pipeline -> workers -> models (read from the source,
so that a lazy import inside a function counts as much as one at the top)."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "models": {"ray", "zmq", "pipeline", "workers", "tests", "bench"},
    "workers": {"pipeline", "zmq", "tests", "bench"},
    "pipeline": {"tests", "bench"},
}


def imported_roots(path: Path) -> set[str]:
    """The top-level packages a module imports (relative imports stay in its own package)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(package):
    wrong = {str(path.relative_to(REPO)): sorted(imported_roots(path) & FORBIDDEN[package])
             for path in sorted((REPO / package).rglob("*.py"))}
    assert {path: roots for path, roots in wrong.items() if roots} == {}


def test_the_entry_script_only_hands_over_to_the_package():
    assert imported_roots(REPO / "run_pipeline.py") == {"sys", "pipeline"}
