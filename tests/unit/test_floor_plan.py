"""ARCHITECTURE.md's floor plan is the import graph: every import of one securetrain package by
another (module level or inside a function) points to a lower floor, and every package is on
exactly one floor."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "securetrain"


def _floors() -> list[list[str]]:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    block = re.search(r"## Floor plan\n.*?```\n(.*?)```", text, re.S)
    assert block, "ARCHITECTURE.md has no floor plan block"
    return [line.split() for line in block[1].splitlines() if line.strip()]


def _package_of(path: Path) -> str:
    first = path.relative_to(PACKAGE).parts[0]
    return first.removesuffix(".py")


def _imports() -> set[tuple[str, str]]:
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        source = _package_of(path)
        if source in ("__init__", "__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "securetrain" and len(parts) > 1 and parts[1] != source:
                    edges.add((source, parts[1]))
    return edges


def test_every_package_is_on_exactly_one_floor() -> None:
    listed = [name for floor in _floors() for name in floor]
    packages = {
        _package_of(p)
        for p in PACKAGE.rglob("*.py")
        if _package_of(p) not in ("__init__", "__main__")
    }
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == packages, set(listed) ^ packages


def test_every_import_points_to_a_lower_floor() -> None:
    floor_of = {name: i for i, floor in enumerate(_floors()) for name in floor}
    upward_or_level = sorted(
        (source, target) for source, target in _imports() if floor_of[target] <= floor_of[source]
    )
    assert upward_or_level == []
