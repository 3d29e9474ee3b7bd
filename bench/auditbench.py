"""Case 3: the sharded audit hash chain under concurrency.

Each writer is its own process with its own connection (as the service role)
and appends one record per transaction, committing each, for a bounded time:

* ``chained``: `UnitOfWork.audit.insert_audit_event`, exactly as the service
  calls it (advisory lock on the connection's shard, head lookup, hash, insert
  into ``audit_events``; however the store currently does that: client-side
  statements or one server-side function);
* ``plain``: one INSERT of the same columns into ``bench_audit_plain``, a table
  with the same secondary indexes and no chain.

Writers start together at an agreed wall-clock instant, so 1, 4 and 16 writers
really overlap. The shard of a chained writer is its backend pid modulo the
number of shards: the result reports how many distinct shards the writers got,
since two writers on one shard take turns.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from bench.stack import Stack
from service.adapters.postgres import UnitOfWork
from service.audit import chain as auditchain
from service.models import AuditEvent

PLAIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_audit_plain (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL,
    tenant_id     uuid,
    principal_id  uuid,
    role          text,
    patient_id    uuid,
    note_id       uuid,
    action        text NOT NULL,
    outcome       text NOT NULL,
    reason        text,
    request_id    text,
    client_addr   text
);
CREATE INDEX IF NOT EXISTS bench_audit_plain_patient ON bench_audit_plain (patient_id, id);
CREATE INDEX IF NOT EXISTS bench_audit_plain_principal ON bench_audit_plain (principal_id, id);
CREATE INDEX IF NOT EXISTS bench_audit_plain_tenant ON bench_audit_plain (tenant_id, id);
CREATE INDEX IF NOT EXISTS bench_audit_plain_at ON bench_audit_plain (at);
"""
PLAIN_INSERT = (
    "INSERT INTO bench_audit_plain (at, tenant_id, principal_id, role, patient_id, note_id,"
    " action, outcome, reason, request_id, client_addr) VALUES (%(at)s, %(tenant_id)s,"
    " %(principal_id)s, %(role)s, %(patient_id)s, %(note_id)s, %(action)s, %(outcome)s,"
    " %(reason)s, %(request_id)s, %(client_addr)s)"
)
MODES = ("plain", "chained")
WARMUP_SECONDS = 0.3  # per writer, unmeasured, before the agreed start


@dataclass(frozen=True)
class AuditIds:
    """Identifiers the records carry (real rows of the bench tenant)."""

    tenant_id: str
    principal_id: str
    patient_id: str
    note_id: str


@dataclass(frozen=True)
class AuditRun:
    mode: str
    writers: int
    seconds: float
    records: int
    rps: float
    p50_ms: float
    p99_ms: float
    distinct_shards: int  # chained only: fewest distinct shards the writers got in a slice
    busiest_shard_writers: int  # chained only: most writers sharing one shard in a slice

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def prepare(stack: Stack) -> None:
    """Create the unchained table and let the service role write it."""
    with psycopg.connect(stack.owner_url) as conn:
        conn.execute(PLAIN_SCHEMA.encode())
        role = sql.Identifier(stack.app_role)
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON bench_audit_plain TO {}").format(role))
        conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE bench_audit_plain_id_seq TO {}").format(role))
        conn.commit()


def _event(ids: AuditIds) -> AuditEvent:
    return AuditEvent(
        action="note.read",
        outcome="granted",
        tenant_id=ids.tenant_id,
        principal_id=ids.principal_id,
        role="clinician",
        patient_id=ids.patient_id,
        note_id=ids.note_id,
        reason=None,
        request_id=str(uuid.uuid4()),
        client_addr="127.0.0.1",
    )


def _append_once(conn: psycopg.Connection[dict[str, Any]], mode: str, ids: AuditIds) -> None:
    """One record, one transaction, committed."""
    event = _event(ids)
    now = datetime.now(UTC)
    if mode == "chained":
        UnitOfWork(conn).audit.insert_audit_event(event)
    else:
        conn.execute(
            PLAIN_INSERT,
            {"at": now, **dataclasses.asdict(event)},
        )
    conn.commit()


