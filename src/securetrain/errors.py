"""One error tree for everything securetrain raises on purpose.

User mistakes (bad paths, bad columns, bad parameters) derive from :class:`UserError`; the CLI
prints their message on one line and exits non-zero without a traceback. Security failures
derive from :class:`SecurityError` and are opaque: one type per kind of failure. Requests the
service refuses to a caller (credentials, visibility, role, limits) derive from
:class:`AccessDenied`, a user error with its own HTTP status.
"""

from __future__ import annotations


class SecureTrainError(Exception):
    """Base class of every error securetrain raises deliberately."""


class UserError(SecureTrainError):
    """Bad input from the user: the message names the rule and the value found."""


class DataError(UserError):
    """A table, file or column that cannot be used as given."""


class ConfigError(UserError):
    """An invalid parameter or combination of parameters."""


class UnsupportedModelError(UserError):
    """A model that DP-SGD cannot train as given (for example one with BatchNorm)."""


class AccessDenied(UserError):
    """The caller may not make this request: the subclass says why (401, 403, 404 or 429)."""


class SecurityError(SecureTrainError):
    """An authenticated check failed. Deliberately opaque."""


class IntegrityError(SecurityError):
    """Content does not match its recorded digest or signature."""


class DecryptionError(SecurityError):
    """Decryption failed: wrong key, or the ciphertext was altered."""


class BudgetExceeded(SecureTrainError):
    """A run would spend more privacy budget than remains."""
