"""The FHIR R4 facade driven end to end over real HTTP by a FHIR client library (fhirclient):
search a patient, create, read, update, search, version and void a note."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from fhirclient.models.bundle import Bundle as ClientBundle
from fhirclient.models.documentreference import DocumentReference as ClientDocumentReference
from fhirclient.server import FHIRServer

from tests.conftest import LiveServer
from tests.helpers import Api, StackHelper, Who
from tests.integration.fhir_facade import b64, doc


def test_a_fhir_client_library_creates_reads_searches_and_versions_a_note(
    live_server: Callable[..., LiveServer], base_settings: Any
) -> None:
    server = live_server(workers=1)
    from flask import Flask

    from service.app import create_app

    app: Flask = create_app(base_settings)
    try:
        api = Api(app.test_client())
        stack = StackHelper(app, api)
        t = stack.tenant()
        dr: Who = stack.clinician(t)
        pid = stack.patient_for(t, dr, "MRN-CLIENT-1")
    finally:
        app.extensions["sealednotes"].store.close()

    fhir_server = FHIRServer(None, base_uri=server.url + "/fhir/R4/")
    fhir_server.session.headers["Authorization"] = f"Bearer {dr.token}"
    cap = fhir_server.capabilityStatement
    assert cap.fhirVersion == "4.0.1"

    from fhirclient.models.patient import Patient

    found = list(Patient.where({"identifier": "MRN-CLIENT-1"}).perform_resources_iter(fhir_server))
    assert [p.id for p in found] == [pid]

    note = ClientDocumentReference(doc(pid, "Written by a FHIR client."), strict=True)
    created = note.create(fhir_server)
    assert created is not None
    nid = created["id"]
    read = ClientDocumentReference.read(nid, fhir_server)
    assert read.description == "Visit" and read.meta.versionId == "1"
    assert base64.b64decode(read.content[0].attachment.data).decode() == "Written by a FHIR client."

    read.description = "Visit (amended)"
    read.content[0].attachment.data = b64("Amended by a FHIR client.")
    read.content[0].attachment.size = None
    fhir_server.session.headers["If-Match"] = f'W/"{read.meta.versionId}"'
    read.update(fhir_server)
    del fhir_server.session.headers["If-Match"]

    hits = list(ClientDocumentReference.where({"patient": pid}).perform_resources_iter(fhir_server))
    assert [(d.id, d.description) for d in hits] == [(nid, "Visit (amended)")]
    history = ClientBundle.read_from(f"DocumentReference/{nid}/_history", fhir_server)
    assert [e.resource.meta.versionId for e in history.entry] == ["2", "1"]
    first = ClientDocumentReference.read_from(f"DocumentReference/{nid}/_history/1", fhir_server)
    assert (
        base64.b64decode(first.content[0].attachment.data).decode() == "Written by a FHIR client."
    )
    ClientDocumentReference.read(nid, fhir_server).delete(fhir_server)
    assert ClientDocumentReference.read(nid, fhir_server).status == "entered-in-error"