def _writer(
    mode: str, url: str, ids: AuditIds, start_at: float, seconds: float
) -> tuple[int, float, list[float], int]:
    """One writer process: warm up briefly, wait for `start_at` (wall clock), then
    append for `seconds`. Returns (records, elapsed, latencies, shard)."""
    with psycopg.connect(url, row_factory=dict_row, application_name="bench-audit") as conn:
        shard = conn.info.backend_pid % auditchain.SHARDS
        warm_until = min(time.time() + WARMUP_SECONDS, start_at - 0.1)
        while time.time() < warm_until:
            _append_once(conn, mode, ids)
        time.sleep(max(0.0, start_at - time.time()))
        latencies: list[float] = []
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            _append_once(conn, mode, ids)
            latencies.append(time.perf_counter() - t0)
        return len(latencies), time.perf_counter() - started, latencies, shard


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def run_audit_bench(
    stack: Stack, ids: AuditIds, *, concurrencies: tuple[int, ...], seconds: float
) -> list[AuditRun]:
    """At each concurrency, `seconds` per mode, in slices ordered plain, chained,
    chained, plain (so a drift in background load falls on both alike); one
    process and one connection per writer."""
    prepare(stack)
    runs: list[AuditRun] = []
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(max(concurrencies)) as pool:
        # Start every worker process (imports) before anything is timed.
        pool.map(time.sleep, [0.0] * max(concurrencies), chunksize=1)
        for n in concurrencies:
            slices: dict[str, list[list[tuple[int, float, list[float], int]]]] = {
                m: [] for m in MODES
            }
            for mode in ("plain", "chained", "chained", "plain"):
                start_at = time.time() + WARMUP_SECONDS + 1.0
                slices[mode].append(
                    pool.starmap(
                        _writer,
                        [(mode, stack.app_url, ids, start_at, seconds / 2)] * n,
                        chunksize=1,
                    )
                )
            for mode in MODES:
                results = [r for part in slices[mode] for r in part]
                latencies = sorted(x for r in results for x in r[2])
                shard_counts = [Counter(r[3] for r in part) for part in slices[mode]]
                chained = mode == "chained"
                runs.append(
                    AuditRun(
                        mode=mode,
                        writers=n,
                        seconds=seconds,
                        records=sum(r[0] for r in results),
                        # Each slice: the writers' rates add up; the two slices average.
                        rps=sum(sum(r[0] / r[1] for r in part if r[1] > 0) for part in slices[mode])
                        / len(slices[mode]),
                        p50_ms=_percentile(latencies, 50) * 1000,
                        p99_ms=_percentile(latencies, 99) * 1000,
                        distinct_shards=min(len(c) for c in shard_counts) if chained else 0,
                        busiest_shard_writers=max(max(c.values()) for c in shard_counts)
                        if chained
                        else 0,
                    )
                )
    return runs


def verify_rates(stack: Stack, records: int = 200_000) -> dict[str, Any]:
    """`audit verify` over a log of at least `records` records: a full pass, then an
    incremental one after one more checkpoint's worth of records (1%)."""
    from dataclasses import replace

    from bench.seed import bench_settings
    from service.app import build_services

    svc = build_services(replace(bench_settings(stack), pool_min=1, pool_max=2))
    audit = svc.audit_service
    with psycopg.connect(stack.owner_url, autocommit=True) as conn:
        have = int(conn.execute("SELECT count(*) FROM audit_events").fetchone()[0])
    _append_bulk(stack, max(0, records - have))
    audit.checkpoint()
    full = audit.verify(full=True)
    _append_bulk(stack, records // 100)
    audit.checkpoint()
    incremental = audit.verify(full=False)
    svc.store.close()
    return {
        "full": {
            "checked": full.checked,
            "records_per_second": full.as_dict()["records_per_second"],
            "ok": full.ok,
            "seconds": round(full.seconds, 2),
        },
        "incremental": {
            "checked": incremental.checked,
            "ok": incremental.ok,
            "seconds": round(incremental.seconds, 3),
            "from_checkpoint": incremental.from_checkpoint,
        },
    }


def _append_bulk(stack: Stack, n: int, batch: int = 1000) -> None:
    """n records through the database's own batch append (chained and dated there)."""
    if n <= 0:
        return
    tenant = "11111111-1111-4111-8111-111111111111"
    with psycopg.connect(stack.app_url, autocommit=True) as conn:
        done = 0
        while done < n:
            k = min(batch, n - done)
            conn.execute(
                "SELECT sealednotes_audit_append_batch(%s, %s::uuid[], %s::uuid[], %s::text[],"
                " %s::uuid[], %s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[],"
                " %s::text[])",
                (
                    done % 16,
                    [tenant] * k,
                    [None] * k,
                    ["clinician"] * k,
                    [None] * k,
                    [None] * k,
                    ["note.read"] * k,
                    ["granted"] * k,
                    [None] * k,
                    [f"bench-{done + i}" for i in range(k)],
                    ["127.0.0.1"] * k,
                ),
            )
            done += k
