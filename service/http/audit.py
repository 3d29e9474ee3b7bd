from __future__ import annotations

import re
from datetime import datetime
from uuid import UUID

from flask import Blueprint, Response, jsonify, request

from service.errors import ValidationFailed
from service.http import caller, int_arg, iso, parse_decimal, services

bp = Blueprint("audit", __name__)

ACTIONS_RE = r"^[a-z][a-z0-9.-]{0,40}$"
OUTCOMES = ("granted", "denied", "throttled", "noop", "unavailable", "alert")


def _uuid_arg(name: str) -> str | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return str(UUID(raw))
    except ValueError:
        raise ValidationFailed({name: ["Not a valid UUID."]}) from None


def _time_arg(name: str) -> datetime | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationFailed({name: ["Not a valid ISO 8601 date-time."]}) from None
    if value.tzinfo is None:
        raise ValidationFailed({name: ["The date-time must carry a UTC offset."]})
    return value


def _cursor_arg() -> int | None:
    raw = request.args.get("cursor")
    if raw is None:
        return None
    value = parse_decimal(raw)
    if value is None:
        raise ValidationFailed({"cursor": ["Not a valid cursor."]})
    return value


def event_json(row: dict[str, object]) -> dict[str, object]:
    out = {k: (str(v) if v is not None and k.endswith("_id") else v) for k, v in row.items()}
    out["id"] = row["id"]
    out["at"] = iso(row["at"])  # type: ignore[arg-type]
    return out


@bp.get("/v1/audit/events")
def events() -> Response:
    c = caller()
    action = request.args.get("action")
    if action is not None:
        if not re.match(ACTIONS_RE, action):
            raise ValidationFailed({"action": ["Not a valid action name."]})
    outcome = request.args.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise ValidationFailed({"outcome": [f"Must be one of: {', '.join(OUTCOMES)}."]})
    limit = int_arg("limit", 100, minimum=1, maximum=1000)
    rows = services().audit_service.events(
        c,
        limit=limit + 1,
        after_id=_cursor_arg(),
        patient_id=_uuid_arg("patient_id"),
        principal_id=_uuid_arg("principal_id"),
        action=action,
        outcome=outcome,
        since=_time_arg("since"),
        until=_time_arg("until"),
    )
    page, more = rows[:limit], len(rows) > limit
    return jsonify(
        {
            "items": [event_json(r) for r in page],
            "next_cursor": str(page[-1]["id"]) if more and page else None,
        }
    )


@bp.get("/v1/audit/verify")
def verify() -> Response:
    c = caller()
    return jsonify(services().audit_service.verify_as(c).as_dict())
