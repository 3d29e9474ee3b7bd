"""Contract tests, the main error paths: 401 without a valid token and 403 for the wrong role
on every operation, 404 for unknown or foreign resources, 405 with Allow, 409 conflicts, the
If-Match preconditions (428, 412, 400), 410 after a shred, and a decoy's suspension lifted by
two admins. Every response is checked against openapi.yaml."""

from __future__ import annotations

from typing import Any

from tests.api.contract import IMPLICIT_METHODS, OPERATION_METHODS, Checked, problem_type
from tests.api.contract_world import (
    NOTE,
    ROLE_FOR,
    World,
    random_params,
    second_admin_approves,
    v1_operations,
    valid_request,
)
from tests.helpers import StackHelper


def test_unauthenticated_calls_get_401_everywhere(checked: Checked, spec: dict[str, Any]) -> None:
    for op in v1_operations(spec):
        kw = valid_request(op)
        for header in (None, "Bearer snt_unknown", "Basic dXNlcjpwdw==", "Bearer", "snt_x"):
            headers = dict(kw["headers"] or {})
            if header:
                headers["Authorization"] = header
            r, body = checked.call(
                op.method,
                op.path,
                params=random_params(op),
                json=kw["json"],
                query=kw["query"],
                headers=headers,
                expect=401,
            )
            assert problem_type(body) == "unauthorized"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_role_gets_403_everywhere(
    checked: Checked, world: World, spec: dict[str, Any]
) -> None:
    for op in v1_operations(spec):
        if op.id == "getMe":
            continue  # any role
        kw = valid_request(op)
        wrong = "dr" if ROLE_FOR[op.id] == "auditor" else "auditor"
        checked.problem(
            op.method,
            op.path,
            world.token(wrong),
            403,
            "forbidden",
            params=random_params(op),
            json=kw["json"],
            query=kw["query"],
            headers=kw["headers"],
        )
    # and the finer role rules
    p = world.params
    checked.problem(
        "POST",
        "/v1/patients/{patient_id}/notes",
        world.tenant.integration.token,
        403,
        "forbidden",
        params=p,
        json=NOTE,
    )
    checked.problem(
        "GET", "/v1/notes/{note_id}", world.tenant.admin.token, 403, "forbidden", params=p
    )
    checked.problem(
        "POST",
        "/v1/patients",
        world.tenant.admin.token,
        403,
        "forbidden",
        json={"external_id": "x"},
    )
    checked.problem(
        "PUT",
        "/v1/patients/{patient_id}/care-team/{principal_id}",
        world.dr.token,
        403,
        "forbidden",
        params=p,
        json={},
    )
    checked.problem(
        "POST",
        "/v1/admin/principals/{principal_id}/unlock",
        world.dr.token,
        403,
        "forbidden",
        params=p,
    )


def test_unknown_or_foreign_resources_get_404(
    checked: Checked, world: World, spec: dict[str, Any], stack: StackHelper
) -> None:
    for op in v1_operations(spec):
        if not op.path_params:
            continue
        kw = valid_request(op)
        common = {"json": kw["json"], "query": kw["query"], "headers": kw["headers"]}
        token = world.token(ROLE_FOR[op.id])
        checked.problem(
            op.method, op.path, token, 404, "not-found", params=random_params(op), **common
        )
        garbled = {name: "not-a-uuid" for name in op.path_params}
        checked.problem(op.method, op.path, token, 404, "not-found", params=garbled, **common)
    # a patient that exists but is not on the caller's care team looks exactly the same
    p = world.params
    for method, path in (
        ("GET", "/v1/patients/{patient_id}/notes"),
        ("GET", "/v1/notes/{note_id}"),
        ("GET", "/v1/notes/{note_id}/versions"),
        ("DELETE", "/v1/notes/{note_id}"),
    ):
        checked.problem(method, path, world.other_dr.token, 404, "not-found", params=p)
    checked.problem(
        "GET",
        "/v1/patients",
        world.other_dr.token,
        404,
        "not-found",
        query={"external_id": world.external_id},
    )
    # another tenant's objects are unknown
    other = stack.tenant()
    checked.problem(
        "GET",
        "/v1/patients",
        other.integration.token,
        404,
        "not-found",
        query={"external_id": world.external_id},
    )
    checked.problem(
        "POST",
        "/v1/admin/principals/{principal_id}/unlock",
        other.admin.token,
        404,
        "not-found",
        params=p,
    )
    checked.problem(
        "PUT",
        "/v1/admin/patients/{patient_id}/decoy",
        other.admin.token,
        404,
        "not-found",
        params=p,
        json={"decoy": True},
    )
    # unknown path: no operation to check against, only the shared component
    r = checked.api.get("/v1/nothing-here", world.dr.token)
    assert r.status_code == 404
    checked.contract.check_component("NotFound", r)


