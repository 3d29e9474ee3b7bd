"""Unit tests for the per-worker data-key cache (P10: <= 60 s, bounded, exact keys)."""

from __future__ import annotations

import pytest

from service.access.keycache import NOTES_PER_KEY, KeyCache, cache_key

WRAPPED = "vault:v1:d3JhcHBlZC1rZXktMQ=="
KEY_A = cache_key("tenant-1", "patient-a", 1, WRAPPED)
KEY_B = cache_key("tenant-1", "patient-b", 1, WRAPPED)
KEY_C = cache_key("tenant-1", "patient-c", 1, WRAPPED)
DEK_A = b"A" * 32
DEK_B = b"B" * 32
DEK_C = b"C" * 32


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _cache(clock: FakeClock, *, ttl: float = 60.0, max_entries: int = 16) -> KeyCache:
    return KeyCache(ttl_seconds=ttl, max_entries=max_entries, monotonic=clock)


# -- get / put ----------------------------------------------------------------------------


def test_get_on_empty_cache_is_a_miss() -> None:
    cache = _cache(FakeClock())
    assert cache.get(KEY_A) is None
    assert cache.misses == 1
    assert cache.hits == 0


def test_put_then_get_returns_the_value() -> None:
    cache = _cache(FakeClock())
    cache.put(KEY_A, DEK_A)
    cache.put(KEY_B, DEK_B)
    assert cache.get(KEY_A) == DEK_A
    assert cache.get(KEY_B) == DEK_B
    assert len(cache) == 2
    assert cache.hits == 2
    assert cache.misses == 0


def test_put_overwrites_existing_entry() -> None:
    cache = _cache(FakeClock())
    cache.put(KEY_A, DEK_A)
    cache.put(KEY_A, DEK_B)
    assert cache.get(KEY_A) == DEK_B
    assert len(cache) == 1


def test_clear_empties_the_cache() -> None:
    cache = _cache(FakeClock())
    cache.put(KEY_A, DEK_A)
    cache.clear()
    assert len(cache) == 0
    assert cache.get(KEY_A) is None


def test_repr_does_not_contain_key_material() -> None:
    cache = _cache(FakeClock())
    cache.put(KEY_A, DEK_A)
    text = repr(cache)
    assert "AAAA" not in text
    assert DEK_A.hex() not in text
    assert "patient-a" not in text


# -- TTL --------------------------------------------------------------------------------------


def test_entry_is_served_until_just_before_ttl() -> None:
    clock = FakeClock()
    cache = _cache(clock, ttl=30.0)
    cache.put(KEY_A, DEK_A)
    clock.advance(29.999)
    assert cache.get(KEY_A) == DEK_A


def test_entry_expires_at_ttl() -> None:
    clock = FakeClock()
    cache = _cache(clock, ttl=30.0)
    cache.put(KEY_A, DEK_A)
    clock.advance(30.0)
    assert cache.get(KEY_A) is None
    assert len(cache) == 0  # expired entry is dropped, not kept around
    assert cache.misses == 1


def test_entry_expires_after_at_most_sixty_seconds_by_default() -> None:
    clock = FakeClock()
    cache = KeyCache(monotonic=clock)
    cache.put(KEY_A, DEK_A)
    clock.advance(59.0)
    assert cache.get(KEY_A) == DEK_A
    clock.advance(1.0)
    assert cache.get(KEY_A) is None


def test_a_hit_does_not_extend_the_lifetime() -> None:
    # P10: sealing Vault must stop decryption within the TTL, however hot the key is
    clock = FakeClock()
    cache = _cache(clock, ttl=10.0)
    cache.put(KEY_A, DEK_A)
    for _ in range(9):
        clock.advance(1.0)
        assert cache.get(KEY_A) == DEK_A
    clock.advance(1.0)
    assert cache.get(KEY_A) is None


