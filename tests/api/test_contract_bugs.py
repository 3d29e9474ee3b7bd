"""Contract tests named ``test_bug_*``: they pin service bugs found while writing the contract
and fail until the service is fixed (see each assertion message for the place and a suggested
fix).

Each test asserts the correct behaviour with a message naming the faulty code and a fix,
then checks the response against the contract like every other test."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from werkzeug.test import TestResponse

from service.config import Budgets
from tests.api.contract import Checked, Contract
from tests.api.contract_world import NOTE, NOTES, REASON, AppFactory, World, stack_for
from tests.conftest import METRICS_TOKEN


def unchecked(
    checked: Checked,
    method: str,
    path: str,
    token: str | None,
    *,
    params: Mapping[str, str] | None = None,
    **kw: Any,
) -> TestResponse:
    return checked.api.call(method, path.format(**(params or {})), token, **kw)


def assert_fixed(
    checked: Checked,
    method: str,
    path: str,
    r: TestResponse,
    expected: tuple[int, ...],
    bug: str,
) -> None:
    assert r.status_code in expected, (
        f"BUG: {method} {path} answers {r.status_code} "
        f"{r.get_data(as_text=True)[:300]!r}, expected one of {expected}. {bug}"
    )
    checked.contract.check(method, path, r)


def test_bug_lone_surrogate_in_note_is_not_a_500(checked: Checked, world: World) -> None:
    raw = '{"kind": "progress", "title": "t", "body": "x\\ud800"}'
    r = unchecked(
        checked,
        "POST",
        NOTES,
        world.dr.token,
        params=world.params,
        data=raw,
        content_type="application/json",
    )
    assert_fixed(
        checked,
        "POST",
        NOTES,
        r,
        (422,),
        (
            "A note body with a lone UTF-16 surrogate escape is valid JSON, but "
            "notes `_encode` calls .encode('utf-8'), which raises UnicodeEncodeError "
            "(unhandled: 500). Fix: reject strings that are not encodable as UTF-8 in "
            "service/schemas.py (a validator on every String field), so the client gets a 422."
        ),
    )


def test_bug_lone_surrogate_in_external_id_is_not_a_500(checked: Checked, world: World) -> None:
    raw = '{"external_id": "MRN\\udfff"}'
    r = unchecked(
        checked,
        "POST",
        "/v1/patients",
        world.tenant.integration.token,
        data=raw,
        content_type="application/json",
    )
    assert_fixed(
        checked,
        "POST",
        "/v1/patients",
        r,
        (422,),
        (
            "the Vault adapter's blind_index calls value.encode('utf-8') on an external_id with a "
            "lone surrogate: UnicodeEncodeError (unhandled: 500). Fix: the same UTF-8 validator on "
            "PatientCreate.external_id in service/schemas.py."
        ),
    )


def test_bug_nul_in_break_glass_reason_is_not_a_500(checked: Checked, world: World) -> None:
    path = "/v1/patients/{patient_id}/break-glass"
    body = {"reason": REASON + "\u0000"}
    r = unchecked(checked, "POST", path, world.other_dr.token, params=world.params, json=body)
    assert_fixed(
        checked,
        "POST",
        path,
        r,
        (422,),
        (
            "PostgreSQL text cannot hold U+0000: psycopg raises DataError in "
            "PatientsRepository.insert_break_glass (called from PatientsService.break_glass), "
            "which Store.transaction does not translate (unhandled: 500). Fix: reject control "
            "characters in BreakGlassCreate.reason (service/schemas.py:51), or translate "
            "psycopg.DataError into a 422."
        ),
    )


def test_bug_deeply_nested_json_is_not_a_500(checked: Checked, world: World) -> None:
    r = unchecked(
        checked,
        "POST",
        NOTES,
        world.dr.token,
        params=world.params,
        data="[" * 100_000,
        content_type="application/json",
    )
    assert_fixed(
        checked,
        "POST",
        NOTES,
        r,
        (400,),
        (
            "json.loads raises RecursionError on deep nesting, and request.get_json(silent=True) "
            "only swallows ValueError: service/api/__init__.py:56 json_body (unhandled: 500). Fix: "
            "catch RecursionError there and raise BadRequest('The body is not valid JSON')."
        ),
    )


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00"])
def test_bug_encounter_at_outside_years_1_to_9999_utc_is_not_a_500(
    checked: Checked, world: World, when: str
) -> None:
    body = {**NOTE, "encounter_at": when}
    r = unchecked(checked, "POST", NOTES, world.dr.token, params=world.params, json=body)
    assert_fixed(
        checked,
        "POST",
        NOTES,
        r,
        (422,),
        (
            f"encounter_at={when} is valid RFC 3339 but outside years 1..9999 once in UTC: "
            "PostgreSQL stores it, then psycopg cannot load the RETURNING row of "
            "NotesRepository.insert_note "
            "(DataError 'timestamp too large/small', unhandled: 500). Fix: in "
            "service/schemas.py:43 check that value.astimezone(timezone.utc) succeeds (or "
            "bound the year) -> 422."
        ),
    )


def test_bug_break_glass_disabled_is_not_a_500(make_app: AppFactory, contract: Contract) -> None:
    app = make_app(budgets=Budgets(break_glass_per_day=0))  # SEALEDNOTES_BREAK_GLASS_PER_DAY=0
    api, stack = stack_for(app)
    c = Checked(api, contract)
    t = stack.tenant()
    dr = stack.clinician(t)
    params = {"patient_id": stack.patient(t)}
    path = "/v1/patients/{patient_id}/break-glass"
    r = unchecked(c, "POST", path, dr.token, params=params, json={"reason": REASON})
    assert_fixed(
        c,
        "POST",
        path,
        r,
        (403, 429),
        (
            "config.py accepts SEALEDNOTES_BREAK_GLASS_PER_DAY=0 (minimum=0), but then every "
            "break-glass computes Retry-After from `opened[0]` of an empty list in "
            "break_glass (IndexError, unhandled: 500). Fix: when nothing was opened, "
            "raise Forbidden('Break-glass is disabled') or use retry_after=86400."
        ),
    )


def test_bug_metrics_content_type_has_one_charset(checked: Checked) -> None:
    r, _ = checked.call("GET", "/metrics", METRICS_TOKEN, expect=200)
    content_type = r.headers["Content-Type"]
    assert content_type.count("charset=") == 1, (
        f"BUG: /metrics answers Content-Type {content_type!r}: the charset parameter twice, "
        "which RFC 6838 forbids. service/api/health.py:36 passes CONTENT_TYPE_LATEST as "
        "`mimetype=` and Flask appends its own charset. Fix: "
        "Response(..., content_type=CONTENT_TYPE_LATEST)."
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/admin/principals/{principal_id}/budget", {"per_hour": 1.5}),
        ("/v1/admin/principals/{principal_id}/budget", {"per_day": "7"}),
        ("/v1/admin/patients/{patient_id}/decoy", {"decoy": "yes"}),
        ("/v1/admin/patients/{patient_id}/decoy", {"decoy": 1}),
    ],
)
def test_bug_bodies_are_not_type_coerced(
    checked: Checked, world: World, path: str, body: dict[str, Any]
) -> None:
    r = unchecked(checked, "PUT", path, world.tenant.admin.token, params=world.params, json=body)
    assert_fixed(
        checked,
        "PUT",
        path,
        r,
        (422,),
        (
            f"{body} is not an integer/boolean, yet marshmallow coerces it (1.5 silently "
            "truncated to 1, '7' to 7, 'yes' and 1 to true): the service accepts bodies the "
            "contract rejects. "
            "service/schemas.py:55-64. Fix: fields.Integer(strict=True) and "
            "fields.Boolean(truthy={True}, falsy={False})."
        ),
    )


def test_bug_blank_external_id_is_rejected(checked: Checked, world: World) -> None:
    body = {"external_id": " \t "}
    r = unchecked(checked, "POST", "/v1/patients", world.tenant.integration.token, json=body)
    assert_fixed(
        checked,
        "POST",
        "/v1/patients",
        r,
        (422,),
        (
            "The length check (service/schemas.py:32) runs before normalize_external_id "
            "(patients) trims the value to '', so a patient is registered under the "
            "blind index of the empty string and every other blank identifier then collides with "
            "it (409). Fix: validate the normalized value (non-empty after NFKC + strip) in "
            "PatientCreate and in GET /v1/patients?external_id=."
        ),
    )


def test_bug_patient_location_header_resolves(checked: Checked, world: World) -> None:
    r, _ = checked.call(
        "POST",
        "/v1/patients",
        world.tenant.integration.token,
        json={"external_id": "MRN-loc"},
        expect=201,
    )
    follow = checked.api.get(r.headers["Location"], world.tenant.integration.token)
    assert follow.status_code != 404, (
        f"BUG: POST /v1/patients answers Location: {r.headers['Location']}, a URL the service "
        "does not route (404): service/api/patients.py:30. Fix: drop the Location header, or "
        "add GET /v1/patients/{patient_id} (and document it in openapi.yaml)."
    )
