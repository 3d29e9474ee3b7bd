"""The hot path's statements run on libpq directly (service/adapters/postgres/
prepared.py): the same rows as psycopg's cursor, the same errors, prepared again when
the server forgot them, each its own transaction. Against PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg.errors
import pytest
from psycopg.rows import dict_row

from service.adapters.postgres import Store
from service.adapters.postgres.prepared import Connection, OwnStatement

TYPED = (
    "SELECT %(id)s::uuid AS id, %(at)s::timestamptz AS at, %(name)s::text AS name,"
    " %(blob)s::bytea AS blob, %(n)s::integer AS n, %(flag)s::boolean AS flag,"
    " %(at)s::timestamptz + interval '1 hour' AS later, gen_random_uuid() IS NOT NULL AS ok"
)
VALUES: dict[str, Any] = {
    "id": str(uuid.uuid4()),
    "at": datetime(2026, 12, 2, 5, 6, 7, 891011, tzinfo=UTC),
    "name": 'Zoë "quoted" \\ back\nslash',
    "blob": b"\x00\x01sealed\xff",
    "n": 42,
    "flag": True,
}


def _statement(sql: str) -> OwnStatement:
    # Names are unique per process; tests make their own.
    return OwnStatement(f"test_{uuid.uuid4().hex[:12]}", sql)


@pytest.fixture
def conn(db_url: str) -> Iterator[Connection[dict[str, Any]]]:
    # As the service holds its connections: the pool's class, not autocommit, UTC sessions.
    with Connection.connect(db_url, row_factory=dict_row, options="-c TimeZone=UTC") as c:
        yield c


def _ours(conn: Connection[Any], statement: OwnStatement) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_prepared_statements WHERE name LIKE %s",
        (statement._name + "%",),
    ).fetchone()
    conn.rollback()
    assert row is not None
    return int(row["n"])


def test_rows_are_what_psycopgs_cursor_loads(conn: Connection[Any]) -> None:
    own = _statement(TYPED)
    expected = conn.cursor(binary=True).execute(TYPED, VALUES).fetchone()
    conn.rollback()
    got = own.fetch_one(conn, VALUES)
    assert got == expected
    assert got is not None and got["name"] == VALUES["name"] and got["blob"] == VALUES["blob"]
    assert own.fetch_one(conn, VALUES | {"n": None, "name": None}) == expected | {
        "n": None,
        "name": None,
    }


def test_parameters_by_position(conn: Connection[Any]) -> None:
    own = _statement("SELECT %s::integer + %s::integer AS total, %s::text AS label")
    assert own.fetch_one(conn, (40, 2, "x")) == {"total": 42, "label": "x"}
    with pytest.raises(TypeError):
        own.fetch_one(conn, (1, 2))


def test_no_row_is_none(conn: Connection[Any]) -> None:
    own = _statement("SELECT 1 AS one WHERE %(x)s::integer > 1")
    assert own.fetch_one(conn, {"x": 1}) is None
    assert own.fetch_one(conn, {"x": 2}) == {"one": 1}


def test_each_combination_of_types_is_prepared_once(conn: Connection[Any]) -> None:
    own = _statement("SELECT coalesce(%(n)s::bigint, -1) AS n")
    for value in (1, None, 2, None, 10**12):
        assert own.fetch_one(conn, {"n": value}) == {"n": -1 if value is None else value}
    # A None is sent untyped, an integer as the smallest type that holds it: each
    # combination is prepared under its own name, once.
    assert 2 <= _ours(conn, own) <= 3


def test_prepared_again_after_the_server_forgot(conn: Connection[Any]) -> None:
    own = _statement("SELECT %(x)s::integer * 2 AS twice")
    assert own.fetch_one(conn, {"x": 2}) == {"twice": 4}
    conn.execute("DEALLOCATE ALL")
    conn.commit()
    assert own.fetch_one(conn, {"x": 3}) == {"twice": 6}
    assert _ours(conn, own) == 1


def test_a_name_already_prepared_on_the_connection_is_used(
    conn: Connection[Any],
) -> None:
    first = _statement("SELECT %(x)s::integer + 1 AS next")
    assert first.fetch_one(conn, {"x": 1}) == {"next": 2}
    # A session that already holds the name (another process's instance) uses it.
    conn.direct.clear()
    assert first.fetch_one(conn, {"x": 2}) == {"next": 3}


@pytest.mark.parametrize("psycopg_holds_its_own", [True, False])
def test_after_a_rollback_the_connection_knows_what_the_server_holds(
    conn: Connection[Any], psycopg_holds_its_own: bool
) -> None:
    own = _statement("SELECT %(x)s::integer + 10 AS y")
    assert own.fetch_one(conn, {"x": 1}) == {"y": 11}
    # A statement run 5 times is prepared by psycopg, whose rollback then sends
    # DEALLOCATE ALL; without one, the rollback leaves every statement in place.
    for _ in range(6 if psycopg_holds_its_own else 1):
        conn.execute("SELECT 1").fetchone()
    conn.rollback()
    kept = 0 if psycopg_holds_its_own else 1
    assert _ours(conn, own) == kept
    assert len(conn.direct) == kept  # known: what is gone is prepared first, no miss
    assert own.fetch_one(conn, {"x": 2}) == {"y": 12}
    assert _ours(conn, own) == 1


def test_a_rollback_with_nothing_to_roll_back_asks_the_server_nothing(
    conn: Connection[Any],
) -> None:
    own = _statement("SELECT %(x)s::integer + 20 AS z")
    assert own.fetch_one(conn, {"x": 1}) == {"z": 21}
    known = dict(conn.direct)
    # Behind the connection's back (psycopg does not see it), the server forgets; a
    # rollback that asked the server what it holds would learn it.
    conn.pgconn.exec_(b"DEALLOCATE ALL")
    conn.rollback()  # no transaction open: nothing sent
    assert conn.direct == known
    assert own.fetch_one(conn, {"x": 2}) == {"z": 22}  # prepared again on the miss


def test_never_inside_an_open_transaction(conn: Connection[Any], db_url: str) -> None:
    table = f"own_statement_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute(f"CREATE TABLE {table} (v integer)")
        try:
            own = _statement(f"INSERT INTO {table} VALUES (%(v)s::integer) RETURNING v")
            conn.execute("SELECT 1")  # a transaction is open
            with pytest.raises(psycopg.ProgrammingError):
                own.fetch_one(conn, {"v": 1})
            conn.commit()
            assert other.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        finally:
            other.execute(f"DROP TABLE {table}")


def test_each_call_is_its_own_transaction(conn: Connection[Any], db_url: str) -> None:
    table = f"own_statement_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute(f"CREATE TABLE {table} (v integer)")
        try:
            own = _statement(f"INSERT INTO {table} VALUES (%(v)s::integer) RETURNING v")
            assert own.fetch_one(conn, {"v": 7}) == {"v": 7}
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            # Committed: another session sees it at once.
            assert other.execute(f"SELECT v FROM {table}").fetchall() == [(7,)]
        finally:
            other.execute(f"DROP TABLE {table}")


def test_a_schema_change_that_alters_the_result_is_prepared_afresh(
    conn: Connection[Any], db_url: str
) -> None:
    table = f"own_statement_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute(f"CREATE TABLE {table} (v integer)")
        other.execute(f"INSERT INTO {table} VALUES (5)")
        try:
            own = _statement(f"SELECT v FROM {table} LIMIT %(n)s::integer")
            assert own.fetch_one(conn, {"n": 1}) == {"v": 5}
            # A migration while the service runs: the kept plan's result type changes.
            other.execute(f"ALTER TABLE {table} ALTER COLUMN v TYPE text")
            assert own.fetch_one(conn, {"n": 1}) == {"v": "5"}
            assert own.fetch_one(conn, {"n": 1}) == {"v": "5"}
            assert _ours(conn, own) == 1
        finally:
            other.execute(f"DROP TABLE {table}")


def test_server_errors_raise_psycopgs_own_classes(conn: Connection[Any]) -> None:
    own = _statement("SELECT 1 / %(d)s::integer AS q")
    with pytest.raises(psycopg.errors.DivisionByZero):
        own.fetch_one(conn, {"d": 0})
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert own.fetch_one(conn, {"d": 1}) == {"q": 1}  # the connection is still good
    raising = _statement(
        "SELECT sealednotes_test_raise(%(x)s::text) AS r"
    )  # no such function: the server's error, not ours
    with pytest.raises(psycopg.errors.UndefinedFunction):
        raising.fetch_one(conn, {"x": "a"})


def test_a_statement_timeout_is_an_operational_error(conn: Connection[Any]) -> None:
    conn.execute("SET statement_timeout = 50")
    conn.commit()
    own = _statement("SELECT pg_sleep(%(s)s::float8) AS slept")
    with pytest.raises(psycopg.errors.QueryCanceled) as raised:
        own.fetch_one(conn, {"s": 2.0})
    assert isinstance(raised.value, psycopg.OperationalError)  # the store answers 503


def test_a_lost_connection_is_an_operational_error(conn: Connection[Any], db_url: str) -> None:
    own = _statement("SELECT %(x)s::integer AS x")
    assert own.fetch_one(conn, {"x": 1}) == {"x": 1}
    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError):
        own.fetch_one(conn, {"x": 2})
    assert conn.closed  # the pool discards it
    with pytest.raises(psycopg.OperationalError):
        own.fetch_one(conn, {"x": 3})


def test_a_closed_connection_is_an_operational_error(db_url: str) -> None:
    own = _statement("SELECT 1 AS one WHERE %(x)s::integer = 1")
    conn = Connection.connect(db_url)
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        own.fetch_one(conn, {"x": 1})


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT %(a)s::integer, %s::integer",  # both styles
        "SELECT 100 % %(a)s::integer",  # a stray %
        "SELECT %(a)d",  # not psycopg's placeholder
    ],
)
def test_only_psycopgs_placeholders(sql: str) -> None:
    with pytest.raises(ValueError):
        _statement(sql)


def test_only_on_the_stores_connections(db_url: str) -> None:
    own = _statement("SELECT 1 AS one")
    with psycopg.connect(db_url) as plain, pytest.raises(TypeError):
        own.fetch_one(plain, {})


def test_names_are_unique_and_short_enough_to_stay_distinct() -> None:
    name = f"test_{uuid.uuid4().hex[:12]}"
    OwnStatement(name, "SELECT 1")
    with pytest.raises(ValueError):
        OwnStatement(name, "SELECT 2")
    with pytest.raises(ValueError):  # PostgreSQL would cut the types off the name
        OwnStatement("t" * 51, "SELECT 3")
    with pytest.raises(ValueError):  # DEALLOCATE would fold it to lower case
        OwnStatement("Test_upper", "SELECT 4")


def test_the_store_keeps_its_statements_known_across_a_failed_unit_of_work(
    db_url: str,
) -> None:
    """A unit of work that fails is rolled back by the store (psycopg deallocating
    everything); its connections keep what the server holds, so the next direct call
    finds its statement prepared or knows to prepare it, without a miss."""
    own = _statement("SELECT %(x)s::integer + 30 AS y")
    store = Store(db_url, min_size=1, max_size=1)
    try:
        with store.transaction() as tx:
            assert own.fetch_one(tx.conn, {"x": 1}) == {"y": 31}
            for _ in range(6):  # psycopg holds a prepared statement of its own
                tx.ledger._one("SELECT 1 AS one")
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.ledger._one("SELECT 1 AS one")
            raise RuntimeError("the use case failed")
        with store.transaction() as tx:
            assert _ours_quietly(tx.conn, own) == 0  # deallocated by the rollback...
            assert tx.conn.direct == {}  # ...and known to be
            assert own.fetch_one(tx.conn, {"x": 2}) == {"y": 32}
    finally:
        store.close()


def _ours_quietly(conn: Connection[Any], statement: OwnStatement) -> int:
    # Outside a transaction, leaving none open.
    result = conn.pgconn.exec_(
        b"SELECT count(*) FROM pg_prepared_statements WHERE name LIKE '"
        + statement._name.encode()
        + b"%'"
    )
    return int(result.get_value(0, 0) or b"0")
