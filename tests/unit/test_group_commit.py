"""Group commit of audit records (service/adapters/postgres/groupcommit.py): every
record is written exactly once, each caller returns only after the batch holding
its record was written, and a failed batch fails every caller in it."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from service.adapters.postgres import groupcommit
from service.adapters.postgres.groupcommit import AuditGroupCommit
from service.errors import AuditUnavailable
from service.models import AuditEvent


class Recorder:
    def __init__(self, fail_when: Any = None, pause: float = 0.002) -> None:
        self.batches: list[list[str]] = []
        self.written: set[str] = set()
        self.lock = threading.Lock()
        self.fail_when = fail_when
        self.pause = pause
        self.writers: set[int] = set()

    def __call__(self, conn: Any, events: list[AuditEvent]) -> None:
        time.sleep(self.pause)  # a round trip: others queue meanwhile
        ids = [e.request_id or "" for e in events]
        with self.lock:
            self.writers.add(conn)
            if self.fail_when and self.fail_when(ids):
                raise psycopg.OperationalError("down")
            self.batches.append(ids)
            self.written.update(ids)


def run_callers(group: AuditGroupCommit, n: int) -> dict[str, str]:
    outcome: dict[str, str] = {}
    start = threading.Barrier(n)

    def call(i: int) -> None:
        rid = f"r{i}"
        start.wait()
        try:
            group.append(i, [AuditEvent(action="note.read", outcome="granted", request_id=rid)])
            outcome[rid] = "ok"
        except AuditUnavailable:
            outcome[rid] = "failed"

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a caller never returned"
    return outcome


def test_every_record_is_written_once_and_callers_share_batches(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(groupcommit, "_write", recorder)
    outcome = run_callers(AuditGroupCommit(), 64)
    assert set(outcome.values()) == {"ok"}
    flat = [rid for b in recorder.batches for rid in b]
    assert sorted(flat) == sorted(outcome) and len(flat) == len(set(flat))
    assert len(recorder.batches) < 64  # grouped: fewer statements than records
    assert len(recorder.writers) > 1  # the lead moves between callers' connections


def test_a_caller_returns_only_after_its_record_is_written(monkeypatch):
    recorder = Recorder(pause=0.01)
    seen_unwritten: list[str] = []

    def write(conn: Any, events: list[AuditEvent]) -> None:
        recorder(conn, events)

    monkeypatch.setattr(groupcommit, "_write", write)
    group = AuditGroupCommit()
    original = group.append

    def checked(conn: Any, events: list[AuditEvent]) -> None:
        original(conn, events)
        for e in events:
            if e.request_id not in recorder.written:
                seen_unwritten.append(e.request_id or "")

    group.append = checked  # type: ignore[method-assign]
    run_callers(group, 32)
    assert seen_unwritten == []


def test_a_failed_batch_fails_every_caller_in_it_and_the_next_batch_still_runs(monkeypatch):
    failing = {"armed": True}

    def fail_once(ids: list[str]) -> bool:
        if failing["armed"]:
            failing["armed"] = False
            return True
        return False

    recorder = Recorder(fail_when=fail_once)
    monkeypatch.setattr(groupcommit, "_write", recorder)
    outcome = run_callers(AuditGroupCommit(), 40)
    failed = {rid for rid, o in outcome.items() if o == "failed"}
    assert failed  # the first batch failed...
    assert failed.isdisjoint(recorder.written)  # ...and none of it was written
    assert {rid for rid, o in outcome.items() if o == "ok"} == recorder.written


def test_a_lone_caller_writes_its_own_record(monkeypatch):
    recorder = Recorder(pause=0)
    monkeypatch.setattr(groupcommit, "_write", recorder)
    group = AuditGroupCommit()
    group.append("c", [AuditEvent(action="note.read", outcome="granted", request_id="x")])
    group.append("c", [AuditEvent(action="note.read", outcome="granted", request_id="y")])
    assert recorder.batches == [["x"], ["y"]]
    with pytest.raises(AuditUnavailable):
        recorder.fail_when = lambda ids: True
        group.append("c", [AuditEvent(action="note.read", outcome="granted", request_id="z")])
    recorder.fail_when = None
    group.append("c", [AuditEvent(action="note.read", outcome="granted", request_id="w")])
    assert recorder.batches[-1] == ["w"]
