"""Group commit for audit records written outside a transaction (a warm read's only
write): the records of concurrent requests go to the database together, in one
statement that appends them all and commits (sealednotes_audit_append_batch,
migration 0023), and each request answers only once that statement has committed.
Durability is unchanged (synchronous commit, one WAL flush per batch instead of one
per request); a batch that fails fails every request in it (AuditUnavailable).

No extra thread: the first request to arrive leads. It takes everything queued,
writes it on its own connection, wakes the others, and hands the lead to the first
request that queued meanwhile, which does the same with its own connection.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import psycopg

from service import deadline
from service.audit import chain as auditchain
from service.deadline import DeadlineExceeded
from service.errors import AuditUnavailable
from service.models import AuditEvent

log = logging.getLogger(__name__)

APPEND_BATCH = (
    "SELECT sealednotes_audit_append_batch(%s, %s::uuid[], %s::uuid[], %s::text[],"
    " %s::uuid[], %s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])"
)
MAX_BATCH = 256  # records per statement (the function takes up to 1000)


@dataclass(eq=False)
class _Waiter:
    events: list[AuditEvent]
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    failed: bool = False


class AuditGroupCommit:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._leading = False

    def append(self, conn: psycopg.Connection[Any], events: list[AuditEvent]) -> None:
        """Append `events` (committed when this returns) using `conn` if this request
        leads the batch. `conn` must have no transaction open."""
        me = _Waiter(events)
        with self._lock:
            self._queue.append(me)
            lead = not self._leading
            self._leading = True
        if not lead:
            # Wait for the batch's outcome, but not past the request's deadline: a
            # leader whose connection stalls must not hold its followers for ever.
            if not me.done.wait(_seconds_left()):
                self._give_up(me)  # raises, unless woken as the time ran out
            if not me.lead:
                if me.failed:
                    raise AuditUnavailable()
                return
        self._lead(conn, me)

    def _give_up(self, me: _Waiter) -> None:
        """Past the deadline while waiting: leave the queue (passing the lead on if it
        was just handed to this request) and answer 503. Returns only when the waiter
        was woken meanwhile and should carry on."""
        with self._lock:
            if me.done.is_set():
                return
            if me not in self._queue:
                # Already in a batch being written: answer 503 without the content. If
                # that batch commits, the log holds a record of a read that was not
                # answered: more than happened, never less.
                raise AuditUnavailable()
            self._queue.remove(me)
            successor = self._hand_on() if me.lead else None
        if successor is not None:
            successor.done.set()
        raise DeadlineExceeded()

    def _hand_on(self) -> _Waiter | None:
        """Under the lock: the next leader (the first request still queued), or none."""
        successor = self._queue[0] if self._queue else None
        if successor is None:
            self._leading = False
        else:
            successor.lead = True
        return successor

    def _lead(self, conn: psycopg.Connection[Any], me: _Waiter) -> None:
        with self._lock:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        failed = True
        try:
            _write(conn, [e for w in batch for e in w.events])
            failed = False
        except Exception as e:  # any failure fails the batch: never a 500, never a hang
            log.error("audit write failed: %s", type(e).__name__)
        finally:
            # Whatever happened (even an interrupt), the batch learns its outcome and
            # the lead moves on: a leader that vanished would wedge every later append.
            with self._lock:
                successor = self._hand_on()
            for w in batch:
                if w is not me:
                    w.failed = failed
                    w.done.set()
            if successor is not None:
                successor.done.set()
        if failed:
            raise AuditUnavailable()


def _seconds_left() -> float | None:
    left = deadline.remaining()
    return None if left is None else max(0.0, left)


def _write(conn: psycopg.Connection[Any], events: list[AuditEvent]) -> None:
    preferred = conn.info.backend_pid % auditchain.SHARDS
    columns = [[getattr(e, k) for e in events] for k in auditchain.FIELDS]
    conn.autocommit = True  # the statement is its own transaction: appended and committed
    try:
        conn.execute(APPEND_BATCH, (preferred, *columns))
    finally:
        conn.autocommit = False
