"""`make bench` seeds another tenant's notes in every system's tables (bench/seed.py
`seed_background`), so that PostgreSQL plans as in a store in use. The rows must be
what the schema allows, consistent with one another, and the same count for every
system: a seed the benchmark's ratios depend on."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest

from bench.peers import SCHEMA
from bench.seed import BACKGROUND_TENANT, seed_background
from service.adapters.postgres import Store
from service.devtools.stack import database_url, ensure_database
from tests.conftest import APP_ROLE


@pytest.fixture
def bench_db(pg_admin_url: str) -> Iterator[str]:
    name = f"sealednotes_test_bench_{secrets.token_hex(4)}"
    ensure_database(pg_admin_url, name, drop=True)
    url = database_url(pg_admin_url, name)
    Store(url).migrate(app_role=APP_ROLE)  # the suite's role: nothing left behind
    with psycopg.connect(url) as conn:
        conn.execute(SCHEMA.encode())
    yield url
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_every_system_gets_the_same_background_and_it_hangs_together(bench_db: str) -> None:
    assert seed_background(bench_db, notes=400, body_chars=2000) == 400
    with psycopg.connect(bench_db) as conn:

        def one(sql: str) -> int:
            row = conn.execute(sql).fetchone()
            assert row is not None
            return int(row[0])

        tenant = conn.execute("SELECT id FROM tenants WHERE name = %s", (BACKGROUND_TENANT,))
        assert tenant.fetchone() is not None
        assert one("SELECT count(*) FROM notes") == 400
        assert one("SELECT count(*) FROM note_versions") == 400
        assert one("SELECT count(*) FROM bench_peer_plaintext_notes") == 400
        assert one("SELECT count(*) FROM bench_peer_transit_notes") == 400
        patients = one("SELECT count(*) FROM patients")
        clinicians = one("SELECT count(*) FROM principals WHERE role = 'clinician'")
        assert (patients, clinicians) == (80, 20)
        assert one("SELECT count(*) FROM tokens") == clinicians
        assert one("SELECT count(*) FROM bench_peer_tokens") == clinicians
        # Each patient: on its notes' author's care team, a data key, one release to
        # that author within the day (outside the hour), all in the one tenant.
        assert (
            one(
                "SELECT count(*) FROM notes n JOIN care_team c"
                " ON c.patient_id = n.patient_id AND c.principal_id = n.created_by"
            )
            == 400
        )
        assert one("SELECT count(*) FROM patient_keys") == patients
        assert (
            one(
                "SELECT count(*) FROM key_releases"
                " WHERE released_at < now() - interval '1 hour'"
                " AND released_at > now() - interval '1 day'"
            )
            == patients
        )
        assert one("SELECT count(DISTINCT tenant_id) FROM notes") == 1
        # Ciphertext-sized and incompressible, as a sealed note is.
        assert one("SELECT min(octet_length(sealed)) FROM note_versions") >= 2000
        assert one("SELECT min(pg_column_size(sealed)) FROM note_versions") >= 2000
        assert one("SELECT min(pg_column_size(body)) FROM bench_peer_plaintext_notes") >= 2000
