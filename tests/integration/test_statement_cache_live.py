"""Every statement the hot paths execute (a remembered caller's warm read, a token's first
read, a cold read, a create, a listing with content) stays within psycopg's query cache:
at most 4,096 bytes and 50 parameters passed. Past either, psycopg converts the statement's
placeholders again on every execution (about 500,000 Python instructions for the warm
read's statement, measured). tests/unit/test_statement_cache_limits.py checks the
adapter's constants; this checks what is actually sent, parameters included. Against
PostgreSQL and OpenBao."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from psycopg import _queries

from tests.helpers import Api, StackHelper, seed_patients


def test_the_hot_paths_statements_fit_psycopgs_query_cache(
    app: Flask, api: Api, stack: StackHelper, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = stack.tenant()
    dr = stack.clinician(t)
    (pid,) = seed_patients(stack, t, [dr], 1)
    seen: list[tuple[int, int, str]] = []
    convert = _queries.PostgresQuery.convert

    def spy(self: Any, query: Any, vars: Any) -> None:
        text = query.encode() if isinstance(query, str) else bytes(query)
        seen.append((len(text), len(vars) if vars is not None else 0, text[:60].decode()))
        convert(self, query, vars)

    monkeypatch.setattr(_queries.PostgresQuery, "convert", spy)
    note = api.get(f"/v1/patients/{pid}/notes", dr.token).get_json()["items"][0]["id"]
    assert api.get(f"/v1/notes/{note}", dr.token).status_code == 200  # token's first read
    assert api.get(f"/v1/notes/{note}", dr.token).status_code == 200  # remembered, warm
    app.extensions["sealednotes"].cache.clear()
    assert api.get(f"/v1/notes/{note}", dr.token).status_code == 200  # cold
    body = {"kind": "progress", "title": "t", "body": "b"}
    assert api.post(f"/v1/patients/{pid}/notes", dr.token, body).status_code == 201
    r = api.get(f"/v1/patients/{pid}/notes?include=content", dr.token)
    assert r.status_code == 200

    assert len(seen) > 10  # the spy saw the requests' statements
    over = [
        s
        for s in seen
        if s[0] > _queries.MAX_CACHED_STATEMENT_LENGTH
        or s[1] > _queries.MAX_CACHED_STATEMENT_PARAMS
    ]
    assert over == []
