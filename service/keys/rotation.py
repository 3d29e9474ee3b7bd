"""Rotation: a new Transit key version, every wrapped key rewrapped in batches
(online, resumable, with progress), then old versions retired. Status per tenant."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from crypto import WrappedKey, key_context
from service.errors import Conflict, NotFound
from service.models import PatientKeyRow

if TYPE_CHECKING:
    pass

from service.keys.state import KeyOperationsState

log = logging.getLogger(__name__)

# Keys read and committed per database round; the Vault adapter splits them into
# requests of at most 240 items (OpenBao's JSON complexity limit) sent in parallel.
DEFAULT_BATCH = 2000
Progress = Callable[[int, int], None]


@dataclass
class RotationReport:
    tenant: str
    tenant_id: str
    rotated: bool
    resumed: bool
    from_version: int
    to_version: int
    rewrapped: int = 0
    failed: list[str] = field(default_factory=list)
    passes: int = 0
    retired: bool = False
    min_decryption_version: int = 1
    remaining_old: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keys_per_second"] = round(self.rewrapped / self.seconds) if self.seconds else None
        return d


class KeyRotation(KeyOperationsState):
    def status(self) -> list[dict[str, Any]]:
        with self._store.transaction() as tx:
            tenants = tx.tenants.all_tenants()
            counts = {t.id: tx.keys.key_version_counts(t.id) for t in tenants}
        out = []
        for t in tenants:
            info = self._keys.dek_key_info(t.id)
            by_version = counts[t.id]
            out.append(
                {
                    "tenant": t.name,
                    "tenant_id": t.id,
                    "latest_version": info["latest_version"],
                    "min_decryption_version": info["min_decryption_version"],
                    "transit_versions": info["versions"],
                    "wrapped_keys_by_version": {str(v): n for v, n in by_version.items()},
                    "wrapped_keys_total": sum(by_version.values()),
                    "on_latest": by_version.get(info["latest_version"], 0),
                }
            )
        return out

    def rotate(
        self,
        tenant_name: str | None = None,
        *,
        retire_old: bool = False,
        batch: int = DEFAULT_BATCH,
        progress: Progress | None = None,
    ) -> list[RotationReport]:
        with self._store.transaction() as tx:
            if tenant_name is None:
                tenants = tx.tenants.all_tenants()
            else:
                t = tx.tenants.tenant_by_name(tenant_name)
                if t is None:
                    raise NotFound(f"No tenant named {tenant_name!r}")
                tenants = [t]
        return [self._rotate_tenant(t.id, t.name, retire_old, batch, progress) for t in tenants]

    def _rotate_tenant(
        self, tenant_id: str, name: str, retire_old: bool, batch: int, progress: Progress | None
    ) -> RotationReport:
        started = time.perf_counter()
        info = self._keys.dek_key_info(tenant_id)
        with self._store.transaction() as tx:
            counts = tx.keys.key_version_counts(tenant_id)
        old = sum(n for v, n in counts.items() if v < info["latest_version"])
        if old:
            # A previous rotation was interrupted (or the key was rotated in Vault
            # directly): finish rewrapping to the newest version before rotating again.
            latest, rotated = info["latest_version"], False
        else:
            latest, rotated = self._keys.rotate_dek(tenant_id), True
            old = sum(counts.values())
        report = RotationReport(
            tenant=name,
            tenant_id=tenant_id,
            rotated=rotated,
            resumed=not rotated,
            from_version=info["latest_version"] if not rotated else latest - 1,
            to_version=latest,
            min_decryption_version=info["min_decryption_version"],
        )
        self._record(
            "keys.rotate",
            tenant_id,
            f"{'rotated' if rotated else 'resumed'} to v{latest}; {old} wrapped keys to rewrap",
        )
        failed: set[str] = set()
        while True:
            report.passes += 1
            done_this_pass = self._rewrap_pass(
                tenant_id, latest, batch, failed, report, old, progress
            )
            # Keys written while this pass ran (behind the cursor) get another pass.
            if done_this_pass == 0:
                break
        with self._store.transaction() as tx:
            counts = tx.keys.key_version_counts(tenant_id)
        report.remaining_old = sum(n for v, n in counts.items() if v < latest)
        report.failed = sorted(failed)
        if failed:
            log.error("%s wrapped keys of tenant %s failed to rewrap", len(failed), tenant_id)
        if retire_old:
            if report.remaining_old:
                raise Conflict(
                    f"{report.remaining_old} wrapped keys are still on old versions "
                    f"({len(failed)} failed to rewrap); not retiring old versions"
                )
            self._keys.set_min_decryption_version(tenant_id, latest)
            report.retired = True
            report.min_decryption_version = latest
            self._record("keys.retire", tenant_id, f"min_decryption_version=v{latest}")
        report.seconds = time.perf_counter() - started
        self._record(
            "keys.rewrap",
            tenant_id,
            f"v{latest}: rewrapped={report.rewrapped} failed={len(failed)} "
            f"remaining_old={report.remaining_old}",
            outcome="granted" if not failed else "denied",
        )
        return report

    def _rewrap_pass(
        self,
        tenant_id: str,
        latest: int,
        batch: int,
        failed: set[str],
        report: RotationReport,
        total: int,
        progress: Progress | None,
    ) -> int:
        """One keyset pass over keys below `latest`, pipelined: reading the next
        batch, rewrapping in Vault and committing overlap."""

        def rewrap(rows: list[PatientKeyRow]) -> list[WrappedKey | None]:
            return self._keys.rewrap_batch(
                tenant_id,
                [
                    (r.wrapped_key, key_context(tenant_id=tenant_id, patient_id=r.patient_id))
                    for r in rows
                ],
            )

        def commit(rows: list[PatientKeyRow], pending: Future[list[WrappedKey | None]]) -> int:
            updates = []
            for r, new in zip(rows, pending.result(), strict=True):
                if new is None:
                    failed.add(r.patient_id)
                else:
                    updates.append((r.patient_id, r.wrapped_key, new.ciphertext, new.key_version))
            with self._store.transaction() as tx:
                return tx.keys.replace_wrapped_keys(updates, self._clock.now())

        done = 0
        after: str | None = None
        in_flight: deque[Future[int]] = deque()
        with ThreadPoolExecutor(2) as vault_pool, ThreadPoolExecutor(1) as db_pool:
            while True:
                with self._store.transaction() as tx:
                    rows = tx.keys.wrapped_keys_below(tenant_id, latest, after=after, limit=batch)
                if not rows:
                    break
                after = rows[-1].patient_id
                rows = [r for r in rows if r.patient_id not in failed]
                pending = vault_pool.submit(rewrap, rows)
                in_flight.append(db_pool.submit(commit, rows, pending))
                while len(in_flight) > 2:
                    done += self._collect(in_flight.popleft(), report, total, progress)
            while in_flight:
                done += self._collect(in_flight.popleft(), report, total, progress)
        return done

    @staticmethod
    def _collect(
        future: Future[int], report: RotationReport, total: int, progress: Progress | None
    ) -> int:
        changed = future.result()
        report.rewrapped += changed
        if progress:
            progress(report.rewrapped, total)
        return changed

    def retire(self, tenant_name: str | None = None) -> list[dict[str, Any]]:
        """Raise min_decryption_version to the latest version, without rotating, for
        tenants whose wrapped keys are all on the latest version."""
        with self._store.transaction() as tx:
            tenants = (
                tx.tenants.all_tenants()
                if tenant_name is None
                else [t for t in [tx.tenants.tenant_by_name(tenant_name)] if t is not None]
            )
            if tenant_name is not None and not tenants:
                raise NotFound(f"No tenant named {tenant_name!r}")
            counts = {t.id: tx.keys.key_version_counts(t.id) for t in tenants}
        out = []
        for t in tenants:
            latest = self._keys.dek_key_info(t.id)["latest_version"]
            old = sum(n for v, n in counts[t.id].items() if v < latest)
            if old:
                raise Conflict(
                    f"{old} wrapped keys of tenant {t.name!r} are on old versions: "
                    "run `sealednotes keys rotate` (it resumes) first"
                )
            self._keys.set_min_decryption_version(t.id, latest)
            self._record("keys.retire", t.id, f"min_decryption_version=v{latest}")
            out.append({"tenant": t.name, "tenant_id": t.id, "min_decryption_version": latest})
        return out

    def _record(self, action: str, tenant_id: str, reason: str, outcome: str = "granted") -> None:
        with self._store.transaction() as tx:
            self._audit.record(
                tx,
                action=action,
                outcome=outcome,
                tenant_id=tenant_id,
                reason=reason,
            )
