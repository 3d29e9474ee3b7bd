"""Pure cryptographic core of Sealed Notes: no I/O, no service imports.

Only the standard library and PyNaCl are imported here, so this package can be
reviewed and tested on its own.
"""

from crypto.aad import key_context, note_aad, parse_key_context
from crypto.aead import KEY_SIZE, open_sealed, seal
from crypto.errors import CryptoError, DecryptionError, InvalidKey
from crypto.keywrap import KeyWrapper, NewDataKey, WrappedKey

__all__ = [
    "KEY_SIZE",
    "CryptoError",
    "DecryptionError",
    "InvalidKey",
    "KeyWrapper",
    "NewDataKey",
    "WrappedKey",
    "key_context",
    "note_aad",
    "open_sealed",
    "parse_key_context",
    "seal",
]
