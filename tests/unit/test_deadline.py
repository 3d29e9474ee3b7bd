"""The request deadline bounds each dependency call (service/deadline.py)."""

from __future__ import annotations

import time

import pytest

from service import deadline


def test_outside_a_request_a_call_waits_its_own_timeout() -> None:
    assert deadline.remaining() is None
    assert deadline.bounded(2.0) == 2.0


def test_with_time_to_spare_a_call_waits_its_own_timeout() -> None:
    token = deadline.start(60)
    try:
        assert deadline.bounded(2.0) == 2.0
    finally:
        deadline.reset(token)


def test_near_the_deadline_a_call_waits_only_for_what_is_left() -> None:
    token = deadline.start(0.5)
    try:
        assert 0.3 < deadline.bounded(2.0) <= 0.5
    finally:
        deadline.reset(token)


def test_past_the_deadline_no_call_starts() -> None:
    token = deadline.start(0.01)
    try:
        time.sleep(0.02)
        with pytest.raises(deadline.DeadlineExceeded):
            deadline.bounded(2.0)
    finally:
        deadline.reset(token)
