"""Tamper evidence for the access log: pure functions, no I/O.

Records are appended to one of `SHARDS` hash chains (a transaction takes the
first shard nobody else holds, so concurrent writers rarely wait for each other). Within
a shard, records are numbered 1, 2, 3... with no gaps (the writer holds the
shard's lock until its transaction commits) and each record's hash covers the
previous record's hash and every field of the record:

    hash_n = SHA-256(hash_{n-1} || int32_be(shard) || int64_be(n) || canonical(at, fields...))

(the database computes this server-side in `sealednotes_audit_append`, with the
time taken from its own clock and never earlier than the shard's last record;
the verifier recomputes it here).

Checkpoints sign the head (seq, hash) of every shard with a Vault Transit
ed25519 key. `ChainVerifier` recomputes every chain and checks it against
every checkpoint, so any change, deletion, insertion or reordering before the
last checkpoint, and any truncation of the tail, is reported with the record
where it shows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

SHARDS = 16
GENESIS = b"\x00" * 32
CHECKPOINT_VERSION = 1

FIELDS = (
    "tenant_id",
    "principal_id",
    "role",
    "patient_id",
    "note_id",
    "action",
    "outcome",
    "reason",
    "request_id",
    "client_addr",
)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


# The canonical encoding: a compact JSON array of text and nulls, UTF-8, non-ASCII
# unescaped, control characters escaped as PostgreSQL's array_to_json escapes them
# (sealednotes_audit_canonical, migration 0031). orjson writes exactly the bytes the
# json module's `separators=(",", ":"), ensure_ascii=False` writes for every code point
# (tests/unit/test_audit_chain.py), about ten times faster: `audit verify` encodes every
# record it reads.
def encode(at: str, values: Sequence[str | None]) -> bytes:
    """The canonical bytes of a record: its time as `_iso` writes it, then its FIELDS
    as text or None (the one encoding the verifier and `canonical` use)."""
    return orjson.dumps([at, *values])


def record_hash(
    prev_hash: bytes, shard: int, seq: int, at: str, values: Sequence[str | None]
) -> bytes:
    """The chain's formula (module docstring), on a record as the verifier reads it."""
    return hashlib.sha256(
        prev_hash
        + shard.to_bytes(4, "big", signed=True)
        + seq.to_bytes(8, "big", signed=True)
        + encode(at, values)
    ).digest()


def _values(fields: dict[str, Any]) -> list[str | None]:
    return [None if fields.get(k) is None else str(fields[k]) for k in FIELDS]


def canonical(at: datetime, fields: dict[str, Any]) -> bytes:
    return encode(_iso(at), _values(fields))


def link(prev_hash: bytes, shard: int, seq: int, at: datetime, fields: dict[str, Any]) -> bytes:
    return record_hash(prev_hash, shard, seq, _iso(at), _values(fields))


