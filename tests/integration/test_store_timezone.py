"""The service's connections read timestamps in UTC, whatever zone the database would
give a session by default (service/adapters/postgres/store.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
from psycopg import sql

from service.adapters.postgres import Store


def test_timestamps_come_back_in_utc_whatever_the_database_default(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as admin:
        name = admin.info.dbname
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET TimeZone = 'America/New_York'").format(
                sql.Identifier(name)
            )
        )
        try:
            with psycopg.connect(db_url) as plain:  # a session as the database sets it
                assert plain.execute("SHOW TimeZone").fetchone() == ("America/New_York",)
            store = Store(db_url, min_size=1, max_size=1)
            try:
                with store.transaction() as tx:
                    row = tx.ledger._one(
                        "SELECT current_setting('TimeZone') AS zone,"
                        " '2026-12-01 12:00:00-05'::timestamptz AS at"
                    )
            finally:
                store.close()
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} RESET TimeZone").format(sql.Identifier(name)))
    assert row is not None and row["zone"] == "UTC"
    assert row["at"] == datetime(2026, 12, 1, 17, 0, tzinfo=UTC)
    assert row["at"].tzinfo is UTC and row["at"].isoformat() == "2026-12-01T17:00:00+00:00"
