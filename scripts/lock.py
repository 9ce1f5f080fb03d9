"""Regenerate the hash-pinned lock files from the versions installed in this environment.

Run by ``make lock`` inside a virtual environment built from the ranges in ``pyproject.toml``.
The runtime lock holds everything the core library needs except torch (installed first, by exact
version, from the CPU wheel); the extras lock holds what ``securetrain[federated,service]`` adds,
and the dev lock what ``securetrain[dev]`` adds on top. Hashes come
from PyPI through ``uv pip compile --generate-hashes``, one line per pinned distribution.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
UNLOCKED = {"torch", "securetrain", "pip"}


def _installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}


def closure(extras: tuple[str, ...]) -> set[str]:
    """Installed distributions reachable from securetrain's requirements (with ``extras``)."""
    installed = _installed()
    seen: set[str] = set()
    stack = [("securetrain", extras)]
    while stack:
        name, active = stack.pop()
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in ("", *active)]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            dep = canonicalize_name(req.name)
            if dep in seen or dep not in installed:
                continue
            seen.add(dep)
            stack.append((dep, tuple(req.extras)))
    return seen - UNLOCKED


def compile_lock(names: set[str], out: Path) -> None:
    installed = _installed()
    with tempfile.TemporaryDirectory() as tmp:
        pins = Path(tmp) / "pins.in"
        pins.write_text("".join(f"{n}=={installed[n]}\n" for n in sorted(names)))
        subprocess.run(
            [
                "uv",
                "pip",
                "compile",
                str(pins),
                "--no-deps",
                "--generate-hashes",
                "--python-version",
                f"{sys.version_info.major}.{sys.version_info.minor}",
                "--index-url",
                "https://pypi.org/simple",
                "--native-tls",
                "--no-header",
                "--no-annotate",
                "--quiet",
                "-o",
                str(out),
            ],
            check=True,
        )


def main() -> None:
    runtime = closure(())
    extras = closure(("federated", "service")) - runtime
    dev = closure(("dev",)) - runtime - extras
    (ROOT / "requirements").mkdir(exist_ok=True)
    compile_lock(runtime, ROOT / "requirements" / "runtime.lock")
    compile_lock(extras, ROOT / "requirements" / "extras.lock")
    compile_lock(dev, ROOT / "requirements" / "dev.lock")


if __name__ == "__main__":
    main()
