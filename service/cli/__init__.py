"""The `sealednotes` command line: one module per command group, all attached to the
`main` group of service/cli/base.py."""

from service.cli import audit, keys, maintenance, serve, setup, tenants
from service.cli.base import main
from service.cli.ehr import register as _register_ehr
from service.cli.setup import vault_bootstrap

_register_ehr(tenants.tenants, tenants.principals)

__all__ = ["audit", "keys", "main", "maintenance", "serve", "setup", "tenants", "vault_bootstrap"]
