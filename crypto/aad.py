"""Associated data that binds a ciphertext to its place.

Fields are length-prefixed so that no two different tuples encode alike
(``("ab", "c")`` and ``("a", "bc")`` differ).
"""

from __future__ import annotations

import struct

AAD_FORMAT_V1 = b"sealednotes/note/v1"


def _encode(*fields: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def note_aad(*, tenant_id: str, patient_id: str, note_id: str, version: int) -> bytes:
    """AAD for one version of one note of one patient of one tenant."""
    if version < 1:
        raise ValueError("note versions start at 1")
    return _encode(
        AAD_FORMAT_V1,
        tenant_id.encode(),
        patient_id.encode(),
        note_id.encode(),
        str(version).encode(),
    )


def key_context(*, tenant_id: str, patient_id: str) -> bytes:
    """Derivation context for a patient's wrapped data key (Vault Transit)."""
    return _encode(b"sealednotes/dek/v1", tenant_id.encode(), patient_id.encode())


def parse_key_context(context: bytes) -> tuple[str, str]:
    """(tenant_id, patient_id) of a derivation context made by `key_context`.

    Raises ValueError for anything else (used to read Vault's audit log)."""
    fields: list[bytes] = []
    i = 0
    while i < len(context):
        if i + 4 > len(context):
            raise ValueError("truncated key context")
        (n,) = struct.unpack(">I", context[i : i + 4])
        i += 4
        if i + n > len(context):
            raise ValueError("truncated key context")
        fields.append(context[i : i + n])
        i += n
    if len(fields) != 3 or fields[0] != b"sealednotes/dek/v1":
        raise ValueError("not a Sealed Notes data-key context")
    return fields[1].decode("utf-8"), fields[2].decode("utf-8")
