"""`audit verify` reads the log ahead (service/adapters/postgres/audit.py, _read_ahead):
the next batch is fetched by a helper thread while the verifier hashes the current one.
Every row arrives once and in order, a failed fetch fails the scan, and a scan the
caller stops early leaves no fetch running on the connection."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from service.adapters.postgres.audit import _read_ahead


class FakeCursor:
    def __init__(self, rows: int, *, fail_at: int | None = None, pause: float = 0.0) -> None:
        self._rows = list(range(rows))
        self._fail_at = fail_at
        self._pause = pause
        self.fetches = 0
        self.busy = threading.Lock()  # held while a fetch runs, as the connection would be
        self.threads: set[str] = set()

    def fetchmany(self, size: int) -> list[int]:
        with self.busy:
            self.threads.add(threading.current_thread().name)
            time.sleep(self._pause)
            if self._fail_at is not None and self.fetches == self._fail_at:
                raise psycopg.OperationalError("connection lost")
            self.fetches += 1
            out, self._rows = self._rows[:size], self._rows[size:]
            return out


def test_every_row_arrives_once_in_order_across_batches() -> None:
    cur = FakeCursor(10_007)
    assert list(_read_ahead(cur, 1000)) == list(range(10_007))  # type: ignore[arg-type]
    assert cur.fetches == 12  # eleven batches and the empty one that ends the scan
    assert all(name.startswith("audit-read-ahead") for name in cur.threads)


def test_the_next_batch_is_fetched_while_the_caller_works() -> None:
    cur = FakeCursor(300, pause=0.05)
    rows = _read_ahead(cur, 100)  # type: ignore[arg-type]
    assert next(rows) == 0
    time.sleep(0.2)  # the caller busy with the first batch
    assert cur.fetches == 2  # the second batch was read meanwhile
    assert list(rows) == list(range(1, 300))


def test_a_failed_fetch_fails_the_scan() -> None:
    cur = FakeCursor(5000, fail_at=2)
    seen: list[int] = []
    with pytest.raises(psycopg.OperationalError):
        seen.extend(_read_ahead(cur, 1000))  # type: ignore[arg-type]
    assert seen == list(range(2000))


def test_a_scan_stopped_early_leaves_no_fetch_running() -> None:
    cur = FakeCursor(10_000, pause=0.1)
    rows = _read_ahead(cur, 1000)  # type: ignore[arg-type]
    assert next(rows) == 0  # the helper is now fetching the second batch
    rows.close()  # the caller gives up (an exception in the verifier, say)
    assert cur.busy.acquire(blocking=False)  # no fetch still running on the connection
    cur.busy.release()
    assert cur.fetches == 2
