"""Notes end to end through the API, on real PostgreSQL and OpenBao."""

from __future__ import annotations

from tests.helpers import Api, StackHelper


def test_create_read_amend_versions_delete(api: Api, stack: StackHelper) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)

    r = api.post(
        f"/v1/patients/{pid}/notes",
        dr.token,
        {
            "kind": "progress",
            "title": "Visit",
            "body": "Doing well.",
            "encounter_at": "2026-11-20T09:30:00+00:00",
        },
    )
    assert r.status_code == 201
    note = r.get_json()
    assert r.headers["ETag"] == '"1"'
    assert r.headers["Location"] == f"/v1/notes/{note['id']}"
    assert "body" not in note  # a write returns no content

    r = api.get(f"/v1/notes/{note['id']}", dr.token)
    assert r.status_code == 200
    got = r.get_json()
    assert (got["title"], got["body"], got["version"]) == ("Visit", "Doing well.", 1)
    assert got["encounter_at"].startswith("2026-11-20T09:30:00")

    amended = {"kind": "progress", "title": "Visit", "body": "Doing better."}
    r = api.put(f"/v1/notes/{note['id']}", dr.token, amended)
    assert r.status_code == 428
    r = api.put(f"/v1/notes/{note['id']}", dr.token, amended, headers={"If-Match": '"7"'})
    assert r.status_code == 412
    r = api.put(f"/v1/notes/{note['id']}", dr.token, amended, headers={"If-Match": '"1"'})
    assert r.status_code == 200 and r.headers["ETag"] == '"2"'
    r = api.put(f"/v1/notes/{note['id']}", dr.token, amended, headers={"If-Match": '"1"'})
    assert r.status_code == 412  # a stale writer cannot overwrite

    r = api.get(f"/v1/notes/{note['id']}/versions", dr.token)
    assert r.status_code == 200
    assert [(v["version"], v["body"]) for v in r.get_json()["items"]] == [
        (1, "Doing well."),
        (2, "Doing better."),
    ]

    r = api.delete(f"/v1/notes/{note['id']}", dr.token)
    assert r.status_code == 204
    r = api.get(f"/v1/notes/{note['id']}", dr.token)
    assert r.get_json()["status"] == "entered-in-error"
    assert r.get_json()["body"] == "Doing better."  # content kept, still encrypted at rest
    r = api.put(f"/v1/notes/{note['id']}", dr.token, amended, headers={"If-Match": '"2"'})
    assert r.status_code == 409  # an entered-in-error note is not amended


def test_list_metadata_and_content(api: Api, stack: StackHelper) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr)
    for i in range(5):
        stack.note(dr, pid, body=f"body {i}")

    r = api.get(f"/v1/patients/{pid}/notes?limit=2", dr.token)
    assert r.status_code == 200
    page = r.get_json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    assert all("body" not in n for n in page["items"])
    assert "RateLimit-Remaining" not in r.headers  # metadata releases no key

    seen = []
    cursor = None
    while True:
        q = f"/v1/patients/{pid}/notes?include=content&limit=2"
        r = api.get(q + (f"&cursor={cursor}" if cursor else ""), dr.token)
        assert r.status_code == 200
        assert "RateLimit-Remaining" in r.headers
        body = r.get_json()
        seen += [n["body"] for n in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == [f"body {i}" for i in range(5)]


def test_patient_lookup_by_external_id(api: Api, stack: StackHelper) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient_for(t, dr, external_id="MRN-42")
    r = api.get("/v1/patients?external_id=MRN-42", t.integration.token)
    assert r.status_code == 200 and r.get_json()["id"] == pid
    r = api.get("/v1/patients?external_id=%20MRN-42%20", dr.token)  # normalised
    assert r.status_code == 200 and r.get_json()["id"] == pid
    r = api.get("/v1/patients?external_id=MRN-43", t.integration.token)
    assert r.status_code == 404
    r = api.post("/v1/patients", t.integration.token, {"external_id": "MRN-42"})
    assert r.status_code == 409 and r.get_json()["patient_id"] == pid

    other = stack.tenant()
    r = api.get("/v1/patients?external_id=MRN-42", other.integration.token)
    assert r.status_code == 404  # tenants are isolated


def test_me_and_health(api: Api, stack: StackHelper) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    r = api.get("/v1/me", dr.token)
    assert r.status_code == 200
    me = r.get_json()
    assert me["role"] == "clinician" and me["budget"]["hour"]["remaining"] == 60
    assert api.get("/healthz").status_code == 200
    r = api.get("/readyz")
    assert r.status_code == 200
    assert r.get_json()["database"]["ok"] and r.get_json()["vault"]["ok"]
