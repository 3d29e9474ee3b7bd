"""The database connections' own safety settings (service/adapters/postgres/store.py)."""

from __future__ import annotations

import pytest

from service.adapters.postgres.store import SILENT_SERVER_DEFAULTS, Store


def test_a_silent_server_is_an_error_within_seconds_by_default() -> None:
    kwargs = Store("postgresql://app@db/sealednotes")._connect_kwargs()
    assert kwargs["tcp_user_timeout"] == 2000 and kwargs["keepalives"] == 1
    assert {k: kwargs[k] for k in SILENT_SERVER_DEFAULTS} == SILENT_SERVER_DEFAULTS
    assert "statement_timeout=2000" in kwargs["options"]


def test_settings_in_the_url_win_over_the_defaults() -> None:
    url = "postgresql://app@db/sealednotes?tcp_user_timeout=9000&keepalives_idle=30"
    kwargs = Store(url)._connect_kwargs()
    # Passed as keywords they would override the URL: they are left out instead.
    assert "tcp_user_timeout" not in kwargs and "keepalives_idle" not in kwargs
    assert kwargs["keepalives_count"] == 3
    kv = "host=db dbname=sealednotes tcp_user_timeout=500"
    assert "tcp_user_timeout" not in Store(kv)._connect_kwargs()


def test_a_libpq_service_file_keeps_its_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its values are not visible to the service; keywords passed would override them.
    monkeypatch.delenv("PGSERVICE", raising=False)
    for url in ("postgresql:///?service=sealednotes", "service=sealednotes"):
        kwargs = Store(url)._connect_kwargs()
        assert not set(SILENT_SERVER_DEFAULTS) & set(kwargs), url
    monkeypatch.setenv("PGSERVICE", "sealednotes")
    assert not set(SILENT_SERVER_DEFAULTS) & set(Store("dbname=x")._connect_kwargs())


def test_pool_and_group_commit_are_made_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the store opens (its pool, its audit group commit) belongs to the process
    that opened it: after a fork the child makes its own, and close() never closes the
    parent's pool from the child."""
    from service.adapters.postgres import store as store_module

    made: list[int] = []
    pid = {"now": 100}

    def make() -> int:
        made.append(pid["now"])
        return len(made)

    monkeypatch.setattr("service.adapters.postgres.store.os.getpid", lambda: pid["now"])
    holder = store_module._PerProcess(make)
    assert holder.get() == 1 and holder.get() == 1  # made once, then read without the lock
    pid["now"] = 200  # a forked worker
    assert holder.get() == 2 and made == [100, 200]
    pid["now"] = 300
    assert holder.take() is None  # the other process's value is not handed out to close
    assert holder.get() == 3 and holder.take() == 3 and holder.take() is None
