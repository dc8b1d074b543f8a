"""The product's shape: no import cycles, small folders, long modules only with a stated reason.

* Import graph: module-level imports between the product packages must form no cycle. An
  import inside a function, or under `if TYPE_CHECKING:`, runs later (or never) and is the
  sanctioned way to reach upward, so it does not count. The lower module of a pair is where a
  shared helper belongs (curation/outputs/report_tables.py under report.py, for instance).
* Folders: at most MAX_MODULES modules each (`__init__.py` not counted); a folder that needs
  more wants a sub-folder by role.
* Length: a module over MAX_LINES lines says why it is one module. The convention: its module
  docstring holds a paragraph that begins with the marker `Why one module:` followed by the
  reason, e.g.

      Why one module: the cut detector, its thresholds and the window it slides are one
      algorithm; split, each part would need the others' private state.

  LONG_ALLOWED lists the exceptions that are being dealt with elsewhere, each with its reason.
* Moves: every import of a product module (product, tests, bench) names a module of this tree.

Parsing only (`ast`), nothing is imported: the whole file runs in a fraction of a second.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("curation", "captioning", "training", "flows")
MAX_MODULES = 12
MAX_LINES = 400
MARKER = "Why one module:"
LONG_ALLOWED: dict[str, str] = {}  # path -> why it may stay long without saying so in the module


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the product packages."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(body: list[ast.stmt]):
    """Import statements that run when the module is imported: the top level, and inside
    top-level if/try/with/class blocks; not in functions, not under `if TYPE_CHECKING:`."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level_imports(node.body)
            yield from _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _module_level_imports(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _module_level_imports(node.body)


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The product modules an import statement loads, parent packages included."""
    if isinstance(node, ast.Import):
        wanted = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolved against this module's package
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([base] if base else [])])
        # `from pkg import mod` loads pkg.mod when that is a module, else a name of pkg.
        wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    out = set()
    for dotted in wanted:
        parts = dotted.split(".")
        out |= {m for i in range(1, len(parts) + 1) if (m := ".".join(parts[:i])) in modules}
    return out - {name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = set().union(*(_targets(name, path, n, modules) for n in _module_level_imports(tree.body)))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = defaultdict(int)  # 0 unseen, 1 on the current path, 2 done
    for start in sorted(graph):
        if state[start]:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_product_imports_form_no_cycle():
    graph = import_graph()
    assert len(graph) > 50 and graph["flows.curate"], "the graph is empty: the parser lost the imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle) + (
        " (move the shared code below both, or import inside the function that needs it)")


def test_every_import_of_a_product_module_names_one_in_this_tree():
    """`from curation import synthetic` after synthetic moved to curation/corpora/: an installed
    copy of the package elsewhere (an editable install of another checkout) still answers it,
    so the suite runs against that copy without a word. Only the tree can say it is gone.
    (The packages' `__init__.py` define no names: `from PACKAGE import X` names a module.)"""
    modules = _modules()
    packages = {m for m, p in modules.items() if p.name == "__init__.py"}
    wrong = []
    for path in (p for d in (*PACKAGES, "tests", "bench") for p in sorted((ROOT / d).rglob("*.py"))):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names if node.module in packages)]
            else:
                continue
            wrong += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in PACKAGES and n not in modules]
    assert not wrong, "imports of modules this tree does not have:\n" + "\n".join(wrong)


def test_only_module_level_imports_count():
    src = """
from typing import TYPE_CHECKING
import a
if TYPE_CHECKING:
    import b
else:
    import c
try:
    import d
except ImportError:
    import e
class K:
    import f
def g():
    import h
"""
    found = {a.name for n in _module_level_imports(ast.parse(src).body) for a in n.names}
    assert found == {"TYPE_CHECKING", "a", "c", "d", "e", "f"}


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_folder_holds_more_than_max_modules():
    folders = defaultdict(list)
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if path.name != "__init__.py":
                folders[path.parent.relative_to(ROOT).as_posix()].append(path.name)
    crowded = {f: len(m) for f, m in folders.items() if len(m) > MAX_MODULES}
    assert not crowded, f"folders over {MAX_MODULES} modules (split them by role): {crowded}"


def _states_why(path: Path) -> bool:
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path))) or ""
    return any(p.strip().startswith(MARKER) and len(p.strip()) > len(MARKER) + 20 for p in doc.split("\n\n"))


def test_long_modules_say_why_they_are_one_module():
    long = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            n = len(path.read_text().splitlines())
            if n > MAX_LINES and rel not in LONG_ALLOWED and not _states_why(path):
                long[rel] = n
    assert not long, (f"modules over {MAX_LINES} lines without a '{MARKER} ...' paragraph in their docstring "
                      f"(split them, or say why not): {long}")
