"""Reconcile Vault's record of every data-key unwrap with the service's own.

Vault's file audit device writes one JSON line per request and per response.
With the Transit mount tuned to log the derivation `context` in clear
(`vault-setup` does this), every successful `transit/decrypt/sealednotes-dek-*`
response names its tenant and patient. The service writes a `key.unwrap`
audit record for every unwrap it makes, naming the request that caused it; and
the database writes a `key.create` record for every patient's first data key,
which matches Vault's `transit/datakey/plaintext/...` creation (a key planted
from a data key made outside the service shows up as an unmatched creation).

Each Vault unwrap is matched to at most one service record of the same tenant
and patient within `tolerance` of it (and each record to at most one unwrap).
An unwrap with no such record was not made by the service's code path: someone
used the service's Vault credentials directly. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from crypto import parse_key_context

DEK_PREFIX = "sealednotes-dek-"


UNWRAP = "unwrap"  # transit/decrypt: an existing patient key leaves Vault
CREATE = "create"  # transit/datakey/plaintext: a new patient key is made


@dataclass(frozen=True, slots=True)
class VaultUnwrap:
    at: datetime
    tenant_id: str | None  # None: the context could not be read (batch, foreign)
    patient_id: str | None
    client_addr: str | None
    count: int = 1  # keys unwrapped by this one request (batch_input)
    kind: str = UNWRAP


@dataclass(frozen=True, slots=True)
class ServiceUnwrap:
    at: datetime
    tenant_id: str
    patient_id: str
    kind: str = UNWRAP


@dataclass
class ReconcileReport:
    vault_unwraps: int = 0
    matched: int = 0
    unmatched: int = 0
    unmatched_first: datetime | None = None
    unmatched_last: datetime | None = None
    unmatched_by_client: Counter[str] = field(default_factory=Counter)
    unmatched_by_tenant: Counter[str] = field(default_factory=Counter)
    unmatched_by_kind: Counter[str] = field(default_factory=Counter)  # unwrap | create
    service_records: int = 0
    service_records_unmatched: int = 0
    unreadable_lines: int = 0

    @property
    def ok(self) -> bool:
        # A line that cannot be read could hide an unwrap (a shipper cutting long lines).
        return self.unmatched == 0 and self.unreadable_lines == 0

    def as_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "ok": self.ok,
            "vault_unwraps": self.vault_unwraps,
            "matched": self.matched,
            "unmatched": self.unmatched,
            "unmatched_first": iso(self.unmatched_first),
            "unmatched_last": iso(self.unmatched_last),
            "unmatched_by_client": dict(self.unmatched_by_client),
            "unmatched_by_tenant": dict(self.unmatched_by_tenant),
            "unmatched_by_kind": dict(self.unmatched_by_kind),
            "service_records": self.service_records,
            "service_records_without_vault_unwrap": self.service_records_unmatched,
            "unreadable_lines": self.unreadable_lines,
        }


def _parse_time(raw: str) -> datetime:
    # Vault writes RFC 3339 with nanoseconds: keep microseconds.
    raw = raw.replace("Z", "+00:00")
    head, sep, rest = raw.partition(".")
    if sep:
        digits = "".join(ch for ch in rest if "0" <= ch <= "9")
        tz = rest[len(digits) :]
        raw = f"{head}.{digits[:6].ljust(6, '0')}{tz}"
    at = datetime.fromisoformat(raw)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def read_vault_unwraps(
    lines: Iterable[str], *, mount: str = "transit", since: datetime | None = None
) -> tuple[list[VaultUnwrap], int]:
    """Successful data-key unwraps in a Vault audit log; also the count of lines
    that are not JSON audit entries."""
    prefixes = {
        f"{mount}/decrypt/{DEK_PREFIX}": UNWRAP,
        f"{mount}/datakey/plaintext/{DEK_PREFIX}": CREATE,
    }
    out: list[VaultUnwrap] = []
    unreadable = 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
            if entry.get("type") != "response" or entry.get("error"):
                continue
            request = entry.get("request") or {}
            path = request.get("path") or ""
            prefix = next((p for p in prefixes if path.startswith(p)), None)
            if prefix is None:
                continue
            at = _parse_time(entry["time"])
        except (ValueError, KeyError, TypeError, AttributeError):
            unreadable += 1
            continue
        if since is not None and at < since:
            continue
        out.extend(_unwraps_of(entry, request, path[len(prefix) :], at, prefixes[prefix]))
    return out, unreadable


def _unwraps_of(
    entry: dict[str, Any], request: dict[str, Any], key_tenant: str, at: datetime, kind: str
) -> Iterator[VaultUnwrap]:
    data = request.get("data") or {}
    client = request.get("remote_address")
    batch = data.get("batch_input")
    if isinstance(batch, list):
        # Batch items are logged HMAC'd: count them, attribute them to nobody.
        response = (entry.get("response") or {}).get("data") or {}
        results = response.get("batch_results")
        n = len(results) if isinstance(results, list) else len(batch)
        yield VaultUnwrap(at, key_tenant, None, client, count=max(1, n), kind=kind)
        return
    tenant_id, patient_id = key_tenant, None
    context = data.get("context")
    if isinstance(context, str):
        try:
            ctx_tenant, patient_id = parse_key_context(base64.b64decode(context, validate=True))
            if ctx_tenant != key_tenant:
                patient_id = None  # a context that does not belong to this key
        except (ValueError, binascii.Error, UnicodeDecodeError):
            patient_id = None
    yield VaultUnwrap(at, tenant_id, patient_id, client, kind=kind)


def reconcile(
    vault: list[VaultUnwrap],
    service: Iterable[ServiceUnwrap],
    *,
    tolerance: timedelta = timedelta(seconds=30),
    unreadable_lines: int = 0,
) -> ReconcileReport:
    report = ReconcileReport(unreadable_lines=unreadable_lines)
    times: dict[tuple[str, str, str], list[datetime]] = defaultdict(list)
    for rec in service:
        times[(rec.kind, rec.tenant_id, rec.patient_id)].append(rec.at)
        report.service_records += 1
    for lst in times.values():
        lst.sort()
    used: dict[tuple[str, str, str], set[int]] = defaultdict(set)

    def take(key: tuple[str, str, str], at: datetime) -> bool:
        candidates = times.get(key)
        if not candidates:
            return False
        i = bisect.bisect_left(candidates, at - tolerance)
        while i < len(candidates) and candidates[i] <= at + tolerance:
            if i not in used[key]:
                used[key].add(i)
                return True
            i += 1
        return False

    for u in sorted(vault, key=lambda u: u.at):
        report.vault_unwraps += u.count
        if (
            u.count == 1
            and u.tenant_id
            and u.patient_id
            and take((u.kind, u.tenant_id, u.patient_id), u.at)
        ):
            report.matched += 1
            continue
        report.unmatched += u.count
        report.unmatched_first = report.unmatched_first or u.at
        report.unmatched_last = u.at
        report.unmatched_by_client[u.client_addr or "unknown"] += u.count
        report.unmatched_by_tenant[u.tenant_id or "unknown"] += u.count
        report.unmatched_by_kind[u.kind] += u.count
    report.service_records_unmatched = report.service_records - sum(len(s) for s in used.values())
    return report
