from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.http import caller, services

bp = Blueprint("me", __name__)


@bp.get("/v1/me")
def me() -> Response:
    p, status = services().principals.me(caller())
    return jsonify(
        {
            "id": p.id,
            "tenant_id": p.tenant_id,
            "name": p.name,
            "role": p.role.value,
            "suspended": p.suspended,
            "budget": {
                "hour": {
                    "limit": status.limit,
                    "remaining": status.remaining,
                    "reset_seconds": status.reset_seconds,
                },
                "day": {"limit": status.day_limit, "remaining": status.day_remaining},
            },
        }
    )
