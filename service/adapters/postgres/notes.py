"""Notes, their sealed versions and idempotency keys."""

from __future__ import annotations

import logging
from datetime import datetime

import psycopg

from service.adapters.postgres.audit import append_params
from service.adapters.postgres.base import (
    CLOCK_SKEW,
    DAY,
    HOUR,
    NOTE_COLUMNS,
    Repo,
    _note,
    _version,
    outside_transaction,
)
from service.adapters.postgres.prepared import OwnStatement
from service.models import (
    AuditEvent,
    NewNote,
    NoteRow,
    NoteVersionRow,
    PatientKeyRow,
)

log = logging.getLogger(__name__)

# Migration 0029: 13 arguments for the note, its key and its charge, then the record's
# as sealednotes_audit_append takes them (audit.append_params).
CREATE_NOTE = (
    f"SELECT outcome, {NOTE_COLUMNS} FROM sealednotes_create_note("
    + ", ".join(["%s"] * (13 + 11))
    + ")"
)


_CREATE_NOTE = OwnStatement("sealednotes_create_note", CREATE_NOTE)


class NotesRepository(Repo):
    def patient_versions_for_update(self, patient_id: str) -> list[tuple[NoteRow, NoteVersionRow]]:
        rows = self._all(
            "SELECT n.id, n.tenant_id, n.patient_id, n.kind, n.status, n.current_version,"
            " n.encounter_at, n.created_by, n.created_at, n.updated_at,"
            " v.note_id, v.version, v.sealed, v.author_id, v.created_at AS v_created_at "
            "FROM notes n JOIN note_versions v ON v.note_id = n.id WHERE n.patient_id = %s "
            "ORDER BY n.id, v.version FOR UPDATE OF v",
            (patient_id,),
        )
        out = []
        for r in rows:
            note = _note(r)
            version = NoteVersionRow(
                note_id=str(r["note_id"]),
                version=r["version"],
                sealed=bytes(r["sealed"]),
                author_id=str(r["author_id"]),
                created_at=r["v_created_at"],
            )
            out.append((note, version))
        return out

    def reseal_version(self, note_id: str, version: int, sealed: bytes) -> None:
        self.conn.execute(
            "UPDATE note_versions SET sealed = %s WHERE note_id = %s AND version = %s",
            (sealed, note_id, version),
        )

    def insert_note(self, new: NewNote) -> NoteRow:
        # One statement: the version's foreign key is checked at its end, when the
        # note row exists.
        row = self._one(
            "WITH n AS (INSERT INTO notes (id, tenant_id, patient_id, kind, current_version,"
            " encounter_at, created_by, created_at, updated_at)"
            " VALUES (%(id)s, %(t)s, %(p)s, %(k)s, 1, %(enc)s, %(a)s, %(now)s, %(now)s)"
            f" RETURNING {NOTE_COLUMNS}),"
            " v AS (INSERT INTO note_versions (note_id, version, sealed, author_id, created_at)"
            " SELECT id, 1, %(sealed)s, %(a)s, %(now)s FROM n)"
            " SELECT * FROM n",
            {
                "id": new.id,
                "t": new.tenant_id,
                "p": new.patient_id,
                "k": new.kind,
                "enc": new.encounter_at,
                "a": new.author_id,
                "now": new.at,
                "sealed": new.sealed,
            },
        )
        assert row is not None
        return _note(row)

    def insert_note_charged(
        self, new: NewNote, *, key: PatientKeyRow, write_limit: int, record: AuditEvent
    ) -> NoteRow | None:
        """One statement on its own (migration 0029): one round trip, its own commit.
        Not attempted inside an open transaction (it could not be on its own)."""
        if not outside_transaction(self.conn):
            return None
        try:
            # Outside a transaction (the caller's): the statement is its own.
            row = _CREATE_NOTE.fetch_one(
                self.conn,
                (
                    new.tenant_id,
                    new.author_id,
                    new.patient_id,
                    new.id,
                    new.kind,
                    new.encounter_at,
                    new.at,
                    new.sealed,
                    key.wrapped_key,
                    key.key_version,
                    new.at - HOUR,
                    new.at + CLOCK_SKEW,
                    write_limit,
                    *append_params(self.conn, record),
                ),
            )
        except psycopg.OperationalError:
            raise  # the database is unavailable or too slow: the store answers 503
        except psycopg.Error as e:
            # Nothing was written (one statement). SN412: the key changed under the
            # write; anything else (the audit append refused, say) is reported, and
            # translated, by the ordinary path, statement by statement.
            if e.sqlstate != "SN412":
                log.warning("one-call create failed: %s", type(e).__name__)
            return None
        assert row is not None
        return _note(row) if row["outcome"] == "created" else None

    def insert_note_version(
        self, note_id: str, version: int, sealed: bytes, author_id: str, now: datetime
    ) -> None:
        self.conn.execute(
            "INSERT INTO note_versions (note_id, version, sealed, author_id, created_at) "
            "VALUES (%s, %s, %s, %s, %s)",
            (note_id, version, sealed, author_id, now),
        )

    def claim_idempotency_key(
        self, principal_id: str, key: str, digest: bytes, note_id: str, now: datetime
    ) -> tuple[str, bytes] | None:
        """Claim `key` for a new note. None if claimed now; else the earlier
        (note_id, digest). A concurrent claim waits for the other transaction."""
        self.conn.execute(
            "DELETE FROM idempotency_keys WHERE principal_id = %s AND key = %s AND created_at < %s",
            (principal_id, key, now - DAY),
        )
        row = self._one(
            "INSERT INTO idempotency_keys (principal_id, key, request_digest, note_id,"
            " created_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (principal_id, key)"
            " DO NOTHING RETURNING note_id",
            (principal_id, key, digest, note_id, now),
        )
        if row is not None:
            return None
        existing = self._one(
            "SELECT note_id, request_digest FROM idempotency_keys "
            "WHERE principal_id = %s AND key = %s",
            (principal_id, key),
        )
        assert existing is not None
        return str(existing["note_id"]), bytes(existing["request_digest"])

    def note(self, tenant_id: str, note_id: str) -> NoteRow | None:
        row = self._one(
            f"SELECT {NOTE_COLUMNS} FROM notes WHERE tenant_id = %s AND id = %s",
            (tenant_id, note_id),
        )
        return _note(row) if row else None

    def notes_for_patient(
        self,
        patient_id: str,
        *,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[NoteRow]:
        if after is None:
            rows = self._all(
                f"SELECT {NOTE_COLUMNS} FROM notes WHERE patient_id = %s "
                "ORDER BY created_at, id LIMIT %s",
                (patient_id, limit),
            )
        else:
            rows = self._all(
                f"SELECT {NOTE_COLUMNS} FROM notes WHERE patient_id = %s "
                "AND (created_at, id) > (%s, %s) ORDER BY created_at, id LIMIT %s",
                (patient_id, after[0], after[1], limit),
            )
        return [_note(r) for r in rows]

    def bump_note_version(
        self,
        note_id: str,
        expected_version: int,
        kind: str,
        encounter_at: datetime | None,
        now: datetime,
    ) -> NoteRow | None:
        """Conditional update: None when the note moved past expected_version."""
        row = self._one(
            "UPDATE notes SET current_version = current_version + 1, kind = %s,"
            " encounter_at = %s, updated_at = %s "
            f"WHERE id = %s AND current_version = %s AND status = 'current' "
            f"RETURNING {NOTE_COLUMNS}",
            (kind, encounter_at, now, note_id, expected_version),
        )
        return _note(row) if row else None

    def mark_entered_in_error(self, note_id: str, now: datetime) -> bool:
        cur = self.conn.execute(
            "UPDATE notes SET status = 'entered-in-error', updated_at = %s "
            "WHERE id = %s AND status = 'current'",
            (now, note_id),
        )
        return cur.rowcount == 1

    def note_with_current_version(
        self, tenant_id: str, note_id: str
    ) -> tuple[NoteRow, NoteVersionRow | None] | None:
        row = self._one(
            "SELECT n.id, n.tenant_id, n.patient_id, n.kind, n.status, n.current_version,"
            " n.encounter_at, n.created_by, n.created_at, n.updated_at,"
            " v.note_id, v.version, v.sealed, v.author_id, v.created_at AS v_created_at "
            "FROM notes n LEFT JOIN note_versions v ON v.note_id = n.id"
            " AND v.version = n.current_version WHERE n.tenant_id = %s AND n.id = %s",
            (tenant_id, note_id),
        )
        if row is None:
            return None
        version = (
            NoteVersionRow(
                note_id=str(row["note_id"]),
                version=row["version"],
                sealed=bytes(row["sealed"]),
                author_id=str(row["author_id"]),
                created_at=row["v_created_at"],
            )
            if row["note_id"] is not None
            else None
        )
        return _note(row), version

    def note_version(self, note_id: str, version: int) -> NoteVersionRow | None:
        row = self._one(
            "SELECT note_id, version, sealed, author_id, created_at FROM note_versions "
            "WHERE note_id = %s AND version = %s",
            (note_id, version),
        )
        return _version(row) if row else None

    def current_versions(self, note_ids: list[str]) -> dict[str, NoteVersionRow]:
        rows = self._all(
            "SELECT v.note_id, v.version, v.sealed, v.author_id, v.created_at FROM notes n "
            "JOIN note_versions v ON v.note_id = n.id AND v.version = n.current_version "
            "WHERE n.id = ANY(%s)",
            (note_ids,),
        )
        return {str(r["note_id"]): _version(r) for r in rows}

    def note_versions(self, note_id: str) -> list[NoteVersionRow]:
        rows = self._all(
            "SELECT note_id, version, sealed, author_id, created_at FROM note_versions "
            "WHERE note_id = %s ORDER BY version",
            (note_id,),
        )
        return [_version(r) for r in rows]
