"""Errors under /fhir/R4: the service's problem answers as OperationOutcome resources."""

from __future__ import annotations

from typing import Any

from service.fhir.resources import EXTENSION_BASE

ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "invalid",
    428: "required",
    429: "throttled",
    500: "exception",
    503: "transient",
}


def operation_outcome(problem: dict[str, Any]) -> dict[str, Any]:
    """An RFC 9457 problem of this service as an OperationOutcome (same facts, FHIR shape)."""
    status = int(problem.get("status") or 500)
    slug = str(problem.get("type", "")).rsplit("/", 1)[-1] or "error"
    code = ISSUE_CODES.get(status, "exception" if status >= 500 else "invalid")
    main: dict[str, Any] = {
        "severity": "fatal" if status >= 500 else "error",
        "code": code,
        "details": {
            "coding": [{"system": "https://sealednotes.dev/problems", "code": slug}],
            "text": str(problem.get("title", "")),
        },
        "diagnostics": str(problem.get("detail", "")),
    }
    issues = [main]
    errors = problem.get("errors")
    if isinstance(errors, dict):
        for field, messages in errors.items():
            issues.append(
                {
                    "severity": "error",
                    "code": "invalid",
                    "diagnostics": "; ".join(_flatten(messages)) or "invalid",
                    "expression": [str(field)],
                }
            )
    out: dict[str, Any] = {"resourceType": "OperationOutcome", "issue": issues}
    extensions = []
    for key, kind in (("request_id", "valueString"), ("scope", "valueCode")):
        if isinstance(problem.get(key), str) and problem[key]:
            extensions.append({"url": EXTENSION_BASE + key.replace("_", "-"), kind: problem[key]})
    if isinstance(problem.get("retry_after"), int):
        extensions.append(
            {"url": EXTENSION_BASE + "retry-after", "valueInteger": problem["retry_after"]}
        )
    if extensions:
        out["extension"] = extensions
    return out


def _flatten(messages: Any) -> list[str]:
    if isinstance(messages, list):
        return [m for x in messages for m in _flatten(x)]
    if isinstance(messages, dict):
        return [f"{k}: {m}" for k, v in messages.items() for m in _flatten(v)]
    return [str(messages)]
