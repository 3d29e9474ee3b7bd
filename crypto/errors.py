"""Errors raised by the crypto package.

Every failed decryption raises the same opaque `DecryptionError`, whatever the
cause (wrong key, wrong AAD, truncated or tampered envelope, unknown version),
so that callers and attackers learn nothing from the failure mode.
"""


class CryptoError(Exception):
    """Base class for crypto errors."""


class DecryptionError(CryptoError):
    """The ciphertext could not be authenticated and decrypted."""

    def __init__(self) -> None:
        super().__init__("decryption failed")


class InvalidKey(CryptoError):
    """A key of the wrong type or length was supplied."""
