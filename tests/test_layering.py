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
