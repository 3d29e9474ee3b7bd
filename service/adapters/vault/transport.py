"""Transit's calls over plain keep-alive HTTP(S) connections (http.client).

A cold read waits for one Transit unwrap. Through hvac and requests, the client's
side of that call (building the request, the session's merging of settings, the
connection pool, the response's wrapping) cost more than OpenBao took to answer:
2.3 ms against 0.86 ms for the same call on a kept-alive http.client connection
(this machine, loopback, median of 400). So the calls the API makes on a request's
path (decrypt, data key, HMAC, sign, verify) go out here; hvac keeps the rest
(login, renewal, set-up, rotation) and holds the token.

Vault's answers are turned into hvac's own exceptions (`hvac.utils.raise_for_error`),
so one place (VaultClient._translated) still translates every Vault error. What this
transport does not do, it leaves to hvac: a redirect (an HA standby naming the active
node) raises `Redirected`, and the client repeats the call through hvac.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

import hvac.exceptions
import hvac.utils

from service import deadline

MAX_IDLE = 16  # kept-alive connections per process; more at once are closed after use
# A kept-alive connection the server closed meanwhile fails as one of these, before
# any answer: an idempotent call is then sent once more, on a new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Redirected(Exception):
    """Vault answered with a redirect: the call is for hvac (which follows it)."""


class LeanTransport:
    """`verify`: a CA file or directory, or True for the system's trust store (the client
    passes the CA bundle requests would use, so hvac and this transport trust alike).
    `client_cert`: (certificate, key) files presented to a Vault that asks for one."""

    def __init__(
        self,
        addr: str,
        *,
        verify: str | bool,
        client_cert: tuple[str, str | None] | None = None,
    ) -> None:
        parts = urlsplit(addr)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("VAULT_ADDR must be an http:// or https:// URL")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._context = _tls_context(verify, client_cert) if self._https else None
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._pid = os.getpid()

    def post(
        self,
        path: str,
        payload: dict[str, Any],
        *,
        headers: dict[str, str],
        timeout: float,
        idempotent: bool,
    ) -> dict[str, Any]:
        """POST `payload` as JSON to `path` (``/v1/...``) and return Vault's JSON answer.
        Raises hvac's exception for a Vault error, `Redirected`, or the connection's
        own error (OSError, http.client.HTTPException; TimeoutError past `timeout`).
        A call sent again after a stale connection waits at most what is left of the
        request's deadline (DeadlineExceeded when nothing is)."""
        body = json.dumps(payload).encode()
        head = {"Content-Type": "application/json", "X-Vault-Request": "true", **headers}
        conn, reused = self._connection(timeout)
        while True:
            try:
                status, data, location = _exchange(conn, self._prefix + path, body, head)
                break
            except _STALE:
                conn.close()
                if not (reused and idempotent):
                    raise
                conn, reused = self._new(deadline.bounded(timeout)), False
            except BaseException:
                conn.close()
                raise
        self._release(conn)
        if 300 <= status < 400 and location:
            raise Redirected()
        answer = _json(data)
        if status >= 400 or answer is None:
            errors = answer.get("errors") if isinstance(answer, dict) else None
            # The url names the operation only: never a ciphertext or a key.
            hvac.utils.raise_for_error("post", path, status, errors=errors, text=None, json=answer)
        assert isinstance(answer, dict)
        return answer

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._pid != os.getpid():
                # A forked worker: its parent's sockets are not its own to use or close.
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                conn = self._idle.pop()
                if _usable(conn):
                    conn.timeout = timeout
                    if conn.sock is not None:
                        conn.sock.settimeout(timeout)
                    return conn, True
                conn.close()
        return self._new(timeout), False

    def _new(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._context
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if conn.sock is not None and self._pid == os.getpid() and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _exchange(
    conn: http.client.HTTPConnection, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes, str | None]:
    try:
        conn.request("POST", url, body=body, headers=headers)
    except ValueError:
        # http.client refuses a header value with a line break, quoting it (a token).
        raise http.client.HTTPException("a request header is not valid") from None
    resp = conn.getresponse()
    data = resp.read()
    if resp.will_close:
        conn.close()
    return resp.status, data, resp.getheader("Location")


def _usable(conn: http.client.HTTPConnection) -> bool:
    """Still connected and quiet: an idle connection with something to read was closed
    by the server (or holds a stray answer) and must not carry the next request."""
    sock = conn.sock
    if sock is None:
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False  # decrypted bytes already buffered: not quiet
    try:
        poller = select.poll()  # any descriptor number (select() stops at 1024)
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


def _json(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _tls_context(verify: str | bool, client_cert: tuple[str, str | None] | None) -> ssl.SSLContext:
    """Verification as requests applies it: a CA file or directory, else the default
    trust store; the host name checked. Never unverified: a Vault whose certificate
    fails is unavailable."""
    if verify is True or verify is False:
        # False is never configured by the service (_environment_verify); if it were,
        # verifying anyway is the safe reading.
        context = ssl.create_default_context()
    elif os.path.isdir(verify):
        context = ssl.create_default_context(capath=verify)
    else:
        context = ssl.create_default_context(cafile=verify)
    if client_cert is not None:
        context.load_cert_chain(client_cert[0], client_cert[1])
    return context
