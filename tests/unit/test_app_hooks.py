"""The request hooks' own shortcuts: request ids spelled as uuid4's, and Flask's
coroutine check kept per function (never per bound method, which is new each time)."""

from __future__ import annotations

import re
import uuid

import pytest

from service.adapters.postgres.store import Store
from service.app import _SYNC_CACHE_SIZE, _Flask, create_app
from service.config import Settings


def test_a_generated_request_id_is_a_random_version_4_uuid() -> None:
    # Nothing here connects: /healthz touches neither the database nor Vault.
    app = create_app(
        Settings(
            database_url="postgresql://nobody@127.0.0.1:1/none",
            vault_addr="http://127.0.0.1:1",
            vault_token="unused",
        )
    )
    client = app.test_client()
    ids = {client.get("/healthz").headers["X-Request-Id"] for _ in range(300)}
    assert len(ids) == 300
    for rid in ids:
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid and parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert re.fullmatch(r"^[A-Za-z0-9._-]{1,64}$", rid)  # what a caller's id must match


def test_the_coroutine_check_is_kept_per_function_only() -> None:
    app = _Flask("t")

    def view() -> str:
        return "ok"

    class Handler:
        def handle(self) -> str:
            return "ok"

    assert app.ensure_sync(view) is view
    assert app._sync == {view: view}
    bound = Handler().handle
    assert app.ensure_sync(bound) == bound
    assert app._sync == {view: view}  # bound methods are new objects: not kept


def test_the_coroutine_check_cache_is_bounded() -> None:
    app = _Flask("t")
    made = []
    for i in range(_SYNC_CACHE_SIZE + 50):

        def per_request(i: int = i) -> int:  # e.g. an after_this_request closure
            return i

        made.append(per_request)
        assert app.ensure_sync(per_request) is per_request
    assert len(app._sync) == _SYNC_CACHE_SIZE


def test_a_request_scope_is_entered_once() -> None:
    scope = Store("postgresql://app@db/x").request_scope()
    with scope:
        with pytest.raises(RuntimeError):
            scope.__enter__()
