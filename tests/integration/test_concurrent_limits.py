"""The hourly limits on every role hold under concurrency, like the key-release budget:
`gunicorn -w 4`, many requests of one principal at once, counts in PostgreSQL.

A limit that is checked by counting and then recording could let N concurrent requests
all see room for one more: an admin firing care-team grants at once would pass the
threshold past which a second admin must approve, and an integration could exceed its
lookups. Each charge is serialised per principal, so the counts are exact."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import requests

from service.models import Role
from tests.conftest import LiveServer
from tests.helpers import StackHelper, assert_refused_outside_read_committed, seed_patients


def _fire(server: LiveServer, token: str, method: str, paths: list[str]) -> list[int]:
    def call(path: str) -> int:
        with requests.Session() as s:
            r = s.request(
                method,
                f"{server.url}{path}",
                headers={"Authorization": f"Bearer {token}"},
                json={} if method == "PUT" else None,
                timeout=30,
            )
        return r.status_code

    with ThreadPoolExecutor(max_workers=24) as pool:
        return list(pool.map(call, paths))


def test_concurrent_admin_grants_never_pass_the_second_admin_threshold(
    stack: StackHelper, live_server: Callable[..., LiveServer]
) -> None:
    server = live_server(
        workers=4,
        SEALEDNOTES_ADMIN_CARE_TEAM_GRANTS_PER_HOUR="5",
        SEALEDNOTES_ADMIN_ACTIONS_PER_HOUR="1000",
        SEALEDNOTES_MAX_IN_FLIGHT="16",
    )
    t = stack.tenant()
    dr, colleague = stack.clinician(t), stack.clinician(t)
    patients = seed_patients(stack, t, [colleague], 48)
    codes = _fire(
        server, t.admin.token, "PUT", [f"/v1/patients/{p}/care-team/{dr.id}" for p in patients]
    )
    assert sorted(set(codes)) == [201, 202], codes
    assert codes.count(201) == 5  # never more, whatever the interleaving
    assert codes.count(202) == 43


def test_concurrent_actions_stop_exactly_at_the_hourly_limit(
    stack: StackHelper, live_server: Callable[..., LiveServer]
) -> None:
    server = live_server(
        workers=4,
        SEALEDNOTES_LOOKUPS_PER_HOUR="10",
        SEALEDNOTES_ADMIN_ACTIONS_PER_HOUR="7",
        SEALEDNOTES_SUSPEND_AFTER_DENIALS="1000",
        SEALEDNOTES_MAX_IN_FLIGHT="16",
    )
    t = stack.tenant()
    integration = stack.principal(t, Role.INTEGRATION)
    dr = stack.clinician(t)
    patients = seed_patients(stack, t, [dr], 48)
    lookups = _fire(server, integration.token, "GET", [f"/v1/patients/{p}" for p in patients])
    assert sorted(set(lookups)) == [200, 429], lookups
    assert lookups.count(200) == 10
    removals = _fire(
        server, t.admin.token, "DELETE", [f"/v1/patients/{p}/care-team/{dr.id}" for p in patients]
    )
    assert sorted(set(removals)) == [204, 429], removals
    assert removals.count(204) == 7


def test_limited_actions_are_charged_only_at_read_committed(app_db_url: str) -> None:
    """The charge locks the account, then counts on a fresh snapshot: a REPEATABLE READ
    (or SERIALIZABLE) transaction would count on the snapshot taken before its wait, and
    concurrent calls would pass the limit (measured: 3 rows under a limit of 2)."""
    some = str(uuid.uuid4())
    assert_refused_outside_read_committed(
        app_db_url,
        "SELECT * FROM sealednotes_charge_action(%s, %s::uuid[], %s, 'write',"
        " NULL, now(), now() - interval '1 hour', now(), 10)",
        (some, [some], some),
    )


_CHARGE = (
    "SELECT * FROM sealednotes_charge_action(%s, %s::uuid[], %s, 'write', NULL, now(),"
    " now() - interval '1 hour', now() + interval '5 minutes', 1000)"
)


def _locked(db_url: str, principal_id: str) -> bool:
    """Whether another transaction holds the principal's row at least FOR NO KEY UPDATE:
    a FOR SHARE probe waits on that (and on FOR UPDATE), not on a weaker FOR SHARE or FOR
    KEY SHARE, which would let two charges count at once."""
    with psycopg.connect(db_url) as other:
        try:
            other.execute("SET lock_timeout = '50ms'")
            other.execute("SELECT 1 FROM principals WHERE id = %s FOR SHARE", (principal_id,))
            return False
        except psycopg.errors.LockNotAvailable:
            return True


def test_the_charge_locks_each_given_account_of_its_tenant_and_reads_the_callers_suspension(
    stack: StackHelper, db_url: str, app_db_url: str
) -> None:
    """The charge locks the caller's row and any target's (its tenant's only; given twice
    or null, still fine) until the transaction ends, and reads the caller's suspension
    from the locked row. The order of the locks (ascending id, so admins acting on each
    other wait rather than deadlock) is
    test_concurrent_admin_decisions.py::test_two_admins_acting_on_each_other_never_deadlock."""
    t, other = stack.tenant(), stack.tenant()
    caller, colleague = stack.clinician(t), stack.clinician(t)
    stranger = stack.clinician(other)
    ids = [colleague.id, stranger.id, caller.id, colleague.id, None]
    with psycopg.connect(app_db_url) as conn:
        row = conn.execute(_CHARGE, (t.id, ids, caller.id)).fetchone()
        assert row is not None and row[0] is False and row[1] is True  # active, charged
        assert _locked(db_url, caller.id) and _locked(db_url, colleague.id)
        assert not _locked(db_url, stranger.id)  # another tenant's row: left alone
    assert not _locked(db_url, caller.id)  # released with the transaction

    with psycopg.connect(db_url) as owner:
        owner.execute("UPDATE principals SET suspended_at = now() WHERE id = %s", (caller.id,))
    with psycopg.connect(app_db_url) as conn:
        suspended = conn.execute(_CHARGE, (t.id, [caller.id], caller.id)).fetchone()
        assert suspended is not None and suspended[0] is True and suspended[1] is False
        # A caller outside the tenant is refused like a suspended one.
        outside = conn.execute(_CHARGE, (other.id, [caller.id], caller.id)).fetchone()
        assert outside is not None and outside[0] is True and outside[1] is False
