"""Seed data shared by all three systems, and the request lists built from it.

Sealed Notes is seeded through its own use cases (principals, patients, care
teams, notes), as the service role, so every row, key and audit record is what
the API would have written. The comparison peers get the *same* bearer tokens
(stored by SHA-256) and the *same* note ids, so one request list drives all
three servers.

After seeding, each clinician has read each of its patients once: every patient
is "released this hour" to its clinician, so the benchmarked reads are the warm,
budget-free re-reads of a working day (budgets are raised anyway so nothing can
throttle).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import hvac
import psycopg

from bench.loadgen import HttpRequest
from bench.peers import SCHEMA, TRANSIT_KEY, TRANSIT_MOUNT, encode_content, transit_context
from bench.stack import Stack
from service.access.authentication import authenticate
from service.access.caller import Caller
from service.app import build_services
from service.config import Budgets, Settings
from service.models import Role
from service.notes.sealing import NoteContent

TENANT = "bench"
BIG_BUDGET = 1_000_000
SENTENCES = (
    "Patient seen in clinic for routine follow-up.",
    "Reports improved sleep and appetite since the last visit.",
    "Vital signs within normal limits; no acute distress.",
    "Medication reconciled; no changes today.",
    "Plan: continue current management and review in four weeks.",
)


def synthetic_body(chars: int, seed: int) -> str:
    """Deterministic, obviously synthetic note text of exactly `chars` characters."""
    parts: list[str] = [f"[synthetic bench note {seed}]"]
    i = seed
    while sum(len(p) + 1 for p in parts) < chars:
        parts.append(SENTENCES[i % len(SENTENCES)])
        i += 1
    return " ".join(parts)[:chars]


@dataclass(frozen=True)
class Clinician:
    id: str
    token: str = field(repr=False)
    patients: tuple[str, ...]


@dataclass(frozen=True)
class SeededNote:
    id: str
    patient_id: str
    clinician: int  # index into Dataset.clinicians
    title: str
    body: str = field(repr=False)


@dataclass
class Dataset:
    tenant_id: str
    clinicians: list[Clinician]
    notes: list[SeededNote]
    body_chars: int

    def read_requests(self) -> list[HttpRequest]:
        """GET /v1/notes/{id}, each with its own clinician's token, clinicians interleaved."""
        by_clinician: dict[int, list[SeededNote]] = {}
        for note in self.notes:
            by_clinician.setdefault(note.clinician, []).append(note)
        out: list[HttpRequest] = []
        for round_ in range(max(len(v) for v in by_clinician.values())):
            for idx, notes in sorted(by_clinician.items()):
                if round_ < len(notes):
                    token = self.clinicians[idx].token
                    out.append(HttpRequest.get(f"/v1/notes/{notes[round_].id}", token))
        return out

    def create_requests(self) -> list[HttpRequest]:
        """POST /v1/patients/{id}/notes with a note of `body_chars` characters,
        for patients that already have a data key, clinicians interleaved."""
        out: list[HttpRequest] = []
        width = max(len(c.patients) for c in self.clinicians)
        for j in range(width):
            for i, c in enumerate(self.clinicians):
                if j < len(c.patients):
                    payload = {
                        "kind": "progress",
                        "title": f"Bench follow-up {i}-{j}",
                        "body": synthetic_body(self.body_chars, 1000 + i * width + j),
                    }
                    out.append(
                        HttpRequest.post_json(
                            f"/v1/patients/{c.patients[j]}/notes", c.token, payload
                        )
                    )
        return out


def bench_settings(stack: Stack, *, pool_max: int = 4) -> Settings:
    """In-process settings for seeding and tracing: the service role, raised budgets."""
    return Settings(
        database_url=stack.app_url,
        vault_addr=stack.bao.addr,
        vault_token=stack.bao.root_token,
        pool_min=1,
        pool_max=pool_max,
        audit_checkpoint_seconds=0,
        budgets=Budgets(per_hour=BIG_BUDGET, per_day=BIG_BUDGET, tenant_per_hour=BIG_BUDGET),
    )


