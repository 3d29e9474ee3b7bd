"""Aiming generated requests at real data, deterministically: a generated UUID is kept or
swapped for a real id by a hash of its value, and values the generator meant to be invalid are
left alone. Used by harness.py and fhir_fuzz.py."""

from __future__ import annotations

import uuid
import zlib
from typing import Any

from schemathesis import Case
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.meta import CoveragePhaseData

AnyCase = Case[Any]

# A generated UUID falls in one of SLOTS slots (crc32 of the parameter's name and value, so a value
# always lands in the same slot): the first GENERATED_SLOTS keep it (an unknown id, 404), the
# others pick a real id from the pool of that parameter.
SLOTS = 8
GENERATED_SLOTS = 2


def pick(name: str, value: object, choices: list[str]) -> str | None:
    """A real id for a generated UUID most of the time (deterministic in the value), else None."""
    if not isinstance(value, str):
        return None
    try:
        uuid.UUID(value)
    except ValueError:
        return None
    slot = zlib.crc32(f"{name}={value}".encode()) % SLOTS
    if slot < GENERATED_SLOTS:
        return None
    return choices[(slot - GENERATED_SLOTS) % len(choices)]


def is_negative_at(case: AnyCase, location: ParameterLocation) -> bool:
    """Whether the generator meant the values at `location` to be invalid.

    A coverage-phase case negates one parameter and says which; its other values are meant to be
    valid (even where the generator failed to make them so, like If-Match below).
    """
    meta = case.meta
    if meta is None:
        return False
    if isinstance(meta.phase.data, CoveragePhaseData):
        return meta.phase.data.parameter_location == location
    return meta.is_negative_at(location)
