"""The training package reads in pieces: short modules and functions, one public face."""

import ast
import importlib
import inspect
from pathlib import Path

from securetrain.train import loop

# The package itself: ``securetrain.train`` as an attribute is the train() function.
TRAIN = importlib.import_module("securetrain.train")
SRC = Path(TRAIN.__file__).parent.parent
CALLERS = ("attacks", "cli", "federated", "service")


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def test_no_train_module_over_400_lines_and_no_function_body_over_80() -> None:
    modules = sorted((SRC / "train").glob("*.py"))
    assert len(modules) > 5
    long = []
    for path in modules:
        text = path.read_text()
        if len(text.splitlines()) >= 400:
            long.append(f"{path.name}: {len(text.splitlines())} lines")
        for fn in _functions(ast.parse(text)):
            body = fn.end_lineno - fn.body[0].lineno + 1
            if body > 80:
                long.append(f"{path.name}:{fn.name}: body of {body} lines")
    assert long == []


def test_other_packages_import_training_names_from_the_package_and_only_exported_ones() -> None:
    exported = set(TRAIN.__all__)
    found: list[str] = []
    imported: set[str] = set()
    for package in CALLERS:
        for path in sorted((SRC / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = {a.name for a in node.names}
                    if node.module.startswith("securetrain.train."):
                        found.append(f"{path.relative_to(SRC)}: {node.module}")
                    elif node.module == "securetrain.train":
                        imported |= names
                        found += [f"{path.relative_to(SRC)}: {n}" for n in names - exported]
                elif isinstance(node, ast.Import):
                    found += [
                        f"{path.relative_to(SRC)}: {a.name}"
                        for a in node.names
                        if a.name.startswith("securetrain.train.")
                    ]
    assert found == []
    assert {"DPPlan", "fit", "resolve_keys", "reserve_sealed", "signing_section"} <= imported


def test_the_dp_loop_takes_its_settings_not_the_whole_configuration() -> None:
    params = inspect.signature(loop.train_dp).parameters
    assert "config" not in params
    for name in ("seed", "accountant", "max_physical_batch_size", "checkpoint_every"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
