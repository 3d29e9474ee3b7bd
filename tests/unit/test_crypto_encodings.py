"""Unit tests for the pure crypto package: the note AAD and key-context encodings are
deterministic, keyword-only and injective (no two splits of the same text encode alike).

No network, no database, no Vault. Hypothesis is not installed in the venv, so
edge cases are enumerated with parametrize and exhaustive loops instead.
"""

from __future__ import annotations

import itertools

import pytest

from crypto import key_context, note_aad
from tests.unit.crypto_helpers import AAD_FIELDS


def test_note_aad_is_deterministic() -> None:
    assert note_aad(**AAD_FIELDS) == note_aad(**AAD_FIELDS)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        # tenant / patient boundary
        (("ab", "c", "n", 1), ("a", "bc", "n", 1)),
        # patient / note boundary
        (("t", "ab", "c", 1), ("t", "a", "bc", 1)),
        # note / version boundary: "n1" + "1" vs "n" + "11"
        (("t", "p", "n1", 1), ("t", "p", "n", 11)),
        # empty fields shifted around
        (("", "ab", "n", 1), ("ab", "", "n", 1)),
        (("t", "", "pn", 1), ("t", "pn", "", 1)),
        # a field that looks like a length prefix
        (("a\x00\x00\x00\x01b", "c", "n", 1), ("a", "b\x00\x00\x00\x01c", "n", 1)),
    ],
)
def test_note_aad_tricky_splits_differ(
    left: tuple[str, str, str, int], right: tuple[str, str, str, int]
) -> None:
    def aad(fields: tuple[str, str, str, int]) -> bytes:
        tenant, patient, note, version = fields
        return note_aad(tenant_id=tenant, patient_id=patient, note_id=note, version=version)

    assert aad(left) != aad(right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("ab", "c"), ("a", "bc")),
        (("", "abc"), ("abc", "")),
        (("a\x00\x00\x00\x01b", "c"), ("a", "b\x00\x00\x00\x01c")),
    ],
)
def test_key_context_tricky_splits_differ(left: tuple[str, str], right: tuple[str, str]) -> None:
    assert key_context(tenant_id=left[0], patient_id=left[1]) != key_context(
        tenant_id=right[0], patient_id=right[1]
    )


def _splits(text: str, parts: int) -> list[tuple[str, ...]]:
    """Every way to cut `text` into `parts` consecutive (possibly empty) pieces."""
    out = []
    for cuts in itertools.combinations_with_replacement(range(len(text) + 1), parts - 1):
        bounds = (0, *cuts, len(text))
        out.append(tuple(text[bounds[i] : bounds[i + 1]] for i in range(parts)))
    return out


SPLIT_SOURCES = ["abc1", "a\x00\x00\x00\x01b", "x:y|z", "\u00e9\u00e91"]


def test_note_aad_is_injective_over_every_split() -> None:
    seen: dict[bytes, tuple[str, str, str, int]] = {}
    for text in SPLIT_SOURCES:
        for tenant, patient, note in _splits(text, 3):
            for version in (1, 2, 11, 12, 112):
                fields = (tenant, patient, note, version)
                encoded = note_aad(
                    tenant_id=tenant, patient_id=patient, note_id=note, version=version
                )
                assert seen.setdefault(encoded, fields) == fields, (fields, seen[encoded])
    assert len(seen) > 100


def test_key_context_is_injective_over_every_split() -> None:
    seen: dict[bytes, tuple[str, str]] = {}
    for text in SPLIT_SOURCES:
        for tenant, patient in _splits(text, 2):
            encoded = key_context(tenant_id=tenant, patient_id=patient)
            assert seen.setdefault(encoded, (tenant, patient)) == (tenant, patient)
    assert len(seen) > 10


@pytest.mark.parametrize("version", [0, -1])
def test_note_aad_rejects_versions_below_one(version: int) -> None:
    with pytest.raises(ValueError):
        note_aad(tenant_id="t", patient_id="p", note_id="n", version=version)


def test_note_aad_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        note_aad("t", "p", "n", 1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        key_context("t", "p")  # type: ignore[call-arg]
