"""Access-log records as FHIR R4 AuditEvent resources (pure mapping)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
IDENTIFIER_SYSTEM = "urn:sealednotes:principal"

# action -> (CRUDE code, restful interaction)
_ACTIONS: dict[str, tuple[str, str]] = {
    "note.create": ("C", "create"),
    "note.read": ("R", "read"),
    "note.versions": ("R", "history-instance"),
    "note.list": ("R", "search-type"),
    "note.list-content": ("R", "search-type"),
    "note.amend": ("U", "update"),
    "note.delete": ("D", "delete"),
    "patient.create": ("C", "create"),
    "patient.lookup": ("E", "search-type"),
    "audit.query": ("E", "search-type"),
}
# outcome -> FHIR AuditEventOutcome: 0 success, 4 minor failure, 8 serious failure
_OUTCOMES = {"granted": "0", "noop": "0", "denied": "4", "throttled": "4"}


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def audit_event(record: dict[str, Any]) -> dict[str, Any]:
    action = str(record["action"])
    crude, interaction = _ACTIONS.get(action, ("E", ""))
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"sealednotes-{record['id']}",
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "action": crude,
        "recorded": _instant(record["at"]),
        "outcome": _OUTCOMES.get(str(record["outcome"]), "8"),
        "outcomeDesc": str(record["outcome"])
        + (f": {record['reason']}" if record.get("reason") else ""),
        "agent": [
            {
                "type": {"coding": [{"system": PARTICIPATION, "code": "AUT", "display": "author"}]},
                "requestor": True,
                **(
                    {
                        "who": {
                            "identifier": {
                                "system": IDENTIFIER_SYSTEM,
                                "value": str(record["principal_id"]),
                            }
                        }
                    }
                    if record.get("principal_id")
                    else {}
                ),
                **({"role": [{"text": record["role"]}]} if record.get("role") else {}),
                **(
                    {"network": {"address": str(record["client_addr"]), "type": "2"}}
                    if record.get("client_addr")
                    else {}
                ),
            }
        ],
        "source": {
            "site": str(record["tenant_id"]) if record.get("tenant_id") else "sealednotes",
            "observer": {"display": "Sealed Notes"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
    }
    if interaction:
        resource["subtype"] = [{"system": RESTFUL, "code": interaction}]
    else:
        resource["subtype"] = [{"system": "urn:sealednotes:action", "code": action}]
    if record.get("reason") == "break-glass" or action == "break-glass":
        resource["purposeOfEvent"] = [
            {"coding": [{"system": ACT_REASON, "code": "BTG", "display": "break the glass"}]}
        ]
    entities: list[dict[str, Any]] = []
    if record.get("patient_id"):
        entities.append(
            {
                "what": {"reference": f"Patient/{record['patient_id']}"},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    if record.get("note_id"):
        entities.append(
            {
                "what": {"reference": f"DocumentReference/{record['note_id']}"},
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
            }
        )
    if record.get("request_id"):
        entities.append(
            {
                "what": {
                    "identifier": {
                        "system": "urn:sealednotes:request-id",
                        "value": str(record["request_id"]),
                    }
                },
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            }
        )
    if entities:
        resource["entity"] = entities
    return resource
