"""psycopg turns a statement's `%(name)s` placeholders into `$n` with a regular-expression
scan of the whole text, and keeps the result only for statements of at most
MAX_CACHED_STATEMENT_LENGTH bytes with at most MAX_CACHED_STATEMENT_PARAMS parameters.
A longer statement is scanned again on every execution: the warm read's statement made
31 bytes too long (4,118) cost about 500,000 more Python instructions per read (1.62 ->
2.12 million, callgrind), a third of the whole request. Every statement the PostgreSQL
adapter keeps as a module constant stays within both limits. (psycopg counts the keys of
the parameters passed, which may be more than the statement's placeholders: the warm
read passes 20, the placeholders' count here is the lower bound.)"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator

from psycopg import _queries

import service.adapters.postgres as postgres_adapter

_STATEMENT = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b")
_NAMED = re.compile(r"%\((\w+)\)s")


def _statements() -> Iterator[tuple[str, str]]:
    for module_info in pkgutil.iter_modules(postgres_adapter.__path__):
        module = importlib.import_module(f"{postgres_adapter.__name__}.{module_info.name}")
        for name, value in vars(module).items():
            if name.isupper() and isinstance(value, str) and _STATEMENT.match(value):
                yield f"{module_info.name}.{name}", value


def test_the_hot_statements_are_among_those_checked() -> None:
    names = {name for name, _ in _statements()}
    assert {
        "snapshots.NOTE_SNAPSHOT_SQL",
        "snapshots.NOTE_SNAPSHOT_RECORDING_SQL",
        "snapshots.GATE_SNAPSHOT_SQL",
        "snapshots.GATE_SNAPSHOT_CONFIRMING_SQL",
    } <= names


def test_every_statement_constant_fits_psycopgs_query_cache() -> None:
    too_long = {
        name: len(sql.encode())
        for name, sql in _statements()
        if len(sql.encode()) > _queries.MAX_CACHED_STATEMENT_LENGTH
    }
    assert too_long == {}, f"parsed again on every execution: {too_long}"
    too_many = {
        name: len(set(_NAMED.findall(sql)))
        for name, sql in _statements()
        if len(set(_NAMED.findall(sql))) > _queries.MAX_CACHED_STATEMENT_PARAMS
    }
    assert too_many == {}, f"parsed again on every execution: {too_many}"
