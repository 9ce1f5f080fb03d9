"""Flower's own executables as child processes: where they are, the environment they run in,
what one said when it failed, how they stop; and :class:`SuperLink`, a running SuperLink with
the ``flwr`` CLI connection to it (its Control API behind the server's token)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from securetrain.errors import ConfigError, SecureTrainError
from securetrain.federated.environment import flower_environ
from securetrain.federated.pki import ServerFiles
from securetrain.federated.trust import CONTROL_TOKEN_ENV, new_control_token, store_cli_token

CONNECTION = "securetrain"
START_TIMEOUT = 60.0
POLL_SECONDS = 1.0


def executable(name: str) -> str:
    """Flower's executables from the environment securetrain runs in."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise ConfigError(f"Flower's {name} executable was not found beside {sys.executable}.")
    return found


def flower_env(home: Path) -> dict[str, str]:
    """Flower's processes start more of its executables (flower-superexec, flwr-serverapp,
    flwr-clientapp) by name: they must be on PATH."""
    path = os.pathsep.join([str(Path(executable("flwr")).parent), os.environ.get("PATH", "")])
    return {**flower_environ(os.environ), "PATH": path, "FLWR_HOME": str(home)}


def last_line(log: Path) -> str:
    """What a Flower process said when it failed, on one line, without colour codes: the text
    of its last exit-code block, else its last error line, else its last line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or ["(no output)"]
    exits = [i for i, ln in enumerate(lines) if "Exit Code:" in ln]
    if exits:
        block = []
        for ln in lines[exits[-1] + 1 :]:
            if ln.startswith("For more information") or ln.startswith("INFO"):
                break
            block.append(ln)
        if block:
            return " ".join(block)
    errors = [ln for ln in lines if re.search(r"ERROR|Error:|Exception", ln)]
    return (errors or lines)[-1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def exit_on_sigterm() -> None:
    """A terminated server or site still stops its Flower processes (``finally`` runs)."""
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(128 + signal.SIGTERM))


class SuperLink:
    """A running SuperLink and the CLI connection to it."""

    def __init__(
        self, work: Path, files: ServerFiles, host: str, port: int, log: Path | None
    ) -> None:
        self.home = work / "flwr"
        self.home.mkdir()
        address = f"127.0.0.1:{port}"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{address}"\nroot-certificates = "{files.ca}"\n'
        )
        token_file = work / "control.token"
        store_cli_token(self.home, address, new_control_token(token_file))
        self.log = log or work / "superlink.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "securetrain.federated.trust",
                    "superlink",
                    "--ssl-certfile",
                    str(files.certificate),
                    "--ssl-keyfile",
                    str(files.private_key),
                    "--ssl-ca-certfile",
                    str(files.ca),
                    "--enable-supernode-auth",
                    "--disable-runtime-dependency-installation",
                    "--host",
                    host,
                    "--port",
                    str(port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**flower_env(self.home), CONTROL_TOKEN_ENV: str(token_file)},
                cwd=work,
            )

    def cli(self, *args: str) -> dict:
        """One ``flwr`` command with JSON output."""
        result = subprocess.run(
            [executable("flwr"), *args, "--format", "json"],
            capture_output=True,
            text=True,
            env={**flower_env(self.home), "COLUMNS": "200"},
            timeout=120,
        )
        try:
            doc = json.loads(result.stdout[result.stdout.index("{") :])
        except ValueError:
            doc = {}
        if result.returncode != 0 or not doc.get("success"):
            message = doc.get("error-message") or (result.stderr or result.stdout).strip()
            raise SecureTrainError(f"flwr {args[0]} failed: {' '.join(message.split())[:300]}")
        return doc

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise SecureTrainError(
                f"The SuperLink stopped (exit {self.proc.returncode}): {last_line(self.log)}"
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.check_alive()
            try:
                self.cli("supernode", "ls", CONNECTION)
                return
            except SecureTrainError:
                if time.monotonic() > deadline:
                    raise SecureTrainError(
                        f"The SuperLink did not answer within {START_TIMEOUT:.0f} s: "
                        f"{last_line(self.log)}"
                    ) from None
                time.sleep(POLL_SECONDS)

    def online(self) -> int:
        nodes = self.cli("supernode", "ls", CONNECTION).get("nodes", [])
        return sum(1 for n in nodes if n.get("status") == "online")
