"""P17, P18: abuse beyond one clinician, replayed against the running service.

Each scenario of the security review is replayed through the API: an admin helping a
clinician, an admin alone shredding, one account spending the tenant cap, break-glass
past the cap, vandalising writes, enumerating record numbers, auditors looking for
decoys. And a normal day for every role gets no denial at all.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from flask import Flask

from service.config import Budgets
from service.models import Role
from tests.conftest import AppFactory
from tests.helpers import Api, StackHelper, Who, seed_patients

REASON = "Unconscious patient in the emergency department, history needed"


def world(make_app: AppFactory, **budgets: Any) -> tuple[Flask, Api, StackHelper]:
    app = make_app(budgets=Budgets(**budgets))
    api = Api(app.test_client())
    return app, api, StackHelper(app, api)


def released(api: Api, who: Who, patients: list[str]) -> set[str]:
    """Patients whose note content comes back to `who`."""
    out = set()
    for pid in patients:
        r = api.get(f"/v1/patients/{pid}/notes?include=content", who.token)
        if r.status_code == 200 and any("body" in n for n in r.get_json()["items"]):
            out.add(pid)
    return out


def alerts(app: Flask, kind: str) -> list[dict[str, Any]]:
    return [a for a in app.extensions["sealednotes"].alerts.sent if a["alert"] == kind]


def test_an_admin_and_a_clinician_without_a_second_admin_get_the_clinicians_budget(
    make_app: AppFactory, db_url: str
) -> None:
    app, api, stack = world(
        make_app, per_hour=3, break_glass_per_day=2, admin_care_team_grants_per_hour=5
    )
    t = stack.tenant()
    dr, colleague = stack.clinician(t), stack.clinician(t)
    patients = seed_patients(stack, t, [colleague], 40)
    decoys = patients[:5]
    for pid in decoys:
        assert (
            api.put(f"/v1/admin/patients/{pid}/decoy", t.admin.token, {"decoy": True}).status_code
            == 200
        )
    # The admin disarms every decoy, puts the clinician on every care team, lifts its budget.
    for pid in decoys:
        r = api.put(f"/v1/admin/patients/{pid}/decoy", t.admin.token, {"decoy": False})
        assert r.status_code == 202
    codes = [
        api.put(f"/v1/patients/{pid}/care-team/{dr.id}", t.admin.token, {}).status_code
        for pid in patients[5:]
    ]
    assert codes == [201] * 5 + [202] * 30  # past the threshold: a second admin
    r = api.put(f"/v1/admin/principals/{dr.id}/budget", t.admin.token, {"per_hour": 100000})
    assert r.status_code == 202
    # The clinician takes what it can, breaking the glass on two more, and is unlocked
    # once (immediate), then again (waits for a second admin).
    got = released(api, dr, patients[5:10])
    for pid in patients[10:12]:
        assert (
            api.post(f"/v1/patients/{pid}/break-glass", dr.token, {"reason": REASON}).status_code
            == 201
        )
    got |= released(api, dr, patients[10:12])
    for _ in range(5):  # over budget: five denials suspend it
        released(api, dr, patients[5:10])
    assert api.get("/v1/me", dr.token).status_code == 403
    assert api.post(f"/v1/admin/principals/{dr.id}/unlock", t.admin.token).status_code == 200
    for _ in range(5):
        got |= released(api, dr, patients)
    assert api.get("/v1/me", dr.token).status_code == 403  # suspended again
    assert api.post(f"/v1/admin/principals/{dr.id}/unlock", t.admin.token).status_code == 202
    got |= released(api, dr, patients)
    assert api.get("/v1/me", dr.token).status_code == 403
    assert len(got) <= 3 + 2  # its hourly budget, plus its break-glass allowance
    assert alerts(app, "approval-requested")
    with psycopg.connect(db_url) as conn:
        decoy_flags = conn.execute(
            "SELECT count(*) FROM patients WHERE id = ANY(%s) AND is_decoy", (decoys,)
        ).fetchone()
    assert decoy_flags == (5,)  # still armed


def test_one_admin_shreds_nothing_at_once(make_app: AppFactory, db_url: str) -> None:
    app, api, stack = world(make_app)
    t = stack.tenant()
    dr = stack.clinician(t)
    patients = seed_patients(stack, t, [dr], 20)
    codes = [
        api.post(
            f"/v1/admin/patients/{pid}/shred", t.admin.token, {"reason": "mass erasure!!"}
        ).status_code
        for pid in patients
    ]
    assert codes == [202] * 20
    with psycopg.connect(db_url) as conn:
        keys = conn.execute(
            "SELECT count(*) FROM patient_keys WHERE patient_id = ANY(%s)", (patients,)
        ).fetchone()
        shredded = conn.execute(
            "SELECT count(*) FROM patients WHERE id = ANY(%s) AND shredded_at IS NOT NULL",
            (patients,),
        ).fetchone()
    assert keys == (20,) and shredded == (0,)
    assert released(api, dr, patients[:3]) == set(patients[:3])
    # The requester cannot approve its own requests.
    pending = api.get("/v1/admin/approvals?status=pending", t.admin.token).get_json()["items"]
    assert len(pending) == 20
    r = api.post(f"/v1/admin/approvals/{pending[0]['id']}/approve", t.admin.token)
    assert r.status_code == 403
    assert len(alerts(app, "approval-requested")) == 20


def test_someone_elses_tenant_cap_exhaustion_never_suspends_an_honest_clinician(
    make_app: AppFactory,
) -> None:
    app, api, stack = world(make_app, tenant_per_hour=5)
    t = stack.tenant()
    attacker, honest = stack.clinician(t), stack.clinician(t)
    theirs = seed_patients(stack, t, [attacker], 5)
    mine = seed_patients(stack, t, [honest], 8)
    assert len(released(api, attacker, theirs)) == 5
    codes = [
        api.get(f"/v1/patients/{pid}/notes?include=content", honest.token).status_code
        for pid in mine
    ]
    assert codes == [429] * 8
    r = api.get(f"/v1/patients/{mine[0]}/notes?include=content", honest.token)
    assert r.get_json()["scope"] == "tenant-hour"
    assert api.get("/v1/me", honest.token).status_code == 200  # never suspended
    incident = alerts(app, "tenant-cap-exhausted")
    assert incident and incident[0]["top_accounts"][0] == {
        "principal_id": attacker.id,
        "releases": 5,
    }


def test_break_glass_stays_inside_the_tenant_cap_and_refusals_count(
    make_app: AppFactory,
) -> None:
    app, api, stack = world(make_app, tenant_per_hour=3, break_glass_per_day=3)
    t = stack.tenant()
    dr, spender, colleague = stack.clinician(t), stack.clinician(t), stack.clinician(t)
    assert len(released(api, spender, seed_patients(stack, t, [spender], 3))) == 3
    others = seed_patients(stack, t, [colleague], 5)
    mine = seed_patients(stack, t, [dr], 1)
    # Break-glass on one's own care-team patient: nothing to break, no slot used.
    r = api.post(f"/v1/patients/{mine[0]}/break-glass", dr.token, {"reason": REASON})
    assert r.status_code == 409
    # With the cap spent, break-glass opens but releases nothing.
    r = api.post(f"/v1/patients/{others[0]}/break-glass", dr.token, {"reason": REASON})
    assert r.status_code == 201 and r.get_json()["remaining_today"] == 2
    r = api.get(f"/v1/patients/{others[0]}/notes?include=content", dr.token)
    assert r.status_code == 429 and r.get_json()["scope"] == "tenant-hour"
    # Refused break-glass attempts are denials: past the daily allowance, they suspend.
    for pid in others[1:3]:
        assert (
            api.post(f"/v1/patients/{pid}/break-glass", dr.token, {"reason": REASON}).status_code
            == 201
        )
    codes = [
        api.post(f"/v1/patients/{others[3]}/break-glass", dr.token, {"reason": REASON}).status_code
        for _ in range(5)
    ]
    assert codes == [429] * 5
    assert api.get("/v1/me", dr.token).status_code == 403
    assert alerts(app, "principal-suspended")


def test_vandalising_writes_stop_at_the_write_budget_with_an_alert(
    make_app: AppFactory,
) -> None:
    app, api, stack = world(make_app, writes_per_hour=60)
    t = stack.tenant()
    author, vandal = stack.clinician(t), stack.clinician(t)
    patients = seed_patients(stack, t, [author, vandal], 130)
    notes = [
        api.get(f"/v1/patients/{pid}/notes", vandal.token).get_json()["items"][0]["id"]
        for pid in patients
    ]
    codes = []
    for nid in notes:
        r = api.put(
            f"/v1/notes/{nid}",
            vandal.token,
            {"kind": "other", "body": "x"},
            headers={"If-Match": '"1"'},
        )
        codes.append(r.status_code)
        if r.status_code == 403:
            break
    assert codes[:60] == [200] * 60
    assert codes[60:65] == [429] * 5 and codes[65:] == [403]  # then suspended
    r = api.delete(f"/v1/notes/{notes[-1]}", vandal.token)
    assert r.status_code == 403
    alert = alerts(app, "action-limit-exceeded")
    assert alert and alert[0]["scope"] == "write-hour"
    # Writing again to a patient already written this hour is free.
    _, api2, stack2 = world(make_app, writes_per_hour=1)
    t2 = stack2.tenant()
    dr = stack2.clinician(t2)
    a, b = seed_patients(stack2, t2, [dr], 2)
    post = [
        api2.post(f"/v1/patients/{p}/notes", dr.token, {"kind": "other", "body": "y"}).status_code
        for p in (a, a, a, b)
    ]
    assert post == [201, 201, 201, 429]


def test_integration_enumeration_stops_at_the_lookup_limit(make_app: AppFactory) -> None:
    app, api, stack = world(make_app, lookups_per_hour=20)
    t = stack.tenant()
    codes = [
        api.get(f"/v1/patients?external_id=MRN-{i:06d}", t.integration.token).status_code
        for i in range(30)
    ]
    assert codes[:20] == [404] * 20
    assert codes[20:25] == [429] * 5 and codes[25:] == [403] * 5
    assert alerts(app, "action-limit-exceeded")[0]["scope"] == "lookup-hour"


@contextmanager
def statements(app: Flask) -> Iterator[list[str]]:
    """Every SQL statement the service sends, in order (text only)."""
    import psycopg as pg

    seen: list[str] = []
    original = pg.Connection.execute

    def traced(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        seen.append(str(query))
        return original(self, query, params, **kw)

    pg.Connection.execute = traced  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        pg.Connection.execute = original  # type: ignore[method-assign]


def test_not_yours_and_nonexistent_take_the_same_path(make_app: AppFactory) -> None:
    app, api, stack = world(make_app)
    t = stack.tenant()
    dr, other = stack.clinician(t), stack.clinician(t)
    stack.patient_for(t, other, external_id="MRN-EXISTS")
    api.get("/v1/patients?external_id=MRN-WARMUP", dr.token)
    with statements(app) as existing:
        assert api.get("/v1/patients?external_id=MRN-EXISTS", dr.token).status_code == 404
    with statements(app) as missing:
        assert api.get("/v1/patients?external_id=MRN-NOBODY", dr.token).status_code == 404
    assert existing == missing and existing


def test_no_auditor_query_lists_decoys(make_app: AppFactory) -> None:
    _app, api, stack = world(make_app)
    t = stack.tenant()
    dr = stack.clinician(t)
    auditor = stack.principal(t, Role.AUDITOR)
    _real, decoy = seed_patients(stack, t, [dr], 2)
    assert (
        api.put(f"/v1/admin/patients/{decoy}/decoy", t.admin.token, {"decoy": True}).status_code
        == 200
    )
    r = api.put(f"/v1/admin/patients/{decoy}/decoy", t.admin.token, {"decoy": False})
    assert r.status_code == 202
    events = api.get("/v1/audit/events?limit=1000", auditor.token).get_json()["items"]
    decoy_events = [
        e for e in events if e["action"] == "patient.decoy" or "decoy-clear" in (e["reason"] or "")
    ]
    assert decoy_events and all(e["patient_id"] is None for e in decoy_events)
    assert decoy not in str(decoy_events)
    for query in ("action=patient.decoy", "action=approval.request"):
        items = api.get(f"/v1/audit/events?{query}", auditor.token).get_json()["items"]
        assert items and all(e["patient_id"] != decoy for e in items), query
    for query in (f"patient_id={decoy}", f"patient_id={decoy}&action=patient.decoy"):
        items = api.get(f"/v1/audit/events?{query}", auditor.token).get_json()["items"]
        mentions = [e for e in items if "decoy" in e["action"] + (e["reason"] or "")]
        assert mentions == [], query  # a patient's records do not tell it is a decoy
    # The trip itself stays fully visible.
    assert api.get(f"/v1/patients/{decoy}/notes?include=content", dr.token).status_code == 403
    items = api.get(f"/v1/audit/events?patient_id={decoy}", auditor.token).get_json()["items"]
    assert any(e["reason"] == "decoy-patient" for e in items)


def test_a_normal_day_for_every_role_gets_no_denial(make_app: AppFactory) -> None:
    app, api, stack = world(make_app)
    t = stack.tenant()
    doctors = [stack.clinician(t) for _ in range(3)]
    auditor = stack.principal(t, Role.AUDITOR)
    admin2 = stack.principal(t, Role.ADMIN)
    statuses: list[int] = []
    # The EHR registers the day's admissions and puts them on care teams.
    for i in range(60):
        r = api.post(
            "/v1/patients", t.integration.token, {"external_id": f"ADM-{secrets.token_hex(4)}"}
        )
        statuses.append(r.status_code)
        pid = r.get_json()["id"]
        statuses.append(api.get(f"/v1/patients/{pid}", t.integration.token).status_code)
        for dr in doctors[: 1 + i % 3]:
            statuses.append(
                api.put(
                    f"/v1/patients/{pid}/care-team/{dr.id}", t.integration.token, {}
                ).status_code
            )
            if i < 15:
                statuses.append(
                    api.post(
                        f"/v1/patients/{pid}/notes", dr.token, {"kind": "progress", "body": "seen"}
                    ).status_code
                )
                r = api.get(f"/v1/patients/{pid}/notes?include=content", dr.token)
                statuses.append(r.status_code)
    # The admin lowers one budget, arms a decoy, unlocks nobody; a colleague approves a raise.
    statuses.append(
        api.put(
            f"/v1/admin/principals/{doctors[0].id}/budget", t.admin.token, {"per_hour": 40}
        ).status_code
    )
    r = api.put(f"/v1/admin/principals/{doctors[0].id}/budget", t.admin.token, {"per_hour": 70})
    statuses.append(r.status_code)
    statuses.append(
        api.post(
            f"/v1/admin/approvals/{r.get_json()['approval']['id']}/approve", admin2.token
        ).status_code
    )
    # The auditor reads and verifies the log.
    statuses.append(api.get("/v1/audit/events", auditor.token).status_code)
    statuses.append(api.get("/v1/audit/verify", auditor.token).status_code)
    assert set(statuses) <= {200, 201, 202}, sorted(set(statuses))
    assert not alerts(app, "action-limit-exceeded") and not alerts(app, "budget-exhausted")
