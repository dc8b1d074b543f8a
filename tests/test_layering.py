"""Stage modules stay executor-agnostic: only flows/ may import ray or prefect."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGE_PACKAGES = ("curation", "captioning")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", [p for pkg in STAGE_PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))], ids=str)
def test_stage_modules_import_no_executor(path):
    assert not _imports(path) & {"ray", "prefect"}, f"{path} imports an executor"


PRODUCT_PACKAGES = ("curation", "captioning", "training", "flows")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.Module) -> set[str]:
    """Modules an import of this one executes: top-level imports, those under `if
    TYPE_CHECKING:` and inside functions left out; `from a.b import c` counts a.b and a.b.c."""
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(tree.body)
    return names


def test_no_import_cycles_among_product_modules():
    """Each stage module holds its own Config and curation/core/config.py imports them all: a
    stage that imported the composition back at import time would make a cycle (RunConfig in
    annotations goes under `if TYPE_CHECKING:`)."""
    paths = {_module_name(p): p for pkg in PRODUCT_PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    graph = {}
    for name, path in paths.items():
        deps = set()
        for imported in _runtime_imports(ast.parse(path.read_text())):
            parts = imported.split(".")  # importing a.b.c runs a and a.b (their __init__) too
            deps.update(m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in paths and m != name)
        graph[name] = deps
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(trail[trail.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(cycles)
