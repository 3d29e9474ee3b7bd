"""The hijacked-account drill of test_key_release_budget.py, through the FHIR facade: one
clinician with more care-team patients than its hourly budget reads every DocumentReference
it can. Exactly the budget's worth of patients comes back, the rest get 429
OperationOutcomes, and the fifth denial suspends the account (403) - the same numbers as REST.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import hvac
import psycopg
from flask import Flask

from service.devtools.stack import BaoServer
from tests.helpers import Api, StackHelper
from tests.integration.bulk import bulk_seed
from tests.security.test_key_release_budget import audited_request_ids

PATIENTS = 100  # more than the hourly budget of 60


def test_drill_through_fhir_one_hijacked_account(
    api: Api, stack: StackHelper, app: Flask, db_url: str, bao: BaoServer
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    vault = hvac.Client(url=bao.addr, token=bao.root_token)
    patients = bulk_seed(db_url, vault, t.id, dr.id, PATIENTS)
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        with cur.copy("COPY care_team (patient_id, principal_id, added_at) FROM STDIN") as copy:
            for p in patients:
                copy.write_row((p, dr.id, datetime.now(UTC)))
        conn.commit()

    sent: list[str] = []
    statuses: dict[int, int] = {}

    def get(path: str) -> tuple[int, dict[str, object]]:
        rid = uuid.uuid4().hex
        sent.append(rid)
        r = api.get("/fhir/R4/" + path, dr.token, headers={"X-Request-Id": rid})
        assert r.mimetype == "application/fhir+json", r.mimetype
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        body = r.get_json()
        if r.status_code >= 400:
            assert body["resourceType"] == "OperationOutcome"
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) > 0 and body["issue"][0]["code"] == "throttled"
        return r.status_code, body

    leaked: set[str] = set()
    for p in patients:
        status, bundle = get(f"DocumentReference?patient={p}")
        if status != 200:
            continue
        for entry in bundle["entry"]:  # type: ignore[attr-defined]
            resource = entry["resource"]
            if "data" in resource["content"][0]["attachment"]:
                leaked.add(p)
            s1, one = get(f"DocumentReference/{resource['id']}")
            s2, _hist = get(f"DocumentReference/{resource['id']}/_history")
            assert (s1, s2) == (200, 200) and one["id"] == resource["id"]

    assert len(leaked) == 60  # exactly one hour's budget, not one more
    assert statuses[429] == 5  # five denials...
    assert statuses[403] == PATIENTS - 60 - 5  # ...then a suspended account
    r = api.get("/v1/me", dr.token)
    assert r.status_code == 403 and r.get_json()["type"].endswith("/account-suspended")
    alerts = app.extensions["sealednotes"].alerts.sent
    assert any(a["alert"] == "principal-suspended" and a["principal_id"] == dr.id for a in alerts)
    assert not set(sent) - audited_request_ids(db_url)  # every attempt is in the access log
