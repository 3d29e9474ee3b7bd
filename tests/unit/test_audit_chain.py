"""The verifier's canonical encoding of an audit record (service/audit/chain.py): the
bytes PostgreSQL's sealednotes_audit_canonical writes (compared with the database in
tests/security/test_database_books_audit_records.py). orjson writes them; the json
module with compact separators and ensure_ascii=False is the reference it must match,
code point for code point."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from service.audit import chain

_reference = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
AT = datetime(2026, 12, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _fields(text: str | None) -> dict[str, str | None]:
    return {k: text if k in ("reason", "request_id") else f"{k}-1" for k in chain.FIELDS}


def test_every_code_point_is_encoded_as_the_reference_encodes_it() -> None:
    points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for i in range(0, len(points), 8192):
        text = "".join(map(chr, points[i : i + 8192]))
        fields = _fields(text)
        values = [chain._iso(AT)] + [fields[k] for k in chain.FIELDS]
        assert chain.canonical(AT, fields) == _reference(values).encode("utf-8"), hex(points[i])


def test_escapes_and_nulls_are_the_reference_s() -> None:
    for text in ['"', "\\", "\n\r\t\b\f", "\x00\x01\x1f\x7f", "é中😀", "\u2028\u2029", "", None]:
        fields = _fields(text)
        expected = _reference([chain._iso(AT)] + [fields[k] for k in chain.FIELDS])
        assert chain.canonical(AT, fields) == expected.encode("utf-8"), repr(text)
    assert chain.canonical(AT, {}) == (
        b'["2026-12-02T03:04:05.678901+00:00",null,null,null,null,null,null,null,null,null,null]'
    )


def test_the_verifier_recomputes_the_chain_formula() -> None:
    fields = _fields('a "quoted" reason\n')
    expected = hashlib.sha256(
        chain.GENESIS
        + (3).to_bytes(4, "big", signed=True)
        + (1).to_bytes(8, "big", signed=True)
        + _reference([chain._iso(AT)] + [fields[k] for k in chain.FIELDS]).encode("utf-8")
    ).digest()
    assert chain.link(chain.GENESIS, 3, 1, AT, fields) == expected
    verifier = chain.ChainVerifier()
    verifier.feed_record(
        7, 3, 1, chain.GENESIS, expected, chain._iso(AT), [fields[k] for k in chain.FIELDS]
    )
    assert verifier.problems == [] and verifier.checked == 1
    verifier.feed_record(
        8, 3, 2, expected, expected, chain._iso(AT), [fields[k] for k in chain.FIELDS]
    )
    assert [p.kind for p in verifier.problems] == ["hash-mismatch"]
