"""P8: the access log is tamper-evident against a superuser. `audit verify` (and the CLI)
finds a changed field, a deleted, inserted or reordered record, a truncated tail, a chain
rewritten with recomputed hashes (by the signed checkpoint) and a forged checkpoint; a large
untampered log verifies."""

from __future__ import annotations

import json
import secrets
from typing import Any

from click.testing import CliRunner
from flask import Flask

from service.audit import chain as auditchain
from service.cli import main as cli
from tests.security.audit_log import cli_env, longest_shard, superuser, verify


def test_changed_field_is_found(busy_log: dict[str, Any], app: Flask, db_url: str) -> None:
    _, rows = longest_shard(db_url)
    victim = rows[2][1]
    with superuser(db_url) as conn:
        conn.execute(
            "UPDATE audit_events SET outcome = 'granted', reason = 'forged-by-dba' WHERE id = %s",
            (victim,),
        )
    report = verify(app)
    assert not report["ok"]
    assert report["first_bad"]["record_id"] == victim
    assert report["first_bad"]["kind"] == "hash-mismatch"


def test_deleted_record_is_found(busy_log: dict[str, Any], app: Flask, db_url: str) -> None:
    _, rows = longest_shard(db_url)
    victim, successor = rows[2][1], rows[3][1]
    with superuser(db_url) as conn:
        conn.execute("DELETE FROM audit_events WHERE id = %s", (victim,))
    report = verify(app)
    assert not report["ok"]
    assert report["first_bad"]["record_id"] == successor
    assert report["first_bad"]["kind"] == "missing-records"


def test_inserted_record_is_found(busy_log: dict[str, Any], app: Flask, db_url: str) -> None:
    shard, rows = longest_shard(db_url)
    k = rows[2][0]  # insert a forged record at position k, renumbering the rest
    with superuser(db_url) as conn:
        conn.execute(
            "UPDATE audit_events SET seq = seq + 1000000 WHERE shard = %s AND seq >= %s",
            (shard, k),
        )
        conn.execute(
            "UPDATE audit_events SET seq = seq - 999999 WHERE shard = %s AND seq > 1000000",
            (shard,),
        )
        prev = conn.execute(
            "SELECT hash, at FROM audit_events WHERE shard = %s AND seq = %s", (shard, k - 1)
        ).fetchone()
        fields = {"action": "note.read", "outcome": "granted", "reason": None}
        forged_hash = auditchain.link(prev[0], shard, k, prev[1], fields)  # a well-formed fake
        forged = conn.execute(
            "INSERT INTO audit_events (shard, seq, prev_hash, hash, at, action, outcome)"
            " VALUES (%s, %s, %s, %s, %s, 'note.read', 'granted') RETURNING id",
            (shard, k, prev[0], forged_hash, prev[1]),
        ).fetchone()[0]
    report = verify(app)
    assert not report["ok"]
    bad = report["first_bad"]
    # The chain breaks right after the forged record, and the report names it.
    assert bad["seq"] == k + 1 and bad["shard"] == shard
    assert f"previous record id {forged}" in bad["detail"]


def test_reordered_records_are_found(busy_log: dict[str, Any], app: Flask, db_url: str) -> None:
    _shard, rows = longest_shard(db_url)
    (s1, id1), (s2, id2) = rows[1], rows[2]
    with superuser(db_url) as conn:
        conn.execute("UPDATE audit_events SET seq = 9999999 WHERE id = %s", (id1,))
        conn.execute("UPDATE audit_events SET seq = %s WHERE id = %s", (s1, id2))
        conn.execute("UPDATE audit_events SET seq = %s WHERE id = %s", (s2, id1))
    report = verify(app)
    assert not report["ok"]
    assert report["first_bad"]["record_id"] in (id1, id2)
    assert report["first_bad"]["kind"] in ("broken-link", "hash-mismatch", "time-regression")


def test_truncated_tail_is_found(busy_log: dict[str, Any], app: Flask, db_url: str) -> None:
    shard, rows = longest_shard(db_url)
    with superuser(db_url) as conn:
        conn.execute("DELETE FROM audit_events WHERE shard = %s AND seq > %s", (shard, rows[-3][0]))
    report = verify(app)
    assert not report["ok"]
    kinds = {p["kind"] for p in report["problems"]}
    assert kinds == {"truncated"}
    assert report["first_bad"]["shard"] == shard
    assert report["first_bad"]["record_id"] == rows[-3][1]  # the last record left


