"""The two comparison servers, as one gunicorn app factory: ``bench.peers:create_app()``.

Both speak the same two routes as Sealed Notes, with the same bearer tokens and
the same note ids, so one request list drives all three systems:

* ``GET /v1/notes/<id>``: look the token up by its SHA-256 (round trip 1), fetch
  the note row by id within the caller's tenant (round trip 2), answer JSON.
* ``POST /v1/patients/<id>/notes``: the same token lookup, then one INSERT.

``BENCH_PEER_MODE=plaintext`` stores title and body in clear: no crypto, no
Vault. ``BENCH_PEER_MODE=transit`` stores them as one Vault Transit ciphertext
(derived key, context = patient id) and calls Transit on every read (decrypt) and
every create (encrypt). Connections are autocommit, so each statement is one
round trip and there is no BEGIN/COMMIT.

Environment: ``BENCH_PEER_MODE``, ``BENCH_PEER_DATABASE_URL``,
``BENCH_PEER_POOL_SIZE``, and for transit ``VAULT_ADDR``, ``VAULT_TOKEN`` and
``BENCH_PEER_LEAN_VAULT=1`` (Transit over the same kept-alive http.client
connections as Sealed Notes' own Vault client, service/adapters/vault/transport.py,
instead of hvac and requests).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import uuid
from typing import Any

import hvac
import psycopg
import psycopg_pool
from flask import Flask, Response, jsonify, request
from psycopg.rows import dict_row

from service.adapters.vault.transport import LeanTransport

MODE_PLAINTEXT = "plaintext"
MODE_TRANSIT = "transit"
TRANSIT_MOUNT = "transit"
TRANSIT_KEY = "bench-peer-notes"
KINDS = frozenset(
    {"progress", "consult", "admission", "discharge", "procedure", "result", "referral", "other"}
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_peer_tokens (
    token_hash    bytea PRIMARY KEY,
    principal_id  uuid NOT NULL,
    tenant_id     uuid NOT NULL,
    expires_at    timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS bench_peer_plaintext_notes (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    patient_id  uuid NOT NULL,
    kind        text NOT NULL,
    title       text,
    body        text NOT NULL,
    created_by  uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS bench_peer_plaintext_notes_patient
    ON bench_peer_plaintext_notes (patient_id, created_at, id);
CREATE TABLE IF NOT EXISTS bench_peer_transit_notes (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    patient_id  uuid NOT NULL,
    kind        text NOT NULL,
    sealed      text NOT NULL,
    created_by  uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS bench_peer_transit_notes_patient
    ON bench_peer_transit_notes (patient_id, created_at, id);
"""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def transit_context(patient_id: str) -> str:
    """The Transit derivation context of a patient's notes (base64)."""
    return _b64(f"bench-peer/{patient_id}".encode())


def encode_content(title: str | None, body: str) -> bytes:
    return json.dumps({"t": title, "b": body}, ensure_ascii=False).encode("utf-8")


