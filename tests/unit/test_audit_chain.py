"""The verifier's canonical encoding of an audit record (service/audit/chain.py): the
bytes PostgreSQL's sealednotes_audit_canonical writes (compared with the database in
tests/security/test_database_books_audit_records.py). orjson writes them; the json
module with compact separators and ensure_ascii=False is the reference it must match,
code point for code point, both in `canonical` and in the verifier's own path
(ChainVerifier.feed_record recomputing each record's hash)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from service.audit import chain

_reference = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
AT = datetime(2026, 12, 2, 3, 4, 5, 678901, tzinfo=UTC)
AT_TEXT = "2026-12-02T03:04:05.678901+00:00"


def _values(text: str | None) -> list[str | None]:
    return [text if k in ("reason", "request_id") else f"{k}-1" for k in chain.FIELDS]


def _reference_hash(prev: bytes, shard: int, seq: int, values: list[str | None]) -> bytes:
    return hashlib.sha256(
        prev
        + shard.to_bytes(4, "big", signed=True)
        + seq.to_bytes(8, "big", signed=True)
        + _reference([AT_TEXT, *values]).encode("utf-8")
    ).digest()


def _verified(texts: list[str | None]) -> chain.ChainVerifier:
    """A chain of one record per text, hashed with the reference encoding, fed to the
    verifier (which finds a problem wherever its encoding differs)."""
    verifier, prev = chain.ChainVerifier(), chain.GENESIS
    for seq, text in enumerate(texts, start=1):
        values = _values(text)
        digest = _reference_hash(prev, 0, seq, values)
        verifier.feed_record(seq, 0, seq, prev, digest, AT_TEXT, values)
        assert chain.canonical(AT, dict(zip(chain.FIELDS, values, strict=True))) == (
            _reference([AT_TEXT, *values]).encode("utf-8")
        ), repr(text)[:40]
        prev = digest
    return verifier


def test_every_code_point_is_encoded_as_the_reference_encodes_it() -> None:
    points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    texts: list[str | None] = [
        "".join(map(chr, points[i : i + 8192])) for i in range(0, len(points), 8192)
    ]
    verifier = _verified(texts)
    assert verifier.checked == len(texts) and verifier.problems == []


def test_escapes_and_nulls_are_the_reference_s() -> None:
    texts = ['"', "\\", "\n\r\t\b\f\v", "\x00\x01\x1f\x7f", "é中😀", "\u2028\u2029", "", None]
    verifier = _verified(texts)
    assert verifier.checked == len(texts) and verifier.problems == []
    assert chain.canonical(AT, {}) == (
        b'["2026-12-02T03:04:05.678901+00:00",null,null,null,null,null,null,null,null,null,null]'
    )


def test_the_verifier_recomputes_the_chain_formula() -> None:
    values = _values('a "quoted" reason\n')
    expected = _reference_hash(chain.GENESIS, 3, 1, values)
    assert chain.link(chain.GENESIS, 3, 1, AT, dict(zip(chain.FIELDS, values, strict=True))) == (
        expected
    )
    verifier = chain.ChainVerifier()
    verifier.feed_record(7, 3, 1, chain.GENESIS, expected, AT_TEXT, values)
    assert verifier.problems == [] and verifier.checked == 1
    verifier.feed_record(8, 3, 2, expected, expected, AT_TEXT, values)
    assert [p.kind for p in verifier.problems] == ["hash-mismatch"]
