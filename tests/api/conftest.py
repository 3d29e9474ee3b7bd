"""Fixtures of the contract tests: the spec, its checker, a client that checks every
response, and a `World` to call the API on."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.contract import Checked, Contract, load_spec
from tests.api.contract_world import World, build_world
from tests.helpers import Api, StackHelper


@pytest.fixture
def spec() -> dict[str, Any]:
    return load_spec()


@pytest.fixture
def contract(spec: dict[str, Any]) -> Contract:
    return Contract(spec)


@pytest.fixture
def checked(api: Api, contract: Contract) -> Checked:
    return Checked(api, contract)


@pytest.fixture
def world(stack: StackHelper) -> World:
    return build_world(stack)
