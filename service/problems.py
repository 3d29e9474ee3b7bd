"""RFC 9457 problem+json responses."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, g, has_request_context

PROBLEM_JSON = "application/problem+json"


def problem_response(
    status: int,
    type_uri: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body: dict[str, Any] = {"type": type_uri, "title": title, "status": status, "detail": detail}
    if has_request_context() and "request_id" in g:
        body["request_id"] = g.request_id
    if extra:
        body.update(extra)
    resp = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp
