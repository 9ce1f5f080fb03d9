"""Library messages name settings (`` `key_dir` ``); the CLI shows the flag that sets each."""

from __future__ import annotations

import re

# Settings whose flag is not the setting's name with dashes.
FLAGS = {"key_dir": "--key", "schema_path": "--schema"}

_SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")


def flag_for(setting: str) -> str:
    """The command-line flag that sets ``setting``: ``key_dir`` → ``--key``."""
    return FLAGS.get(setting, "--" + setting.replace("_", "-"))


def with_flags(message: str) -> str:
    """``message`` with each backquoted setting name replaced by its flag."""
    return _SETTING.sub(lambda m: flag_for(m.group(1)), message)
