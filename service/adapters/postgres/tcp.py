"""A wait on a silent database server, shortened to what the request has left.

libpq's tcp_user_timeout (2 s by default here) turns data the server never
acknowledges (host lost, network cut) into an error. A request near its deadline
lowers it on the connection it uses, for as long as it uses it, so that its 503
comes within the deadline and not a whole database timeout later."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import psycopg

# Linux only (0: not available); elsewhere the wait keeps libpq's own bound.
_TCP_USER_TIMEOUT: int = getattr(socket, "TCP_USER_TIMEOUT", 0)


@contextlib.contextmanager
def acknowledged_within(conn: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
    """Within this block, unacknowledged data fails `conn` after `seconds` (never
    longer than the connection's own setting); the setting is restored after."""
    sock = _tcp_socket(conn)
    if sock is None:
        yield
        return
    with sock:
        before = sock.getsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT)
        wanted = max(1, int(seconds * 1000))
        if before and before <= wanted:
            yield
            return
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, wanted)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # the connection broke meanwhile
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, before)


def _tcp_socket(conn: psycopg.Connection[Any]) -> socket.socket | None:
    """A second handle on the connection's TCP socket (options set through it apply
    to the connection), or None for a Unix socket, a closed connection, or no option."""
    if not _TCP_USER_TIMEOUT:
        return None
    try:
        # fromfd duplicates the descriptor: closing this handle leaves libpq's open.
        sock = socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, psycopg.Error):
        return None
    try:
        sock.getsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT)
    except OSError:  # not TCP
        sock.close()
        return None
    return sock