def test_undocumented_methods_get_405_with_allow(
    checked: Checked, world: World, spec: dict[str, Any]
) -> None:
    for path, item in spec["paths"].items():
        documented = {m.upper() for m in item if m in OPERATION_METHODS}
        url = path.format(**world.params, vid="1")
        r = checked.api.call("PATCH", url, world.dr.token, json={})
        assert r.status_code == 405, (path, r.status_code)
        if path.startswith("/fhir/"):
            body = checked.contract.check_component("FhirMethodNotAllowed", r)
            assert body["issue"][0]["code"] == "not-supported"
        else:
            body = checked.contract.check_component("MethodNotAllowed", r)
            assert problem_type(body) == "method-not-allowed"
        allowed = {m.strip() for m in r.headers["Allow"].split(",")}
        assert documented <= allowed <= documented | IMPLICIT_METHODS, (path, allowed)


def test_conflicts_get_409(checked: Checked, world: World) -> None:
    dup = {"external_id": world.external_id}
    body = checked.problem(
        "POST", "/v1/patients", world.tenant.integration.token, 409, "conflict", json=dup
    )
    assert body["patient_id"] == world.patient_id  # integrations learn the existing id
    # NFKC and trimming: the same identifier written differently is still a duplicate
    spaced = {"external_id": f"  {world.external_id}\t"}
    checked.problem(
        "POST", "/v1/patients", world.tenant.integration.token, 409, "conflict", json=spaced
    )
    # Registration belongs to the EHR: a clinician cannot register (nor probe) identifiers.
    checked.problem("POST", "/v1/patients", world.dr.token, 403, "forbidden", json=dup)
    not_clinician = {"patient_id": world.patient_id, "principal_id": world.auditor.id}
    checked.problem(
        "PUT",
        "/v1/patients/{patient_id}/care-team/{principal_id}",
        world.tenant.integration.token,
        409,
        "conflict",
        params=not_clinician,
        json={},
    )


def test_amend_preconditions_428_412_400(checked: Checked, world: World) -> None:
    c, p, tok = checked, world.params, world.dr.token
    path = "/v1/notes/{note_id}"
    c.problem("PUT", path, tok, 428, "precondition-required", params=p, json=NOTE)
    c.problem(
        "PUT",
        path,
        tok,
        412,
        "precondition-failed",
        params=p,
        json=NOTE,
        headers={"If-Match": '"7"'},
    )
    for bad in ('W/"1"', "*", "1", '"one"', '"1", "2"', '"1234567890"'):
        c.problem(
            "PUT", path, tok, 400, "bad-request", params=p, json=NOTE, headers={"If-Match": bad}
        )
    c.call("PUT", path, tok, params=p, json=NOTE, headers={"If-Match": ' "1" '}, expect=200)
    c.problem(
        "PUT",
        path,
        tok,
        412,
        "precondition-failed",
        params=p,
        json=NOTE,
        headers={"If-Match": '"1"'},
    )


def test_shredded_patient_gets_410(
    checked: Checked, world: World, stack: StackHelper, db_url: str
) -> None:
    c, p, tok = checked, world.params, world.dr.token
    _r, pending = c.call(
        "POST",
        "/v1/admin/patients/{patient_id}/shred",
        world.tenant.admin.token,
        params=p,
        json={"reason": "erasure request 42"},
        expect=202,
    )
    shredded = second_admin_approves(c, stack, world.tenant, pending)
    assert shredded["patient_id"] == world.patient_id
    c.problem(
        "POST",
        "/v1/admin/patients/{patient_id}/shred",
        world.tenant.admin.token,
        409,
        "conflict",
        params=p,
        json={"reason": "erasure request 42"},
    )
    c.problem("GET", "/v1/notes/{note_id}", tok, 410, "gone", params=p)
    c.problem("GET", "/v1/notes/{note_id}/versions", tok, 410, "gone", params=p)
    c.problem("GET", "/v1/patients/{patient_id}/notes", tok, 410, "gone", params=p)
    c.problem("POST", "/v1/patients/{patient_id}/notes", tok, 410, "gone", params=p, json=NOTE)
    c.problem(
        "PUT",
        "/v1/notes/{note_id}",
        tok,
        410,
        "gone",
        params=p,
        json=NOTE,
        headers={"If-Match": '"1"'},
    )
    c.problem("DELETE", "/v1/notes/{note_id}", tok, 410, "gone", params=p)


def test_decoy_suspends_then_two_admins_unlock(
    checked: Checked, world: World, stack: StackHelper
) -> None:
    c, p = checked, world.params
    c.call(
        "PUT",
        "/v1/admin/patients/{patient_id}/decoy",
        world.tenant.admin.token,
        params=p,
        json={"decoy": True},
        expect=200,
    )
    c.problem("GET", "/v1/notes/{note_id}", world.dr.token, 403, "account-suspended", params=p)
    c.problem("GET", "/v1/me", world.dr.token, 403, "account-suspended")
    c.problem("POST", "/v1/patients", world.dr.token, 403, "account-suspended", json={"x": 1})
    _r, pending = c.call(  # suspended by a decoy: one admin is not enough
        "POST",
        "/v1/admin/principals/{principal_id}/unlock",
        world.tenant.admin.token,
        params=p,
        expect=202,
    )
    c.problem("GET", "/v1/me", world.dr.token, 403, "account-suspended")
    assert second_admin_approves(c, stack, world.tenant, pending)["suspended"] is False
    c.call("GET", "/v1/me", world.dr.token, expect=200)
