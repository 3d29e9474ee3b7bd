"""Contract tests, success paths: every response of a realistic scenario (health, me,
patients, care team, notes, break-glass, admin and two-admin approvals, audit, shredding) is one
openapi.yaml declares for its operation, and every documented /v1 and health operation succeeds
at least once."""

from __future__ import annotations

import json

from service.models import Role
from tests.api.contract import EHR_PREFIXES, Checked, operations
from tests.api.contract_world import NOTE, REASON, World
from tests.conftest import METRICS_TOKEN
from tests.helpers import StackHelper


def test_every_operation_succeeds_as_documented(
    checked: Checked, world: World, stack: StackHelper
) -> None:
    w, c = world, checked
    p = w.params

    # health
    c.call("GET", "/healthz", expect=200)
    _r, ready = c.call("GET", "/readyz", expect=200)
    assert ready["status"] == "ready"
    _r, metrics = c.call("GET", "/metrics", METRICS_TOKEN, expect=200)
    assert "sealednotes_http_requests_total" in metrics
    c.call("GET", "/openapi.yaml", expect=200)

    # me
    _r, me = c.call("GET", "/v1/me", w.dr.token, expect=200)
    assert (me["id"], me["role"], me["suspended"]) == (w.dr.id, "clinician", False)
    _r, me = c.call("GET", "/v1/me", w.auditor.token, expect=200)
    assert me["role"] == "auditor"

    # patients
    r, patient = c.call(
        "POST",
        "/v1/patients",
        w.tenant.integration.token,
        json={"external_id": "MRN-new"},
        expect=201,
    )
    assert r.headers["Location"].endswith(patient["id"])
    c.call("POST", "/v1/patients", w.dr.token, json={"external_id": "MRN-by-dr"}, expect=403)
    _r, mine = c.call(
        "POST",
        "/v1/patients",
        w.tenant.integration.token,
        json={"external_id": "MRN-by-dr"},
        expect=201,
    )
    c.call(
        "PUT",
        "/v1/patients/{patient_id}/care-team/{principal_id}",
        w.tenant.integration.token,
        params={"patient_id": mine["id"], "principal_id": w.dr.id},
        json={},
        expect=201,
    )
    _r, found = c.call(
        "GET",
        "/v1/patients",
        w.tenant.integration.token,
        query={"external_id": w.external_id},
        expect=200,
    )
    assert found["id"] == w.patient_id
    _r, found = c.call(
        "GET", "/v1/patients", w.dr.token, query={"external_id": "MRN-by-dr"}, expect=200
    )
    assert found["id"] == mine["id"]  # the clinician is on the care team
    _r, got = c.call(
        "GET",
        "/v1/patients/{patient_id}",
        w.tenant.integration.token,
        params={"patient_id": patient["id"]},
        expect=200,
    )
    assert got == patient
    _r, got = c.call(
        "GET",
        "/v1/patients/{patient_id}",
        w.dr.token,
        params={"patient_id": mine["id"]},
        expect=200,
    )
    assert got["id"] == mine["id"]

    # care team: new (201), then changed (200)
    ct = "/v1/patients/{patient_id}/care-team/{principal_id}"
    team = {"patient_id": patient["id"], "principal_id": w.other_dr.id}
    c.call("PUT", ct, w.tenant.integration.token, params=team, json={}, expect=201)
    _r, member = c.call(
        "PUT",
        ct,
        w.tenant.admin.token,
        params=team,
        json={"until": "2030-01-01T00:00:00+00:00"},
        expect=200,
    )
    assert member["until"].startswith("2030-01-01")
    c.call("PUT", ct, w.tenant.integration.token, params=team, expect=200)  # no body at all

    # notes
    notes = "/v1/patients/{patient_id}/notes"
    r, created = c.call(
        "POST",
        notes,
        w.dr.token,
        params=p,
        json={**NOTE, "encounter_at": "2026-11-20T09:30:00+00:00"},
        expect=201,
    )
    assert r.headers["ETag"] == '"1"' and r.headers["Location"] == f"/v1/notes/{created['id']}"
    assert "body" not in created
    r, page = c.call("GET", notes, w.dr.token, params=p, query={"limit": "1"}, expect=200)
    assert len(page["items"]) == 1 and page["next_cursor"]
    assert "RateLimit-Remaining" not in r.headers  # metadata only: no key release
    _r, page2 = c.call(
        "GET",
        notes,
        w.dr.token,
        params=p,
        query={"limit": "1", "cursor": page["next_cursor"]},
        expect=200,
    )
    assert page2["next_cursor"] is None
    assert {n["id"] for n in page["items"] + page2["items"]} == {w.note_id, created["id"]}
    r, full = c.call("GET", notes, w.dr.token, params=p, query={"include": "content"}, expect=200)
    assert all("body" in n for n in full["items"])
    assert r.headers["RateLimit-Policy"] == "60;w=3600, 200;w=86400"

    note = {"note_id": created["id"]}
    r, read = c.call("GET", "/v1/notes/{note_id}", w.dr.token, params=note, expect=200)
    assert (read["title"], read["body"], read["version"]) == (NOTE["title"], NOTE["body"], 1)
    assert r.headers["ETag"] == '"1"'
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(r.headers.keys())
    r, amended = c.call(
        "PUT",
        "/v1/notes/{note_id}",
        w.dr.token,
        params=note,
        json={**NOTE, "body": "Doing better.", "title": None},
        headers={"If-Match": '"1"'},
        expect=200,
    )
    assert r.headers["ETag"] == '"2"' and amended["version"] == 2
    r, versions = c.call("GET", "/v1/notes/{note_id}/versions", w.dr.token, params=note, expect=200)
    assert [v["body"] for v in versions["items"]] == [NOTE["body"], "Doing better."]
    assert "RateLimit-Remaining" in r.headers
    c.call("DELETE", "/v1/notes/{note_id}", w.dr.token, params=note, expect=204)
    c.call("DELETE", "/v1/notes/{note_id}", w.dr.token, params=note, expect=204)  # idempotent
    _r, read = c.call("GET", "/v1/notes/{note_id}", w.dr.token, params=note, expect=200)
    assert read["status"] == "entered-in-error"

    # break-glass: a clinician off the care team opens the patient, then reads
    _r, glass = c.call(
        "POST",
        "/v1/patients/{patient_id}/break-glass",
        w.other_dr.token,
        params=p,
        json={"reason": REASON},
        expect=201,
    )
    assert glass["patient_id"] == w.patient_id and glass["remaining_today"] == 2
    c.call("GET", "/v1/notes/{note_id}", w.other_dr.token, params=p, expect=200)

    # admin: lowering a budget is immediate; raising it waits for a second admin
    admin2 = stack.principal(w.tenant, Role.ADMIN)
    principal = {"principal_id": w.dr.id}
    _r, target = c.call(
        "PUT",
        "/v1/admin/principals/{principal_id}/budget",
        w.tenant.admin.token,
        params=principal,
        json={"per_hour": 10, "per_day": None},
        expect=200,
    )
    assert (target["release_per_hour"], target["release_per_day"]) == (10, None)
    _r, me = c.call("GET", "/v1/me", w.dr.token, expect=200)
    assert me["budget"]["hour"]["limit"] == 10
    r, pending = c.call(
        "PUT",
        "/v1/admin/principals/{principal_id}/budget",
        w.tenant.admin.token,
        params=principal,
        json={"per_hour": 90},
        expect=202,
    )
    approval = {"approval_id": pending["approval"]["id"]}
    assert r.headers["Location"].endswith(approval["approval_id"])
    _r, listed = c.call(
        "GET", "/v1/admin/approvals", admin2.token, query={"status": "pending"}, expect=200
    )
    assert [a["id"] for a in listed["items"]] == [approval["approval_id"]]
    c.call(  # not by the requester itself
        "POST",
        "/v1/admin/approvals/{approval_id}/approve",
        w.tenant.admin.token,
        params=approval,
        expect=403,
    )
    _r, decided = c.call(
        "POST",
        "/v1/admin/approvals/{approval_id}/approve",
        admin2.token,
        params=approval,
        expect=200,
    )
    assert decided["approval"]["status"] == "approved"
    assert decided["result"]["release_per_hour"] == 90
    _r, me = c.call("GET", "/v1/me", w.dr.token, expect=200)
    assert me["budget"]["hour"]["limit"] == 90
    _r, pending = c.call(
        "PUT",
        "/v1/admin/principals/{principal_id}/budget",
        w.tenant.admin.token,
        params=principal,
        json={"per_day": 900},
        expect=202,
    )
    _r, rejected = c.call(
        "POST",
        "/v1/admin/approvals/{approval_id}/reject",
        admin2.token,
        params={"approval_id": pending["approval"]["id"]},
        expect=200,
    )
    assert rejected["approval"]["status"] == "rejected" and rejected["result"] == {}
    _r, unlocked = c.call(
        "POST",
        "/v1/admin/principals/{principal_id}/unlock",
        w.tenant.admin.token,
        params=principal,
        expect=200,
    )
    assert unlocked["suspended"] is False
    decoy = "/v1/admin/patients/{patient_id}/decoy"
    _r, flag = c.call(
        "PUT", decoy, w.tenant.admin.token, params=team, json={"decoy": True}, expect=200
    )
    assert flag == {"patient_id": patient["id"], "decoy": True}
    _r, pending = c.call(  # disarming waits for a second admin
        "PUT", decoy, w.tenant.admin.token, params=team, json={"decoy": False}, expect=202
    )
    assert pending["approval"]["kind"] == "decoy-clear"

    # care team removal last: the clinician loses access
    c.call("DELETE", ct, w.tenant.integration.token, params=team, expect=204)

    # audit: the log of all of the above, filtered and paged; it carries no health data
    events = "/v1/audit/events"
    _r, log = c.call("GET", events, w.auditor.token, expect=200)
    text = json.dumps(log)
    for secret in (w.external_id, "MRN-new", NOTE["body"], "Doing better.", "baseline body"):
        assert secret not in text
    _r, page = c.call(
        "GET",
        events,
        w.auditor.token,
        query={
            "patient_id": w.patient_id,
            "principal_id": w.dr.id,
            "action": "note.read",
            "outcome": "granted",
            "since": "2000-01-01T00:00:00+00:00",
            "until": "2999-01-01T00:00:00Z",
            "limit": "1",
        },
        expect=200,
    )
    assert [e["action"] for e in page["items"]] == ["note.read"] and page["next_cursor"]
    _r, page2 = c.call(
        "GET",
        events,
        w.auditor.token,
        query={"action": "note.read", "cursor": page["next_cursor"]},
        expect=200,
    )
    assert all(e["id"] > page["items"][0]["id"] for e in page2["items"])
    _r, report = c.call("GET", "/v1/audit/verify", w.auditor.token, expect=200)
    assert report["ok"] is True and report["checked"] >= len(log["items"])

    # crypto-shredding, last: two admins; cancellable (by two admins) until the key goes
    _r, pending = c.call(
        "POST",
        "/v1/admin/patients/{patient_id}/shred",
        w.tenant.admin.token,
        params=team,
        json={"reason": "erasure request 7"},
        expect=202,
    )
    _r, decided = c.call(
        "POST",
        "/v1/admin/approvals/{approval_id}/approve",
        admin2.token,
        params={"approval_id": pending["approval"]["id"]},
        expect=200,
    )
    assert decided["result"]["patient_id"] == patient["id"]
    _r, pending = c.call(
        "DELETE", "/v1/admin/patients/{patient_id}/shred", admin2.token, params=team, expect=202
    )
    assert pending["approval"]["kind"] == "shred-cancel"

    ok = {(m, path) for m, path, status in c.contract.seen if 200 <= status < 300}
    documented = {
        (o.method, o.path)
        for o in operations(c.contract.spec)
        if not o.path.startswith(EHR_PREFIXES)
    }
    missing = sorted(documented - ok)
    assert not missing, f"operations never exercised with success: {missing}"
