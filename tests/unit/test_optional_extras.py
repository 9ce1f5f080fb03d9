"""The core library installs without the [federated] and [service] extras: it imports and its
commands run with Flower, FastAPI, uvicorn, psycopg and argon2 absent, and a command that needs
an extra says which one in one line, exit 2."""

import subprocess
import sys
import textwrap

import pytest

# Runs in a fresh interpreter in which every package of the two extras fails to import.
BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"flwr", "ray", "fastapi", "starlette", "uvicorn", "psycopg", "argon2"}
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Blocker())
    """
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_core_packages_and_the_cli_import_without_the_extras_or_environment_changes() -> None:
    result = _run(
        """
        import os
        # Third-party libraries may set their own variables when imported (torch's OpenMP
        # settings); what is checked is that securetrain's own modules set none.
        import numpy, pyarrow, scipy, sklearn, sqlalchemy, torch
        before = dict(os.environ)
        import securetrain.attacks, securetrain.bundle, securetrain.cli.app, securetrain.crypto
        import securetrain.data, securetrain.engine, securetrain.privacy, securetrain.screening
        import securetrain.sealed, securetrain.store, securetrain.train
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("loaded:", loaded)
        print("environment changed:", sorted(set(os.environ.items()) ^ set(before.items())))
        """
    )
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout
    assert "environment changed: []" in result.stdout


@pytest.mark.parametrize(
    ("argv", "extra", "module"),
    [
        (["users", "list", "--store", "sqlite:///{tmp}/store.db"], "service", "argon2"),
        (
            [
                "federated",
                "simulate",
                "--data",
                "builtin:breast-cancer",
                "--epsilon",
                "1",
                "--out",
                "{tmp}/b",
            ],
            "federated",
            "flwr",
        ),
    ],
)
def test_a_command_needing_an_extra_names_it(tmp_path, argv, extra, module) -> None:
    args = [a.format(tmp=tmp_path) for a in argv]
    result = _run(
        f"""
        sys.argv = ["securetrain", *{args!r}]
        from securetrain.cli.app import main
        main()
        """
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"[{extra}] extra" in lines[0] and repr(module) in lines[0], lines[0]
    assert f"pip install 'securetrain[{extra}]'" in lines[0]