def checkpoint_payload(
    created_at: datetime, heads: dict[int, tuple[int, bytes]], previous: str | None
) -> str:
    """The exact text a checkpoint signs."""
    body = {
        "v": CHECKPOINT_VERSION,
        "created_at": _iso(created_at),
        "heads": {str(s): [seq, h.hex()] for s, (seq, h) in sorted(heads.items())},
        "total": sum(seq for seq, _ in heads.values()),
        "previous": hashlib.sha256(previous.encode()).hexdigest() if previous else None,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def verification_payload(
    checkpoint_id: int, checkpoint_payload_text: str, checked: int, verified_at: datetime
) -> str:
    """The exact text a verification record signs: this checkpoint's chains were
    found intact. Distinct from a checkpoint's payload (`kind`), so neither
    signature can pass for the other."""
    body = {
        "v": CHECKPOINT_VERSION,
        "kind": "verification",
        "checkpoint": checkpoint_id,
        "checkpoint_sha256": hashlib.sha256(checkpoint_payload_text.encode()).hexdigest(),
        "checked": checked,
        "verified_at": _iso(verified_at),
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def parse_verification(payload: str) -> tuple[int, str]:
    """(checkpoint id, sha256 of its payload) of a verification record."""
    body = json.loads(payload)
    if body.get("v") != CHECKPOINT_VERSION or body.get("kind") != "verification":
        raise ValueError("not a verification record")
    return int(body["checkpoint"]), str(body["checkpoint_sha256"])


def parse_payload(payload: str) -> dict[int, tuple[int, bytes]]:
    body = json.loads(payload)
    if body.get("v") != CHECKPOINT_VERSION:
        raise ValueError("unknown checkpoint version")
    return {int(s): (int(v[0]), bytes.fromhex(v[1])) for s, v in body["heads"].items()}


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # hash-mismatch | broken-link | missing-records | out-of-order |
    # truncated | checkpoint-mismatch | bad-checkpoint-signature | unknown-shard |
    # time-regression
    detail: str
    record_id: int | None = None
    shard: int | None = None
    seq: int | None = None
    at: str | None = None  # as in the canonical encoding (ISO 8601, UTC)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "detail": self.detail,
            "record_id": self.record_id,
            "shard": self.shard,
            "seq": self.seq,
            "at": self.at,
        }


@dataclass
class _ShardState:
    expected_seq: int = 1
    prev_hash: bytes = GENESIS
    last_id: int | None = None
    last_at: str | None = None
    # recomputed hashes at the seqs that some checkpoint names
    at_checkpoints: dict[int, bytes] = field(default_factory=dict)


class ChainVerifier:
    """Feed records in (shard, seq) order, then checkpoints; read `problems`."""

    def __init__(self, checkpoint_seqs: Iterable[tuple[int, int]] = ()) -> None:
        self._shards: dict[int, _ShardState] = {}
        self._wanted: set[tuple[int, int]] = set(checkpoint_seqs)
        self.problems: list[Problem] = []
        self.checked = 0

    def start_from(self, heads: dict[int, tuple[int, bytes]], head_times: dict[int, str]) -> None:
        """Continue from a verified checkpoint: each shard's chain resumes after the
        head it signed (`head_times`: when each head record was written)."""
        for shard, (seq, head_hash) in heads.items():
            st = self._shards.setdefault(shard, _ShardState())
            st.expected_seq = seq + 1
            st.prev_hash = head_hash
            st.last_at = head_times.get(shard)
            st.at_checkpoints[seq] = head_hash

    def feed(self, row: dict[str, Any]) -> None:
        """One record as a mapping of its columns (tests, ad-hoc tools)."""
        self.feed_record(
            int(row["id"]),
            int(row["shard"]),
            int(row["seq"]),
            bytes(row["prev_hash"]),
            bytes(row["hash"]),
            _iso(row["at"]),
            _values(row),
        )

    def feed_record(
        self,
        rid: int,
        shard: int,
        seq: int,
        prev_hash: bytes,
        stored_hash: bytes,
        at: str,
        values: Sequence[str | None],
    ) -> None:
        """One record: `at` as in the canonical encoding (ISO 8601, UTC, microseconds,
        so that text order is time order) and the FIELDS as text or None."""
        st = self._shards.get(shard)
        if st is None:
            st = self._shards[shard] = _ShardState()
        self.checked += 1
        if not 0 <= shard < SHARDS:
            self.problems.append(
                Problem(
                    "unknown-shard",
                    f"shard {shard} is not one the append function writes (0..{SHARDS - 1}): "
                    "this record was inserted by other means",
                    rid,
                    shard,
                    seq,
                    at,
                )
            )
        if st.last_at is not None and at < st.last_at:
            self.problems.append(
                Problem(
                    "time-regression",
                    "this record is dated before the previous record of its shard "
                    "(back-dated or inserted by other means)",
                    rid,
                    shard,
                    seq,
                    at,
                )
            )
        if seq > st.expected_seq:
            self.problems.append(
                Problem(
                    "missing-records",
                    f"records {st.expected_seq}..{seq - 1} of shard {shard} are missing "
                    "(deleted) before this record",
                    rid,
                    shard,
                    seq,
                    at,
                )
            )
        elif seq < st.expected_seq:
            self.problems.append(
                Problem(
                    "out-of-order",
                    f"sequence number {seq} repeats or goes backwards (inserted or reordered)",
                    rid,
                    shard,
                    seq,
                    at,
                )
            )
        elif prev_hash != st.prev_hash:
            self.problems.append(
                Problem(
                    "broken-link",
                    "this record does not follow the previous one: a record was inserted, "
                    "reordered or rewritten here"
                    + (f" (previous record id {st.last_id})" if st.last_id else ""),
                    rid,
                    shard,
                    seq,
                    at,
                )
            )
        if record_hash(prev_hash, shard, seq, at, values) != stored_hash:
            self.problems.append(
                Problem("hash-mismatch", "the record's content was changed", rid, shard, seq, at)
            )
        if (shard, seq) in self._wanted:
            st.at_checkpoints[seq] = stored_hash
        if seq >= st.expected_seq:
            st.expected_seq = seq + 1
        st.prev_hash = stored_hash
        st.last_id = rid
        if st.last_at is None or at > st.last_at:
            st.last_at = at

    def check_checkpoint(
        self, checkpoint_id: int, heads: dict[int, tuple[int, bytes]], signature_ok: bool
    ) -> None:
        if not signature_ok:
            self.problems.append(
                Problem(
                    "bad-checkpoint-signature",
                    f"checkpoint {checkpoint_id} does not carry a valid Vault signature",
                )
            )
            return
        for shard, (seq, head_hash) in sorted(heads.items()):
            st = self._shards.get(shard, _ShardState())
            if st.expected_seq <= seq:
                self.problems.append(
                    Problem(
                        "truncated",
                        f"checkpoint {checkpoint_id} covers shard {shard} up to record {seq}, "
                        f"but the log stops at {st.expected_seq - 1} (tail deleted)",
                        st.last_id,
                        shard,
                        st.expected_seq,
                    )
                )
            elif st.at_checkpoints.get(seq) != head_hash:
                self.problems.append(
                    Problem(
                        "checkpoint-mismatch",
                        f"shard {shard} at record {seq} differs from signed checkpoint "
                        f"{checkpoint_id}: records up to it were rewritten",
                        None,
                        shard,
                        seq,
                    )
                )

    def first_bad(self) -> Problem | None:
        """The earliest problem in log order (record time, then id)."""
        timed = [p for p in self.problems if p.at is not None]
        if timed:
            return min(timed, key=lambda p: (p.at, p.record_id or 0))
        return self.problems[0] if self.problems else None
