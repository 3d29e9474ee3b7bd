"""The warm re-read: a clinician reading again, within the hour, a note of a patient on
its care team that was already released to it. Such a read spends no budget and its
key is usually cached, so the database records its grant in the same statement that
reads the gate's snapshot (the adapter's WARM_REREAD condition, for a remembered caller
it confirms: service/access/remembered.py). The gate then decides on that snapshot as
for any read; `is_warm_reread` is its side of the agreement, and a recorded grant the
gate would not make fails closed (GateDisagreement)."""

from __future__ import annotations

from service.models import GateSnapshot


def is_warm_reread(snap: GateSnapshot | None) -> bool:
    """The gate's conditions for granting a read on this snapshot, via the care team,
    without charging anything: found, not suspended, the patient present, on the care
    team, not a decoy, not shredded, already released to this account this hour."""
    return (
        snap is not None
        and snap.principal_found
        and not snap.suspended
        and snap.patient is not None
        and snap.on_care_team
        and not snap.patient.is_decoy
        and snap.patient.shredded_at is None
        and snap.usage.patient_in_hour
    )