def seed_sealednotes(
    stack: Stack, *, clinicians: int, patients_per_clinician: int, body_chars: int
) -> Dataset:
    """Tenant, clinicians with tokens, patients on their care teams, one note per
    patient (so every patient has a data key), each read once by its clinician."""
    svc = build_services(bench_settings(stack))
    try:
        tenant = svc.principals.create_tenant(TENANT)
        integration_token = svc.principals.create_principal(
            TENANT, "bench-integration", Role.INTEGRATION
        ).token
        integration = Caller(
            authenticate(svc.store, svc.clock, "Bearer " + integration_token), None, "127.0.0.1"
        )
        people: list[Clinician] = []
        notes: list[SeededNote] = []
        for i in range(clinicians):
            issued = svc.principals.create_principal(TENANT, f"bench-clinician-{i}", Role.CLINICIAN)
            caller = Caller(
                authenticate(svc.store, svc.clock, "Bearer " + issued.token), None, "127.0.0.1"
            )
            patient_ids: list[str] = []
            for j in range(patients_per_clinician):
                patient = svc.patients.create(integration, f"BENCH-{i:04d}-{j:04d}")
                svc.patients.set_care_team(integration, patient.id, issued.principal_id, None)
                title = f"Bench note {i}-{j}"
                body = synthetic_body(body_chars, i * patients_per_clinician + j)
                note, _ = svc.notes.create(
                    caller,
                    patient.id,
                    kind="progress",
                    content=NoteContent(title=title, body=body),
                    encounter_at=None,
                )
                view, _budget = svc.notes.read(caller, note.id)  # released this hour
                assert view.content is not None and view.content.body == body
                patient_ids.append(patient.id)
                notes.append(SeededNote(note.id, patient.id, i, title, body))
            people.append(Clinician(issued.principal_id, issued.token, tuple(patient_ids)))
        return Dataset(tenant.id, people, notes, body_chars)
    finally:
        svc.store.close()


def seed_peers(stack: Stack, data: Dataset) -> None:
    """The comparison peers' tables: same tokens (by hash), same note ids and text;
    the Transit peer's copy encrypted by Transit (derived key, context = patient)."""
    vault = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token, timeout=5)
    vault.secrets.transit.create_key(
        name=TRANSIT_KEY, key_type="aes256-gcm96", derived=True, mount_point=TRANSIT_MOUNT
    )
    expires = datetime.now(UTC) + timedelta(days=1)
    with psycopg.connect(stack.owner_url) as conn:
        conn.execute(SCHEMA.encode())
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO bench_peer_tokens (token_hash, principal_id, tenant_id, expires_at)"
                " VALUES (%s, %s, %s, %s)",
                [
                    (hashlib.sha256(c.token.encode()).digest(), c.id, data.tenant_id, expires)
                    for c in data.clinicians
                ],
            )
            cur.executemany(
                "INSERT INTO bench_peer_plaintext_notes"
                " (id, tenant_id, patient_id, kind, title, body, created_by)"
                " VALUES (%s, %s, %s, 'progress', %s, %s, %s)",
                [
                    (
                        n.id,
                        data.tenant_id,
                        n.patient_id,
                        n.title,
                        n.body,
                        data.clinicians[n.clinician].id,
                    )
                    for n in data.notes
                ],
            )
            sealed_rows = []
            for n in data.notes:
                resp = vault.secrets.transit.encrypt_data(
                    name=TRANSIT_KEY,
                    plaintext=base64.b64encode(encode_content(n.title, n.body)).decode(),
                    context=transit_context(n.patient_id),
                    mount_point=TRANSIT_MOUNT,
                )
                sealed_rows.append(
                    (
                        n.id,
                        data.tenant_id,
                        n.patient_id,
                        resp["data"]["ciphertext"],
                        data.clinicians[n.clinician].id,
                    )
                )
            cur.executemany(
                "INSERT INTO bench_peer_transit_notes"
                " (id, tenant_id, patient_id, kind, sealed, created_by)"
                " VALUES (%s, %s, %s, 'progress', %s, %s)",
                sealed_rows,
            )
        conn.commit()


