"""Verifying the access log, incrementally.

A full verification recomputes every chain from its first record and checks every
signed checkpoint. Once a verification finds the log intact up to a checkpoint, it
is recorded, signed with the checkpoints' Vault key (migration 0024). The next one
starts from the newest recorded checkpoint whose signatures hold: it checks that
each head record that checkpoint signed is still there with the signed hash, then
reads only the records after those heads. So verifying the last day of a large
log reads the last day, not years.

What an incremental verification cannot see: a record changed *before* the last
verified checkpoint after that verification ran (its chain up to the head still
verified then, and only the head itself is re-checked). `sealednotes audit verify
--full` reads everything; run it on a schedule as well (docs/operations.md, 9).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

from service.audit import chain as auditchain
from service.errors import VerificationBacklog
from service.ports import UnitOfWork


class Signer(Protocol):
    def sign(self, message: bytes) -> str: ...

    def verify(self, message: bytes, signature: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    checked: int
    checkpoints: int
    last_checkpoint: dict[str, Any] | None
    first_bad: dict[str, Any] | None
    problems: list[dict[str, Any]]
    seconds: float
    mode: str = "full"  # full | incremental
    from_checkpoint: int | None = None  # incremental: the verified checkpoint it started at

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "checkpoints": self.checkpoints,
            "last_checkpoint": self.last_checkpoint,
            "first_bad": self.first_bad,
            "problems": self.problems,
            "records_per_second": round(self.checked / self.seconds) if self.seconds else None,
            "mode": self.mode,
            "from_checkpoint": self.from_checkpoint,
        }


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    id: int
    heads: dict[int, tuple[int, bytes]]
    signature_ok: bool
    payload: str
    row: dict[str, Any]


def verify_log(
    tx: UnitOfWork,
    signer: Signer,
    *,
    full: bool,
    max_records: int | None = None,
    full_up_to: int | None = None,
) -> tuple[VerifyReport, dict[str, Any] | None]:
    """Verify (from the last verified checkpoint unless `full`); return the report and
    the newest checkpoint. `full_up_to`: still read everything while the whole log
    holds at most that many records (the strongest check, when it is cheap). With
    `max_records`, refuse (VerificationBacklog) rather than read more than that."""
    started = time.perf_counter()
    checkpoints = [_parse(cp, signer) for cp in tx.audit.checkpoints()]
    if not full and full_up_to is not None and _backlog(tx, None) <= full_up_to:
        full = True
    start = None if full else _last_verified(tx, signer, checkpoints)
    if max_records is not None:
        backlog = _backlog(tx, start)
        if backlog > max_records:
            raise VerificationBacklog(
                f"{backlog} records since the last verified checkpoint; the service verifies "
                "them after its next checkpoint. Retry later, or ask an operator to run "
                "`sealednotes audit verify`.",
                retry_after=60,
            )
    later = [cp for cp in checkpoints if start is None or cp.id > start.id]
    verifier = auditchain.ChainVerifier(
        (shard, seq) for cp in later for shard, (seq, _h) in cp.heads.items()
    )
    after: dict[int, int] | None = None
    if start is not None:
        after = {shard: seq for shard, (seq, _h) in start.heads.items()}
        found = tx.audit.records_at(list(after.items()))
        for shard, (seq, head_hash) in sorted(start.heads.items()):
            stored = found.get((shard, seq))
            if stored is None or stored[0] != head_hash:
                verifier.problems.append(
                    auditchain.Problem(
                        "checkpoint-mismatch",
                        f"shard {shard} at record {seq} differs from verified checkpoint "
                        f"{start.id}: records up to it were deleted or rewritten",
                        None,
                        shard,
                        seq,
                    )
                )
        verifier.start_from(start.heads, {shard: found[(shard, seq)][1] for (shard, seq) in found})
    feed = verifier.feed_record
    for r in tx.audit.iter_chain_records(after):
        feed(r[0], r[1], r[2], r[3], r[4], r[5], r[6:])
    for cp in later:
        verifier.check_checkpoint(cp.id, cp.heads, cp.signature_ok)
    first = verifier.first_bad()
    last = checkpoints[-1] if checkpoints else None
    report = VerifyReport(
        ok=not verifier.problems,
        checked=verifier.checked,
        checkpoints=len(checkpoints),
        last_checkpoint=(
            {
                "id": last.id,
                "created_at": last.row["created_at"].isoformat(),
                "total": last.row["total"],
            }
            if last
            else None
        ),
        first_bad=first.as_dict() if first else None,
        problems=[p.as_dict() for p in verifier.problems[:100]],
        seconds=time.perf_counter() - started,
        mode="full" if start is None else "incremental",
        from_checkpoint=start.id if start else None,
    )
    return report, (last.row if last else None)


def _parse(cp: dict[str, Any], signer: Signer) -> _Checkpoint:
    try:
        heads = auditchain.parse_payload(cp["payload"])
        ok = signer.verify(cp["payload"].encode(), cp["signature"])
    except (ValueError, KeyError, TypeError):
        heads, ok = {}, False
    return _Checkpoint(int(cp["id"]), heads, ok, cp["payload"], cp)


def _last_verified(
    tx: UnitOfWork, signer: Signer, checkpoints: list[_Checkpoint]
) -> _Checkpoint | None:
    """The newest checkpoint a signed verification record vouches for, provided its
    own signature holds and its payload is the one that was verified."""
    by_id = {cp.id: cp for cp in checkpoints}
    for v in tx.audit.verifications():
        try:
            if not signer.verify(v["payload"].encode(), v["signature"]):
                continue
            checkpoint_id, digest = auditchain.parse_verification(v["payload"])
        except (ValueError, KeyError, TypeError):
            continue
        cp = by_id.get(checkpoint_id)
        if (
            cp is not None
            and cp.signature_ok
            and hashlib.sha256(cp.payload.encode()).hexdigest() == digest
        ):
            return cp
    return None


def _backlog(tx: UnitOfWork, start: _Checkpoint | None) -> int:
    heads = tx.audit.audit_heads()
    done = {shard: seq for shard, (seq, _h) in (start.heads.items() if start else [])}
    return sum(max(0, seq - done.get(shard, 0)) for shard, (seq, _h) in heads.items())
