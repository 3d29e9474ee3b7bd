"""P5, P6, P8 for the one-call create (migration 0029, sealednotes_create_note): a create
whose patient key the worker holds is charged, written and recorded by one statement.

Everything here runs as the service's own database role. The call writes all of it or
nothing: refused by the write limit, for a suspended account or one of another tenant,
under a key that is no longer the patient's (a re-key under way), or when its audit
record cannot be written, it leaves no note, no charge and no record. Concurrent calls
stop exactly at the limit. And the API's creates take this path (one statement after
the access check) with the record the ordinary path writes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from service.adapters.postgres.notes import NotesRepository
from service.models import NoteRow
from tests.helpers import Api, StackHelper, Tenant, Who, seed_patients
from tests.security.database_books import as_service_role

CALL = (
    "SELECT outcome FROM sealednotes_create_note(%(t)s, %(p)s, %(pt)s, %(n)s, 'progress',"
    " NULL, %(now)s, %(sealed)s, %(wrapped)s, %(ver)s, %(since)s, %(horizon)s, %(limit)s,"
    " 0, %(t)s, %(p)s, 'clinician', %(pt)s, %(n)s, 'note.create', 'granted', NULL,"
    " 'req-test', '127.0.0.1')"
)


def _key(conn: psycopg.Connection[Any], patient_id: str) -> tuple[str, int]:
    row = conn.execute(
        "SELECT wrapped_key, key_version FROM patient_keys WHERE patient_id = %s", (patient_id,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def _params(
    conn: psycopg.Connection[Any], t: Tenant, dr: Who, patient_id: str, **over: Any
) -> dict[str, Any]:
    wrapped, version = _key(conn, patient_id)
    now = datetime.now(UTC)
    return {
        "t": t.id,
        "p": dr.id,
        "pt": patient_id,
        "n": str(uuid.uuid4()),
        "now": now,
        "sealed": b"\x01" * 64,
        "wrapped": wrapped,
        "ver": version,
        "since": now - timedelta(hours=1),
        "horizon": now + timedelta(minutes=5),
        "limit": 10,
    } | over


def _written(conn: psycopg.Connection[Any], params: dict[str, Any]) -> tuple[int, int, int]:
    """(notes, write charges, audit records) of this call's note and author."""
    one = conn.execute(
        "SELECT (SELECT count(*) FROM notes WHERE id = %(n)s),"
        " (SELECT count(*) FROM principal_actions WHERE principal_id = %(p)s AND kind = 'write'),"
        " (SELECT count(*) FROM audit_events WHERE note_id = %(n)s)",
        params,
    ).fetchone()
    assert one is not None
    return one[0], one[1], one[2]


@pytest.fixture
def world(stack: StackHelper) -> tuple[Tenant, Who, list[str]]:
    t = stack.tenant()
    dr = stack.clinician(t)
    return t, dr, seed_patients(stack, t, [dr], 12)


def test_the_call_writes_the_note_its_charge_and_its_record_together(
    world: tuple[Tenant, Who, list[str]], app_db_url: str
) -> None:
    t, dr, patients = world
    with as_service_role(app_db_url) as conn:
        params = _params(conn, t, dr, patients[0])
        assert conn.execute(CALL, params).fetchone()[0] == "created"
        assert _written(conn, params) == (1, 1, 1)
        version = conn.execute(
            "SELECT version, sealed FROM note_versions WHERE note_id = %(n)s", params
        ).fetchone()
        assert version == (1, params["sealed"])


@pytest.mark.parametrize(
    "case",
    ["at-the-limit", "suspended", "other-tenant", "key-replaced", "key-of-another-patient"],
)
def test_a_refused_call_writes_nothing(
    case: str,
    world: tuple[Tenant, Who, list[str]],
    app_db_url: str,
    db_url: str,
    stack: StackHelper,
) -> None:
    t, dr, patients = world
    with as_service_role(app_db_url) as conn:
        params = _params(conn, t, dr, patients[0])
        if case == "at-the-limit":
            params["limit"] = 0
            expected = "limit"
        elif case == "suspended":
            with psycopg.connect(db_url) as owner:
                owner.execute(
                    "UPDATE principals SET suspended_at = now(), suspended_reason = 'ops'"
                    " WHERE id = %s",
                    (dr.id,),
                )
            expected = "suspended"
        elif case == "other-tenant":
            params["t"] = stack.tenant().id  # an account is only found in its own tenant
            expected = "suspended"
        elif case == "key-replaced":
            params["wrapped"] = params["wrapped"][:-4] + "AAA="
            expected = "SN412"
        else:
            params["wrapped"], params["ver"] = _key(conn, patients[1])
            expected = "SN412"
        if expected == "SN412":
            with pytest.raises(psycopg.Error) as raised:
                conn.execute(CALL, params)
            assert raised.value.sqlstate == "SN412"
        else:
            assert conn.execute(CALL, params).fetchone()[0] == expected
        assert _written(conn, params) == (0, 0, 0)


@contextmanager
def _revoked(db_url: str, privilege: str) -> Iterator[None]:
    """`privilege` (say "INSERT ON note_versions") taken from the service's role, then
    given back."""
    from tests.conftest import APP_ROLE

    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(f"REVOKE {privilege} FROM {APP_ROLE}")
    try:
        yield
    finally:
        with psycopg.connect(db_url, autocommit=True) as owner:
            owner.execute(f"GRANT {privilege} TO {APP_ROLE}")


