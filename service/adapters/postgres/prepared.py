"""One hot statement run on libpq directly: prepared once per connection, executed
with its parameters dumped and its row loaded by psycopg's own adapters, without the
cursor's machinery around them (the `%(name)s` conversion, the prepared-statement
bookkeeping, the description and row factory set up on every call).

Measured on the warm read's statement (20 parameters, ~45 binary columns): psycopg's
cursor spends about 60 µs of Python per execution that this path does not. The values
are the same: the same dumpers and binary loaders, chosen by psycopg's adapters for
the connection.

Only for a statement that runs on its own, outside any transaction (libpq runs it as
its own implicit transaction, committed at its Sync, as psycopg's autocommit would).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast
from weakref import WeakKeyDictionary

import psycopg
import psycopg.errors
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.pq.abc import PGresult

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")
# "prepared statement does not exist": dropped behind our back (DEALLOCATE, DISCARD).
_NOT_PREPARED = b"26000"
# "prepared statement already exists": ours (the name says the statement and its types).
_ALREADY_PREPARED = b"42P05"
_NAMES: set[str] = set()


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

        if name in _NAMES:
            raise ValueError(f"a statement is already named {name!r}")
        _NAMES.add(name)
        query = _PLACEHOLDER.sub(number, sql)
        if "%" in query or (keys and positions):
            raise ValueError("a statement run directly has `%(name)s` or `%s` placeholders only")
        self.query = query.encode()
        self.keys: tuple[str, ...] | None = tuple(keys) if keys else None
        self._name = name
        self._formats = [PyFormat.AUTO] * (len(keys) or positions)
        self._columns: tuple[str, ...] = ()
        # Per connection, the name the statement is prepared under for each combination
        # of parameter types (a None where a value was is another type: unknown). The
        # values hold no reference to their connection, so an entry goes with it.
        self._prepared: WeakKeyDictionary[psycopg.Connection[Any], dict[tuple[int, ...], bytes]]
        self._prepared = WeakKeyDictionary()

    def fetch_one(
        self, conn: psycopg.Connection[Any], params: Mapping[str, Any] | Sequence[Any]
    ) -> dict[str, Any] | None:
        """The statement's first row as a dict (None when it returned none). Raises what
        psycopg's cursor would raise: an OperationalError when the connection is closed
        or lost, the server's error otherwise."""
        if conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        names = self._prepared.get(conn)
        if names is None:
            names = self._prepared.setdefault(conn, {})
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
        for attempt in (1, 2):
            name = names.get(types)
            if name is None:
                name = self._name_for(types)
                prepared = conn.pgconn.prepare(name, self.query, types)
                if prepared.error_field(pq.DiagnosticField.SQLSTATE) != _ALREADY_PREPARED:
                    self._check(conn, prepared)
                names[types] = name
            # A None value is SQL NULL (psycopg's cursor passes them the same way).
            result = conn.pgconn.exec_prepared(
                name, cast("Sequence[bytes]", values), tx.formats, result_format=pq.Format.BINARY
            )
            if attempt == 1 and result.error_field(pq.DiagnosticField.SQLSTATE) == _NOT_PREPARED:
                names.clear()
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
