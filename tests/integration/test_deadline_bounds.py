"""A request near its deadline waits on the database only for what it has left: a
connection checkout (its idle-connection checks included), and a silent server
(the socket's TCP_USER_TIMEOUT, over the unit of work and its COMMIT), are bounded
by the deadline, so the 503 comes within it (service/adapters/postgres/store.py,
tcp.py). The network cut itself is drilled in tests/drills/test_failover.py."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg_pool
import pytest

from service import deadline
from service.adapters.postgres import Store, tcp
from service.errors import DatabaseUnavailable, ServiceUnavailable


@pytest.fixture(scope="module")
def tcp_db_url(app_db_url: str) -> Iterator[str]:
    """The test database over TCP (the option under test is TCP's): as given, or, for
    the embedded server on a Unix socket, through a forwarder on loopback."""
    params = psycopg.conninfo.conninfo_to_dict(app_db_url)
    host = str(params.get("host") or "")
    if host and not host.startswith("/"):
        yield app_db_url
        return
    path = f"{host or '/tmp'}/.s.PGSQL.{params.get('port') or 5432}"
    listener = socket.create_server(("127.0.0.1", 0))

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: the module is done
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(path)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    params.update(host="127.0.0.1", port=str(listener.getsockname()[1]))
    try:
        yield psycopg.conninfo.make_conninfo(**params)
    finally:
        listener.close()


@pytest.fixture
def one_connection_store(tcp_db_url: str) -> Iterator[Store]:
    store = Store(tcp_db_url, min_size=1, max_size=1, timeout=2.0)
    try:
        yield store
    finally:
        store.close()


def _user_timeout(conn: psycopg.Connection[Any]) -> int:
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)


def _checkout_fails(store: Store) -> tuple[type[Exception], float]:
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as failed, store.transaction():
        pass
    return failed.type, time.monotonic() - started


def test_a_checkout_waits_only_for_what_is_left_of_the_deadline(
    one_connection_store: Store,
) -> None:
    store = one_connection_store
    with store.transaction():  # the pool is open and its one connection made
        pass
    taken = store.pool().getconn()  # every connection busy: a checkout must wait
    try:
        token = deadline.start(0.4)
        try:
            near, near_seconds = _checkout_fails(store)
        finally:
            deadline.reset(token)
        full, full_seconds = _checkout_fails(store)  # outside a request: 2 s
    finally:
        store.pool().putconn(taken)
    assert near_seconds < 1.2, near_seconds
    assert full_seconds >= 1.9, full_seconds
    # The request's own time ran out, not the database: no dependency alarm.
    assert near is deadline.DeadlineExceeded
    assert full is DatabaseUnavailable


def test_a_silent_server_fails_the_connection_within_what_is_left(tcp_db_url: str) -> None:
    with psycopg.connect(tcp_db_url, tcp_user_timeout=2000) as conn:
        assert _user_timeout(conn) == 2000
        with tcp.acknowledged_within(conn, 0.3):
            assert _user_timeout(conn) == 300
            conn.execute("SELECT 1")  # the connection still works
        assert _user_timeout(conn) == 2000  # restored for the next request
        with tcp.acknowledged_within(conn, 5.0):  # never lengthened
            assert _user_timeout(conn) == 2000


def test_a_unit_of_work_near_the_deadline_runs_with_the_shorter_bound_to_its_commit(
    one_connection_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = one_connection_store
    at_commit: list[int] = []
    commit = psycopg.Connection.commit

    def observed_commit(self: psycopg.Connection[Any]) -> None:
        at_commit.append(_user_timeout(self))
        commit(self)

    monkeypatch.setattr(psycopg.Connection, "commit", observed_commit)

    def opened(tx: Any) -> int:
        tx.conn.execute("SELECT 1")  # a transaction is open: the unit of work commits it
        return _user_timeout(tx.conn)

    with store.transaction() as tx:
        full = opened(tx)
    token = deadline.start(0.5)
    try:
        with store.transaction() as tx:  # a checkout of its own
            near = opened(tx)
        with store.request_scope(), store.transaction() as tx:  # the request's connection
            held = opened(tx)
    finally:
        deadline.reset(token)
    with store.transaction() as tx:
        after = opened(tx)
    assert full == after == 2000
    assert 0 < near <= 500 and 0 < held <= 500
    # COMMIT: outside a request, both near the deadline (pool and held paths), after.
    assert at_commit[0] == at_commit[3] == 2000, at_commit
    assert all(0 < t <= 500 for t in at_commit[1:3]), at_commit


def test_an_idle_connection_is_checked_within_the_checkout_wait(
    tcp_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cut network every idle connection's check would hang a whole timeout,
    one after the other; each runs within what is left of the checkout's wait."""
    store = Store(tcp_db_url, min_size=1, max_size=1, timeout=2.0)
    seen: list[int] = []
    checked = psycopg_pool.ConnectionPool.check_connection

    def check(conn: psycopg.Connection[Any]) -> None:
        seen.append(_user_timeout(conn))
        checked(conn)

    monkeypatch.setattr(psycopg_pool.ConnectionPool, "check_connection", staticmethod(check))
    try:
        with store.transaction() as tx:
            conn = tx.conn
        seen.clear()
        store._returned_at[conn] = 0.0  # idle for long: checked at the next checkout
        token = deadline.start(0.4)
        try:
            with store.transaction():
                pass
        finally:
            deadline.reset(token)
        assert len(seen) == 1 and 0 < seen[0] <= 400, seen
        assert _user_timeout(conn) == 2000  # restored after the check
        store._returned_at[conn] = 0.0
        with store.transaction():  # outside a request: the whole 2 s, libpq's own bound
            pass
        assert seen[1] == 2000, seen
    finally:
        store.close()


@pytest.mark.parametrize("request_connection", [False, True], ids=["own", "request's"])
def test_past_the_deadline_nothing_is_committed_and_no_transaction_is_carried_on(
    one_connection_store: Store, request_connection: bool
) -> None:
    store = one_connection_store
    with store.transaction() as tx:  # a table of this session (the pool's one connection)
        tx.conn.execute("CREATE TEMP TABLE IF NOT EXISTS deadline_probe (x int)")
    with store.request_scope() if request_connection else contextlib.nullcontext():
        token = deadline.start(0.3)
        try:
            with pytest.raises(deadline.DeadlineExceeded), store.transaction() as tx:
                tx.conn.execute("INSERT INTO deadline_probe VALUES (1)")
                time.sleep(0.4)  # the work outlasted the request: no COMMIT
        finally:
            deadline.reset(token)
        with store.transaction() as tx:
            row = tx.conn.execute("SELECT count(*) AS n FROM deadline_probe").fetchone()
    assert row is not None and row["n"] == 0


@pytest.mark.parametrize("request_connection", [False, True], ids=["own", "request's"])
def test_a_unit_of_work_whose_statement_committed_on_its_own_is_not_reported_lost(
    one_connection_store: Store, request_connection: bool
) -> None:
    """A create made in one call commits with its statement (NotesRepository.
    insert_note_charged): past the deadline after it, there is nothing left to commit,
    and answering deadline-exceeded would report as lost a note that is written."""
    store = one_connection_store
    with store.transaction() as tx:
        tx.conn.execute("CREATE TEMP TABLE IF NOT EXISTS committed_probe (x int)")
    with store.request_scope() if request_connection else contextlib.nullcontext():
        token = deadline.start(0.3)
        try:
            with store.transaction() as tx:
                tx.conn.autocommit = True
                tx.conn.execute("INSERT INTO committed_probe VALUES (1)")
                tx.conn.autocommit = False
                time.sleep(0.4)  # the statement outlasted the request, committed
        finally:
            deadline.reset(token)
        with store.transaction() as tx:
            row = tx.conn.execute("SELECT count(*) AS n FROM committed_probe").fetchone()
    assert row is not None and row["n"] == 1


def test_a_request_ending_after_its_store_closed_loses_no_connection(tcp_db_url: str) -> None:
    store = Store(tcp_db_url, min_size=1, max_size=1, timeout=2.0)
    with store.request_scope():
        with store.transaction() as tx:
            tx.conn.execute("SELECT 1")
        pool = store.pool()
        store.close()  # shutdown while a request holds a connection
    assert pool.closed
