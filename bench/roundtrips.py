"""Where a request's time goes: the database round trips of a warm read and a create.

The use cases run in this process against a pool of exactly one connection
whose libpq protocol trace is on (to a file in the work directory, deleted
right after: it holds bound parameters). Every client message that waits for
the server (a simple ``Query``, or the ``Sync`` closing an extended-protocol
statement) is one round trip; the trace names each statement, including those
no repository method shows (the pool's per-checkout health check, BEGIN, COMMIT), and
its timestamps give the wait of each round trip (send to ``ReadyForQuery``).

Each operation is traced over several iterations; the report gives, per
statement position, the mean wait, and per operation the time spent waiting on
PostgreSQL against the time spent in Python between round trips. The plaintext
peer's read (two statements on an autocommit connection) is timed alongside,
without HTTP, for scale.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psycopg

from bench.seed import Dataset, bench_settings
from bench.stack import Stack
from service.access.authentication import authenticate, hash_token
from service.access.caller import Caller
from service.app import build_services
from service.notes.sealing import NoteContent

_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\t[FB]\t")
_LINE = re.compile(r"^(\S+ \S+)\t([FB])\t\d+\t(\w+)(?:\t(.*))?$")
_PARSE = re.compile(r'^ "([^"]*)" "(.*)" \d+')
_BIND = re.compile(r'^ "[^"]*" "([^"]*)"')
_QUERY_TEXT = re.compile(r'^ "(.*)"$')
_LIBC = ctypes.CDLL(None)  # fflush(NULL): libpq writes the trace through stdio


@dataclass(frozen=True)
class Step:
    statement: str
    mean_wait_us: float


@dataclass(frozen=True)
class Trace:
    operation: str
    iterations: int
    round_trips: int
    steps: list[Step]
    mean_ms: float  # wall time per operation, traced
    wait_ms: float  # of which waiting for PostgreSQL (sum over round trips)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean_ms"] = round(self.mean_ms, 3)
        out["wait_ms"] = round(self.wait_ms, 3)
        out["python_ms"] = round(self.mean_ms - self.wait_ms, 3)
        out["steps"] = [
            {"statement": s.statement, "mean_wait_us": round(s.mean_wait_us, 1)} for s in self.steps
        ]
        return out


@dataclass(frozen=True)
class Timing:
    operation: str
    iterations: int
    mean_ms: float
    p50_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "mean_ms": round(self.mean_ms, 3),
            "p50_ms": round(self.p50_ms, 3),
        }


def _short(statement: str, width: int = 80) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _logical_lines(text: str) -> list[str]:
    """Trace lines, with multi-line SQL text folded back onto its message line."""
    out: list[str] = []
    for line in text.splitlines():
        if out and not _STAMP.match(line):
            out[-1] += " " + line
        else:
            out.append(line)
    return out


class TraceParser:
    """Turns a timestamped libpq trace into (statement, wait) per round trip.

    psycopg prepares a statement after its fifth execution on a connection and
    from then on sends only Bind/Execute with the statement's name, so the parser
    remembers the text of every named Parse it has seen (the trace must cover
    the preparing executions: the caller runs warm-up iterations traced).
    """

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def parse(self, text: str) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        started: datetime | None = None
        statement = ""
        for line in _logical_lines(text):
            m = _LINE.match(line)
            if m is None:
                continue
            stamp, direction, kind, rest = m.group(1), m.group(2), m.group(3), m.group(4) or ""
            at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f")
            if direction == "F":
                if started is None:
                    started = at
                if kind == "Query":
                    q = _QUERY_TEXT.match(rest)
                    statement = (q.group(1) if q else "") or "<empty query: pool connection check>"
                elif kind == "Parse":
                    p = _PARSE.match(rest)
                    if p:
                        statement = p.group(2)
                        if p.group(1):
                            self._names[p.group(1)] = statement
                elif kind == "Bind" and not statement:
                    b = _BIND.match(rest)
                    name = b.group(1) if b else ""
                    statement = self._names.get(name, f"<prepared statement {name}>")
            elif kind == "ReadyForQuery" and started is not None:
                out.append((_short(statement), (at - started).total_seconds()))
                started, statement = None, ""
        return out


def _trace_operation(
    name: str,
    fn: Callable[[], object],
    sink: IO[bytes],
    parser: TraceParser,
    iterations: int,
    warmup: int,
) -> Trace:
    """Run `warmup` + `iterations` calls traced; aggregate the last `iterations`
    (by then psycopg has prepared every repeated statement, as in the service)."""
    per_call: list[list[tuple[str, float]]] = []
    elapsed = 0.0
    for i in range(warmup + iterations):
        _LIBC.fflush(None)
        start = sink.seek(0, 2)
        t0 = time.perf_counter()
        fn()
        took = time.perf_counter() - t0
        _LIBC.fflush(None)
        sink.seek(start)
        calls = parser.parse(sink.read().decode("utf-8", "replace"))
        if i >= warmup:
            elapsed += took
            per_call.append(calls)
    shape = [s for s, _ in per_call[-1]]
    same = [c for c in per_call if [s for s, _ in c] == shape]
    steps = [
        Step(stmt, sum(c[i][1] for c in same) / len(same) * 1e6) for i, stmt in enumerate(shape)
    ]
    return Trace(
        operation=name,
        iterations=len(same),
        round_trips=len(shape),
        steps=steps,
        mean_ms=elapsed / iterations * 1000,
        wait_ms=sum(s.mean_wait_us for s in steps) / 1000,
    )


def _time(
    operation: str,
    fn: Callable[[], object],
    iterations: int,
    before_each: Callable[[], None] | None = None,
) -> Timing:
    fn()
    samples = []
    for _ in range(iterations):
        if before_each is not None:
            before_each()  # not timed
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return Timing(operation, iterations, statistics.fmean(samples), statistics.median(samples))


def trace_round_trips(
    stack: Stack, data: Dataset, workdir: Path, iterations: int = 50
) -> tuple[list[Trace], list[Timing]]:
    """Trace authenticate, a warm read and a create; time the plaintext peer's read."""
    svc = build_services(replace(bench_settings(stack), pool_min=1, pool_max=1))
    note = data.notes[0]
    clinician = data.clinicians[note.clinician]
    header = "Bearer " + clinician.token
    trace_path = workdir / "libpq-trace.txt"
    traces: list[Trace] = []
    timings: list[Timing] = []
    try:
        pool = svc.store.pool()
        pool.wait(timeout=10)
        caller = Caller(authenticate(svc.store, svc.clock, header), "bench-trace", "127.0.0.1")
        svc.notes.read(caller, note.id)  # this process's key cache is now warm
        content = NoteContent(title="Bench traced note", body="x" * data.body_chars)

        def auth() -> Caller:
            return Caller(authenticate(svc.store, svc.clock, header), "bench-trace", "127.0.0.1")

        def read() -> object:
            return svc.notes.read(auth(), note.id)

        digest = hash_token(clinician.token)

        def read_remembered() -> object:
            # The API's warm read after a token's first request: the worker remembers
            # the caller and the read's own statement confirms it.
            return svc.notes.read(caller, note.id, confirm_token=digest)

        def cold_read() -> object:
            svc.cache.clear()  # the data key comes from Vault again
            return read()

        def create() -> object:
            return svc.notes.create(
                auth(), note.patient_id, kind="progress", content=content, encounter_at=None
            )

        def create_remembered() -> object:
            return svc.notes.create(
                caller,
                note.patient_id,
                kind="progress",
                content=content,
                encounter_at=None,
                confirm_token=digest,
            )

        try:
            with open(trace_path, "w+b") as sink:
                conn = pool.getconn()
                conn.pgconn.trace(sink.fileno())
                pool.putconn(conn)
                parser = TraceParser()
                for name, fn in (
                    ("authenticate (every API request)", auth),
                    ("warm read (authenticate + NotesService.read)", read),
                    ("warm read, remembered caller (the API's path)", read_remembered),
                    ("cold read (key cache emptied first; Vault unwraps)", cold_read),
                    ("create (authenticate + NotesService.create)", create),
                    ("create, remembered caller (the API's path)", create_remembered),
                ):
                    traces.append(_trace_operation(name, fn, sink, parser, iterations, warmup=8))
                conn = pool.getconn()
                conn.pgconn.untrace()
                pool.putconn(conn)
        finally:
            trace_path.unlink(missing_ok=True)
        timings.append(_time("Sealed Notes warm read, untraced", read, iterations * 4))
        timings.append(
            _time("Sealed Notes warm read, remembered caller", read_remembered, iterations * 4)
        )
        # Cold: the key cache emptied before each read, so the data key comes from Vault
        # (one Transit unwrap, its key.unwrap record); the patient was already released
        # this hour, so no budget is spent.
        timings.append(_time("Sealed Notes cold read, untraced", read, iterations, svc.cache.clear))
        # The API's cold read: a remembered caller whose key has expired from the
        # worker's cache (keys live 0 s in this second set of services), the note's
        # patient known to the worker: the statement confirms the caller, Vault
        # unwraps, the grant and `key.unwrap` commit together.
        expired = build_services(
            replace(bench_settings(stack), pool_min=1, pool_max=1, key_cache_ttl=0.0)
        )
        try:
            expired.store.pool().wait(timeout=10)
            timings.append(
                _time(
                    "Sealed Notes cold read, remembered caller",
                    lambda: expired.notes.read(caller, note.id, confirm_token=digest),
                    iterations,
                )
            )
        finally:
            expired.store.close()
        # Reported, no target: a worker that does not know the note (its cache emptied):
        # the statement commits the grant, `key.unwrap` follows in a second commit.
        timings.append(
            _time(
                "Sealed Notes cold read, remembered caller, note unknown to the worker",
                read_remembered,
                iterations,
                svc.cache.clear,
            )
        )
    finally:
        svc.store.close()

    token_hash = hashlib.sha256(clinician.token.encode()).digest()
    with psycopg.connect(stack.owner_url, autocommit=True) as peer:

        def peer_read() -> object:
            who = peer.execute(
                "SELECT principal_id, tenant_id FROM bench_peer_tokens"
                " WHERE token_hash = %s AND expires_at > now()",
                (token_hash,),
            ).fetchone()
            assert who is not None
            return peer.execute(
                "SELECT id, patient_id, kind, title, body, created_by, created_at"
                " FROM bench_peer_plaintext_notes WHERE id = %s AND tenant_id = %s",
                (note.id, who[1]),
            ).fetchone()

        timings.append(_time("plaintext peer read, untraced", peer_read, iterations * 4))
    return traces, timings
