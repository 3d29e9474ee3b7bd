"""Fixtures shared by integration test modules: `fhir` for the FHIR facade tests."""

from __future__ import annotations

import pytest

from tests.helpers import Api
from tests.integration.fhir_facade import Fhir


@pytest.fixture
def fhir(api: Api) -> Fhir:
    return Fhir(api)
