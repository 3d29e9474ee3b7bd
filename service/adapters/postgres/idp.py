"""Identity providers, subject links, SMART clients and their used assertions
(migration 0020)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from service.adapters.postgres.base import PRINCIPAL_COLUMNS, Repo, _principal
from service.models import OAuthClient, Principal, TenantIdp

IDP_COLUMNS = (
    "tenant_id, issuer, jwks_url, audience, principal_claim, role_claim, role_map, allow_create"
)


def _idp(row: dict[str, Any]) -> TenantIdp:
    raw = row["role_map"] or {}
    return TenantIdp(
        tenant_id=str(row["tenant_id"]),
        issuer=row["issuer"],
        jwks_url=row["jwks_url"],
        audience=row["audience"],
        principal_claim=row["principal_claim"],
        role_claim=row["role_claim"],
        role_map={str(k): [str(v) for v in vs] for k, vs in raw.items()},
        allow_create=bool(row["allow_create"]),
    )


# -- tenant identity providers ------------------------------------------------------------


class IdpRepository(Repo):
    def tenant_using_issuer(self, issuer: str) -> str | None:
        row = self.conn.execute(
            "SELECT tenant_id FROM tenant_idps WHERE issuer = %s", (issuer,)
        ).fetchone()
        return str(row["tenant_id"]) if row else None

    def upsert_tenant_idp(self, idp: TenantIdp, now: datetime) -> None:
        self.conn.execute(
            "INSERT INTO tenant_idps (tenant_id, issuer, jwks_url, audience, principal_claim,"
            " role_claim, role_map, allow_create, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s)"
            " ON CONFLICT (tenant_id) DO UPDATE SET issuer = EXCLUDED.issuer,"
            " jwks_url = EXCLUDED.jwks_url, audience = EXCLUDED.audience,"
            " principal_claim = EXCLUDED.principal_claim, role_claim = EXCLUDED.role_claim,"
            " role_map = EXCLUDED.role_map, allow_create = EXCLUDED.allow_create,"
            " updated_at = EXCLUDED.updated_at",
            (
                idp.tenant_id,
                idp.issuer,
                idp.jwks_url,
                idp.audience,
                idp.principal_claim,
                idp.role_claim,
                json.dumps(idp.role_map),
                idp.allow_create,
                now,
                now,
            ),
        )

    def tenant_idp(self, tenant_id: str) -> TenantIdp | None:
        row = self.conn.execute(
            f"SELECT {IDP_COLUMNS} FROM tenant_idps WHERE tenant_id = %s", (tenant_id,)
        ).fetchone()
        return _idp(row) if row else None

    def tenant_idp_by_issuer(self, issuer: str) -> TenantIdp | None:
        row = self.conn.execute(
            f"SELECT {IDP_COLUMNS} FROM tenant_idps WHERE issuer = %s", (issuer,)
        ).fetchone()
        return _idp(row) if row else None

    def delete_tenant_idp(self, tenant_id: str) -> bool:
        cur = self.conn.execute("DELETE FROM tenant_idps WHERE tenant_id = %s", (tenant_id,))
        return cur.rowcount == 1

    # -- subjects -> principals -----------------------------------------------------------------

    def principal_by_subject(self, tenant_id: str, subject: str) -> Principal | None:
        row = self.conn.execute(
            f"SELECT {PRINCIPAL_COLUMNS} FROM principal_identities i"
            " JOIN principals p ON p.id = i.principal_id"
            " WHERE i.tenant_id = %s AND i.subject = %s",
            (tenant_id, subject),
        ).fetchone()
        return _principal(row) if row else None

    def insert_identity(
        self, tenant_id: str, subject: str, principal_id: str, now: datetime
    ) -> bool:
        """Map a subject to a principal; False if the subject is already mapped."""
        row = self.conn.execute(
            "INSERT INTO principal_identities (tenant_id, subject, principal_id, created_at)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (tenant_id, subject) DO NOTHING"
            " RETURNING subject",
            (tenant_id, subject, principal_id, now),
        ).fetchone()
        return row is not None

    def subjects_of(self, principal_id: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT subject FROM principal_identities WHERE principal_id = %s ORDER BY subject",
            (principal_id,),
        ).fetchall()
        return [r["subject"] for r in rows]

    # -- SMART Backend Services clients -----------------------------------------------------------

    def upsert_oauth_client(
        self,
        client_id: str,
        principal_id: str,
        jwks: dict[str, Any] | None,
        jwks_url: str | None,
        now: datetime,
    ) -> None:
        """Register (or re-register) the principal's client. The caller checks first that the
        client id is not another principal's (`oauth_client_owner`)."""
        self.conn.execute(
            "INSERT INTO oauth_clients (client_id, principal_id, jwks, jwks_url, created_at,"
            " updated_at) VALUES (%s, %s, %s::jsonb, %s, %s, %s)"
            " ON CONFLICT (principal_id) DO UPDATE SET client_id = EXCLUDED.client_id,"
            " jwks = EXCLUDED.jwks, jwks_url = EXCLUDED.jwks_url, updated_at = EXCLUDED.updated_at",
            (
                client_id,
                principal_id,
                json.dumps(jwks) if jwks is not None else None,
                jwks_url,
                now,
                now,
            ),
        )

    def oauth_client_owner(self, client_id: str) -> str | None:
        row = self.conn.execute(
            "SELECT principal_id FROM oauth_clients WHERE client_id = %s", (client_id,)
        ).fetchone()
        return str(row["principal_id"]) if row else None

    def oauth_client(self, client_id: str) -> OAuthClient | None:
        row = self.conn.execute(
            f"SELECT c.client_id, c.jwks, c.jwks_url, {PRINCIPAL_COLUMNS} FROM oauth_clients c"
            " JOIN principals p ON p.id = c.principal_id WHERE c.client_id = %s",
            (client_id,),
        ).fetchone()
        if row is None:
            return None
        return OAuthClient(
            client_id=row["client_id"],
            principal=_principal(row),
            jwks=row["jwks"],
            jwks_url=row["jwks_url"],
        )

    def claim_assertion_jti(
        self, client_id: str, jti: str, expires_at: datetime, now: datetime
    ) -> bool:
        """Record a client assertion's jti; False if it was already used (a replay). The
        client's expired jtis are forgotten in the same statement."""
        row = self.conn.execute(
            "WITH expired AS (DELETE FROM oauth_assertion_jtis"
            " WHERE client_id = %(c)s AND expires_at < %(now)s)"
            " INSERT INTO oauth_assertion_jtis (client_id, jti, expires_at)"
            " VALUES (%(c)s, %(jti)s, %(exp)s) ON CONFLICT (client_id, jti) DO NOTHING"
            " RETURNING jti",
            {"c": client_id, "jti": jti, "exp": expires_at, "now": now},
        ).fetchone()
        return row is not None
