"""Keys, key providers, authenticated encryption and signatures: safe recipes only."""

from securetrain.crypto.keys import (
    KeyPermissionError,
    KeySetPaths,
    check_private_permissions,
    fingerprint,
    generate_keyset,
    load_public_key,
    public_key_of,
)
from securetrain.crypto.providers import (
    EnvironmentKeyProvider,
    KeyFileProvider,
    KeyProvider,
    PassphraseProvider,
    passphrase_from_env,
    provider_for_keydir,
)
from securetrain.crypto.signing import (
    sign_directory,
    signature_key_hint,
    signed_manifest_digest,
    verify_directory,
)

__all__ = [
    "EnvironmentKeyProvider",
    "KeyFileProvider",
    "KeyPermissionError",
    "KeyProvider",
    "KeySetPaths",
    "PassphraseProvider",
    "check_private_permissions",
    "fingerprint",
    "generate_keyset",
    "load_public_key",
    "passphrase_from_env",
    "provider_for_keydir",
    "public_key_of",
    "sign_directory",
    "signature_key_hint",
    "signed_manifest_digest",
    "verify_directory",
]
