"""PostgreSQL: the only package that speaks SQL.

A `Store` owns a psycopg connection pool, opened lazily in the process that uses it
(so gunicorn workers each open their own after fork). Use cases run inside
`store.transaction()`, which yields a `UnitOfWork` with one repository per aggregate.
Database failures are translated into `DatabaseUnavailable`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, Generic, NoReturn, TypeVar

import psycopg
import psycopg.conninfo
import psycopg.errors
import psycopg_pool
from psycopg.rows import dict_row

from service import deadline
from service.adapters.postgres import prepared, schema, tcp
from service.adapters.postgres.base import IDLE_CHECK_SECONDS
from service.adapters.postgres.groupcommit import AuditGroupCommit
from service.adapters.postgres.uow import UnitOfWork
from service.errors import DatabaseUnavailable, ServiceError

log = logging.getLogger(__name__)
_HELD: ContextVar[_Held | None] = ContextVar("sealednotes_request_connection", default=None)
# When the checkout under way in this thread must end (its idle checks included).
_CHECKOUT_ENDS: ContextVar[float | None] = ContextVar("sealednotes_checkout_ends", default=None)
# A wait this much shorter than the database timeout is worth lowering the socket's bound.
_SHORTER = 0.05


# A server that stops answering is an error within seconds (TCP over a network).
SILENT_SERVER_DEFAULTS = {
    "tcp_user_timeout": 2000,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 1,
    "keepalives_count": 3,
}


def _conninfo_keys(conninfo: str) -> set[str]:
    try:
        return set(psycopg.conninfo.conninfo_to_dict(conninfo))
    except psycopg.ProgrammingError:
        return set()  # the connection attempt will report the bad URL


_Pool = psycopg_pool.ConnectionPool[psycopg.Connection[dict[str, Any]]]
T = TypeVar("T")


class _PerProcess(Generic[T]):
    """One value per process, made on first use: after a fork the child makes its own
    (sockets and locks are never shared across processes). Read without the lock once
    made (every request asks; under load the worker's threads queued on it): the value
    and the process it belongs to are one attribute, so a reader never pairs one
    process's value with another's id."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._held: tuple[int, T] | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        held = self._held
        if held is not None and held[0] == os.getpid():
            return held[1]
        with self._lock:
            held = self._held
            if held is None or held[0] != os.getpid():
                held = self._held = (os.getpid(), self._make())
            return held[1]

    def take(self) -> T | None:
        """This process's value, forgotten (None if it has not made one)."""
        with self._lock:
            held, self._held = self._held, None
        return held[1] if held is not None and held[0] == os.getpid() else None


class Store:
    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 2.0,
    ) -> None:
        self._conninfo = conninfo
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._pool = _PerProcess(self._open_pool)
        self._group = _PerProcess(AuditGroupCommit)
        self._returned_at: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return "Store(<conninfo hidden>)"

    def _connect_kwargs(self) -> dict[str, Any]:
        statement_ms = int(self._timeout * 1000)
        kwargs: dict[str, Any] = {
            "row_factory": dict_row,
            "connect_timeout": max(1, int(self._timeout)),
            # TimeZone=UTC: timestamps come back as UTC (the service's own zone, whatever
            # the server's default), which psycopg loads without converting each one
            # (a warm read loads eleven; under 'Etc/UTC' each was converted).
            "options": f"-c statement_timeout={statement_ms} "
            f"-c lock_timeout={statement_ms} "
            f"-c idle_in_transaction_session_timeout={statement_ms * 5} "
            "-c TimeZone=UTC",
            "application_name": "sealednotes",
        }
        # statement_timeout is enforced by the server and cannot end a wait on a server
        # gone silent (host lost, network cut): the socket would block for the kernel's
        # retransmission time, and with it the request, or a batch of audit records.
        # Defaults only: settings in the URL win, and so does a libpq service file (its
        # values are not visible here, and keywords passed here would override them).
        given = _conninfo_keys(self._conninfo)
        if "service" in given or os.environ.get("PGSERVICE"):
            return kwargs
        for key, value in SILENT_SERVER_DEFAULTS.items():
            if key not in given:
                kwargs[key] = value
        return kwargs

    def pool(self) -> _Pool:
        return self._pool.get()

    def _open_pool(self) -> _Pool:
        pool: _Pool = psycopg_pool.ConnectionPool(
            self._conninfo,
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._timeout,
            kwargs=self._connect_kwargs(),
            # Connections that keep the direct statements' names (prepared.py).
            connection_class=prepared.Connection,
            # No `reset` callback: with one, the pool hands every returned connection
            # to its worker thread (a wake-up per request).
            check=self._check_if_idle,
            open=False,
            name="sealednotes",
        )
        pool.open(wait=False)
        return pool

    def _check_if_idle(self, conn: psycopg.Connection[Any]) -> None:
        # A connection used moments ago is healthy enough to try; one that sat idle
        # (perhaps across a database restart) is checked before it is handed out.
        # A broken busy connection still fails its query, answers 503, and is
        # discarded by the pool. The check runs in the requesting thread, within
        # the checkout's wait: on a cut network each idle connection checked would
        # otherwise cost a whole timeout, one after the other.
        now = time.monotonic()
        if now - self._returned_at.get(conn, 0.0) <= IDLE_CHECK_SECONDS:
            return
        ends = _CHECKOUT_ENDS.get()
        left = self._timeout if ends is None else ends - now
        if left <= 0:
            raise psycopg_pool.PoolTimeout("no time left to check an idle connection")
        with self._silence_bound(conn, left):
            psycopg_pool.ConnectionPool.check_connection(conn)

    def _silence_bound(
        self, conn: psycopg.Connection[Any], seconds: float
    ) -> AbstractContextManager[None]:
        """Wait on a silent server only `seconds` (tcp.py) when that is shorter than the
        database timeout; otherwise libpq's own bounds hold."""
        if seconds >= self._timeout - _SHORTER:
            return nullcontext()
        return tcp.acknowledged_within(conn, seconds)

    def _within_deadline(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[None]:
        """A request with less than a database timeout left waits on a silent server
        only for what it has left. Raises DeadlineExceeded when nothing is."""
        return self._silence_bound(conn, deadline.bounded(self._timeout))

    @contextmanager
    def _unit_of_work(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """The block, then its COMMIT, each within what is left of the deadline at that
        moment: time spent inside (a Vault call) shortens the COMMIT's bound too, and
        past the deadline nothing is committed. Anything else ends in a ROLLBACK, so a
        request's held connection never carries a transaction into its next one."""
        committed = False
        try:
            with self._within_deadline(conn):
                yield
            # Nothing open, nothing to commit: the block's statements ran on their own
            # (a create made in one call committed with its statement). Answering
            # deadline-exceeded now would report as lost what is written.
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                with self._within_deadline(conn):
                    conn.commit()
            committed = True
        finally:
            if not committed and not (conn.broken or conn.closed):
                # Even past the deadline: a short bound rather than none.
                left = deadline.remaining()
                bound = self._timeout if left is None else max(_SHORTER, left)
                with contextlib.suppress(psycopg.Error), self._silence_bound(conn, bound):
                    conn.rollback()

    def close(self) -> None:
        pool = self._pool.take()
        if pool is not None:
            pool.close()

    @contextmanager
    def transaction(self) -> Iterator[UnitOfWork]:
        """One transaction: committed at the end of the block, rolled back on error
        (unless the use case called `tx.commit()` first, e.g. to keep a denial)."""
        with self._connection() as conn:
            yield UnitOfWork(conn, self._group.get())

    @contextmanager
    def autocommit(self) -> Iterator[UnitOfWork]:
        """For a single read-only statement: one round trip, no BEGIN/COMMIT."""
        with self._connection() as conn:
            conn.autocommit = True
            try:
                yield UnitOfWork(conn)
            finally:
                conn.autocommit = False

    def request_scope(self) -> AbstractContextManager[None]:
        """Within this block (one HTTP request), the units of work of this thread share
        one pooled connection, checked out at first use and returned at the end:
        authentication and the use case pay for one checkout, not two. A unit of
        work opened while another is still open gets a connection of its own."""
        return _RequestScope()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        wait = deadline.bounded(self._timeout)
        try:
            held = _HELD.get()
            if held is not None and held.store in (None, self) and not held.busy:
                with held.use(self, wait) as conn:
                    yield conn
                return
            pool = self.pool()
            conn = self._checkout(pool, wait)
            try:
                with self._unit_of_work(conn):
                    yield conn
            finally:
                self._returned_at[conn] = time.monotonic()
                pool.putconn(conn)  # a broken connection is discarded there
        except ServiceError:
            raise
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
            # Statement and lock timeouts (QueryCanceled) are OperationalErrors too.
            self._unavailable(e, shortened=wait < self._timeout)

    def _checkout(self, pool: _Pool, wait: float) -> psycopg.Connection[dict[str, Any]]:
        token = _CHECKOUT_ENDS.set(time.monotonic() + wait)
        try:
            return pool.getconn(timeout=wait)
        finally:
            _CHECKOUT_ENDS.reset(token)

    @staticmethod
    def _unavailable(error: Exception, *, shortened: bool) -> NoReturn:
        log.warning("database unavailable: %s", type(error).__name__)
        # A wait the deadline cut short, that ran out: the request's own time is spent
        # (perhaps on an earlier slow call), and the database may be fine. Logged above
        # either way: in an outage a request's first wait is a whole one and reports it.
        left = deadline.remaining()
        if shortened and left is not None and left <= _SHORTER:
            raise deadline.DeadlineExceeded() from error
        raise DatabaseUnavailable() from error

    # -- schema --------------------------------------------------------------------

    def migrate(
        self,
        app_role: str | None = None,
        *,
        default_tenant_cap: int = 1000,
        maintenance_role: str | None = None,
        up_to: int | None = None,
    ) -> list[int]:
        """Apply pending migrations in order (service/adapters/postgres/schema.py)."""
        return schema.migrate(
            self._conninfo,
            app_role=app_role,
            default_tenant_cap=default_tenant_cap,
            maintenance_role=maintenance_role,
            up_to=up_to,
        )


class _RequestScope:
    """Store.request_scope, as a plain class: it is entered on every request, and a
    generator-based context manager costs several times more to make and run."""

    __slots__ = ("_held", "_token")

    def __enter__(self) -> None:
        if hasattr(self, "_held"):  # one block per scope, as with the generator before
            raise RuntimeError("a request scope is entered once")
        self._held = _Held()
        self._token = _HELD.set(self._held)

    def __exit__(self, *_exc: object) -> None:
        _HELD.reset(self._token)
        self._held.release()


class _Held:
    """The connection of one request scope (Store.request_scope)."""

    def __init__(self) -> None:
        self.store: Store | None = None
        self.busy = False
        self._pool: _Pool | None = None
        self._conn: psycopg.Connection[dict[str, Any]] | None = None

    @contextmanager
    def use(self, store: Store, wait: float) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        if self._conn is None:
            self.store, self._pool = store, store.pool()
            self._conn = store._checkout(self._pool, wait)
        conn = self._conn
        self.busy = True
        try:
            with store._unit_of_work(conn):
                yield conn
        finally:
            self.busy = False
            # A broken connection (a failed statement or COMMIT) is dropped now: the
            # next unit of work of the request checks out afresh.
            if conn.broken or conn.closed:
                self.release()

    def release(self) -> None:
        """Back to the pool it came from (which discards a broken connection, and rolls
        back one left in a transaction)."""
        store, pool, conn = self.store, self._pool, self._conn
        self._conn = None
        if store is None or pool is None or conn is None:
            return
        store._returned_at[conn] = time.monotonic()
        pool.putconn(conn)