class PeerBackend:
    """Per-process database pool and Vault client, opened lazily after gunicorn forks."""

    def __init__(self, mode: str, database_url: str, pool_size: int) -> None:
        if mode not in (MODE_PLAINTEXT, MODE_TRANSIT):
            raise ValueError(f"BENCH_PEER_MODE must be {MODE_PLAINTEXT} or {MODE_TRANSIT}")
        self.mode = mode
        self._url = database_url
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[dict[str, Any]]] | None = None
        self._vault: hvac.Client | None = None
        self._lean: LeanTransport | None = None

    def _ensure(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pool = psycopg_pool.ConnectionPool(
                self._url,
                min_size=self._pool_size,
                max_size=self._pool_size,
                kwargs={"autocommit": True, "row_factory": dict_row},
                open=False,
                name="bench-peer",
            )
            self._pool.open(wait=True)
            if self.mode == MODE_TRANSIT:
                self._vault = hvac.Client(
                    url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"], timeout=2
                )
                if os.environ.get("BENCH_PEER_LEAN_VAULT") == "1":
                    # As Sealed Notes' own client: Transit over kept-alive connections.
                    self._lean = LeanTransport(os.environ["VAULT_ADDR"], verify=True)
            self._pid = os.getpid()

    def pool(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[dict[str, Any]]]:
        self._ensure()
        assert self._pool is not None
        return self._pool

    def vault(self) -> hvac.Client:
        self._ensure()
        assert self._vault is not None
        return self._vault

    def _lean_transit(self, operation: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        self._ensure()
        if self._lean is None:
            return None
        path = f"/v1/{TRANSIT_MOUNT}/{operation}/{TRANSIT_KEY}"
        headers = {"X-Vault-Token": os.environ["VAULT_TOKEN"]}
        return self._lean.post(path, payload, headers=headers, timeout=2, idempotent=True)["data"]

    def encrypt(self, patient_id: str, plaintext: bytes) -> str:
        payload = {"plaintext": _b64(plaintext), "context": transit_context(patient_id)}
        lean = self._lean_transit("encrypt", payload)
        if lean is not None:
            return str(lean["ciphertext"])
        resp = self.vault().secrets.transit.encrypt_data(
            name=TRANSIT_KEY,
            plaintext=_b64(plaintext),
            context=transit_context(patient_id),
            mount_point=TRANSIT_MOUNT,
        )
        return str(resp["data"]["ciphertext"])

    def decrypt(self, patient_id: str, ciphertext: str) -> bytes:
        lean = self._lean_transit(
            "decrypt", {"ciphertext": ciphertext, "context": transit_context(patient_id)}
        )
        if lean is not None:
            return base64.b64decode(lean["plaintext"])
        resp = self.vault().secrets.transit.decrypt_data(
            name=TRANSIT_KEY,
            ciphertext=ciphertext,
            context=transit_context(patient_id),
            mount_point=TRANSIT_MOUNT,
        )
        return base64.b64decode(resp["data"]["plaintext"])


def _problem(status: int, title: str) -> tuple[Response, int]:
    return jsonify({"title": title, "status": status}), status


def _token_hash() -> bytes | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 200:
        return None
    return hashlib.sha256(token.encode("utf-8")).digest()


def _authenticate(conn: psycopg.Connection[dict[str, Any]]) -> dict[str, Any] | None:
    token_hash = _token_hash()
    if token_hash is None:
        return None
    return conn.execute(
        "SELECT principal_id, tenant_id FROM bench_peer_tokens "
        "WHERE token_hash = %s AND expires_at > now()",
        (token_hash,),
    ).fetchone()


def _note_json(row: dict[str, Any], title: str | None, body: str) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "patient_id": str(row["patient_id"]),
        "kind": row["kind"],
        "status": "current",
        "version": 1,
        "created_by": str(row["created_by"]),
        "created_at": row["created_at"].isoformat(),
        "title": title,
        "body": body,
    }


def create_app() -> Flask:
    """The gunicorn app factory; configuration from the environment."""
    backend = PeerBackend(
        os.environ.get("BENCH_PEER_MODE", MODE_PLAINTEXT),
        os.environ["BENCH_PEER_DATABASE_URL"],
        int(os.environ.get("BENCH_PEER_POOL_SIZE", "8")),
    )
    transit = backend.mode == MODE_TRANSIT
    table = "bench_peer_transit_notes" if transit else "bench_peer_plaintext_notes"
    content_columns = "sealed" if transit else "title, body"
    app = Flask(f"bench-peer-{backend.mode}")

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/v1/notes/<uuid:note_id>")
    def read_note(note_id: uuid.UUID) -> tuple[Response, int]:
        with backend.pool().connection() as conn:
            who = _authenticate(conn)
            if who is None:
                return _problem(401, "Unauthorized")
            row = conn.execute(
                f"SELECT id, patient_id, kind, {content_columns}, created_by, created_at "
                f"FROM {table} WHERE id = %s AND tenant_id = %s",
                (note_id, who["tenant_id"]),
            ).fetchone()
        if row is None:
            return _problem(404, "Not found")
        if transit:
            content = json.loads(backend.decrypt(str(row["patient_id"]), row["sealed"]))
            title, body = content.get("t"), content["b"]
        else:
            title, body = row["title"], row["body"]
        return jsonify(_note_json(row, title, body)), 200

    @app.post("/v1/patients/<uuid:patient_id>/notes")
    def create_note(patient_id: uuid.UUID) -> tuple[Response, int, dict[str, str]]:
        data = request.get_json(silent=True)
        if (
            not isinstance(data, dict)
            or data.get("kind") not in KINDS
            or not isinstance(data.get("body"), str)
            or not isinstance(data.get("title", ""), str | None)
            or len(data.get("title") or "") > 500
        ):
            response, status = _problem(422, "Invalid note")
            return response, status, {}
        title, body = data.get("title"), data["body"]
        note_id = uuid.uuid4()
        with backend.pool().connection() as conn:
            who = _authenticate(conn)
            if who is None:
                response, status = _problem(401, "Unauthorized")
                return response, status, {}
            if transit:
                values: tuple[Any, ...] = (
                    backend.encrypt(str(patient_id), encode_content(title, body)),
                )
            else:
                values = (title, body)
            placeholders = ", ".join(["%s"] * len(values))
            row = conn.execute(
                f"INSERT INTO {table} (id, tenant_id, patient_id, kind, {content_columns},"
                f" created_by) VALUES (%s, %s, %s, %s, {placeholders}, %s)"
                " RETURNING id, patient_id, kind, created_by, created_at",
                (note_id, who["tenant_id"], patient_id, data["kind"], *values, who["principal_id"]),
            ).fetchone()
        assert row is not None
        out = _note_json(row, None, "")
        del out["title"], out["body"]
        return jsonify(out), 201, {"Location": f"/v1/notes/{note_id}", "ETag": '"1"'}

    return app
