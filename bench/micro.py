"""Case 4: crypto micro-benchmarks, single-threaded (so: per core).

* `crypto.seal` and `crypto.open_sealed` of a 2 KB note (XChaCha20-Poly1305 with
  the note AAD), the work a warm read or a create adds to a plaintext app;
* one Vault Transit unwrap of a patient data key (loopback round trip to
  OpenBao), the work a cold read adds, and the per-note cost of the Transit peer.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from crypto import key_context, note_aad, open_sealed, seal
from service.adapters.vault import VaultKeyService


@dataclass(frozen=True)
class MicroResult:
    name: str
    ops: int
    seconds: float
    ops_per_second: float
    mean_us: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _timed(name: str, fn: Any, seconds: float, batch: int) -> MicroResult:
    ops = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(batch):
            fn()
        ops += batch
    elapsed = time.perf_counter() - started
    return MicroResult(name, ops, elapsed, ops / elapsed, elapsed / ops * 1e6)


def crypto_micro(*, note_bytes: int = 2048, seconds: float = 1.0) -> list[MicroResult]:
    """Seal and open one `note_bytes` note for `seconds` each."""
    key = os.urandom(32)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    aad = note_aad(tenant_id=ids[0], patient_id=ids[1], note_id=ids[2], version=1)
    plaintext = os.urandom(note_bytes)
    envelope = seal(key, plaintext, aad=aad)
    assert open_sealed(key, envelope, aad=aad) == plaintext
    return [
        _timed(f"seal {note_bytes} B", lambda: seal(key, plaintext, aad=aad), seconds, 200),
        _timed(f"open {note_bytes} B", lambda: open_sealed(key, envelope, aad=aad), seconds, 200),
    ]


def transit_unwrap_micro(keys: VaultKeyService, tenant_id: str, *, ops: int = 300) -> MicroResult:
    """Sequential Transit unwraps of one data key (the key cache bypassed)."""
    patient_id = str(uuid.uuid4())
    context = key_context(tenant_id=tenant_id, patient_id=patient_id)
    new = keys.new_data_key(tenant_id=tenant_id, context=context)
    assert keys.unwrap(new.wrapped, tenant_id=tenant_id, context=context) == new.plaintext
    started = time.perf_counter()
    for _ in range(ops):
        keys.unwrap(new.wrapped, tenant_id=tenant_id, context=context)
    elapsed = time.perf_counter() - started
    return MicroResult(
        "transit unwrap (1 thread)", ops, elapsed, ops / elapsed, elapsed / ops * 1e6
    )
