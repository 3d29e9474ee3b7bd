"""XChaCha20-Poly1305 sealing with a versioned, length-checked envelope.

Envelope layout (version 1)::

    +---------+------------------+---------------------------+
    | 0x01    | nonce (24 bytes) | ciphertext || tag (16 B)  |
    +---------+------------------+---------------------------+

The version byte is also bound into the AAD, so an envelope cannot be
re-labelled as another format version.  Nonces are random: 192 bits make
collisions negligible even for billions of notes under one patient key.
"""

from __future__ import annotations

import hmac

from nacl import bindings
from nacl.exceptions import CryptoError as _NaclCryptoError
from nacl.utils import random as _random

from crypto.errors import DecryptionError, InvalidKey

KEY_SIZE = bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES
NONCE_SIZE = bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
TAG_SIZE = bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES
ENVELOPE_V1 = 0x01
HEADER_SIZE = 1 + NONCE_SIZE
MIN_ENVELOPE_SIZE = HEADER_SIZE + TAG_SIZE


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise InvalidKey(f"key must be {KEY_SIZE} bytes")


def _bound_aad(aad: bytes) -> bytes:
    if not isinstance(aad, bytes) or not aad:
        raise ValueError("aad must be non-empty bytes")
    return bytes([ENVELOPE_V1]) + aad


def seal(key: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    """Encrypt and authenticate `plaintext`, binding it to `aad`."""
    _check_key(key)
    nonce = _random(NONCE_SIZE)
    ciphertext = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, _bound_aad(aad), nonce, key
    )
    return bytes([ENVELOPE_V1]) + nonce + ciphertext


def open_sealed(key: bytes, envelope: bytes, *, aad: bytes) -> bytes:
    """Authenticate and decrypt an envelope made by `seal` with the same AAD.

    Raises `DecryptionError` for every kind of failure.
    """
    _check_key(key)
    aad_bytes = _bound_aad(aad)
    if not isinstance(envelope, bytes) or len(envelope) < MIN_ENVELOPE_SIZE:
        raise DecryptionError()
    if not hmac.compare_digest(envelope[:1], bytes([ENVELOPE_V1])):
        raise DecryptionError()
    nonce = envelope[1:HEADER_SIZE]
    try:
        return bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            envelope[HEADER_SIZE:], aad_bytes, nonce, key
        )
    except _NaclCryptoError as e:
        raise DecryptionError() from e
