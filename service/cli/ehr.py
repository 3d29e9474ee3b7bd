"""CLI for EHR integration: a tenant's identity provider, subject links, SMART clients.

    sealednotes tenants idp set TENANT --issuer URL --jwks-url URL --audience AUD
        [--principal-claim sub] [--role-claim CLAIM --role-map ROLE=VALUE[,VALUE] ...]
        [--allow-create] [--json]
    sealednotes tenants idp show TENANT [--json]
    sealednotes tenants idp remove TENANT [--json]
    sealednotes principals link-subject ID --subject SUB [--json]
    sealednotes principals smart-client ID (--jwks-file FILE | --jwks-url URL)
        [--client-id ID] [--json]

Registered onto the `tenants` and `principals` groups of service/cli/ by `register`.
"""

from __future__ import annotations

import json
from typing import Any

import click


def _cli() -> Any:
    from service.cli import base

    return base


def _idp_json(idp: Any) -> dict[str, Any]:
    return dict(idp.as_dict())


def register(tenants: click.Group, principals: click.Group) -> None:
    @tenants.group("idp")
    def idp() -> None:
        """The identity provider whose JWT access tokens the tenant accepts."""

    @idp.command("set")
    @click.argument("tenant_name")
    @click.option("--issuer", required=True, help="The tokens' `iss`, exactly.")
    @click.option("--jwks-url", required=True, help="Where the issuer publishes its keys.")
    @click.option("--audience", required=True, help="The `aud` tokens must carry.")
    @click.option("--principal-claim", default="sub", show_default=True)
    @click.option("--role-claim", default=None, help="Claim with the user's roles.")
    @click.option(
        "--role-map",
        multiple=True,
        metavar="ROLE=VALUE[,VALUE]",
        help="Role of this service -> role-claim values (repeatable).",
    )
    @click.option(
        "--allow-create/--no-allow-create",
        default=False,
        show_default=True,
        help="Create a principal (with the mapped role) the first time a subject appears.",
    )
    @click.option("--json", "as_json", is_flag=True)
    def idp_set(
        tenant_name: str,
        issuer: str,
        jwks_url: str,
        audience: str,
        principal_claim: str,
        role_claim: str | None,
        role_map: tuple[str, ...],
        allow_create: bool,
        as_json: bool,
    ) -> None:
        """Trust an issuer's JWTs for TENANT (replaces the previous setting)."""
        from service.access.idp import parse_role_map

        cli = _cli()
        with cli._errors():
            result = cli._services().idp.set_idp(
                tenant_name,
                issuer=issuer,
                jwks_url=jwks_url,
                audience=audience,
                principal_claim=principal_claim,
                role_claim=role_claim,
                role_map=parse_role_map(role_map),
                allow_create=allow_create,
            )
        cli._emit(as_json, _idp_json(result), f"tenant {tenant_name} trusts {issuer}")

    @idp.command("show")
    @click.argument("tenant_name")
    @click.option("--json", "as_json", is_flag=True)
    def idp_show(tenant_name: str, as_json: bool) -> None:
        """Show the tenant's identity provider."""
        cli = _cli()
        with cli._errors():
            result = cli._services().idp.show_idp(tenant_name)
        body = {"tenant": tenant_name, "idp": _idp_json(result) if result else None}
        text = (
            json.dumps(body["idp"], indent=2)
            if result
            else f"tenant {tenant_name} has no identity provider"
        )
        cli._emit(as_json, body, text)

    @idp.command("remove")
    @click.argument("tenant_name")
    @click.option("--json", "as_json", is_flag=True)
    def idp_remove(tenant_name: str, as_json: bool) -> None:
        """Stop accepting the issuer's tokens (links to principals are kept)."""
        cli = _cli()
        with cli._errors():
            removed = cli._services().idp.remove_idp(tenant_name)
        cli._emit(
            as_json,
            {"tenant": tenant_name, "removed": removed},
            f"tenant {tenant_name}: identity provider {'removed' if removed else 'was not set'}",
        )

    @principals.command("link-subject")
    @click.argument("principal_id")
    @click.option("--subject", required=True, help="The principal claim's value at the issuer.")
    @click.option("--json", "as_json", is_flag=True)
    def link_subject(principal_id: str, subject: str, as_json: bool) -> None:
        """Let a principal sign in with the tenant's identity provider (same budget)."""
        cli = _cli()
        with cli._errors():
            cli._services().idp.link_subject(principal_id, subject)
        cli._emit(
            as_json,
            {"id": principal_id, "linked": True},
            f"principal {principal_id} linked to its identity-provider subject",
        )

    @principals.command("smart-client")
    @click.argument("principal_id")
    @click.option(
        "--jwks-file",
        type=click.File("r"),
        default=None,
        help="The client's public JWKS (JSON file, `-` for stdin).",
    )
    @click.option("--jwks-url", default=None, help="Where the client publishes its public keys.")
    @click.option("--client-id", default=None, help="Default: the principal id.")
    @click.option("--json", "as_json", is_flag=True)
    def smart_client(
        principal_id: str,
        jwks_file: Any,
        jwks_url: str | None,
        client_id: str | None,
        as_json: bool,
    ) -> None:
        """Register an integration's SMART Backend Services client (POST /oauth2/token)."""
        cli = _cli()
        jwks = None
        if jwks_file is not None:
            try:
                jwks = json.load(jwks_file)
            except ValueError as e:
                raise click.ClickException("--jwks-file is not JSON") from e
        with cli._errors():
            registered = cli._services().smart.register_client(
                principal_id, client_id=client_id, jwks=jwks, jwks_url=jwks_url
            )
        cli._emit(
            as_json,
            {"id": principal_id, "client_id": registered},
            f"client_id {registered} registered for principal {principal_id}",
        )