def test_put_again_restarts_the_lifetime() -> None:
    clock = FakeClock()
    cache = _cache(clock, ttl=10.0)
    cache.put(KEY_A, DEK_A)
    clock.advance(8.0)
    cache.put(KEY_A, DEK_A)
    clock.advance(8.0)
    assert cache.get(KEY_A) == DEK_A
    clock.advance(2.0)
    assert cache.get(KEY_A) is None


def test_expiry_uses_the_injected_clock_not_wall_time() -> None:
    clock = FakeClock()
    cache = _cache(clock, ttl=0.001)
    cache.put(KEY_A, DEK_A)
    # no time passes on the fake clock: still a hit, however slow the test machine is
    assert cache.get(KEY_A) == DEK_A


@pytest.mark.parametrize("ttl", [60.0000001, 61, 3600, float("inf")])
def test_ttl_over_sixty_seconds_is_rejected(ttl: float) -> None:
    with pytest.raises(ValueError):
        KeyCache(ttl_seconds=ttl)


def test_ttl_of_exactly_sixty_seconds_is_accepted() -> None:
    KeyCache(ttl_seconds=60)


def test_nan_ttl_is_rejected() -> None:
    # NaN compares false with everything: `nan > 60` is False, so it slips past the
    # bound, and `age >= nan` is also False, so entries would never expire.
    with pytest.raises(ValueError):
        KeyCache(ttl_seconds=float("nan"))


# -- LRU bound ---------------------------------------------------------------------------------


def test_oldest_entry_is_evicted_past_the_bound() -> None:
    cache = _cache(FakeClock(), max_entries=2)
    cache.put(KEY_A, DEK_A)
    cache.put(KEY_B, DEK_B)
    cache.put(KEY_C, DEK_C)
    assert len(cache) == 2
    assert cache.get(KEY_A) is None
    assert cache.get(KEY_B) == DEK_B
    assert cache.get(KEY_C) == DEK_C


def test_recently_read_entry_survives_eviction() -> None:
    cache = _cache(FakeClock(), max_entries=2)
    cache.put(KEY_A, DEK_A)
    cache.put(KEY_B, DEK_B)
    assert cache.get(KEY_A) == DEK_A  # A is now the most recently used
    cache.put(KEY_C, DEK_C)
    assert cache.get(KEY_B) is None
    assert cache.get(KEY_A) == DEK_A
    assert cache.get(KEY_C) == DEK_C


def test_size_never_exceeds_the_bound() -> None:
    cache = _cache(FakeClock(), max_entries=5)
    for i in range(100):
        cache.put(cache_key("t", f"p{i}", 1, WRAPPED), bytes([i]) * 32)
        assert len(cache) <= 5
    assert len(cache) == 5
    # the five newest survive
    for i in range(95, 100):
        assert cache.get(cache_key("t", f"p{i}", 1, WRAPPED)) == bytes([i]) * 32


@pytest.mark.parametrize("max_entries", [0, -1])
def test_non_positive_max_entries_caches_nothing(max_entries: int) -> None:
    cache = _cache(FakeClock(), max_entries=max_entries)
    cache.put(KEY_A, DEK_A)
    assert len(cache) == 0
    assert cache.get(KEY_A) is None


# -- key identity --------------------------------------------------------------------------------


def test_different_key_version_is_a_miss() -> None:
    cache = _cache(FakeClock())
    cache.put(cache_key("t", "p", 1, WRAPPED), DEK_A)
    assert cache.get(cache_key("t", "p", 2, WRAPPED)) is None
    assert cache.get(cache_key("t", "p", 1, WRAPPED)) == DEK_A


def test_different_wrapped_key_is_a_miss() -> None:
    cache = _cache(FakeClock())
    cache.put(cache_key("t", "p", 1, WRAPPED), DEK_A)
    assert cache.get(cache_key("t", "p", 1, WRAPPED + "x")) is None
    assert cache.get(cache_key("t", "p", 1, "vault:v1:b3RoZXI=")) is None


