"""The request deadline, visible to the adapters without threading it through calls.

Timeouts are ordered: each Vault or database call (2 s) < the request deadline
(5 s) < gunicorn's worker timeout. A request past its deadline starts no new
dependency call, and a call made near it waits only for what is left
(`bounded`): the request answers 503 within its deadline instead of piling up work.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

from service.errors import ServiceUnavailable

_deadline: ContextVar[float | None] = ContextVar("sealednotes_deadline", default=None)


class DeadlineExceeded(ServiceUnavailable):
    slug = "deadline-exceeded"
    title = "The request ran out of time waiting for a dependency"


def start(seconds: float) -> Token[float | None]:
    return _deadline.set(time.monotonic() + seconds)


def reset(token: Token[float | None]) -> None:
    _deadline.reset(token)


def remaining() -> float | None:
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def bounded(seconds: float) -> float:
    """How long a dependency call may wait: `seconds`, or what is left of the
    request's deadline when that is less. Raises DeadlineExceeded when nothing is."""
    left = remaining()
    if left is None or left >= seconds:
        return seconds
    if left <= 0:
        raise DeadlineExceeded()
    return left
