"""`audit reconcile`: reading Vault's audit log and matching unwraps one to one."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from crypto import key_context, parse_key_context
from service.audit.reconcile import ServiceUnwrap, read_vault_unwraps, reconcile

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
TENANT = "3f1c2b8e-0000-4000-8000-000000000001"


def entry(
    *,
    at: datetime = T0,
    patient: str | None = "p1",
    tenant: str = TENANT,
    kind: str = "response",
    path: str | None = None,
    error: str | None = None,
    batch: int | None = None,
    client: str = "10.0.0.7",
) -> str:
    data: dict[str, object] = {"ciphertext": "hmac-sha256:ab"}
    if patient is not None:
        data["context"] = base64.b64encode(
            key_context(tenant_id=tenant, patient_id=patient)
        ).decode()
    if batch is not None:
        data = {"batch_input": [{"ciphertext": "hmac-sha256:x"}] * batch}
    e: dict[str, object] = {
        "time": at.strftime("%Y-%m-%dT%H:%M:%S") + ".123456789Z",  # Vault: nanoseconds
        "type": kind,
        "request": {
            "path": path or f"transit/decrypt/sealednotes-dek-{tenant}",
            "data": data,
            "remote_address": client,
        },
    }
    if error:
        e["error"] = error
    return json.dumps(e)


def test_key_context_round_trips_and_rejects_anything_else() -> None:
    ctx = key_context(tenant_id="t-1", patient_id="p-1")
    assert parse_key_context(ctx) == ("t-1", "p-1")
    for bad in (b"", b"\x00\x00\x00\x05abc", ctx + b"\x00", ctx[:-1], b"x" * 12):
        with pytest.raises(ValueError):
            parse_key_context(bad)
    other = b"".join(len(f).to_bytes(4, "big") + f for f in (b"other/v1", b"t", b"p"))
    with pytest.raises(ValueError):
        parse_key_context(other)


def test_only_successful_data_key_unwraps_are_read() -> None:
    lines = [
        entry(kind="request"),  # the request half of a pair
        entry(),  # a successful unwrap
        entry(error="permission denied"),
        entry(path=f"transit/datakey/plaintext/sealednotes-dek-{TENANT}", patient="p2"),
        entry(path=f"transit/hmac/sealednotes-index-{TENANT}"),
        entry(path="transit/decrypt/other-app"),
        "not json",
        "",
    ]
    unwraps, unreadable = read_vault_unwraps(lines)
    assert unreadable == 1
    assert [(u.kind, u.tenant_id, u.patient_id, u.client_addr) for u in unwraps] == [
        ("unwrap", TENANT, "p1", "10.0.0.7"),
        ("create", TENANT, "p2", "10.0.0.7"),  # a new patient key: matched to key.create
    ]
    assert unwraps[0].at == T0.replace(microsecond=123456)


def test_since_and_mount_are_honoured() -> None:
    lines = [entry(at=T0), entry(at=T0 + timedelta(hours=1))]
    unwraps, _ = read_vault_unwraps(lines, since=T0 + timedelta(minutes=1))
    assert len(unwraps) == 1
    assert read_vault_unwraps(lines, mount="transit-2")[0] == []


def test_each_service_record_explains_one_unwrap_only() -> None:
    unwraps, _ = read_vault_unwraps([entry(at=T0), entry(at=T0 + timedelta(seconds=1))])
    report = reconcile(unwraps, [ServiceUnwrap(T0, TENANT, "p1")])
    assert (report.matched, report.unmatched) == (1, 1)
    assert report.unmatched_by_client == {"10.0.0.7": 1}


def test_matching_needs_the_same_patient_and_tenant_within_the_tolerance() -> None:
    unwraps, _ = read_vault_unwraps([entry(at=T0)])
    for record in (
        ServiceUnwrap(T0, TENANT, "p2"),
        ServiceUnwrap(T0, "another-tenant", "p1"),
        ServiceUnwrap(T0 + timedelta(seconds=31), TENANT, "p1"),
        ServiceUnwrap(T0 - timedelta(seconds=31), TENANT, "p1"),
    ):
        assert reconcile(unwraps, [record]).unmatched == 1, record
    early = ServiceUnwrap(T0 - timedelta(seconds=29), TENANT, "p1")
    assert reconcile(unwraps, [early]).ok


def test_a_context_of_another_tenant_or_garbage_is_never_matched() -> None:
    foreign = entry(tenant=TENANT, patient="p1")
    # the same context sent to another tenant's key
    other_key = foreign.replace(f"sealednotes-dek-{TENANT}", "sealednotes-dek-other")
    garbage = entry().replace('"context": "', '"context": "!!')
    unwraps, _ = read_vault_unwraps([other_key, garbage])
    records = [ServiceUnwrap(T0, TENANT, "p1"), ServiceUnwrap(T0, "other", "p1")]
    report = reconcile(unwraps, records)
    assert report.unmatched == 2


def test_batch_unwraps_are_counted_and_never_matched() -> None:
    unwraps, _ = read_vault_unwraps([entry(batch=250)])
    report = reconcile(unwraps, [ServiceUnwrap(T0, TENANT, "p1")])
    assert (report.vault_unwraps, report.unmatched) == (250, 250)
    assert report.service_records_unmatched == 1
    d = report.as_dict()
    assert d["ok"] is False and d["unmatched_by_tenant"] == {TENANT: 250}
    assert d["unmatched_by_kind"] == {"unwrap": 250}
    assert d["unmatched_first"] == d["unmatched_last"] == T0.replace(microsecond=123456).isoformat()


def test_key_creations_match_key_create_records_only() -> None:
    line = entry(path=f"transit/datakey/plaintext/sealednotes-dek-{TENANT}")
    unwraps, _ = read_vault_unwraps([line])
    assert reconcile(unwraps, [ServiceUnwrap(T0, TENANT, "p1")]).unmatched == 1  # an unwrap
    assert reconcile(unwraps, [ServiceUnwrap(T0, TENANT, "p1", "create")]).ok


def test_an_unreadable_line_is_not_ok() -> None:
    unwraps, unreadable = read_vault_unwraps([entry(), '{"cut": "in the mid'])
    report = reconcile(unwraps, [ServiceUnwrap(T0, TENANT, "p1")], unreadable_lines=unreadable)
    assert report.matched == 1 and report.unmatched == 0 and not report.ok
