"""What the facade can do: the CapabilityStatement and the SMART configuration."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.fhir.resources import FHIR_JSON, FHIR_VERSION, instant


def capability_statement(base_url: str, token_url: str, now: datetime) -> dict[str, Any]:
    def interactions(*codes: str) -> list[dict[str, str]]:
        return [{"code": c} for c in codes]

    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(now),
        "publisher": "Sealed Notes",
        "kind": "instance",
        "software": {"name": "Sealed Notes"},
        "implementation": {
            "description": "Clinical notes encrypted per patient, released through an "
            "audited key-release budget",
            "url": base_url,
        },
        "fhirVersion": FHIR_VERSION,
        "format": ["json", FHIR_JSON],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/"
                                    "restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": "Bearer tokens: opaque `snt_` tokens, JWT access tokens of "
                    "the tenant's identity provider, or tokens of POST /oauth2/token (SMART "
                    "Backend Services). Every content read goes through the key-release gate.",
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/"
                            "oauth-uris",
                            "extension": [{"url": "token", "valueUri": token_url}],
                        }
                    ],
                },
                "resource": [
                    {
                        "type": "DocumentReference",
                        "versioning": "versioned-update",
                        "readHistory": True,
                        "updateCreate": False,
                        "conditionalCreate": False,
                        "conditionalUpdate": False,
                        "conditionalDelete": "not-supported",
                        "interaction": interactions(
                            "read",
                            "vread",
                            "update",
                            "delete",
                            "history-instance",
                            "create",
                            "search-type",
                        ),
                        "searchParam": [
                            {"name": "patient", "type": "reference"},
                            {"name": "subject", "type": "reference"},
                            {"name": "_count", "type": "number"},
                            {"name": "_summary", "type": "token"},
                        ],
                    },
                    {
                        "type": "Patient",
                        "interaction": interactions("read", "search-type"),
                        "searchParam": [{"name": "identifier", "type": "token"}],
                    },
                    {
                        "type": "AuditEvent",
                        "interaction": interactions("search-type"),
                        "searchParam": [
                            {"name": "patient", "type": "reference"},
                            {"name": "agent", "type": "reference"},
                            {"name": "date", "type": "date"},
                            {"name": "_count", "type": "number"},
                        ],
                    },
                ],
            }
        ],
    }


def smart_configuration(token_url: str) -> dict[str, Any]:
    return {
        "token_endpoint": token_url,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS256", "ES256"],
        "scopes_supported": ["system/*.read", "system/*.rs", "system/Patient.read"],
        "capabilities": ["client-confidential-asymmetric"],
    }