@pytest.mark.parametrize(("tenant", "patient"), [("t2", "p"), ("t", "p2"), ("tp", ""), ("", "tp")])
def test_different_tenant_or_patient_is_a_miss(tenant: str, patient: str) -> None:
    cache = _cache(FakeClock())
    cache.put(cache_key("t", "p", 1, WRAPPED), DEK_A)
    assert cache.get(cache_key(tenant, patient, 1, WRAPPED)) is None


def test_cache_key_holds_a_digest_not_the_wrapped_key() -> None:
    key = cache_key("t", "p", 1, WRAPPED)
    assert WRAPPED not in key
    assert all(WRAPPED.encode() not in part for part in key if isinstance(part, bytes))
    assert key == cache_key("t", "p", 1, WRAPPED)


# -- which notes' keys the worker holds (a hint for the remembered caller's read) -------


def test_a_note_it_has_not_seen_is_not_known_to_lack_its_key() -> None:
    cache = _cache(FakeClock())
    assert cache.lacks_note_key("tenant-1", "note-1") is False


def test_a_known_note_lacks_its_key_until_the_key_is_held_and_again_once_it_expires() -> None:
    clock = FakeClock()
    cache = _cache(clock, ttl=60)
    cache.remember_note("tenant-1", "note-1", "patient-a")
    assert cache.lacks_note_key("tenant-1", "note-1") is True
    cache.put(KEY_A, DEK_A)
    assert cache.lacks_note_key("tenant-1", "note-1") is False
    clock.advance(59.9)
    assert cache.lacks_note_key("tenant-1", "note-1") is False
    clock.advance(0.1)
    assert cache.lacks_note_key("tenant-1", "note-1") is True
    assert cache.get(KEY_A) is None  # the expired entry is gone, as get() would drop it
    # Another tenant's note of the same id is another note.
    assert cache.lacks_note_key("tenant-2", "note-1") is False


def test_an_evicted_key_is_no_longer_held_and_another_patients_key_never_counts() -> None:
    cache = _cache(FakeClock(), max_entries=2)
    cache.remember_note("tenant-1", "note-a", "patient-a")
    cache.remember_note("tenant-1", "note-b", "patient-b")
    cache.put(KEY_A, DEK_A)
    cache.put(KEY_B, DEK_B)
    assert not cache.lacks_note_key("tenant-1", "note-a")
    cache.put(KEY_C, DEK_C)  # evicts patient-a's key, the least recently used
    assert cache.lacks_note_key("tenant-1", "note-a") is True
    assert cache.lacks_note_key("tenant-1", "note-b") is False


def test_a_patients_newer_key_is_what_counts() -> None:
    """A rewrapped key is a new entry; the old one leaving does not make the patient's
    key unheld, the newer one leaving does."""
    cache = _cache(FakeClock(), max_entries=2)
    cache.remember_note("tenant-1", "note-a", "patient-a")
    old, new = KEY_A, cache_key("tenant-1", "patient-a", 2, "vault:v2:bmV3")
    cache.put(old, DEK_A)
    cache.put(new, DEK_B)
    cache.put(KEY_C, DEK_C)  # evicts the old entry
    assert cache.lacks_note_key("tenant-1", "note-a") is False
    cache.put(KEY_B, DEK_B)  # evicts the newer one
    assert cache.lacks_note_key("tenant-1", "note-a") is True


def test_the_notes_remembered_are_bounded_and_clear_forgets_them() -> None:
    cache = _cache(FakeClock(), max_entries=1)  # up to NOTES_PER_KEY notes
    for i in range(NOTES_PER_KEY + 1):
        cache.remember_note("tenant-1", f"note-{i}", "patient-a")
    assert cache.lacks_note_key("tenant-1", "note-0") is False  # forgotten: unknown
    assert cache.lacks_note_key("tenant-1", f"note-{NOTES_PER_KEY}") is True
    cache.put(KEY_A, DEK_A)
    cache.clear()
    assert cache.lacks_note_key("tenant-1", f"note-{NOTES_PER_KEY}") is False
    assert len(cache) == 0
