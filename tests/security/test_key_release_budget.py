"""P4-P7, P10: care-team access and the key-release budget, attacked for real."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from flask import Flask

from service.clock import ManualClock
from service.config import Budgets
from service.models import Role
from tests.conftest import METRICS_TOKEN, AppFactory
from tests.helpers import Api, StackHelper, Who, seed_patients


def audited_request_ids(db_url: str) -> set[str]:
    with psycopg.connect(db_url) as conn:
        return {r[0] for r in conn.execute("SELECT request_id FROM audit_events")}


def enumerate_patient(api: Api, who: Who, patient_id: str, sent: list[str]) -> bool:
    """Try every content path for one patient; True if any returned plaintext."""
    leaked = False

    def get(path: str) -> Any:
        rid = uuid.uuid4().hex
        sent.append(rid)
        return api.get(path, who.token, headers={"X-Request-Id": rid})

    r = get(f"/v1/patients/{patient_id}/notes?include=content")
    if r.status_code == 200:
        items = r.get_json()["items"]
        leaked |= any("body" in n for n in items)
        for n in items:
            r1 = get(f"/v1/notes/{n['id']}")
            leaked |= r1.status_code == 200 and "body" in r1.get_json()
            r2 = get(f"/v1/notes/{n['id']}/versions")
            leaked |= r2.status_code == 200 and bool(r2.get_json()["items"])
    else:
        # Without the list, go straight at notes the attacker may have learnt of.
        r = get(f"/v1/patients/{patient_id}/notes")
        for n in r.get_json().get("items", []) if r.status_code == 200 else []:
            r1 = get(f"/v1/notes/{n['id']}")
            leaked |= r1.status_code == 200
            r2 = get(f"/v1/notes/{n['id']}/versions")
            leaked |= r2.status_code == 200
    return leaked


def test_attack_drill_one_hijacked_account(
    api: Api, stack: StackHelper, app: Flask, db_url: str
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    patients = seed_patients(stack, t, [dr], 1000)
    sent: list[str] = []
    leaked = {p for p in patients if enumerate_patient(api, dr, p, sent)}

    assert len(leaked) == 60  # exactly one hour's budget, not one more
    me = api.get("/v1/me", dr.token)
    assert me.status_code == 403 and me.get_json()["type"].endswith("/account-suspended")
    alerts = app.extensions["sealednotes"].alerts.sent
    assert any(a["alert"] == "principal-suspended" and a["principal_id"] == dr.id for a in alerts)
    metrics = api.get("/metrics", METRICS_TOKEN).get_data(as_text=True)
    assert 'sealednotes_suspensions_total{cause="repeated-budget-denials"} 1.0' in metrics
    missing = set(sent) - audited_request_ids(db_url)
    assert len(sent) > 1000 and not missing  # 100% of the attempts are in the access log


def test_attack_drill_ten_hijacked_accounts_capped_by_tenant(
    make_app: AppFactory, db_url: str
) -> None:
    app = make_app(budgets=Budgets(tenant_per_hour=200))
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    doctors = [stack.clinician(t) for _ in range(10)]
    patients = seed_patients(stack, t, doctors, 100)
    sent: list[str] = []
    leaked: dict[str, set[str]] = {d.id: set() for d in doctors}
    for p in patients:  # all accounts at once, round robin
        for d in doctors:
            if enumerate_patient(api, d, p, sent):
                leaked[d.id].add(p)
    total = sum(len(v) for v in leaked.values())
    assert total == 200  # the tenant cap, not 10 x 60 = 600
    assert all(len(v) <= 60 for v in leaked.values())
    assert not set(sent) - audited_request_ids(db_url)


def test_normal_day_and_morning_review_get_no_denials(make_app: AppFactory) -> None:
    start = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    clock = ManualClock(start)
    app = make_app(clock=clock)
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    dr = stack.clinician(t)
    rng = random.Random(42)

    # A morning results review: 55 patients in 30 minutes.
    review = seed_patients(stack, t, [dr], 55)
    for p in review:
        r = api.get(f"/v1/patients/{p}/notes?include=content", dr.token)
        assert r.status_code == 200, r.get_json()
        clock.advance(timedelta(seconds=30))
    assert int(r.headers["RateLimit-Remaining"]) == 5

    # The rest of the day: 40 distinct patients, each read 3-5 times, 8:00-18:00.
    clock.set(start + timedelta(hours=1))
    day = review[:15] + seed_patients(stack, t, [dr], 25)
    reads = [p for p in day for _ in range(rng.randint(3, 5))]
    times = sorted(rng.uniform(0, 10 * 3600) for _ in reads)
    rng.shuffle(reads)
    statuses = []
    for p, offset in zip(reads, times, strict=True):
        clock.set(start + timedelta(hours=1, seconds=offset))
        statuses.append(api.get(f"/v1/patients/{p}/notes?include=content", dr.token).status_code)
    assert statuses.count(200) == len(reads)

    # One patient past the hourly budget is refused, with Retry-After.
    clock.set(start + timedelta(hours=12))
    burst = seed_patients(stack, t, [dr], 61)
    codes = [api.get(f"/v1/patients/{p}/notes?include=content", dr.token) for p in burst]
    assert [c.status_code for c in codes[:60]] == [200] * 60
    assert codes[60].status_code == 429
    assert int(codes[60].headers["Retry-After"]) > 0
    assert codes[60].content_type == "application/problem+json"


def test_rereads_within_the_hour_are_free(make_app: AppFactory) -> None:
    app = make_app(budgets=Budgets(per_hour=2))
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    dr = stack.clinician(t)
    a, b, c = seed_patients(stack, t, [dr], 3)
    for p in (a, b):
        assert api.get(f"/v1/patients/{p}/notes?include=content", dr.token).status_code == 200
    for _ in range(10):
        for p in (a, b):
            r = api.get(f"/v1/patients/{p}/notes?include=content", dr.token)
            assert r.status_code == 200
    assert r.headers["RateLimit-Remaining"] == "0"
    r = api.get(f"/v1/patients/{c}/notes?include=content", dr.token)
    assert r.status_code == 429
    assert r.get_json()["scope"] == "principal-hour"
    assert api.get("/v1/me", dr.token).get_json()["budget"]["hour"]["remaining"] == 0


def test_key_cache_hit_still_passes_budget_and_audit(make_app: AppFactory, db_url: str) -> None:
    clock = ManualClock(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    app = make_app(clock=clock, budgets=Budgets(per_hour=1))
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    dr = stack.clinician(t)
    a, b = seed_patients(stack, t, [dr], 2)
    note_a = api.get(f"/v1/patients/{a}/notes", dr.token).get_json()["items"][0]["id"]
    assert (
        api.get(f"/v1/notes/{note_a}", dr.token, headers={"X-Request-Id": "r1"}).status_code == 200
    )
    assert (
        api.get(f"/v1/notes/{note_a}", dr.token, headers={"X-Request-Id": "r2"}).status_code == 200
    )
    cache = app.extensions["sealednotes"].cache
    assert cache.hits >= 1  # the second read was served from the cache...
    assert {"r1", "r2"} <= audited_request_ids(db_url)  # ...and audited all the same

    clock.advance(timedelta(minutes=61))
    assert api.get(f"/v1/patients/{b}/notes?include=content", dr.token).status_code == 200
    # Patient A's key is still in the cache, but the budget says no.
    r = api.get(f"/v1/notes/{note_a}", dr.token)
    assert r.status_code == 429


def test_care_team_gate_forbidden_looks_like_missing(api: Api, stack: StackHelper) -> None:
    t = stack.tenant()
    dr, other = stack.clinician(t), stack.clinician(t)
    mine = stack.patient_for(t, dr)
    theirs = stack.patient_for(t, other)
    note = stack.note(other, theirs, body="not yours")

    def strip(r: Any) -> dict[str, Any]:
        body = dict(r.get_json())
        body.pop("request_id")
        return body

    missing = api.get(f"/v1/patients/{uuid.uuid4()}/notes?include=content", dr.token)
    forbidden = api.get(f"/v1/patients/{theirs}/notes?include=content", dr.token)
    assert missing.status_code == forbidden.status_code == 404
    assert strip(missing) == strip(forbidden)
    r1 = api.get(f"/v1/notes/{note['id']}", dr.token)
    r2 = api.get(f"/v1/notes/{uuid.uuid4()}", dr.token)
    assert r1.status_code == r2.status_code == 404 and strip(r1) == strip(r2)
    r = api.post(f"/v1/patients/{theirs}/notes", dr.token, {"kind": "other", "body": "x"})
    assert r.status_code == 404
    assert api.get(f"/v1/patients/{mine}/notes", dr.token).status_code == 200

    # A care-team membership that has ended no longer grants access.
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    r = api.put(f"/v1/patients/{mine}/care-team/{dr.id}", t.integration.token, {"until": past})
    assert r.status_code == 200
    assert api.get(f"/v1/patients/{mine}/notes", dr.token).status_code == 404
    r = api.delete(f"/v1/patients/{theirs}/care-team/{other.id}", t.integration.token)
    assert r.status_code == 204
    assert api.get(f"/v1/notes/{note['id']}", other.token).status_code == 404


def test_roles_never_see_note_content(api: Api, stack: StackHelper) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    note = stack.note(dr, pid)
    auditor = stack.principal(t, Role.AUDITOR)
    for who in (t.integration, t.admin, auditor):
        for path in (
            f"/v1/notes/{note['id']}",
            f"/v1/notes/{note['id']}/versions",
            f"/v1/patients/{pid}/notes?include=content",
        ):
            r = api.get(path, who.token)
            assert r.status_code == 403, (who, path)
    r = api.put(f"/v1/patients/{pid}/care-team/{dr.id}", dr.token, {})
    assert r.status_code == 403  # clinicians do not grant themselves access


def test_decoy_read_suspends_at_once_and_two_admins_unlock(
    api: Api, stack: StackHelper, app: Flask
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    real, decoy = seed_patients(stack, t, [dr], 2)
    r = api.put(f"/v1/admin/patients/{decoy}/decoy", t.admin.token, {"decoy": True})
    assert r.status_code == 200
    assert api.get(f"/v1/patients/{real}/notes?include=content", dr.token).status_code == 200
    r = api.get(f"/v1/patients/{decoy}/notes?include=content", dr.token)
    assert r.status_code == 403 and r.get_json()["type"].endswith("/account-suspended")
    assert api.get(f"/v1/patients/{real}/notes?include=content", dr.token).status_code == 403
    alerts = app.extensions["sealednotes"].alerts.sent
    assert any(a["alert"] == "decoy-accessed" and a["patient_id"] == decoy for a in alerts)

    assert api.post(f"/v1/admin/principals/{dr.id}/unlock", dr.token).status_code == 403
    r = api.post(f"/v1/admin/principals/{dr.id}/unlock", t.admin.token)
    assert r.status_code == 202  # suspended by a decoy: a second admin must approve
    assert api.get(f"/v1/patients/{real}/notes?include=content", dr.token).status_code == 403
    approval = r.get_json()["approval"]["id"]
    assert api.post(f"/v1/admin/approvals/{approval}/approve", t.admin.token).status_code == 403
    admin2 = stack.principal(t, Role.ADMIN)
    r = api.post(f"/v1/admin/approvals/{approval}/approve", admin2.token)
    assert r.status_code == 200 and r.get_json()["result"]["suspended"] is False
    assert api.get(f"/v1/patients/{real}/notes?include=content", dr.token).status_code == 200


def test_break_glass_works_past_the_budget_and_is_limited(
    make_app: AppFactory, db_url: str
) -> None:
    app = make_app(budgets=Budgets(per_hour=1, break_glass_per_day=3))
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    dr, colleague = stack.clinician(t), stack.clinician(t)
    mine = seed_patients(stack, t, [dr], 2)
    others = seed_patients(stack, t, [colleague], 4)
    assert api.get(f"/v1/patients/{mine[0]}/notes?include=content", dr.token).status_code == 200
    assert api.get(f"/v1/patients/{mine[1]}/notes?include=content", dr.token).status_code == 429

    reason = "Unconscious patient in ED, history needed"
    r = api.post(f"/v1/patients/{others[0]}/break-glass", dr.token, {"reason": "too short"})
    assert r.status_code == 422
    assert api.get(f"/v1/patients/{others[0]}/notes?include=content", dr.token).status_code == 404
    r = api.post(f"/v1/patients/{others[0]}/break-glass", dr.token, {"reason": reason})
    assert r.status_code == 201 and r.get_json()["remaining_today"] == 2
    r = api.get(
        f"/v1/patients/{others[0]}/notes?include=content",
        dr.token,
        headers={"X-Request-Id": "glass-read"},
    )
    assert r.status_code == 200 and r.get_json()["items"][0]["body"]
    for p in others[1:3]:
        assert (
            api.post(f"/v1/patients/{p}/break-glass", dr.token, {"reason": reason}).status_code
            == 201
        )
    r = api.post(f"/v1/patients/{others[3]}/break-glass", dr.token, {"reason": reason})
    assert r.status_code == 429 and r.headers["Retry-After"]

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT action, outcome, reason FROM audit_events WHERE principal_id = %s"
            " AND action = 'break-glass' ORDER BY id",
            (dr.id,),
        ).fetchall()
        read = conn.execute(
            "SELECT outcome, reason FROM audit_events WHERE request_id = 'glass-read'"
            " AND action = 'note.list-content'"
        ).fetchone()
    assert [r[1] for r in rows] == ["granted"] * 3 + ["throttled"]
    assert rows[0][2] == reason  # the clinician's justification is kept for review
    assert read == ("granted", "break-glass")
    alerts = app.extensions["sealednotes"].alerts.sent
    assert sum(a["alert"] == "break-glass-opened" for a in alerts) == 3


def test_admin_per_principal_budget_override(make_app: AppFactory) -> None:
    app = make_app()
    api = Api(app.test_client())
    stack = StackHelper(app, api)
    t = stack.tenant()
    dr = stack.clinician(t)
    r = api.put(f"/v1/admin/principals/{dr.id}/budget", t.admin.token, {"per_hour": 2})
    assert r.status_code == 200 and r.get_json()["release_per_hour"] == 2
    assert api.get("/v1/me", dr.token).get_json()["budget"]["hour"]["limit"] == 2
    ps = seed_patients(stack, t, [dr], 3)
    codes = [api.get(f"/v1/patients/{p}/notes?include=content", dr.token).status_code for p in ps]
    assert codes == [200, 200, 429]


def test_registration_belongs_to_the_ehr_so_squatting_yields_nothing(
    api: Api, stack: StackHelper, db_url: str
) -> None:
    """A clinician registering unused record numbers (to be on the real patient's care
    team later) gets 403 for every one, existing or not, and gains nothing."""
    t = stack.tenant()
    dr, treating = stack.clinician(t), stack.clinician(t)
    stack.patient(t, external_id="SSN-0")
    codes = [
        api.post("/v1/patients", dr.token, {"external_id": f"SSN-{i}"}).status_code
        for i in range(30)
    ]
    assert codes == [403] * 30  # the same answer whether the number exists or not
    real = stack.patient(t, external_id="SSN-7")  # the EHR registers the real patient
    stack.add_to_care_team(t, real, treating)
    stack.note(treating, real, body="the treating clinician's note")
    assert api.get(f"/v1/patients/{real}/notes?include=content", dr.token).status_code == 404
    assert api.get("/v1/me", dr.token).status_code == 200  # refused, not suspended
    with psycopg.connect(db_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM care_team WHERE principal_id = %s", (dr.id,)
        ).fetchone() == (0,)


def test_writes_under_break_glass_are_audited_as_such(
    api: Api, stack: StackHelper, db_url: str
) -> None:
    t = stack.tenant()
    dr, colleague = stack.clinician(t), stack.clinician(t)
    pid = stack.patient_for(t, colleague)
    reason = "Covering the night shift, urgent medication review"
    assert (
        api.post(f"/v1/patients/{pid}/break-glass", dr.token, {"reason": reason}).status_code == 201
    )
    r = api.post(f"/v1/patients/{pid}/notes", dr.token, {"kind": "other", "body": "seen at night"})
    assert r.status_code == 201
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT outcome, reason FROM audit_events WHERE action = 'note.create'"
            " AND note_id = %s",
            (r.get_json()["id"],),
        ).fetchone()
    assert row == ("granted", "break-glass")
