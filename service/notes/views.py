"""What the notes use cases return: a note with its content (or none), a page of
them, a decrypted version."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from service.access.budget import BudgetStatus
from service.models import NoteRow, NoteVersionRow
from service.notes.sealing import NoteContent


@dataclass(frozen=True, slots=True)
class DecryptedVersion:
    row: NoteVersionRow
    content: NoteContent


@dataclass(frozen=True, slots=True)
class NoteView:
    note: NoteRow
    content: NoteContent | None = None


@dataclass(frozen=True, slots=True)
class NotePage:
    notes: list[NoteView]
    next_after: tuple[datetime, str] | None
    budget: BudgetStatus | None
