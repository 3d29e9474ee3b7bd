"""P16: the database dates, places and encodes every audit record itself.

The append function ignores the shard and time a caller would give it and encodes a record
byte for byte as `audit verify` recomputes it; verify reports unknown shards and back-dated
records that only a superuser can still write; pruning the ledgers is for the maintenance role
only, keeps the last two days whatever is asked, and is audited."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import psycopg.errors
import pytest
from click.testing import CliRunner
from flask import Flask

from service.cli import main as cli
from tests.conftest import MAINTENANCE_ROLE
from tests.helpers import Api, Tenant
from tests.security.database_books import as_service_role, events, refused, verify_ok


def test_the_append_function_dates_and_places_every_record_itself(
    world: dict[str, Any], app: Flask, app_db_url: str, db_url: str
) -> None:
    t: Tenant = world["t"]
    with as_service_role(app_db_url) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT set_config('sealednotes.audit_shard', '40', true)")
        for shard in (40, -7, 2**31 - 1):
            conn.execute(
                "SELECT sealednotes_audit_append(%s, %s, NULL, 'clinician', NULL, NULL,"
                " 'note.read', 'granted', 'forged', 'req-forged', NULL)",
                (shard, t.id),
            )
        conn.execute("COMMIT")
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT shard, at FROM audit_events WHERE request_id = 'req-forged'"
        ).fetchall()
    assert len(rows) == 3
    now = datetime.now(UTC)
    for shard, at in rows:
        assert 0 <= shard < 16
        assert now - timedelta(seconds=30) < at <= now + timedelta(seconds=1)
    verify_ok(app)  # what went in through the function is a genuine, if odd, record


def test_verify_reports_unknown_shards_and_back_dated_records(
    world: dict[str, Any], app: Flask, db_url: str
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Only the schema owner or a superuser can do this (the service's role has no
        # INSERT on the log): a correctly chained record in shard 40.
        try:
            conn.execute(
                "INSERT INTO audit_events (shard, seq, prev_hash, hash, at, action, outcome)"
                " SELECT 40, 1, p, sha256(p || int4send(40) || int8send(1) ||"
                " sealednotes_audit_canonical(t, NULL, NULL, NULL, NULL, NULL, 'note.read',"
                " 'granted', NULL, NULL, NULL)), t, 'note.read', 'granted' FROM (SELECT"
                " '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea"
                " AS p, now() AS t) x"
            )
            # and a back-dated record at the end of a shard, chained correctly as well
            row = conn.execute(
                "SELECT shard, seq, hash FROM audit_events WHERE shard < 16"
                " ORDER BY shard, seq DESC LIMIT 1"
            ).fetchone()
            shard, seq, head = row
            conn.execute(
                "INSERT INTO audit_events (shard, seq, prev_hash, hash, at, action, outcome)"
                " SELECT %(s)s, %(q)s, %(p)s, sha256(%(p)s || int4send(%(s)s) || int8send(%(q)s)"
                " || sealednotes_audit_canonical(%(t)s, NULL, NULL, NULL, NULL, NULL, 'note.read',"
                " 'granted', NULL, NULL, NULL)), %(t)s, 'note.read', 'granted'",
                {"s": shard, "q": seq + 1, "p": head, "t": datetime(2020, 1, 1, tzinfo=UTC)},
            )
            report = app.extensions["sealednotes"].audit_service.verify().as_dict()
        finally:
            conn.execute("SET session_replication_role = replica")  # past the append-only trigger
            conn.execute("DELETE FROM audit_events WHERE shard = 40 OR at < '2021-01-01'")
            conn.execute("SET session_replication_role = origin")
    kinds = {p["kind"] for p in report["problems"]}
    assert not report["ok"]
    assert {"unknown-shard", "time-regression"} <= kinds
    # The next checkpoint covers every shard that exists, the unknown one included.
    heads = app.extensions["sealednotes"].store
    with heads.transaction() as tx:
        assert set(tx.audit.audit_heads()) <= set(range(16))


def test_verify_reports_malformed_records_the_table_no_longer_refuses(
    world: dict[str, Any], app: Flask, app_db_url: str, db_url: str
) -> None:
    """The log has no CHECK constraints (migration 0030): the append functions compute
    shard, sequence and hashes, the service's role cannot insert, and verify reports any
    record written by other means that breaks what those constraints held."""
    with as_service_role(app_db_url) as conn:
        assert refused(
            conn,
            "INSERT INTO audit_events (shard, seq, prev_hash, hash, at, action, outcome)"
            " VALUES (3, 0, '\\x00', '\\x00', now(), 'note.read', 'granted')",
        )
    zeros = b"\0" * 32
    with psycopg.connect(db_url, autocommit=True) as conn:
        shard, seq, head = conn.execute(
            "SELECT shard, seq, hash FROM audit_events WHERE shard BETWEEN 0 AND 15"
            " ORDER BY shard, seq DESC LIMIT 1"
        ).fetchone()
        forged = [
            (-3, 1, zeros, zeros),  # a negative shard
            (shard, 0, head, zeros),  # a sequence number of 0, after the shard's head
            (shard, seq + 1, head[:31], zeros[:31]),  # hashes one byte short
        ]
        try:
            for s, q, prev, digest in forged:
                conn.execute(
                    "INSERT INTO audit_events (shard, seq, prev_hash, hash, at, action, outcome)"
                    " VALUES (%s, %s, %s, %s, now(), 'note.read', 'granted')",
                    (s, q, prev, digest),
                )
            report = app.extensions["sealednotes"].audit_service.verify().as_dict()
        finally:
            conn.execute("SET session_replication_role = replica")  # past the append-only trigger
            conn.execute(
                "DELETE FROM audit_events WHERE shard < 0 OR seq = 0 OR length(hash) <> 32"
            )
            conn.execute("SET session_replication_role = origin")
    assert not report["ok"]
    problems = {(p["kind"], p["shard"], p["seq"]) for p in report["problems"]}
    assert ("unknown-shard", -3, 1) in problems
    assert ("out-of-order", shard, 0) in problems
    assert ("broken-link", shard, seq + 1) in problems  # the short previous hash
    assert {("hash-mismatch", s, q) for s, q, _, _ in forged} <= problems
    verify_ok(app)  # and once they are gone, the log verifies again


def test_pruning_is_for_the_maintenance_role_only_and_audited(
    world: dict[str, Any], app: Flask, api: Api, db_url: str, app_db_url: str
) -> None:
    from service.devtools.stack import url_with_user

    maintenance_url = url_with_user(db_url, MAINTENANCE_ROLE)
    run = CliRunner().invoke(
        cli,
        ["maintenance", "prune", "--older-than", "0d", "--json"],
        env={"SEALEDNOTES_DATABASE_URL": app_db_url},
    )
    assert run.exit_code == 1 and "maintenance role" in run.output
    run = CliRunner().invoke(
        cli,
        ["maintenance", "prune", "--older-than", "1d", "--json"],
        env={"SEALEDNOTES_DATABASE_URL": maintenance_url},
    )
    assert run.exit_code == 0, run.output
    out = json.loads(run.stdout)
    # Nothing younger than two days goes, whatever was asked: budgets stay whole.
    assert out["deleted"] == {"key_releases": 0, "release_denials": 0, "break_glass": 0}
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM key_releases").fetchone()[0] >= 1
        # Old rows do go (backdated here by the superuser).
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE key_releases SET recorded_at = recorded_at - interval '40 days'")
        conn.commit()
    run = CliRunner().invoke(
        cli,
        ["maintenance", "prune", "--older-than", "30d", "--json"],
        env={"SEALEDNOTES_DATABASE_URL": maintenance_url},
    )
    assert json.loads(run.stdout)["deleted"]["key_releases"] >= 1
    with psycopg.connect(maintenance_url) as conn:
        assert refused(conn, "SELECT count(*) FROM key_releases")  # reads nothing else
    log = [e for e in events(api, world["auditor"]) if e["action"] == "maintenance.prune"]
    assert log == []  # tenant-less operator records stay out of a tenant's view
    with psycopg.connect(db_url) as conn:
        reasons = [
            r[0]
            for r in conn.execute(
                "SELECT reason FROM audit_events WHERE action = 'maintenance.prune' ORDER BY id"
            )
        ]
    assert len(reasons) == 2 and "key_releases=" in reasons[-1]
    assert f"db_user={MAINTENANCE_ROLE}" in reasons[-1]
    verify_ok(app)


@pytest.mark.parametrize(
    "reason",
    [
        "plain",
        'quotes " and \\ backslashes',
        "control \x01\x02\x1f\t\n\r\b\f and DEL \x7f",
        "unicode é ü ß 中文 🙂 \u2028\u2029",
        "",
        None,
        "/slashes/ and </script>",
    ],
)
def test_the_database_encodes_records_exactly_as_the_verifier(
    db_url: str, reason: str | None
) -> None:
    """The append function computes the canonical encoding in SQL; `audit verify`
    recomputes it in Python. They must agree byte for byte, whatever a field holds."""
    from service.audit import chain as auditchain

    at = datetime(2026, 11, 30, 18, 45, 1, 234567, tzinfo=UTC)
    fields = {
        "tenant_id": str(uuid.uuid4()),
        "principal_id": None,
        "role": "clinician",
        "patient_id": str(uuid.uuid4()),
        "note_id": None,
        "action": "note.read",
        "outcome": "granted",
        "reason": reason,
        "request_id": "req-1",
        "client_addr": "2001:db8::1",
    }
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT sealednotes_audit_canonical(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (at, *(fields[k] for k in auditchain.FIELDS)),
        ).fetchone()
    assert bytes(row[0]) == auditchain.canonical(at, fields)
