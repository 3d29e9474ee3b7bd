"""POST /oauth2/token: SMART Backend Services (service/access/smart.py).

Errors of the grant itself are RFC 6749 JSON (`error`, `error_description`), as OAuth
clients expect; transport errors (413, 405, 503) are the service's problem+json.
"""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from service.access.jwtverify import TokenRejected, peek
from service.access.smart import OAuthError
from service.http import services

bp = Blueprint("oauth", __name__)

FORM = "application/x-www-form-urlencoded"
FIELDS = ("grant_type", "client_assertion_type", "client_assertion", "scope", "client_id")


def oauth_error(e: OAuthError) -> tuple[Response, int]:
    return jsonify({"error": e.error, "error_description": e.description}), e.status


@bp.post("/oauth2/token")
def token() -> tuple[Response, int, dict[str, str]] | tuple[Response, int]:
    if request.mimetype != FORM:
        return oauth_error(OAuthError("invalid_request", f"Send the parameters as {FORM}"))
    form = request.form
    if set(form) - set(FIELDS) or any(len(form.getlist(k)) > 1 for k in form):
        return oauth_error(OAuthError("invalid_request", "Unknown or repeated parameter"))
    values = {k: form[k] for k in FIELDS if k in form}
    svc = services()
    root = request.url_root.rstrip("/")
    urls = [root + "/oauth2/token"]
    if svc.settings.idp.public_url:
        urls.append(svc.settings.idp.public_url + "/oauth2/token")
    try:
        if "client_id" in values and values["client_id"] != _assertion_issuer(values):
            raise OAuthError("invalid_request", "client_id does not match the assertion")
        issued = svc.smart.token(
            values,
            token_urls=urls,
            request_id=g.get("request_id"),
            client_addr=request.remote_addr,
        )
    except OAuthError as e:
        return oauth_error(e)
    return jsonify(issued.as_dict()), 200, {"Pragma": "no-cache"}


def _assertion_issuer(values: dict[str, str]) -> object:
    try:
        return peek(values.get("client_assertion", "")).claims.get("iss")
    except TokenRejected:
        return None
