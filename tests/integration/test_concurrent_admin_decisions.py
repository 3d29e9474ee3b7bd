"""Admins' decisions under concurrency: an unlock and a decoy clear are decided under
the row lock of what they change, so a request that read the state before waiting
cannot lift what needs a second admin.

1. Unlock: an unlock that read the target while it was suspended for a benign reason
   and never unlocked must not, once it gets the lock, lift a decoy's suspension or be
   the second unlock of the day (both need a second admin).
2. Decoy clear: a clear that read "not a decoy" must not undo another admin's arming
   that raced it (no serial order ends disarmed without an approval).

Each window is held open deterministically with a side transaction standing for a
concurrent request holding a row lock, then attacked without help by a storm."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import requests

from service.models import Role
from tests.conftest import LiveServer
from tests.helpers import StackHelper, Tenant, Who


def _call(server: LiveServer, token: str, method: str, path: str, body: object = None) -> int:
    with requests.Session() as s:
        r = s.request(
            method,
            f"{server.url}{path}",
            headers={"Authorization": f"Bearer {token}"},
            json=body,
            timeout=30,
        )
    return r.status_code


def _principal_state(db_url: str, pid: str) -> tuple[bool, str | None]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT suspended_at IS NOT NULL, suspended_reason FROM principals WHERE id = %s",
            (pid,),
        ).fetchone()
    assert row is not None
    return bool(row[0]), row[1]


def _unlocks(db_url: str, tenant_id: str, pid: str) -> list[str]:
    """Each actual lifting of a suspension (written by the principals trigger)."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT principal_id::text || ' ' || coalesce(reason, '') FROM audit_events"
            " WHERE tenant_id = %s AND action = 'principal.unlock' AND reason LIKE %s ORDER BY id",
            (tenant_id, f"%target={pid} was=%"),  # the trigger's records: real unlocks
        ).fetchall()
    return [r[0] for r in rows]


def _decoy_armed_clinician(stack: StackHelper, server: LiveServer, t: Tenant) -> tuple[Who, str]:
    dr = stack.clinician(t)
    decoy = stack.patient_for(t, dr)
    assert (
        _call(server, t.admin.token, "PUT", f"/v1/admin/patients/{decoy}/decoy", {"decoy": True})
        == 200
    )
    return dr, decoy


def test_an_unlock_that_waited_cannot_lift_a_decoy_suspension_alone(
    stack: StackHelper, live_server: Callable[..., LiveServer], db_url: str
) -> None:
    server = live_server(workers=4, SEALEDNOTES_ADMIN_ACTIONS_PER_HOUR="1000")
    t = stack.tenant()
    dr, decoy = _decoy_armed_clinician(stack, server, t)
    # An admin action locks the admin's and the target's rows in id order. B must wait for
    # its own row holding nothing, as it does when its id sorts first: had it locked the
    # clinician's row first, A's unlock would queue behind B instead of racing it.
    admin_b = stack.principal(t, Role.ADMIN)
    while admin_b.id > dr.id:
        admin_b = stack.principal(t, Role.ADMIN)
    stack.services.principals.suspend(dr.id, "benign")  # never unlocked, not a decoy
    assert _principal_state(db_url, dr.id) == (True, "operator: benign")

    side = psycopg.connect(db_url)  # admin B's other in-flight request holds B's row
    side.execute("SELECT 1 FROM principals WHERE id = %s FOR NO KEY UPDATE", (admin_b.id,))
    result: dict[str, int] = {}
    b = threading.Thread(
        target=lambda: result.setdefault(
            "b", _call(server, admin_b.token, "POST", f"/v1/admin/principals/{dr.id}/unlock")
        )
    )
    b.start()
    time.sleep(0.3)  # B has read the target (suspended: benign, never unlocked), waits
    # Admin A unlocks (immediate: the first unlock, not a decoy's) ...
    assert _call(server, t.admin.token, "POST", f"/v1/admin/principals/{dr.id}/unlock") == 200
    # ... the clinician trips the decoy: suspended again, by a decoy.
    assert _call(server, dr.token, "GET", f"/v1/patients/{decoy}/notes") == 403
    assert _principal_state(db_url, dr.id) == (True, "decoy-patient")
    side.commit()
    side.close()
    b.join()
    # Unlocking a decoy's suspension, and a second unlock within the day, both need a
    # second admin: expected 202 and the clinician still suspended.
    assert result["b"] == 202, f"B's stale unlock answered {result['b']}"
    assert _principal_state(db_url, dr.id)[0], "decoy suspension lifted by one admin"


