"""What a federated deployment's Flower processes will run, and who may ask them to.

A site runs only the Flower App bundle (FAB) it pinned: the SHA-256 of securetrain's own app,
built here from the installed securetrain and Flower. Its SuperNode starts ClientApps through
``flwr-clientapp``; the site puts this module's wrapper first on that process's ``PATH``, and the
wrapper refuses any FAB with another hash before it is unpacked or any of its code imported.

The SuperLink's Control API (``flwr run``, ``ls``, ``stop``, ``supernode register``) accepts only
requests that carry the server's random bearer token: the open-source SuperLink has no account
authentication of its own, so this module starts it with a token plugin in Flower's account
authentication slot, and writes the token into the server's own ``flwr`` credential store.

Both are process entry points: ``python -m securetrain.federated.trust clientapp|superlink ...``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from securetrain.errors import ConfigError, IntegrityError

PINNED_FAB_ENV = "SECURETRAIN_PINNED_FAB"
CONTROL_TOKEN_ENV = "SECURETRAIN_CONTROL_TOKEN_FILE"
OIDC_ENV = "FLWR_OIDC_ENABLED"
APP_PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "securetrain-federated"
version = "1.0.0"
description = "securetrain: per-site DP-SGD on Flower"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "securetrain"

[tool.flwr.app.components]
serverapp = "securetrain.federated.components:server_app"
clientapp = "securetrain.federated.components:client_app"

[tool.flwr.app.config]
settings = ""
result-dir = ""
"""


def app_fab() -> bytes:
    """securetrain's Flower app as the bundle ``flwr run`` builds from ``APP_PYPROJECT``."""
    from flwr.cli.build import build_fab_from_files

    return build_fab_from_files({"pyproject.toml": APP_PYPROJECT.encode()})[0]


def pinned_fab_hash() -> str:
    return hashlib.sha256(app_fab()).hexdigest()


def check_fab(content: bytes, pinned: str) -> None:
    """Refuse a FAB that is not the pinned one, naming both hashes."""
    found = hashlib.sha256(content).hexdigest()
    if not hmac.compare_digest(found, pinned):
        raise IntegrityError(
            f"This site runs only the securetrain app it pinned (FAB sha256 {pinned}); "
            f"refused a FAB with sha256 {found}."
        )


def clientapp_wrapper(bin_dir: Path) -> Path:
    """Write ``bin_dir/flwr-clientapp``, which runs Flower's ClientApp process with the pin."""
    bin_dir.mkdir(mode=0o700)
    wrapper = bin_dir / "flwr-clientapp"
    wrapper.write_text(
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m securetrain.federated.trust "
        'clientapp "$@"\n'
    )
    wrapper.chmod(0o700)
    return wrapper


def _run_clientapp(args: list[str]) -> None:
    """Flower's ``flwr-clientapp``, with the FAB checked against the pin before installation
    (installation unpacks the FAB; loading the ClientApp then imports from it)."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp as runtime

    pinned = os.environ.get(PINNED_FAB_ENV, "")
    if len(pinned) != 64:
        raise ConfigError(f"{PINNED_FAB_ENV} must hold the pinned FAB's SHA-256; found {pinned!r}.")
    install = runtime.install_from_fab

    def install_pinned(
        fab_file: Path | bytes, install_dir: Path | None = None, skip_prompt: bool = False
    ) -> Path:
        content = fab_file if isinstance(fab_file, bytes) else fab_file.read_bytes()
        check_fab(content, pinned)
        return install(content, install_dir, skip_prompt)

    runtime.install_from_fab = install_pinned
    sys.argv = ["flwr-clientapp", *args]
    flwr_clientapp()


def new_control_token(path: Path) -> str:
    """A fresh bearer token for the Control API, written to ``path`` (mode 600)."""
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token)
    return token


def store_cli_token(home: Path, address: str, token: str) -> None:
    """Let the ``flwr`` CLI whose ``FLWR_HOME`` is ``home`` send ``token`` to ``address``."""
    from flwr.cli.constant import (
        ACCESS_TOKEN_STORE_KEY,
        AUTHN_TYPE_STORE_KEY,
        REFRESH_TOKEN_STORE_KEY,
    )
    from flwr.common.constant import AuthnType
    from flwr.supercore.credential_store.file_credential_store import FileCredentialStore

    store = FileCredentialStore(home / "credentials.yaml")
    store.set(AUTHN_TYPE_STORE_KEY % address, AuthnType.OIDC.encode())
    store.set(ACCESS_TOKEN_STORE_KEY % address, token.encode())
    store.set(REFRESH_TOKEN_STORE_KEY % address, token.encode())


def _token_plugin(token: str) -> type:
    """A Flower Control API authentication plugin that admits exactly one bearer token."""
    from flwr.common.constant import ACCESS_TOKEN_KEY, NOOP_ACCOUNT_NAME, NOOP_FLWR_AID
    from flwr.supercore.auth.typing import (
        AccountAuthCredentials,
        AccountAuthLoginDetails,
        AccountInfo,
    )
    from flwr.superlink.auth_plugin import ControlAuthnPlugin

    # The one account the open-source SuperLink's default federation has as its member.
    account = AccountInfo(flwr_aid=NOOP_FLWR_AID, account_name=NOOP_ACCOUNT_NAME)

    def valid(metadata: Sequence[tuple[str, str | bytes]]) -> bool:
        sent = [v for k, v in metadata if k == ACCESS_TOKEN_KEY]
        given = sent[0].encode() if sent and isinstance(sent[0], str) else b""
        return len(sent) == 1 and hmac.compare_digest(given, token.encode())

    class TokenAuthn(ControlAuthnPlugin):
        def __init__(self) -> None:
            pass

        def get_login_details(self) -> AccountAuthLoginDetails | None:
            return None

        def validate_tokens_in_metadata(
            self, metadata: Sequence[tuple[str, str | bytes]]
        ) -> tuple[bool, AccountInfo | None]:
            return (True, account) if valid(metadata) else (False, None)

        def get_auth_tokens(self, device_code: str) -> AccountAuthCredentials | None:
            return None

        def refresh_tokens(
            self, metadata: Sequence[tuple[str, str | bytes]]
        ) -> tuple[Sequence[tuple[str, str | bytes]] | None, AccountInfo | None]:
            return (metadata, account) if valid(metadata) else (None, None)

    return TokenAuthn


def _run_superlink(args: list[str]) -> None:
    """Flower's ``flower-superlink`` with the Control API behind the token in
    ``$SECURETRAIN_CONTROL_TOKEN_FILE``."""
    from flwr.common.constant import AuthnType
    from flwr.superlink import config_loader
    from flwr.superlink.cli.flower_superlink import flower_superlink

    token_file = os.environ.get(CONTROL_TOKEN_ENV, "")
    token = Path(token_file).read_text().strip() if token_file else ""
    if len(token) < 32:
        raise ConfigError(
            f"{CONTROL_TOKEN_ENV} must name a file with the Control API token; found "
            f"{token_file!r}."
        )
    plugin = _token_plugin(token)
    config_loader.get_control_authn_ee_plugins = lambda: {AuthnType.OIDC: plugin}
    os.environ[OIDC_ENV] = "1"
    sys.argv = ["flower-superlink", *args]
    flower_superlink()


def main(argv: list[str]) -> None:
    commands = {"clientapp": _run_clientapp, "superlink": _run_superlink}
    if not argv or argv[0] not in commands:
        raise SystemExit(f"usage: python -m securetrain.federated.trust {'|'.join(commands)} ...")
    commands[argv[0]](argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