def test_rewritten_chain_is_caught_by_the_signed_checkpoint(
    busy_log: dict[str, Any], app: Flask, db_url: str
) -> None:
    """An attacker who recomputes every hash after a change still fails the checkpoint."""
    shard, rows = longest_shard(db_url)
    with superuser(db_url) as conn:
        conn.execute(
            "UPDATE audit_events SET reason = 'forged-by-dba' WHERE id = %s", (rows[1][1],)
        )
        prev = auditchain.GENESIS
        for row in conn.execute(
            "SELECT * FROM audit_events WHERE shard = %s ORDER BY seq", (shard,)
        ).fetchall():
            cols = [d.name for d in conn.execute("SELECT * FROM audit_events LIMIT 0").description]
            r = dict(zip(cols, row, strict=True))
            h = auditchain.link(prev, shard, r["seq"], r["at"], r)
            conn.execute(
                "UPDATE audit_events SET prev_hash = %s, hash = %s WHERE id = %s",
                (prev, h, r["id"]),
            )
            prev = h
    report = verify(app)
    assert not report["ok"]
    assert {p["kind"] for p in report["problems"]} == {"checkpoint-mismatch"}
    assert report["problems"][0]["shard"] == shard


def test_forged_checkpoint_is_found(busy_log: dict[str, Any], app: Flask, db_url: str) -> None:
    with superuser(db_url) as conn:
        conn.execute(
            "UPDATE audit_checkpoints SET payload = replace(payload, '\"total\":', '\"total\":1')"
        )
    report = verify(app)
    assert not report["ok"]
    assert report["problems"][0]["kind"] == "bad-checkpoint-signature"


def test_verify_100k_records(app: Flask, db_url: str) -> None:
    """A large untampered log verifies; the rate is printed for the closing note."""
    n = 100_000
    heads: dict[int, tuple[int, bytes]] = {}
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with (
        superuser(db_url) as conn,
        conn.cursor() as cur,
        cur.copy(
            "COPY audit_events (shard, seq, prev_hash, hash, at, tenant_id, principal_id, role,"
            " patient_id, note_id, action, outcome, reason, request_id, client_addr) FROM STDIN"
        ) as copy,
    ):
        tenant, principal = "11111111-1111-4111-8111-111111111111", secrets.token_hex(4)
        for i in range(n):
            shard = i % auditchain.SHARDS
            seq, prev = heads.get(shard, (0, auditchain.GENESIS))
            at = t0 + timedelta(milliseconds=i)
            fields = {
                "tenant_id": tenant,
                "principal_id": None,
                "role": "clinician",
                "patient_id": None,
                "note_id": None,
                "action": "note.read",
                "outcome": "granted",
                "reason": principal,
                "request_id": f"r{i}",
                "client_addr": "127.0.0.1",
            }
            h = auditchain.link(prev, shard, seq + 1, at, fields)
            copy.write_row(
                (
                    shard,
                    seq + 1,
                    prev,
                    h,
                    at,
                    tenant,
                    None,
                    "clinician",
                    None,
                    None,
                    "note.read",
                    "granted",
                    principal,
                    f"r{i}",
                    "127.0.0.1",
                )
            )
            heads[shard] = (seq + 1, h)
    app.extensions["sealednotes"].audit_service.checkpoint()
    report = verify(app)
    assert report["ok"] and report["checked"] == n
    print(f"\naudit verify: {n} records at {report['records_per_second']} records/s")


def test_cli_verify_and_checkpoint(busy_log: dict[str, Any], app: Flask, db_url: str) -> None:
    runner = CliRunner()
    env = cli_env(app.extensions["sealednotes"].settings)
    r = runner.invoke(cli, ["audit", "checkpoint", "--json"], env=env)
    assert r.exit_code == 0 and json.loads(r.stdout)["total"] > 0
    r = runner.invoke(cli, ["audit", "verify", "--json"], env=env)
    report = json.loads(r.stdout)
    assert r.exit_code == 0 and report["ok"] and report["checkpoints"] == 2
    _, rows = longest_shard(db_url)
    with superuser(db_url) as conn:
        conn.execute("UPDATE audit_events SET action = 'note.list' WHERE id = %s", (rows[0][1],))
    r = runner.invoke(cli, ["audit", "verify", "--json"], env=env)
    assert r.exit_code == 1
    assert json.loads(r.stdout)["first_bad"]["record_id"] == rows[0][1]
