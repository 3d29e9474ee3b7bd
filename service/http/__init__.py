"""HTTP layer: parse and validate, call a use case, shape the response."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from flask import current_app, g, request

from service.access.caller import Caller
from service.access.idp import RequestContext
from service.access.roles import Permission, may
from service.app import Services
from service.errors import BadRequest, CallerChanged, ServiceError, ValidationFailed

T = TypeVar("T")


class UnsupportedMediaType(ServiceError):
    status = 415
    slug = "unsupported-media-type"
    title = "Send the body as application/json"


def services() -> Services:
    svc: Services = current_app.extensions["sealednotes"]
    return svc


def caller() -> Caller:
    if "caller" not in g:
        # An opaque `snt_` token or a JWT of the tenant's identity provider
        # (service/access/idp.py). X-Forwarded-For is deliberately ignored: clients
        # could spoof it.
        g.caller = services().idp.caller_for(
            request.headers.get("Authorization"),
            RequestContext(g.get("request_id"), request.remote_addr),
            what=f"{request.method} {request.path}",
        )
    c: Caller = g.caller
    return c


def as_caller(
    act: Callable[[Caller, bytes | None], T],
    *,
    permission: Permission,
    check_request: Callable[[], None] | None = None,
) -> T:
    """Run a use case as this request's caller. When this worker remembers the token's
    account and the account has `permission`, the use case gets it with the token's
    digest and confirms both in its first statement (service/access/remembered.py);
    CallerChanged (nothing was done) sends the request through full authentication.
    `check_request` validates the rest of the request once the caller is known (an
    unknown token is refused 401 first) and before the use case runs."""
    remembered_callers = services().idp.remembered
    remembered = None
    if "caller" not in g:
        remembered = remembered_callers.caller(
            request.headers.get("Authorization"), g.get("request_id"), request.remote_addr
        )
    if remembered is not None and may(remembered[0].principal.role, permission):
        if check_request is not None:
            check_request()
        try:
            return act(*remembered)
        except CallerChanged:
            remembered_callers.forget(remembered[1])
        return act(caller(), None)
    authenticated = caller()
    if check_request is not None:
        check_request()
    return act(authenticated, None)


def json_body() -> Any:
    if not request.is_json:
        raise UnsupportedMediaType()
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # absurdly nested JSON
        raise BadRequest("The body is nested too deeply") from None
    if data is None:
        raise BadRequest("The body must be a JSON object (valid JSON, not null)")
    return data


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


_DECIMAL = re.compile(r"[0-9]{1,18}")


def parse_decimal(raw: str) -> int | None:
    """The one way numbers in query strings are read: 1 to 18 ASCII digits, nothing
    else (Python's int() would also take "٣", " 3", "+3" or "1_000", and
    str.isdigit() passes "²", which int() then refuses)."""
    return int(raw) if _DECIMAL.fullmatch(raw) else None


def int_arg(name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    value = parse_decimal(raw)
    if value is None:
        raise ValidationFailed({name: ["Not a valid integer."]})
    if not minimum <= value <= maximum:
        raise ValidationFailed({name: [f"Must be between {minimum} and {maximum}."]})
    return value


def encode_cursor(after: tuple[datetime, str]) -> str:
    raw = f"{after[0].isoformat()}|{after[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str | None) -> tuple[datetime, str] | None:
    if value is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        when, _, ident = raw.partition("|")
        return datetime.fromisoformat(when), str(uuid.UUID(ident))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed({"cursor": ["Not a valid cursor."]}) from None
