"""P2: ciphertext and wrapped keys are bound to their row: swapping them fails closed."""

from __future__ import annotations

import psycopg
import pytest
from flask import Flask

from tests.helpers import Api, StackHelper


def sql(db_url: str, query: str, params: tuple[object, ...] = ()) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(query, params)


def assert_integrity_failure(r: object, *secrets: str) -> None:
    assert r.status_code == 500  # type: ignore[attr-defined]
    problem = r.get_json()  # type: ignore[attr-defined]
    assert problem["type"].endswith("/integrity-failure")
    text = r.get_data(as_text=True)  # type: ignore[attr-defined]
    for s in secrets:
        assert s not in text


@pytest.fixture
def two_patients(stack: StackHelper) -> dict[str, object]:
    t = stack.tenant()
    dr = stack.clinician(t)
    p1 = stack.patient_for(t, dr)
    p2 = stack.patient_for(t, dr)
    n1 = stack.note(dr, p1, body="alpha secret one")
    n1b = stack.note(dr, p1, body="alpha secret two")
    n2 = stack.note(dr, p2, body="beta secret")
    return {"dr": dr, "p1": p1, "p2": p2, "n1": n1["id"], "n1b": n1b["id"], "n2": n2["id"]}


def test_note_ciphertext_moved_to_another_note_of_same_patient(
    api: Api, app: Flask, db_url: str, two_patients: dict[str, object]
) -> None:
    d = two_patients
    sql(
        db_url,
        "UPDATE note_versions SET sealed = (SELECT sealed FROM note_versions WHERE note_id = %s)"
        " WHERE note_id = %s",
        (d["n1"], d["n1b"]),
    )
    r = api.get(f"/v1/notes/{d['n1b']}", d["dr"].token)  # type: ignore[attr-defined]
    assert_integrity_failure(r, "alpha secret one")
    assert api.get(f"/v1/notes/{d['n1']}", d["dr"].token).status_code == 200  # type: ignore[attr-defined]


def test_note_ciphertext_moved_to_another_patient(
    api: Api, db_url: str, two_patients: dict[str, object]
) -> None:
    d = two_patients
    sql(
        db_url,
        "UPDATE note_versions SET sealed = (SELECT sealed FROM note_versions WHERE note_id = %s)"
        " WHERE note_id = %s",
        (d["n1"], d["n2"]),
    )
    r = api.get(f"/v1/notes/{d['n2']}", d["dr"].token)  # type: ignore[attr-defined]
    assert_integrity_failure(r, "alpha secret one", "beta secret")


def test_older_version_replayed_as_current(api: Api, stack: StackHelper, db_url: str) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    note = stack.note(dr, pid, body="version one")
    r = api.put(
        f"/v1/notes/{note['id']}",
        dr.token,
        {"kind": "progress", "body": "version two"},
        headers={"If-Match": '"1"'},
    )
    assert r.status_code == 200
    sql(
        db_url,
        "UPDATE note_versions SET sealed = (SELECT sealed FROM note_versions"
        " WHERE note_id = %s AND version = 1) WHERE note_id = %s AND version = 2",
        (note["id"], note["id"]),
    )
    assert_integrity_failure(api.get(f"/v1/notes/{note['id']}", dr.token), "version one")


def test_wrapped_key_moved_to_another_patient(
    api: Api, app: Flask, db_url: str, two_patients: dict[str, object]
) -> None:
    d = two_patients
    app.extensions["sealednotes"].cache.clear()
    sql(
        db_url,
        "UPDATE patient_keys SET wrapped_key = (SELECT wrapped_key FROM patient_keys"
        " WHERE patient_id = %s) WHERE patient_id = %s",
        (d["p1"], d["p2"]),
    )
    r = api.get(f"/v1/notes/{d['n2']}", d["dr"].token)  # type: ignore[attr-defined]
    assert_integrity_failure(r, "alpha secret", "beta secret")
    # Also with both the wrapped key and the ciphertext moved together.
    sql(
        db_url,
        "UPDATE note_versions SET sealed = (SELECT sealed FROM note_versions WHERE note_id = %s)"
        " WHERE note_id = %s",
        (d["n1"], d["n2"]),
    )
    r = api.get(f"/v1/notes/{d['n2']}", d["dr"].token)  # type: ignore[attr-defined]
    assert_integrity_failure(r, "alpha secret", "beta secret")
