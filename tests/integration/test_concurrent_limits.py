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
