"""The gate's snapshots: the columns and joins of the one statement a release decision
reads (suspension, patient, care team, break-glass, budget usage, wrapped key), and the
warm read's statement, which adds the note, the principal and its token and, on a warm
re-read, records the grant (LedgerRepository.note_gate_snapshot)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from service.adapters.postgres.base import _NO_USAGE, PRINCIPAL_USAGE_SQL, _note, _principal
from service.models import (
    BudgetUsage,
    GateSnapshot,
    NoteSnapshot,
    NoteVersionRow,
    Patient,
    PatientKeyRow,
    Principal,
)

# Every stored column of a principal, the Principal field it becomes, and its type: the
# one list behind reading the account back (PRINCIPAL_AS_PR) and comparing it with a
# remembered one inside the statement (WARM_REREAD, remembered_params), so a column is
# never read without being compared.
PRINCIPAL_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("id", "id", "uuid"),
    ("tenant_id", "tenant_id", "uuid"),
    ("name", "name", "text"),
    ("role", "role", "text"),
    ("suspended_at", "suspended_at", "timestamptz"),
    ("release_per_hour", "release_per_hour", "integer"),
    ("release_per_day", "release_per_day", "integer"),
    ("suspended_reason", "suspended_reason", "text"),
    ("denials_since", "last_unlocked_at", "timestamptz"),
)
# The principal's columns under their own names (the note's share id, tenant_id, ...).
PRINCIPAL_AS_PR = ", ".join(f"pr.{column} AS pr_{column}" for column, _, _ in PRINCIPAL_FIELDS)
_SAME_PRINCIPAL = " AND ".join(
    f"s.pr_{column} IS NOT DISTINCT FROM %(c_{column})s::{sql_type}"
    for column, _, sql_type in PRINCIPAL_FIELDS
)


def principal_from_pr_row(row: dict[str, Any]) -> Principal:
    return _principal({column: row[key] for column, key in _PR_KEYS})


_PR_KEYS = tuple((column, f"pr_{column}") for column, _, _ in PRINCIPAL_FIELDS)
_C_KEYS = tuple((f"c_{column}", field) for column, field, _ in PRINCIPAL_FIELDS)


@lru_cache(maxsize=4096)
def remembered_params(remembered: Principal) -> Mapping[str, Any]:
    """The remembered account's fields, as WARM_REREAD compares them: made once per
    account as remembered (a remembered caller makes many requests), read-only."""
    values = {key: getattr(remembered, field) for key, field in _C_KEYS}
    values["c_role"] = remembered.role.value
    return MappingProxyType(values)


# A remembered caller's confirmation: its live token (service/access/remembered.py).
TOKEN_VALID = (
    "EXISTS (SELECT 1 FROM tokens tk WHERE tk.token_hash = %(token)s"
    " AND tk.principal_id = pr.id AND tk.revoked_at IS NULL"
    " AND tk.expires_at > %(now)s) AS token_valid"
)

# The gate's snapshot: the principal's suspension, the patient, care team and
# break-glass, the wrapped key and the principal's usage (service/access/gate.py).
SNAPSHOT_COLUMNS = (
    "pr.suspended_at,"
    " pt.id AS pt_id, pt.tenant_id AS pt_tenant, pt.is_decoy, pt.shredded_at,"
    " pt.created_at AS pt_created, ca.care, gl.glass,"
    " k.wrapped_key, k.key_version,"
    " u.hour, u.day, u.patient_in_hour, u.patient_in_day, u.hour_oldest, u.day_oldest"
)
SNAPSHOT_JOINS = (
    " LEFT JOIN patient_keys k ON k.patient_id = pt.id"
    " CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM care_team c"
    "   WHERE c.patient_id = {patient} AND c.principal_id = %(p)s"
    "   AND (c.until IS NULL OR c.until > %(now)s)) AS care) ca"
    " CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM break_glass b"
    "   WHERE b.patient_id = {patient} AND b.principal_id = %(p)s"
    "   AND b.opened_at <= %(now)s AND b.expires_at > %(now)s) AS glass) gl"
    " CROSS JOIN LATERAL (" + PRINCIPAL_USAGE_SQL.replace("%(pt)s", "{patient}") + ") u"
)


# A patient's gate snapshot (LedgerRepository.gate_snapshot); for a remembered caller,
# with the principal as stored and whether its token is live.
_GATE_SNAPSHOT_FROM = (
    " FROM principals pr"
    " LEFT JOIN patients pt ON pt.tenant_id = %(t)s AND pt.id = %(pt)s"
    + SNAPSHOT_JOINS.format(patient="%(pt)s")
    + " WHERE pr.id = %(p)s"
)
GATE_SNAPSHOT_SQL = "SELECT " + SNAPSHOT_COLUMNS + _GATE_SNAPSHOT_FROM
GATE_SNAPSHOT_CONFIRMING_SQL = (
    "SELECT " + PRINCIPAL_AS_PR + ", " + TOKEN_VALID + ", " + SNAPSHOT_COLUMNS + _GATE_SNAPSHOT_FROM
)


def gate_snapshot_from_row(
    row: dict[str, Any] | None, *, with_principal: bool = False
) -> GateSnapshot:
    if row is None:
        return GateSnapshot(False, True, None, False, False, _NO_USAGE, None)
    patient = (
        Patient(
            id=str(row["pt_id"]),
            tenant_id=str(row["pt_tenant"]),
            is_decoy=row["is_decoy"],
            shredded_at=row["shredded_at"],
            created_at=row["pt_created"],
        )
        if row["pt_id"] is not None
        else None
    )
    key = (
        PatientKeyRow(str(row["pt_id"]), row["wrapped_key"], row["key_version"])
        if row["wrapped_key"] is not None
        else None
    )
    return GateSnapshot(
        principal_found=True,
        suspended=row["suspended_at"] is not None,
        patient=patient,
        on_care_team=bool(row["care"]) and patient is not None,
        break_glass=bool(row["glass"]) and patient is not None,
        usage=BudgetUsage(
            hour=row["hour"],
            day=row["day"],
            tenant_hour=0,
            patient_in_hour=row["patient_in_hour"],
            patient_in_day=row["patient_in_day"],
            hour_oldest=row["hour_oldest"],
            day_oldest=row["day_oldest"],
            tenant_oldest=None,
        ),
        key=key,
        principal=principal_from_pr_row(row) if with_principal else None,
        token_valid=bool(row["token_valid"]) if with_principal else False,
    )


NOTE_SNAPSHOT_SQL = (
    "SELECT n.id, n.tenant_id, n.patient_id, n.kind, n.status, n.current_version,"
    " n.encounter_at, n.created_by, n.created_at, n.updated_at,"
    " v.version AS v_version, v.sealed, v.author_id, v.created_at AS v_created_at,"
    " pr.id IS NOT NULL AS principal_found, " + PRINCIPAL_AS_PR + ","
    " " + TOKEN_VALID + ", " + SNAPSHOT_COLUMNS + " FROM (SELECT) one"
    " LEFT JOIN principals pr ON pr.id = %(p)s"
    " LEFT JOIN notes n ON n.tenant_id = %(t)s AND n.id = %(note)s"
    " LEFT JOIN note_versions v ON v.note_id = n.id AND v.version = n.current_version"
    " LEFT JOIN patients pt ON pt.tenant_id = %(t)s AND pt.id = n.patient_id"
    + SNAPSHOT_JOINS.format(patient="n.patient_id")
)

# A warm re-read, decided on the snapshot exactly as the gate decides it (and the gate
# checks the same snapshot afterwards, failing closed if it would not grant): the
# remembered account, unchanged and not suspended, with a live token; the tenant's
# note with its current version; its patient, not a decoy, not shredded; on the care
# team (break-glass reads take the usual path); already released to this account
# within the hour, so the budget charges nothing.
WARM_REREAD = (
    "s.token_valid AND s.pr_id IS NOT NULL AND " + _SAME_PRINCIPAL + " AND s.suspended_at IS NULL"
    " AND s.id IS NOT NULL AND s.v_version IS NOT NULL"
    " AND s.pt_id IS NOT NULL AND NOT s.is_decoy AND s.shredded_at IS NULL"
    " AND s.care AND s.patient_in_hour"
)
# OFFSET 0 keeps the snapshot a subquery evaluated once: pulled up, the condition would
# evaluate the token, care-team and break-glass subqueries a second time.
NOTE_SNAPSHOT_RECORDING_SQL = (
    "SELECT s.*, CASE WHEN " + WARM_REREAD + " THEN sealednotes_audit_append(%(shard)s,"
    " s.pr_tenant_id, s.pr_id, s.pr_role, s.pt_id, s.id, 'note.read', 'granted', NULL,"
    " %(request_id)s, %(client_addr)s) END AS recorded_seq"
    " FROM (" + NOTE_SNAPSHOT_SQL + " OFFSET 0) s"
)


def note_snapshot_from_row(row: dict[str, Any], *, recorded: bool) -> NoteSnapshot:
    gate = gate_snapshot_from_row(row if row["principal_found"] else None, with_principal=True)
    if row["id"] is None:
        return NoteSnapshot(None, None, gate, recorded)
    note = _note(row)
    version = (
        NoteVersionRow(
            note_id=note.id,
            version=row["v_version"],
            sealed=bytes(row["sealed"]),
            author_id=str(row["author_id"]),
            created_at=row["v_created_at"],
        )
        if row["v_version"] is not None
        else None
    )
    return NoteSnapshot(note, version, gate, recorded)
