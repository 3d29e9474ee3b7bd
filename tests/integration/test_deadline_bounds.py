"""A request near its deadline waits on the database only for what it has left: a
connection checkout, and a silent server (tcp_user_timeout), are bounded by the
deadline, so the 503 comes within it (service/adapters/postgres/store.py, tcp.py).
The network cut itself is drilled in tests/drills/test_failover.py."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool
import pytest

from service import deadline
from service.adapters.postgres import Store, tcp
from service.errors import ServiceUnavailable


@pytest.fixture
def one_connection_store(app_db_url: str) -> Iterator[Store]:
    store = Store(app_db_url, min_size=1, max_size=1, timeout=2.0)
    try:
        yield store
    finally:
        store.close()


def _checkout_seconds(store: Store) -> float:
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable), store.transaction():
        pass
    return time.monotonic() - started


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
            near = _checkout_seconds(store)
        finally:
            deadline.reset(token)
        full = _checkout_seconds(store)  # outside a request: the 2 s database timeout
    finally:
        store.pool().putconn(taken)
    assert near < 1.2, near
    assert full >= 1.9, full


def _user_timeout(conn: psycopg.Connection[Any]) -> int:
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)


def test_a_silent_server_fails_the_connection_within_what_is_left(app_db_url: str) -> None:
    with psycopg.connect(app_db_url, tcp_user_timeout=2000) as conn:
        assert not str(conn.info.host).startswith("/"), "needs a TCP connection"
        assert _user_timeout(conn) == 2000
        with tcp.acknowledged_within(conn, 0.3):
            assert _user_timeout(conn) == 300
            conn.execute("SELECT 1")  # the connection still works
        assert _user_timeout(conn) == 2000  # restored for the next request
        with tcp.acknowledged_within(conn, 5.0):  # never lengthened
            assert _user_timeout(conn) == 2000


def test_a_unit_of_work_near_the_deadline_runs_with_the_shorter_bound(
    one_connection_store: Store,
) -> None:
    store = one_connection_store
    with store.transaction() as tx:
        full = _user_timeout(tx.conn)
    token = deadline.start(0.5)
    try:
        with store.transaction() as tx:
            near = _user_timeout(tx.conn)
    finally:
        deadline.reset(token)
    with store.transaction() as tx:
        after = _user_timeout(tx.conn)
    assert full == after == 2000
    assert 0 < near <= 500


def test_an_idle_connection_is_checked_within_the_checkout_wait(
    app_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cut network every idle connection's check would hang a whole timeout,
    one after the other; each runs within what is left of the checkout's wait."""
    store = Store(app_db_url, min_size=1, max_size=1, timeout=2.0)
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
        with store.transaction():  # outside a request: the checkout's 2 s wait
            pass
        assert 1900 <= seen[1] <= 2000, seen
    finally:
        store.close()
