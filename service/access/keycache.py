"""Per-worker cache of unwrapped patient data keys.

Bounded in size and age (TTL <= 60 s), keyed by tenant, patient, key version
and a digest of the wrapped key, so a rewrap or a new key never serves a stale
entry. The cache sits *behind* the key-release gate: a hit saves the Vault
round trip, never the budget check or the audit record.

It also remembers which patient each note read through this worker belongs to (a
note never changes patient), so that a remembered caller's read can tell, before its
one statement, whether this worker holds the key it will need (`lacks_note_key`): a
read that will call Vault leaves its grant to be recorded with `key.unwrap`, in one
commit. Only a hint: a wrong answer costs a round trip, never a check or a record.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

CacheKey = tuple[str, str, int, bytes]
NOTES_PER_KEY = 4  # notes remembered per key entry the cache may hold


def cache_key(tenant_id: str, patient_id: str, key_version: int, wrapped: str) -> CacheKey:
    return (tenant_id, patient_id, key_version, hashlib.sha256(wrapped.encode()).digest())


class KeyCache:
    def __init__(
        self,
        *,
        ttl_seconds: float = 60.0,
        max_entries: int = 4096,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(ttl_seconds) and 0 <= ttl_seconds <= 60):
            raise ValueError("key cache TTL must be between 0 and 60 seconds")
        self._ttl = ttl_seconds
        self._max = max_entries
        self._now = monotonic
        self._entries: OrderedDict[CacheKey, tuple[float, bytes]] = OrderedDict()
        # (tenant, patient) -> the entry last stored for that patient.
        self._latest: dict[tuple[str, str], CacheKey] = {}
        # (tenant, note) -> its patient, most recently read last.
        self._notes: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._max_notes = max(max_entries, 1) * NOTES_PER_KEY
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"KeyCache(entries={len(self._entries)}, ttl={self._ttl})"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> bytes | None:
        with self._lock:
            item = self._entries.get(key)
            if item is None:
                self.misses += 1
                return None
            stored_at, value = item
            if self._now() - stored_at >= self._ttl:
                self._drop(key)
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: CacheKey, value: bytes) -> None:
        if self._max <= 0:
            return
        with self._lock:
            self._entries[key] = (self._now(), value)
            self._entries.move_to_end(key)
            self._latest[key[:2]] = key
            while len(self._entries) > self._max:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: CacheKey) -> None:
        """Under the lock: forget an entry (and that its patient's key is held)."""
        del self._entries[key]
        if self._latest.get(key[:2]) == key:
            del self._latest[key[:2]]

    def remember_note(self, tenant_id: str, note_id: str, patient_id: str) -> None:
        """`note_id` (of `tenant_id`) belongs to `patient_id`: a note read through the gate."""
        with self._lock:
            self._notes[(tenant_id, note_id)] = patient_id
            self._notes.move_to_end((tenant_id, note_id))
            while len(self._notes) > self._max_notes:
                self._notes.popitem(last=False)

    def lacks_note_key(self, tenant_id: str, note_id: str) -> bool:
        """True when this worker knows the note's patient and holds no live key of it (a
        read of it will call Vault); False when it holds one, or does not know the note."""
        with self._lock:
            patient_id = self._notes.get((tenant_id, note_id))
            if patient_id is None:
                return False
            key = self._latest.get((tenant_id, patient_id))
            if key is None:
                return True
            stored_at, _ = self._entries[key]
            if self._now() - stored_at >= self._ttl:
                self._drop(key)
                return True
            return False

    def clear(self) -> None:
        """Forget every key, and every note's patient."""
        with self._lock:
            self._entries.clear()
            self._latest.clear()
            self._notes.clear()
