"""The request deadline, visible to the adapters without threading it through calls.

Timeouts are ordered: each Vault or database call (2 s) < the request deadline
(5 s) < gunicorn's worker timeout. A request past its deadline starts no new
dependency call: it answers 503 instead of piling up work.
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


def check() -> None:
    left = remaining()
    if left is not None and left <= 0:
        raise DeadlineExceeded()