# Another tenant's clinicians, patients and notes, written by SQL as the schema owner:
# what a store holds besides the benchmarked clinicians' few dozen rows. Without them
# every table is a page or two, and PostgreSQL plans its lookups (the care team, the
# day's releases, a new note's foreign-key checks) as scans of those pages; the plans
# are cached per connection, so as the create case grows a table by thousands of rows
# each check scans all of it, a cost no store in use pays. Each clinician has its
# patients on its care team, their data keys, a token, and released each patient once
# in the past day; each peer's tables get as many notes of the same size, and tokens.
BACKGROUND_TENANT = "bench-background"
_BACKGROUND_SEALEDNOTES = """
WITH t AS (
    INSERT INTO tenants (id, name, created_at, release_per_hour)
    VALUES (gen_random_uuid(), %(tenant)s, now(), 1000000) RETURNING id
), pr AS (
    INSERT INTO principals (id, tenant_id, name, role, created_at)
    SELECT gen_random_uuid(), t.id, 'bench-background-' || c, 'clinician', now()
    FROM t, generate_series(1, %(clinicians)s) c
    RETURNING id, tenant_id
), tk AS (
    INSERT INTO tokens (token_hash, principal_id, created_at, expires_at)
    SELECT sha256(convert_to(gen_random_uuid()::text, 'UTF8')), pr.id, now(),
           now() + interval '1 day'
    FROM pr
), mine AS (
    -- Each clinician's patients, their ids drawn here (a CTE calling a volatile
    -- function is evaluated once), so every row below agrees on who is whose.
    SELECT gen_random_uuid() AS patient_id, pr.tenant_id, pr.id AS principal_id
    FROM pr, generate_series(1, %(per_clinician)s)
), pt AS (
    INSERT INTO patients (id, tenant_id, external_id_index, created_at)
    SELECT patient_id, tenant_id, 'bench-background-' || patient_id, now() FROM mine
    RETURNING id
), placed AS (
    -- Read through the insert's RETURNING, so the patients are written before the rows
    -- below, whose triggers (the release guard) look them up.
    SELECT mine.* FROM mine JOIN pt ON pt.id = mine.patient_id
), ct AS (
    INSERT INTO care_team (patient_id, principal_id, added_at)
    SELECT patient_id, principal_id, now() FROM placed
), k AS (
    INSERT INTO patient_keys (patient_id, tenant_id, wrapped_key, key_version,
                              created_at, updated_at)
    SELECT patient_id, tenant_id, 'vault:v1:' || md5(patient_id::text), 1, now(), now()
    FROM placed
), kr AS (
    INSERT INTO key_releases (principal_id, tenant_id, patient_id, released_at)
    SELECT principal_id, tenant_id, patient_id, now() - interval '2 hours' FROM placed
), n AS (
    INSERT INTO notes (id, tenant_id, patient_id, kind, status, current_version,
                       created_by, created_at, updated_at)
    SELECT gen_random_uuid(), placed.tenant_id, placed.patient_id, 'progress', 'current', 1,
           placed.principal_id, now(), now()
    FROM placed, generate_series(1, %(per_patient)s)
    RETURNING id, created_by
)
INSERT INTO note_versions (note_id, version, sealed, author_id, created_at)
SELECT n.id, 1, (SELECT string_agg(sha256((n.id::text || g)::bytea), ''::bytea)
                 FROM generate_series(1, %(blocks)s) g), n.created_by, now()
FROM n
"""
_BACKGROUND_PEER = """
INSERT INTO {table} (id, tenant_id, patient_id, kind, {column}, created_by)
SELECT gen_random_uuid(), t.id, p.id, 'progress',
       {prefix} (SELECT string_agg(md5(p.id::text || k || g), '')
                 FROM generate_series(1, %(blocks)s) g),
       t.id
FROM (SELECT gen_random_uuid() AS id) t,
     (SELECT gen_random_uuid() AS id FROM generate_series(1, %(patients)s)) p,
     generate_series(1, %(per_patient)s) k
"""


def seed_background(
    owner_url: str, *, notes: int, body_chars: int, per_patient: int = 5, per_clinician: int = 4
) -> int:
    """About `notes` notes of another tenant (`per_patient` per patient, `per_clinician`
    patients per clinician) in every system's tables, as the schema owner; no case reads
    or writes them. Returns how many notes each system got."""
    if notes <= 0:
        return 0
    clinicians = max(1, round(notes / (per_patient * per_clinician)))
    args = {
        "clinicians": clinicians,
        "per_clinician": per_clinician,
        "patients": clinicians * per_clinician,
        "per_patient": per_patient,
        # Incompressible, about the size of a note of `body_chars` characters.
        "blocks": max(1, (body_chars + 100) // 32),
    }
    with psycopg.connect(owner_url) as conn:
        conn.execute(_BACKGROUND_SEALEDNOTES, args | {"tenant": BACKGROUND_TENANT})
        for table, column, prefix in (
            ("bench_peer_plaintext_notes", "body", ""),
            ("bench_peer_transit_notes", "sealed", "'vault:v1:' ||"),
        ):
            query = _BACKGROUND_PEER.format(table=table, column=column, prefix=prefix)
            conn.execute(query.encode(), args)
        conn.execute(
            "INSERT INTO bench_peer_tokens (token_hash, principal_id, tenant_id, expires_at)"
            " SELECT sha256(convert_to(gen_random_uuid()::text, 'UTF8')), gen_random_uuid(),"
            " gen_random_uuid(), now() + interval '1 day' FROM generate_series(1, %(clinicians)s)",
            args,
        )
        conn.commit()
    return clinicians * per_clinician * per_patient


def check_response_body(raw: bytes, note: SeededNote) -> bool:
    """A read answered the seeded text (used by the pre-flight check)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return False
    return bool(data.get("id") == note.id and data.get("body") == note.body)
