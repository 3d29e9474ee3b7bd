"""P1: a database dump, the logs and error bodies carry no note text and no external id."""

from __future__ import annotations

import logging
import secrets
import subprocess

import pytest

from service.devtools.stack import pg_bin
from tests.helpers import Api, StackHelper


def canary(label: str) -> str:
    return f"CANARY-{label}-{secrets.token_hex(8)}"


def test_pg_dump_logs_and_errors_hold_no_canary(
    api: Api, stack: StackHelper, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    t = stack.tenant()
    dr = stack.clinician(t)
    mrn, title, body, amended = (canary(x) for x in ("MRN", "TITLE", "BODY", "AMENDED"))
    pid = stack.patient_for(t, dr, external_id=mrn)
    note = stack.note(dr, pid, body=body, title=title)
    r = api.put(
        f"/v1/notes/{note['id']}",
        dr.token,
        {"kind": "progress", "title": title, "body": amended},
        headers={"If-Match": '"1"'},
    )
    assert r.status_code == 200
    # The content does round-trip through the API...
    assert api.get(f"/v1/notes/{note['id']}", dr.token).get_json()["body"] == amended
    assert api.get(f"/v1/patients?external_id={mrn}", dr.token).get_json()["id"] == pid

    # ...and error bodies never echo it back.
    bad_bodies = [
        {"kind": body, "body": body},
        {"kind": "progress", "body": body, "title": title, "unknown": body},
        {"kind": "progress", "body": body, "encounter_at": body},
        {"kind": "progress", "body": [body]},
    ]
    for bad in bad_bodies:
        r = api.post(f"/v1/patients/{pid}/notes", dr.token, bad)
        assert 400 <= r.status_code < 500
        assert body not in r.get_data(as_text=True)
    r = api.post("/v1/patients", t.integration.token, {"external_id": mrn})
    assert r.status_code == 409 and mrn not in r.get_data(as_text=True)
    r = api.get(f"/v1/patients?external_id={mrn}x", dr.token)
    assert r.status_code == 404 and mrn not in r.get_data(as_text=True)

    dump = subprocess.run(
        [pg_bin("pg_dump"), "--data-only", "--inserts", db_url],
        check=True,
        capture_output=True,
    ).stdout
    assert len(dump) > 1000 and b"note_versions" in dump  # the dump is real
    for secret in (mrn, title, body, amended):
        assert secret.encode() not in dump, f"{secret[:14]} found in pg_dump"
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (mrn, title, body, amended):
        assert secret not in log_text