def test_an_unlock_storm_lifts_at_most_one_suspension_a_day(
    stack: StackHelper, live_server: Callable[..., LiveServer], db_url: str
) -> None:
    """No helper transaction: one admin fires unlocks at once while the (colluding)
    clinician keeps opening a decoy. Bound: one single-admin unlock per day."""
    server = live_server(
        workers=4, SEALEDNOTES_ADMIN_ACTIONS_PER_HOUR="1000", SEALEDNOTES_MAX_IN_FLIGHT="16"
    )
    t = stack.tenant()
    dr, decoy = _decoy_armed_clinician(stack, server, t)
    stack.services.principals.suspend(dr.id, "benign")
    stop = threading.Event()

    def trip() -> None:
        while not stop.is_set():
            _call(server, dr.token, "GET", f"/v1/patients/{decoy}/notes")

    trippers = [threading.Thread(target=trip) for _ in range(4)]
    for th in trippers:
        th.start()
    with ThreadPoolExecutor(max_workers=24) as pool:
        codes = list(
            pool.map(
                lambda _: _call(
                    server, t.admin.token, "POST", f"/v1/admin/principals/{dr.id}/unlock"
                ),
                range(48),
            )
        )
    stop.set()
    for th in trippers:
        th.join()
    unlocks = _unlocks(db_url, t.id, dr.id)
    assert set(codes) <= {200, 202}, codes
    assert len(unlocks) <= 1, f"{len(unlocks)} single-admin unlocks within a day: {unlocks}"


def test_a_decoy_clear_racing_an_arm_never_disarms_it(
    stack: StackHelper, live_server: Callable[..., LiveServer], db_url: str
) -> None:
    server = live_server(workers=4, SEALEDNOTES_ADMIN_ACTIONS_PER_HOUR="1000")
    t = stack.tenant()
    admin_b = stack.principal(t, Role.ADMIN)
    patient = stack.patient(t)
    side = psycopg.connect(db_url)  # another transaction holding the patient row
    side.execute("SELECT 1 FROM patients WHERE id = %s FOR NO KEY UPDATE", (patient,))
    result: dict[str, int] = {}

    def put(who: str, token: str, decoy: bool) -> None:
        result[who] = _call(
            server, token, "PUT", f"/v1/admin/patients/{patient}/decoy", {"decoy": decoy}
        )

    a = threading.Thread(target=put, args=("arm", t.admin.token, True))
    a.start()
    time.sleep(0.3)
    b = threading.Thread(target=put, args=("clear", admin_b.token, False))
    b.start()
    time.sleep(0.3)
    side.commit()
    side.close()
    a.join()
    b.join()
    with psycopg.connect(db_url) as conn:
        (is_decoy,) = conn.execute(
            "SELECT is_decoy FROM patients WHERE id = %s", (patient,)
        ).fetchone()
        history = conn.execute(
            "SELECT reason FROM audit_events WHERE patient_id = %s AND action = 'patient.decoy'"
            " ORDER BY id",
            (patient,),
        ).fetchall()
    assert result == {"arm": 200, "clear": 200} or result["clear"] == 202, (result, history)
    # Serially: clear-then-arm ends armed; arm-then-clear gives 202 and stays armed.
    assert is_decoy, (
        f"decoy disarmed without approval (arm {result['arm']}, clear {result['clear']})"
    )


