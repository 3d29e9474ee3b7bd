"""FHIR AuditEvent search for auditors, on the facade's blueprint."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlencode

from flask import Response, request

from service.audit.fhir import audit_event
from service.errors import (
    BadRequest,
)
from service.fhir.resources import (
    bundle,
    search_entry,
)
from service.http import (
    caller,
    int_arg,
    services,
)
from service.http.fhir import _reference_id, base_url, bp, fhir, only_params


def _date_bounds() -> tuple[datetime | None, datetime | None]:
    since = until = None
    for raw in request.args.getlist("date"):
        prefix, value = raw[:2], raw[2:]
        if prefix not in ("ge", "gt", "le", "lt"):
            raise BadRequest("date must be ge|gt|le|lt followed by a date-time with an offset")
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise BadRequest(
                "date must be ge|gt|le|lt followed by a date-time with an offset"
            ) from None
        if when.tzinfo is None:
            raise BadRequest("date must be ge|gt|le|lt followed by a date-time with an offset")
        if prefix in ("ge", "gt"):
            since = when
        else:
            until = when
    return since, until


@bp.get("/AuditEvent")
def search_audit_events() -> Response:
    c = caller()
    only_params("patient", "agent", "date", "_count", "_cursor")
    patient = request.args.get("patient")
    agent = request.args.get("agent")
    since, until = _date_bounds()
    limit = int_arg("_count", 100, minimum=1, maximum=1000)
    cursor = request.args.get("_cursor")
    if cursor is not None and (not cursor.isdigit() or len(cursor) > 18):
        raise BadRequest("_cursor is not valid")
    rows = services().audit_service.events(
        c,
        limit=limit + 1,
        after_id=int(cursor) if cursor else None,
        patient_id=_reference_id(patient, "Patient", "patient") if patient else None,
        principal_id=_reference_id(agent, "*", "agent") if agent else None,
        since=since,
        until=until,
    )
    page, more = rows[:limit], len(rows) > limit
    entries = [
        search_entry(f"{base_url()}/AuditEvent/sealednotes-{r['id']}", audit_event(r)) for r in page
    ]
    query = [(k, v) for k, v in request.args.items(multi=True) if k != "_cursor"]
    self_url = f"{base_url()}/AuditEvent?{urlencode(query)}"
    next_url = None
    if more and page:
        next_url = self_url + "&" + urlencode({"_cursor": str(page[-1]["id"])})
    return fhir(bundle("searchset", entries, self_url=self_url, next_url=next_url))
