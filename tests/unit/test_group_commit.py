"""Group commit of audit records (service/adapters/postgres/groupcommit.py): every
record is written exactly once, each caller returns only after the batch holding
its record was written, and a failed batch fails every caller in it."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from service import deadline
from service.adapters.postgres import groupcommit
from service.adapters.postgres.groupcommit import AuditGroupCommit
from service.deadline import DeadlineExceeded
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


def _append_in_thread(
    group: AuditGroupCommit, conn: Any, rid: str, out: dict[str, str], seconds: float | None
) -> threading.Thread:
    def run() -> None:
        token = deadline.start(seconds) if seconds is not None else None
        try:
            group.append(conn, [AuditEvent(action="note.read", outcome="granted", request_id=rid)])
            out[rid] = "ok"
        except AuditUnavailable:
            out[rid] = "failed"
        except DeadlineExceeded:
            out[rid] = "deadline"
        except BaseException as e:  # the outcome the test reports
            out[rid] = type(e).__name__
        finally:
            if token is not None:
                deadline.reset(token)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_leader_failing_with_any_error_fails_its_batch_and_the_group_goes_on(monkeypatch):
    # Not only database errors: e.g. psycopg raises UnicodeEncodeError for a lone
    # surrogate before anything reaches the server. The batch fails (503), nobody waits
    # for ever, and later appends still run.
    release = threading.Event()
    calls = {"n": 0}

    def write(conn: Any, events: list[AuditEvent]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            release.wait(5)  # followers queue behind this leader meanwhile
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(groupcommit, "_write", write)
    group, out = AuditGroupCommit(), {}
    threads = [_append_in_thread(group, "leader", "leader", out, None)]
    time.sleep(0.05)
    threads += [_append_in_thread(group, f"c{i}", f"f{i}", out, None) for i in range(4)]
    time.sleep(0.05)
    release.set()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads), out
    assert out["leader"] == "failed"  # AuditUnavailable (503), not the raw error (500)
    # The followers queued behind it: in its batch (failed) or the next one (written).
    assert {out[f"f{i}"] for i in range(4)} <= {"failed", "ok"}, out
    later = _append_in_thread(group, "c-later", "later", out, None)
    later.join(5)
    assert out.get("later") == "ok"


def test_a_follower_gives_up_at_its_deadline_when_the_leader_stalls(monkeypatch):
    stalled = threading.Event()  # the leader's round trip hangs (a silent network)
    monkeypatch.setattr(groupcommit, "_write", lambda conn, events: stalled.wait(10))
    group, out = AuditGroupCommit(), {}
    leader = _append_in_thread(group, "leader", "leader", out, None)
    time.sleep(0.05)
    started = time.monotonic()
    follower = _append_in_thread(group, "healthy", "follower", out, 0.3)
    follower.join(3)
    waited = time.monotonic() - started
    stalled.set()
    leader.join(5)
    assert out.get("follower") == "deadline" and waited < 2, (out, waited)
    # The follower left the queue: the group is not wedged once the leader returns.
    later = _append_in_thread(group, "c-later", "later", out, None)
    later.join(5)
    assert out.get("later") == "ok", out


def test_a_queued_request_that_gives_up_leaves_the_queue_and_the_next_is_written(monkeypatch):
    written: list[str] = []
    release = threading.Event()

    def write(conn: Any, events: list[AuditEvent]) -> None:
        if conn == "leader":
            release.wait(5)
        written.extend(e.request_id or "" for e in events)

    monkeypatch.setattr(groupcommit, "_write", write)
    group, out = AuditGroupCommit(), {}
    leader = _append_in_thread(group, "leader", "leader", out, None)
    time.sleep(0.05)
    hasty = _append_in_thread(group, "c1", "hasty", out, 0.2)  # first in the queue
    time.sleep(0.05)
    patient = _append_in_thread(group, "c2", "patient", out, None)
    hasty.join(3)
    assert out.get("hasty") == "deadline"
    release.set()
    for t in (leader, patient):
        t.join(5)
    assert out.get("leader") == "ok" and out.get("patient") == "ok", out
    assert "patient" in written and "hasty" not in written


def test_a_successor_handed_the_lead_as_it_gives_up_passes_the_lead_on():
    # The lead was handed to `first` (under the lock) but its wake-up had not arrived
    # when its time ran out: it must pass the lead to the next queued request.
    group = AuditGroupCommit()
    first = groupcommit._Waiter([AuditEvent(action="note.read", outcome="granted")], lead=True)
    second = groupcommit._Waiter([AuditEvent(action="note.read", outcome="granted")])
    group._leading, group._queue = True, [first, second]
    with pytest.raises(DeadlineExceeded):
        group._give_up(first)
    assert group._queue == [second] and second.lead and second.done.is_set()
    # The last one queued gives up with the lead: nobody leads, the next append will.
    second.done.clear()
    with pytest.raises(DeadlineExceeded):
        group._give_up(second)
    assert group._queue == [] and not group._leading
