"""Helpers of the P8 tests (test_audit_log_*.py): a superuser connection past the append-only
triggers, `audit verify`'s report, the chains' rows by shard, and the CLI's environment."""

from __future__ import annotations

from typing import Any

import psycopg
from flask import Flask

from service.config import Settings


def superuser(db_url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute("SET session_replication_role = replica")  # bypass the append-only triggers
    return conn


def verify(app: Flask) -> dict[str, Any]:
    report: dict[str, Any] = app.extensions["sealednotes"].audit_service.verify().as_dict()
    return report


def shard_rows(db_url: str) -> dict[int, list[tuple[int, int]]]:
    """shard -> [(seq, id), ...] in chain order."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT shard, seq, id FROM audit_events ORDER BY shard, seq"
        ).fetchall()
    out: dict[int, list[tuple[int, int]]] = {}
    for shard, seq, rid in rows:
        out.setdefault(shard, []).append((seq, rid))
    return out


def longest_shard(db_url: str) -> tuple[int, list[tuple[int, int]]]:
    shard, rows = max(shard_rows(db_url).items(), key=lambda kv: len(kv[1]))
    assert len(rows) >= 5
    return shard, rows


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "SEALEDNOTES_DATABASE_URL": settings.database_url,
        "VAULT_ADDR": settings.vault_addr,
        "VAULT_TOKEN": settings.vault_token or "",
    }
