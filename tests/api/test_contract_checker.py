"""The contract checker itself (tests/api/contract.py) catches violations: an undeclared
status or media type, a body or header that does not match its schema, a missing required
header."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask, Response
from werkzeug.test import TestResponse

from tests.api.contract import PROBLEM_JSON, Contract


def fake_response(status: int, body: Any, mimetype: str, **headers: str) -> TestResponse:
    """A response from a throwaway app, to test the checker itself."""
    fake = Flask("fake")

    @fake.get("/")
    def _answer() -> Response:
        r = Response(json.dumps(body), status=status, mimetype=mimetype)
        r.headers.update({"X-Request-Id": "r1", "Cache-Control": "no-store", **headers})
        return r

    return fake.test_client().get("/")


def test_the_checker_catches_violations(contract: Contract) -> None:
    ok = {"status": "ok"}
    throttled = {
        "type": "https://sealednotes.dev/problems/key-release-budget-exceeded",
        "title": "Key release budget exhausted",
        "status": 429,
        "detail": "d",
        "request_id": "r1",
        "scope": "break-glass-day",
        "retry_after": 5,
    }
    cases: list[tuple[str, str, TestResponse, str]] = [
        ("GET", "/healthz", fake_response(418, ok, "application/json"), "not declared"),
        ("GET", "/healthz", fake_response(200, ok, "text/html"), "media type"),
        ("GET", "/healthz", fake_response(200, {**ok, "x": 1}, "application/json"), "not match"),
        ("GET", "/v1/me", fake_response(401, {"status": 401}, PROBLEM_JSON), "WWW-Authenticate"),
        (
            "GET",
            "/v1/me",
            fake_response(401, {"type": "x"}, PROBLEM_JSON, **{"WWW-Authenticate": "Bearer"}),
            "not match",
        ),
        (
            "POST",
            "/v1/patients/{patient_id}/break-glass",
            fake_response(429, throttled, PROBLEM_JSON, **{"Retry-After": "soon"}),
            "Retry-After='soon' not an integer",
        ),
        (
            "POST",
            "/v1/patients/{patient_id}/break-glass",
            fake_response(
                429, {**throttled, "scope": "forever"}, PROBLEM_JSON, **{"Retry-After": "5"}
            ),
            "not match",
        ),
    ]
    for method, path, response, message in cases:
        with pytest.raises(AssertionError, match=message):
            contract.check(method, path, response)
    contract.check("GET", "/healthz", fake_response(200, ok, "application/json"))
    contract.check(
        "POST",
        "/v1/patients/{patient_id}/break-glass",
        fake_response(429, throttled, PROBLEM_JSON, **{"Retry-After": "5"}),
    )
