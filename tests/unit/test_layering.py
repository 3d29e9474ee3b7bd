"""Static (ast) check of the dependency rule (docs/architecture.md):

* crypto/ imports only the standard library, nacl and crypto itself;
* only the PostgreSQL adapter (service/adapters/postgres/) speaks to PostgreSQL
  (psycopg, psycopg_pool); service/devtools/stack.py is a dev/test tool that creates
  databases, so it is allowed too;
* only the Vault adapter (service/adapters/vault/) imports hvac.

Imports anywhere in a module count (top level, inside functions, under TYPE_CHECKING),
as do `importlib.import_module("x")` and `__import__("x")` with a literal name.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("crypto", "service")
CRYPTO_ALLOWED = set(sys.stdlib_module_names) | {"nacl", "crypto"}
DB_MODULES = {"psycopg", "psycopg_pool"}
DB_ALLOWED_PREFIXES = ("service/adapters/postgres/", "service/devtools/")
HVAC_PREFIX = "service/adapters/vault/"


def imported_top_levels(source: str, package: str) -> set[str]:
    """Top-level module names imported by `source`, a module inside `package`.

    Relative imports resolve to `package` itself.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level > 0:
                names.add(package)
            elif node.module:
                names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            func = node.func
            called = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else None
            )
            if (
                called in {"import_module", "__import__"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names.add(node.args[0].value.lstrip(".").split(".")[0] or package)
    return names


def _modules() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            out[rel] = imported_top_levels(path.read_text(encoding="utf-8"), package)
    return out


MODULES = _modules()


def _importers(targets: set[str]) -> set[str]:
    return {rel for rel, names in MODULES.items() if names & targets}


# -- the scanner itself ---------------------------------------------------------------------


def test_scanner_sees_every_import_form() -> None:
    source = """
import os, hvac.exceptions
from psycopg import sql
from . import errors
from .aad import note_aad
import importlib

def late():
    import flask
    importlib.import_module("requests.adapters")
    __import__("psycopg_pool")

if False:
    from service.app import create_app
"""
    assert imported_top_levels(source, "crypto") == {
        "os",
        "hvac",
        "psycopg",
        "crypto",
        "importlib",
        "flask",
        "requests",
        "psycopg_pool",
        "service",
    }


def test_scanner_finds_the_packages_and_their_known_imports() -> None:
    assert "crypto/aead.py" in MODULES
    assert "service/adapters/vault/client.py" in MODULES
    assert "nacl" in MODULES["crypto/aead.py"]
    assert "hvac" in MODULES["service/adapters/vault/client.py"]
    assert "psycopg" in MODULES["service/adapters/postgres/store.py"]


# -- the rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("crypto/")))
def test_crypto_imports_only_stdlib_nacl_and_itself(module: str) -> None:
    foreign = MODULES[module] - CRYPTO_ALLOWED
    assert not foreign, f"{module} imports {sorted(foreign)}"


def test_crypto_never_imports_service_flask_hvac_or_psycopg() -> None:
    forbidden = {"service", "flask", "hvac", "psycopg", "psycopg_pool", "requests"}
    offenders = {m: MODULES[m] & forbidden for m in MODULES if m.startswith("crypto/")}
    assert {m: names for m, names in offenders.items() if names} == {}


def test_only_the_store_imports_psycopg() -> None:
    offenders = {m for m in _importers(DB_MODULES) if not m.startswith(DB_ALLOWED_PREFIXES)}
    assert not offenders, f"SQL driver imported outside the store: {sorted(offenders)}"


def test_only_the_vault_adapter_imports_hvac() -> None:
    offenders = {m for m in _importers({"hvac"}) if not m.startswith(HVAC_PREFIX)}
    assert not offenders, f"hvac imported outside the vault adapter: {sorted(offenders)}"
