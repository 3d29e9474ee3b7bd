"""Contract tests, malformed requests of each kind (body, size, fields, path and query
parameters, Authorization, If-Match): a 4xx application/problem+json that echoes no input."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from service import schemas as ms
from service.app import MAX_REQUEST_BYTES
from tests.api.contract import Checked, problem_type
from tests.api.contract_world import (
    AUDIT,
    BREAK_GLASS,
    BUDGET,
    CARE_TEAM,
    DECOY,
    JSON,
    NOTE,
    NOTES,
    ONE_NOTE,
    ROLE_FOR,
    SENTINEL,
    VALID_HEADERS,
    World,
    v1_operations,
)

SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    404: "not-found",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-failed",
    428: "precondition-required",
}


@dataclass(frozen=True)
class Bad:
    """A malformed request, the operation it targets and the status it must get."""

    name: str
    method: str
    path: str
    expect: int
    role: str | None = "dr"
    json: Any = None
    data: str | bytes | None = None
    content_type: str | None = None
    query: Mapping[str, str] | None = None
    headers: Mapping[str, str] | None = None
    params: Mapping[str, str] | None = None  # overrides of the world's path parameters

    @property
    def slug(self) -> str:
        return SLUGS[self.expect]


def bad_note(name: str, body: Any) -> Bad:
    return Bad(name, "POST", NOTES, 422, json=body)


def raw_note(name: str, data: str | bytes, expect: int, content_type: str | None = JSON) -> Bad:
    return Bad(name, "POST", NOTES, expect, data=data, content_type=content_type)


def bad_patient(name: str, body: Any) -> Bad:
    return Bad(name, "POST", "/v1/patients", 422, role="integration", json=body)


def bad_body(name: str, method: str, path: str, role: str, body: Any) -> Bad:
    return Bad(name, method, path, 422, role=role, json=body)


def bad_query(name: str, path: str, role: str, query: Mapping[str, str]) -> Bad:
    return Bad(name, "GET", path, 422, role=role, query=query)


def bad_path(name: str, method: str, path: str, role: str, params: Mapping[str, str]) -> Bad:
    return Bad(name, method, path, 404, role=role, params=params)


def bad_auth(name: str, authorization: str | None) -> Bad:
    headers = {"Authorization": authorization} if authorization is not None else None
    return Bad(name, "GET", "/v1/me", 401, role=None, headers=headers)


def bad_if_match(name: str, value: str | None, expect: int = 400) -> Bad:
    headers = {"If-Match": value} if value is not None else None
    return Bad(name, "PUT", ONE_NOTE, expect, json=NOTE, headers=headers)


TOO_LARGE = "x" * (MAX_REQUEST_BYTES + 1)
IF_1 = {"If-Match": '"1"'}
BAD_REQUESTS: list[Bad] = [
    # not JSON, not an object, not JSON at all
    raw_note("invalid-json", '{"kind": "progress", "body": "' + SENTINEL, 400),
    raw_note("invalid-utf8", b'{"kind": "progress", "body": "\xff\xfe"}', 400),
    raw_note("json-null", "null", 400),
    bad_note("json-array", [SENTINEL]),
    bad_patient("json-string", SENTINEL),
    raw_note("wrong-content-type", json.dumps(NOTE), 415, "text/plain"),
    raw_note("form-content-type", "kind=progress&body=" + SENTINEL, 415, "multipart/form-data"),
    raw_note("no-content-type", json.dumps(NOTE), 415, None),
    Bad("no-content-type-care-team", "PUT", CARE_TEAM, 415, role="integration", data="{}"),
    # sizes
    bad_note("body-over-1MiB-chars", {"kind": "progress", "body": "x" * (ms.MAX_BODY_CHARS + 1)}),
    raw_note("raw-over-8MiB", TOO_LARGE, 413),
    Bad(
        "raw-over-8MiB-amend", "PUT", ONE_NOTE, 413, data=TOO_LARGE, content_type=JSON, headers=IF_1
    ),
    bad_note("title-too-long", {**NOTE, "title": "t" * 501}),
    bad_patient("external-id-too-long", {"external_id": SENTINEL * 20}),
    # fields: unknown, missing, wrong type, bad value
    bad_note("unknown-field", {**NOTE, "mrn": SENTINEL}),
    bad_patient("unknown-field-patient", {"external_id": "x", "ssn": SENTINEL}),
    bad_body("unknown-field-budget", "PUT", BUDGET, "admin", {"per_week": 1}),
    bad_note("missing-body-field", {"kind": "progress"}),
    bad_patient("missing-external-id", {}),
    bad_body("missing-decoy", "PUT", DECOY, "admin", {}),
    bad_note("wrong-type-body", {"kind": "progress", "body": 12345}),
    bad_note("wrong-type-title", {**NOTE, "title": ["t"]}),
    bad_patient("wrong-type-external-id", {"external_id": [1]}),
    bad_body("null-decoy", "PUT", DECOY, "admin", {"decoy": None}),
    bad_note("bad-kind", {"kind": SENTINEL, "body": "b"}),
    bad_note("bad-encounter-at", {**NOTE, "encounter_at": SENTINEL}),
    bad_note("naive-encounter-at", {**NOTE, "encounter_at": "2026-11-20T09:30:00"}),
    bad_body("bad-until", "PUT", CARE_TEAM, "integration", {"until": SENTINEL}),
    bad_body("budget-zero", "PUT", BUDGET, "admin", {"per_hour": 0}),
    bad_body("budget-too-big", "PUT", BUDGET, "admin", {"per_day": 10**7}),
    bad_body("short-break-glass-reason", "POST", BREAK_GLASS, "other_dr", {"reason": "urgent"}),
    bad_body("missing-break-glass-reason", "POST", BREAK_GLASS, "other_dr", {}),
    # path parameters that are not UUIDs
    bad_path("bad-uuid-note", "GET", ONE_NOTE, "dr", {"note_id": SENTINEL}),
    bad_path("bad-uuid-patient", "GET", NOTES, "dr", {"patient_id": "1234"}),
    bad_path("bad-uuid-versions", "GET", ONE_NOTE + "/versions", "dr", {"note_id": "x" * 40}),
    bad_path(
        "bad-uuid-principal",
        "POST",
        "/v1/admin/principals/{principal_id}/unlock",
        "admin",
        {"principal_id": "0000"},
    ),
    # query parameters
    bad_query("limit-zero", NOTES, "dr", {"limit": "0"}),
    bad_query("limit-too-big", NOTES, "dr", {"limit": "101"}),
    bad_query("limit-not-int", NOTES, "dr", {"limit": SENTINEL}),
    bad_query("limit-huge", NOTES, "dr", {"limit": "9" * 5000}),
    bad_query("bad-cursor", NOTES, "dr", {"cursor": SENTINEL}),
    bad_query("bad-cursor-b64", NOTES, "dr", {"cursor": "bm90LWEtY3Vyc29y"}),
    bad_query("bad-cursor-non-ascii", NOTES, "dr", {"cursor": "\u00e9t\u00e9"}),
    bad_query("bad-include", NOTES, "dr", {"include": SENTINEL}),
    bad_query("empty-include", NOTES, "dr", {"include": ""}),
    bad_query("missing-external-id-query", "/v1/patients", "integration", {}),
    bad_query("empty-external-id-query", "/v1/patients", "integration", {"external_id": ""}),
    bad_query(
        "long-external-id-query", "/v1/patients", "integration", {"external_id": SENTINEL * 20}
    ),
    bad_query("audit-bad-patient-id", AUDIT, "auditor", {"patient_id": SENTINEL}),
    bad_query("audit-bad-principal-id", AUDIT, "auditor", {"principal_id": "42"}),
    bad_query("audit-bad-action", AUDIT, "auditor", {"action": "DROP TABLE " + SENTINEL}),
    bad_query("audit-bad-outcome", AUDIT, "auditor", {"outcome": SENTINEL}),
    bad_query("audit-bad-since", AUDIT, "auditor", {"since": SENTINEL}),
    bad_query("audit-naive-until", AUDIT, "auditor", {"until": "2026-01-01T00:00:00"}),
    bad_query("audit-limit-too-big", AUDIT, "auditor", {"limit": "1001"}),
    bad_query("audit-bad-cursor", AUDIT, "auditor", {"cursor": SENTINEL}),
    bad_query("audit-huge-cursor", AUDIT, "auditor", {"cursor": "9" * 19}),
    # Authorization
    bad_auth("no-authorization", None),
    bad_auth("empty-authorization", ""),
    bad_auth("basic-authorization", "Basic " + SENTINEL),
    bad_auth("bearer-without-token", "Bearer "),
    bad_auth("bearer-too-long", "Bearer " + "x" * 201),
    bad_auth("bearer-unknown", "Bearer snt_" + SENTINEL),
    bad_auth("token-without-scheme", SENTINEL),
    # If-Match
    bad_if_match("if-match-missing", None, 428),
    bad_if_match("if-match-weak", 'W/"1"'),
    bad_if_match("if-match-star", "*"),
    bad_if_match("if-match-unquoted", "1"),
    bad_if_match("if-match-list", '"1", "2"'),
    bad_if_match("if-match-garbage", SENTINEL),
]


def send_bad(checked: Checked, world: World, bad: Bad) -> None:
    params = {**world.params, **(bad.params or {})}
    kw: dict[str, Any] = {"json": bad.json, "query": bad.query, "headers": dict(bad.headers or {})}
    if bad.data is not None:
        kw["data"] = bad.data
    if bad.content_type is not None:
        kw["content_type"] = bad.content_type
    r, body = checked.call(bad.method, bad.path, world.token(bad.role), params=params, **kw)
    assert r.status_code == bad.expect, body
    assert problem_type(body) == bad.slug, body
    assert SENTINEL not in r.get_data(as_text=True), f"the error echoes the input: {body}"
    if bad.expect == 422:
        assert body["errors"], body


def test_malformed_requests_get_a_problem(
    checked: Checked, world: World, subtests: pytest.Subtests
) -> None:
    """One world for all cases (they change nothing); each case reports on its own."""
    assert len({b.name for b in BAD_REQUESTS}) == len(BAD_REQUESTS)
    for bad in BAD_REQUESTS:
        with subtests.test(bad.name):
            send_bad(checked, world, bad)


def test_a_well_formed_request_id_is_echoed(checked: Checked) -> None:
    r, body = checked.call("GET", "/v1/me", headers={"X-Request-Id": "trace-42.a_b"}, expect=401)
    assert r.headers["X-Request-Id"] == body["request_id"] == "trace-42.a_b"
    r, body = checked.call(
        "GET", "/v1/me", headers={"X-Request-Id": "<" + SENTINEL + ">"}, expect=401
    )
    assert SENTINEL not in r.headers["X-Request-Id"] and uuid.UUID(body["request_id"])


def test_sweep_body_errors_on_every_body_operation(
    checked: Checked, world: World, spec: dict[str, Any]
) -> None:
    for op in v1_operations(spec):
        if not op.has_body:
            continue
        token = world.token(ROLE_FOR[op.id])
        headers = VALID_HEADERS.get(op.id)
        for data, content_type, expect, slug in (
            ("{", "application/json", 400, "bad-request"),
            ("[]", "application/json", 422, "validation-failed"),
            ('{"' + SENTINEL + '": 1}', "text/plain", 415, "unsupported-media-type"),
            ("x" * (MAX_REQUEST_BYTES + 1), "application/json", 413, "payload-too-large"),
        ):
            body = checked.problem(
                op.method,
                op.path,
                token,
                expect,
                slug,
                params=world.params,
                data=data,
                content_type=content_type,
                headers=headers,
            )
            assert SENTINEL not in json.dumps(body)