def test_a_call_whose_record_cannot_be_written_writes_nothing(
    world: tuple[Tenant, Who, list[str]], app_db_url: str, db_url: str
) -> None:
    t, dr, patients = world
    fn = (
        "sealednotes_audit_append(integer, uuid, uuid, text, uuid, uuid, text, text, text,"
        " text, text)"
    )
    with _revoked(db_url, f"EXECUTE ON FUNCTION {fn}"), as_service_role(app_db_url) as conn:
        params = _params(conn, t, dr, patients[0])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(CALL, params)
        assert _written(conn, params) == (0, 0, 0)


def test_the_call_adds_no_right_to_the_service_role(
    world: tuple[Tenant, Who, list[str]], app_db_url: str, db_url: str
) -> None:
    """SECURITY INVOKER: each of its statements runs with the role's own grants, so it
    writes nothing the role could not write itself."""
    t, dr, patients = world
    with _revoked(db_url, "INSERT ON note_versions"), as_service_role(app_db_url) as conn:
        params = _params(conn, t, dr, patients[0])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(CALL, params)
        assert _written(conn, params) == (0, 0, 0)


def test_a_re_key_under_way_makes_the_call_wait_then_write_nothing(
    world: tuple[Tenant, Who, list[str]], app_db_url: str, db_url: str
) -> None:
    """A re-key holds the key row FOR UPDATE until it commits the new key: the call
    waits for it, then finds the key it sealed under gone, and its charge goes too."""
    t, dr, patients = world
    with as_service_role(app_db_url) as conn:
        params = _params(conn, t, dr, patients[0])
    started = threading.Event()
    with psycopg.connect(db_url) as rekey:
        rekey.execute("SELECT 1 FROM patient_keys WHERE patient_id = %s FOR UPDATE", (patients[0],))
        rekey.execute(
            "UPDATE patient_keys SET wrapped_key = wrapped_key || 'x' WHERE patient_id = %s",
            (patients[0],),
        )

        def call() -> BaseException | str:
            with as_service_role(app_db_url) as conn:
                started.set()
                try:
                    return str(conn.execute(CALL, params).fetchone()[0])
                except psycopg.Error as e:
                    return e

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(call)
            started.wait(5)
            with pytest.raises(TimeoutError):
                pending.result(timeout=0.5)  # waiting on the re-key's lock
            rekey.commit()
            outcome = pending.result(timeout=10)
    assert isinstance(outcome, psycopg.Error) and outcome.sqlstate == "SN412", outcome
    with as_service_role(app_db_url) as conn:
        assert _written(conn, params) == (0, 0, 0)


def test_concurrent_calls_stop_exactly_at_the_write_limit(
    world: tuple[Tenant, Who, list[str]], app_db_url: str
) -> None:
    t, dr, patients = world
    with as_service_role(app_db_url) as conn:
        calls = [_params(conn, t, dr, p, limit=5) for p in patients]

    def call(params: dict[str, Any]) -> str:
        with as_service_role(app_db_url) as conn:
            return str(conn.execute(CALL, params).fetchone()[0])

    with ThreadPoolExecutor(len(calls)) as pool:
        outcomes = list(pool.map(call, calls))
    assert sorted(outcomes) == ["created"] * 5 + ["limit"] * 7, outcomes
    with as_service_role(app_db_url) as conn:
        written = [_written(conn, c) for c in calls]
    assert sum(n for n, _, _ in written) == 5
    assert {charges for _, charges, _ in written} == {5}


@pytest.fixture
def one_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Whether each one-call create the API made wrote its note."""
    made: list[bool] = []
    original = NotesRepository.insert_note_charged

    def spy(self: NotesRepository, *args: Any, **kwargs: Any) -> NoteRow | None:
        stored = original(self, *args, **kwargs)
        made.append(stored is not None)
        return stored

    monkeypatch.setattr(NotesRepository, "insert_note_charged", spy)
    yield made


def test_the_apis_creates_take_the_one_call_with_the_ordinary_record(
    api: Api, stack: StackHelper, db_url: str, one_calls: list[bool]
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    first = stack.note(dr, pid, body="first: the patient's key is created")
    assert one_calls == []  # no key yet: nothing to hold
    r = api.post(
        f"/v1/patients/{pid}/notes",
        dr.token,
        {"kind": "progress", "body": "second", "encounter_at": "2026-05-01T10:00:00+02:00"},
    )
    assert r.status_code == 201, r.get_json()
    second = r.get_json()
    assert one_calls == [True]
    r = api.get(f"/v1/notes/{second['id']}", dr.token)
    assert r.status_code == 200
    assert r.get_json()["body"] == "second"
    # The note as stored, as a read shows it (the database's time zone and precision).
    for field in ("encounter_at", "created_at", "updated_at", "status", "version"):
        assert second[field] == r.get_json()[field], field
    with psycopg.connect(db_url) as conn:
        records = {
            str(row[0]): row[1:]
            for row in conn.execute(
                "SELECT note_id, tenant_id, principal_id, role, patient_id, action, outcome,"
                " reason, client_addr, request_id IS NOT NULL FROM audit_events"
                " WHERE action = 'note.create' AND patient_id = %s",
                (pid,),
            )
        }
    assert records[first["id"]] == records[second["id"]]
    assert records[second["id"]][5] == "granted"
    # An Idempotency-Key create keeps the ordinary path (its key is claimed in the
    # same transaction).
    r = api.post(
        f"/v1/patients/{pid}/notes",
        dr.token,
        {"kind": "progress", "body": "third"},
        headers={"Idempotency-Key": "k-1"},
    )
    assert r.status_code == 201
    assert one_calls == [True]
