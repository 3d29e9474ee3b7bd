"""Fast bulk seeding for rotation drills: thousands of patients with real wrapped keys.

Data keys are random and wrapped by Vault Transit (batch encrypt with the tenant's
derived key and the patient's context), which is exactly what the service's
`datakey` call produces; notes are sealed with the service's own envelope.
"""

from __future__ import annotations

import base64
import os
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

import hvac
import psycopg

from crypto import key_context, note_aad, open_sealed, seal
from service.adapters.vault import dek_key_name, parse_key_version


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bulk_seed(
    db_url: str, vault: hvac.Client, tenant_id: str, author_id: str, n: int, batch: int = 240
) -> list[str]:
    """n patients, each with a wrapped key and one sealed note. Returns patient ids."""
    now = datetime.now(UTC)
    patients = [str(uuid.uuid4()) for _ in range(n)]
    keys = [os.urandom(32) for _ in range(n)]
    wrapped: list[str] = []
    for i in range(0, n, batch):
        resp = vault.secrets.transit.encrypt_data(
            name=dek_key_name(tenant_id),
            plaintext="",
            batch_input=[
                {
                    "plaintext": b64(k),
                    "context": b64(key_context(tenant_id=tenant_id, patient_id=p)),
                }
                for p, k in zip(patients[i : i + batch], keys[i : i + batch], strict=True)
            ],
        )
        wrapped += [r["ciphertext"] for r in resp["data"]["batch_results"]]
    notes = [str(uuid.uuid4()) for _ in range(n)]
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY patients (id, tenant_id, external_id_index, created_at) FROM STDIN"
        ) as copy:
            for p in patients:
                copy.write_row((p, tenant_id, "bulk:" + secrets.token_hex(16), now))
        with cur.copy(
            "COPY patient_keys (patient_id, tenant_id, wrapped_key, key_version, created_at,"
            " updated_at) FROM STDIN"
        ) as copy:
            for p, w in zip(patients, wrapped, strict=True):
                copy.write_row((p, tenant_id, w, parse_key_version(w), now, now))
        with cur.copy(
            "COPY notes (id, tenant_id, patient_id, kind, current_version, created_by,"
            " created_at, updated_at) FROM STDIN"
        ) as copy:
            for note, p in zip(notes, patients, strict=True):
                copy.write_row((note, tenant_id, p, "progress", 1, author_id, now, now))
        with cur.copy(
            "COPY note_versions (note_id, version, sealed, author_id, created_at) FROM STDIN"
        ) as copy:
            for note, p, k in zip(notes, patients, keys, strict=True):
                aad = note_aad(tenant_id=tenant_id, patient_id=p, note_id=note, version=1)
                body = f'{{"t": null, "b": "bulk note of {p}"}}'.encode()
                copy.write_row((note, 1, seal(k, body, aad=aad), author_id, now))
        conn.commit()
    return patients


def decrypt_everything(db_url: str, vault: hvac.Client, tenant_id: str, batch: int = 240) -> int:
    """Unwrap every wrapped key (Vault batch decrypt) and open every note version.

    Returns the number of versions opened; raises on the first failure.
    """
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT k.patient_id, k.wrapped_key, n.id, v.version, v.sealed FROM patient_keys k"
            " JOIN notes n ON n.patient_id = k.patient_id"
            " JOIN note_versions v ON v.note_id = n.id WHERE k.tenant_id = %s",
            (tenant_id,),
        ).fetchall()
    by_patient: dict[str, str] = {str(r[0]): r[1] for r in rows}
    pids = list(by_patient)
    plain: dict[str, bytes] = {}
    for i in range(0, len(pids), batch):
        chunk = pids[i : i + batch]
        resp = vault.secrets.transit.decrypt_data(
            name=dek_key_name(tenant_id),
            ciphertext="",
            batch_input=[
                {
                    "ciphertext": by_patient[p],
                    "context": b64(key_context(tenant_id=tenant_id, patient_id=p)),
                }
                for p in chunk
            ],
        )
        for p, r in zip(chunk, resp["data"]["batch_results"], strict=True):
            if r.get("error"):
                raise AssertionError(f"unwrap failed for patient {p}: {r['error']}")
            plain[p] = base64.b64decode(r["plaintext"])
    opened = 0
    for pid, _w, note_id, version, sealed in rows:
        aad = note_aad(
            tenant_id=tenant_id, patient_id=str(pid), note_id=str(note_id), version=version
        )
        open_sealed(plain[str(pid)], bytes(sealed), aad=aad)
        opened += 1
    return opened


def key_versions(db_url: str, tenant_id: str) -> dict[int, int]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT key_version, count(*) FROM patient_keys WHERE tenant_id = %s GROUP BY 1",
            (tenant_id,),
        ).fetchall()
    return {int(v): int(c) for v, c in rows}


Row = dict[str, Any]
