"""P16, regressions from the attack review: a temporary table cannot swallow the log or the
cap count, release rows are booked only at READ COMMITTED, note content cannot be rolled back nor
keys relabelled in place, a far-future release is clamped, and every function of the schema
pins its search_path with pg_temp last."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import psycopg.errors
from flask import Flask

from service.config import Budgets
from tests.conftest import AppFactory
from tests.helpers import Api, StackHelper, assert_refused_outside_read_committed, seed_patients
from tests.security.database_books import as_service_role, refused


def real_log_count(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        return int(conn.execute("SELECT count(*) FROM audit_events").fetchone()[0])


def test_a_temporary_table_cannot_swallow_the_log_or_the_cap_count(
    make_app: AppFactory, app_db_url: str, db_url: str
) -> None:
    """PostgreSQL searches a session's temporary schema first unless told otherwise: a
    temp `audit_events` or `key_releases` must not capture what the database's own
    functions write and count."""
    app = make_app(budgets=Budgets(tenant_per_hour=3))
    stack = StackHelper(app, Api(app.test_client()))
    t = stack.tenant()
    dr = stack.clinician(t)
    pids = seed_patients(stack, t, [dr], 6, with_notes=False)
    before = real_log_count(db_url)
    with as_service_role(app_db_url) as conn:
        conn.execute(
            "CREATE TEMP TABLE audit_events AS SELECT * FROM public.audit_events WITH NO DATA"
        )
        conn.execute("CREATE TEMP TABLE key_releases (tenant_id uuid, recorded_at timestamptz)")
        conn.execute("UPDATE principals SET release_per_hour = 1000000 WHERE id = %s", (dr.id,))
        assert conn.execute("SELECT count(*) FROM pg_temp.audit_events").fetchone() == (0,)
        booked = 0
        for pid in pids:
            try:
                conn.execute(
                    "INSERT INTO public.key_releases (principal_id, tenant_id, patient_id,"
                    " released_at) VALUES (%s, %s, %s, now())",
                    (dr.id, t.id, pid),
                )
                booked += 1
            except psycopg.Error as e:
                assert e.sqlstate == "SN429"
    assert booked == 3  # the cap, counted in the real ledger
    assert real_log_count(db_url) == before + 1  # the budget change, in the real log


def test_release_rows_are_booked_only_at_read_committed(
    make_app: AppFactory, app_db_url: str
) -> None:
    """A REPEATABLE READ snapshot would count none of the others' releases."""
    app = make_app(budgets=Budgets(tenant_per_hour=5))
    stack = StackHelper(app, Api(app.test_client()))
    t = stack.tenant()
    dr = stack.clinician(t)
    (pid,) = seed_patients(stack, t, [dr], 1, with_notes=False)
    assert_refused_outside_read_committed(
        app_db_url,
        "INSERT INTO key_releases (principal_id, tenant_id, patient_id, released_at)"
        " VALUES (%s, %s, %s, now())",
        (dr.id, t.id, pid),
    )


def test_content_cannot_be_rolled_back_or_keys_mislabelled_in_place(
    world: dict[str, Any], app: Flask, api: Api, app_db_url: str, db_url: str
) -> None:
    t, dr = world["t"], world["dr"]
    stack = StackHelper(app, api)
    pid = stack.patient_for(t, dr)
    note = stack.note(dr, pid, body="allergy: none known")
    r = api.put(
        f"/v1/notes/{note['id']}",
        dr.token,
        {"kind": "progress", "body": "ALLERGY: PENICILLIN"},
        headers={"If-Match": '"1"'},
    )
    assert r.status_code == 200
    voided = stack.note(dr, pid, body="written on the wrong patient")
    assert api.delete(f"/v1/notes/{voided['id']}", dr.token).status_code == 204
    with as_service_role(app_db_url) as conn:
        assert refused(conn, "UPDATE notes SET current_version = 1 WHERE id = %s", (note["id"],))
        assert refused(conn, "UPDATE notes SET status = 'current' WHERE id = %s", (voided["id"],))
        assert refused(conn, "DELETE FROM patient_keys WHERE patient_id = %s", (pid,))
        assert refused(conn, "DELETE FROM note_versions")
        assert refused(
            conn,
            "UPDATE patient_keys SET key_version = key_version + 1 WHERE patient_id = %s",
            (pid,),
        )
        # What is allowed in place leaves a record: a rewrap of a key (here a no-op).
        conn.execute("UPDATE patient_keys SET updated_at = now() WHERE patient_id = %s", (pid,))
    assert api.get(f"/v1/notes/{note['id']}", dr.token).get_json()["body"] == "ALLERGY: PENICILLIN"
    with psycopg.connect(db_url) as conn:
        actions = [
            r[0]
            for r in conn.execute(
                "SELECT action FROM audit_events WHERE tenant_id = %s"
                " AND action IN ('key.create', 'keys.rewrap') ORDER BY id",
                (t.id,),
            )
        ]
    assert actions[-1] == "keys.rewrap" and "key.create" in actions


def test_a_far_future_release_is_not_free_for_ever(
    make_app: AppFactory, app_db_url: str, db_url: str
) -> None:
    app = make_app(budgets=Budgets(tenant_per_hour=3))
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    attacker = stack.clinician(t)
    mine = seed_patients(stack, t, [attacker], 1)
    with as_service_role(app_db_url) as conn:
        conn.execute(
            "INSERT INTO key_releases (principal_id, tenant_id, patient_id, released_at)"
            " VALUES (%s, %s, %s, '2100-01-01')",
            (attacker.id, t.id, mine[0]),
        )
    with psycopg.connect(db_url) as conn:
        released_at, recorded_at = conn.execute(
            "SELECT released_at, recorded_at FROM key_releases WHERE patient_id = %s", (mine[0],)
        ).fetchone()
    assert released_at <= recorded_at + timedelta(minutes=5)  # clamped by the database


def test_every_function_of_the_schema_pins_its_search_path_with_pg_temp_last(
    db_url: str, clean_db: None
) -> None:
    """A function without a fixed search_path resolves relations in the caller's
    temporary schema first: a session could shadow what a guard reads."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT p.proname, p.proconfig FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public' AND p.proname LIKE 'sealednotes%'"
        ).fetchall()
    assert len(rows) >= 10
    unpinned = [
        name
        for name, config in rows
        if not any(
            c.startswith("search_path=") and c.rstrip().endswith("pg_temp") for c in config or []
        )
    ]
    assert unpinned == []
