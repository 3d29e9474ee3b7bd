"""One hot statement run on libpq directly: prepared once per connection, executed
with its parameters dumped and its row loaded by psycopg's own adapters, without the
cursor's machinery around them (the `%(name)s` conversion, the prepared-statement
bookkeeping, the description and row factory set up on every call).

Measured in process (callgrind): a warm read's Python 859,000 -> 747,000 instructions,
a create's 1,046,000 -> 788,000. The values are the same: the same dumpers and binary
loaders, chosen by psycopg's adapters for the connection.

Only for a statement that runs on its own, outside any transaction (libpq runs it as
its own implicit transaction, committed at its Sync, as psycopg's autocommit would).

Each connection of the store's pool is a `Connection`, which knows the statements
prepared on it. psycopg's `rollback()` deallocates every prepared statement of the
session when it holds any of its own; after any rollback (the store's, a use case's,
the pool's), `Connection` keeps only what the server still holds, so the next call
prepares what is gone instead of meeting "prepared statement does not exist" (a wasted
round trip and an ERROR in the server's log). Each combination of parameter types is
prepared under its own name (a None where a value was, an integer past 32 bits): a
handful per statement.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import psycopg
import psycopg.errors
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.pq.abc import PGconn, PGresult
from psycopg.rows import Row, RowFactory, tuple_row

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")
# "prepared statement does not exist": dropped behind our back (DEALLOCATE, DISCARD).
_NOT_PREPARED = b"26000"
# "cached plan must not change result type": refused before the statement ran.
_PLAN_CHANGED = b"0A000"
# "prepared statement already exists": ours (the name says the statement and its types).
_ALREADY_PREPARED = b"42P05"
_NAMES: set[str] = set()
_MAX_NAME = 63 - 13  # PostgreSQL keeps 63 bytes of a name; the types add 13
_NAME = re.compile(r"[a-z_][a-z0-9_]*")  # as PostgreSQL spells it unquoted (DEALLOCATE)


class Connection(psycopg.Connection[Row]):
    """A connection of the store's pool: psycopg's, plus the names the direct statements
    are prepared under on it, kept true across a rollback."""

    def __init__(self, pgconn: PGconn, row_factory: RowFactory[Row] = tuple_row) -> None:  # type: ignore[assignment]
        super().__init__(pgconn, row_factory)
        # (statement, parameter types) -> the name it is prepared under on this session.
        self.direct: dict[tuple[str, tuple[int, ...]], bytes] = {}

    def rollback(self) -> None:
        # With no transaction open psycopg's rollback sends nothing and deallocates
        # nothing: what this connection knows is still true.
        idle = self.info.transaction_status == pq.TransactionStatus.IDLE
        super().rollback()
        if self.direct and not idle:
            self._keep_what_the_server_holds()

    def _keep_what_the_server_holds(self) -> None:
        # One query, on the rollback's own path; on any failure every name is forgotten
        # (the next call prepares again).
        alive: set[bytes] = set()
        if not self.closed and self.info.transaction_status == pq.TransactionStatus.IDLE:
            try:
                result = self.pgconn.exec_(b"SELECT name FROM pg_prepared_statements")
            except psycopg.Error:
                result = None
            if result is not None and result.status == pq.ExecStatus.TUPLES_OK:
                alive = {result.get_value(i, 0) or b"" for i in range(result.ntuples)}
        self.direct = {key: name for key, name in self.direct.items() if name in alive}


class OwnStatement:
    """`sql` with psycopg's placeholders, all `%(name)s` (parameters by name) or all
    `%s` (by position), and no other `%`."""

    def __init__(self, name: str, sql: str) -> None:
        keys: list[str] = []
        positions = 0

        def number(match: re.Match[str]) -> str:
            nonlocal positions
            if match.group(1) is None:
                positions += 1
                return f"${positions}"
            if match.group(1) not in keys:
                keys.append(match.group(1))
            return f"${keys.index(match.group(1)) + 1}"

        if name in _NAMES or len(name) > _MAX_NAME or not _NAME.fullmatch(name):
            raise ValueError(f"a statement name: unique, [a-z0-9_], at most {_MAX_NAME}: {name!r}")
        query = _PLACEHOLDER.sub(number, sql)
        if "%" in query or (keys and positions):
            raise ValueError("a statement run directly has `%(name)s` or `%s` placeholders only")
        self.query = query.encode()
        self.keys: tuple[str, ...] | None = tuple(keys) if keys else None
        self._name = name
        self._formats = [PyFormat.AUTO] * (len(keys) or positions)
        self._columns: tuple[str, ...] = ()
        _NAMES.add(name)

    def fetch_one(
        self, conn: psycopg.Connection[Any], params: Mapping[str, Any] | Sequence[Any]
    ) -> dict[str, Any] | None:
        """The statement's first row as a dict (None when it returned none), on one of
        the store's connections. Raises what psycopg's cursor would raise: an
        OperationalError when the connection is closed or lost, the server's error
        otherwise."""
        if not isinstance(conn, Connection):
            raise TypeError("a direct statement runs on the store's connections (Connection)")
        if conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            # Never inside someone's transaction: the statement must commit on its own.
            raise psycopg.ProgrammingError("a statement run directly needs no open transaction")
        # A Transformer per call: one kept per connection would hold the connection.
        tx = Transformer(conn)
        if self.keys is None:
            assert isinstance(params, Sequence)
            given = params
        else:
            assert isinstance(params, Mapping)
            given = [params[key] for key in self.keys]
        if len(given) != len(self._formats):
            raise TypeError(f"the statement takes {len(self._formats)} parameters")
        values = tx.dump_sequence(given, self._formats)
        types = tuple(tx.types or ())
        key = (self._name, types)
        for attempt in (1, 2):
            name = conn.direct.get(key)
            if name is None:
                name = self._name_for(types)
                prepared = conn.pgconn.prepare(name, self.query, types)
                if prepared.error_field(pq.DiagnosticField.SQLSTATE) != _ALREADY_PREPARED:
                    self._check(conn, prepared)
                conn.direct[key] = name
            # A None value is SQL NULL (psycopg's cursor passes them the same way).
            result = conn.pgconn.exec_prepared(
                name, cast("Sequence[bytes]", values), tx.formats, result_format=pq.Format.BINARY
            )
            state = result.error_field(pq.DiagnosticField.SQLSTATE)
            if attempt == 1 and state == _NOT_PREPARED:
                conn.direct.clear()  # all gone (DEALLOCATE ALL, DISCARD ALL)
                continue
            if attempt == 1 and state == _PLAN_CHANGED:
                # A schema change altered what the statement returns: PostgreSQL refuses
                # the kept plan before running anything. Prepare it afresh, once.
                self._check(conn, conn.pgconn.exec_(b"DEALLOCATE " + name))
                del conn.direct[key]
                continue
            break
        self._check(conn, result)
        if result.ntuples == 0:
            return None
        columns = self._columns
        if len(columns) != result.nfields:
            columns = self._columns = tuple(
                (result.fname(i) or b"").decode() for i in range(result.nfields)
            )
        tx.set_pgresult(result)
        return dict(zip(columns, tx.load_row(0, tuple), strict=True))

    def _name_for(self, types: tuple[int, ...]) -> bytes:
        digest = hashlib.blake2s(repr(types).encode(), digest_size=6).hexdigest()
        return f"{self._name}_{digest}".encode()

    @staticmethod
    def _check(conn: psycopg.Connection[Any], result: PGresult) -> None:
        if result.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            return
        if conn.pgconn.status == pq.ConnStatus.BAD:
            # The connection failed (no SQLSTATE): what psycopg raises for it too.
            raise psycopg.OperationalError("the connection to the database was lost")
        raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
