"""Per-worker cache of unwrapped patient data keys.

Bounded in size and age (TTL <= 60 s), keyed by tenant, patient, key version
and a digest of the wrapped key, so a rewrap or a new key never serves a stale
entry. The cache sits *behind* the key-release gate: a hit saves the Vault
round trip, never the budget check or the audit record.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

CacheKey = tuple[str, str, int, bytes]


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
                del self._entries[key]
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
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