def test_a_storm_of_arms_and_clears_loses_no_arm(
    stack: StackHelper, live_server: Callable[..., LiveServer], db_url: str
) -> None:
    server = live_server(
        workers=4, SEALEDNOTES_ADMIN_ACTIONS_PER_HOUR="10000", SEALEDNOTES_MAX_IN_FLIGHT="16"
    )
    t = stack.tenant()
    admin_b = stack.principal(t, Role.ADMIN)
    patients = [stack.patient(t) for _ in range(60)]
    jobs = [(t.admin.token, p, True) for p in patients] + [
        (admin_b.token, p, False) for p in patients
    ]
    jobs = [j for pair in zip(jobs[:60], jobs[60:], strict=True) for j in pair]
    with ThreadPoolExecutor(max_workers=24) as pool:
        codes = list(
            pool.map(
                lambda j: _call(
                    server, j[0], "PUT", f"/v1/admin/patients/{j[1]}/decoy", {"decoy": j[2]}
                ),
                jobs,
            )
        )
    with psycopg.connect(db_url) as conn:
        armed = {
            str(r[0])
            for r in conn.execute(
                "SELECT id FROM patients WHERE id = ANY(%s::uuid[]) AND is_decoy", (patients,)
            )
        }
    lost = [p for p in patients if p not in armed]
    assert set(codes) <= {200, 202}, codes
    assert not lost, f"{len(lost)} of 60 arms lost to an unapproved clear"


def test_two_admins_acting_on_each_other_never_deadlock(
    stack: StackHelper, live_server: Callable[..., LiveServer], db_url: str
) -> None:
    """Every admin action locks its caller's row (the exact hourly count); one that changes
    another principal also locks the target's. A acting on B while B acts on A must take
    the two locks in one order, or PostgreSQL breaks the cycle by aborting one (503)."""
    server = live_server(
        workers=4, SEALEDNOTES_ADMIN_ACTIONS_PER_HOUR="10000", SEALEDNOTES_MAX_IN_FLIGHT="16"
    )
    t = stack.tenant()
    admin_b = stack.principal(t, Role.ADMIN)
    admin_c = stack.principal(t, Role.ADMIN)
    admins = [(t.admin.token, t.admin.id), (admin_b.token, admin_b.id)]
    # Budget raises for A and for B, asked by a third admin C, each to be approved during
    # the storm by the other one of A and B: the approval's action then updates the other
    # admin's row while the approver's own row is locked for the charge.
    pending: list[tuple[str, str]] = []
    for i in range(12):
        (_, target), (decider, _) = (admins[0], admins[1]) if i % 2 else (admins[1], admins[0])
        r = requests.put(
            f"{server.url}/v1/admin/principals/{target}/budget",
            headers={"Authorization": f"Bearer {admin_c.token}"},
            json={"per_hour": 90_000 + i},
            timeout=30,
        )
        assert r.status_code == 202, r.text
        pending.append((decider, r.json()["approval"]["id"]))
    jobs: list[tuple[str, str, str, object]] = []
    for i in range(12):
        for (token, _), (_, other) in ((admins[0], admins[1]), (admins[1], admins[0])):
            jobs.append((token, "POST", f"/v1/admin/principals/{other}/unlock", None))
            jobs.append(
                (token, "PUT", f"/v1/admin/principals/{other}/budget", {"per_hour": 10 + i})
            )
    for decider, approval in pending:
        jobs.append((decider, "POST", f"/v1/admin/approvals/{approval}/approve", None))
    jobs = jobs[::2] + jobs[1::2]  # interleave the two admins' kinds of action
    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(lambda j: _call(server, j[0], j[1], j[2], j[3]), jobs))
    failed = [c for c in codes if c >= 500]
    assert not failed, f"{len(failed)} of {len(codes)} answered {sorted(set(failed))}"
    assert set(codes) <= {200}, sorted(set(codes))


def test_an_admin_never_locks_another_tenants_account(
    stack: StackHelper, live_server: Callable[..., LiveServer], db_url: str
) -> None:
    """The target's id comes from the URL. Locked without the tenant filter, an admin
    flooding unlocks of a foreign id (each a 404, rolled back, never charged) would queue
    that account's own key releases and suspension behind it. Here the foreign account's
    row is busy: a request that waited for it would end at the lock timeout, 503."""
    server = live_server(workers=2)
    t, other = stack.tenant(), stack.tenant()
    victim = stack.clinician(other)
    busy = psycopg.connect(db_url)
    busy.execute("SELECT 1 FROM principals WHERE id = %s FOR NO KEY UPDATE", (victim.id,))
    try:
        for method, path, body in (
            ("POST", f"/v1/admin/principals/{victim.id}/unlock", None),
            ("PUT", f"/v1/admin/principals/{victim.id}/budget", {"per_hour": 5}),
        ):
            assert _call(server, t.admin.token, method, path, body) == 404, path
    finally:
        busy.rollback()
        busy.close()
