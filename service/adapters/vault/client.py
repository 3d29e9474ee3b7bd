"""The connection to Vault: login (token, token file, AppRole), renewal, the calls on
a request's path (over transport.py's lean connections), and the translation of every
hvac, requests and connection error into the service's own errors."""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import hvac
import hvac.adapters
import hvac.exceptions
import requests

from crypto import DecryptionError
from service import deadline
from service.adapters.vault.transport import LeanTransport, Redirected
from service.errors import KeyServiceThrottled, KeyServiceUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


@contextmanager
def _within_deadline(limit: float) -> Iterator[float]:
    """How long one Vault request may wait: its timeout, or what is left of the request's
    deadline when that is less (a call started at 4.5 s of a 5 s deadline gets 0.5 s).
    A wait the deadline cut short that times out is DeadlineExceeded: the request's own
    time ran out (perhaps on an earlier slow call), not Vault failing, and no reason to
    log in again. For hvac's requests and the lean transport's alike."""
    wait = deadline.bounded(limit)
    try:
        yield wait
    except (requests.exceptions.Timeout, TimeoutError):
        if wait < limit:
            raise deadline.DeadlineExceeded() from None
        raise


class _WithinDeadline(hvac.adapters.JSONAdapter):  # type: ignore[misc]  # hvac is untyped
    """Each hvac request waits as `_within_deadline` says."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        with _within_deadline(self._kwargs["timeout"]) as wait:
            return super().request(*args, **{**kwargs, "timeout": wait})


def _environment_verify() -> str | bool:
    """TLS verification as hvac and requests would resolve it from the environment on
    each request: Vault's CA file or directory first, then requests' CA bundle."""
    for name in ("VAULT_CACERT", "VAULT_CAPATH", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if os.environ.get(name):
            return os.environ[name]
    return True


class VaultClient:
    def __init__(
        self,
        *,
        addr: str,
        token: str | None = None,
        role_id: str | None = None,
        secret_id: str | None = None,
        token_file: str | None = None,
        mount: str = "transit",
        timeout: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._addr = addr
        self._token = token
        self._token_file = token_file
        self._role_id = role_id
        self._secret_id = secret_id
        self.mount = mount
        self._timeout = timeout
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._client: hvac.Client | None = None
        self._client_pid: int | None = None
        self._lean: LeanTransport | None = None
        self._renew_at: float | None = None  # monotonic time to renew the token
        self._token_ttl: float | None = None

    def __repr__(self) -> str:
        return f"VaultKeyService(addr={self._addr!r}, mount={self.mount!r})"

    def _relogs_in(self) -> bool:
        """Whether a refused token can be replaced: a new AppRole login, or a fresh
        token from the file Vault Agent keeps up to date."""
        return bool((self._role_id and self._secret_id) or self._token_file)

    def _file_token(self) -> str:
        assert self._token_file is not None
        try:
            with open(self._token_file, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as e:
            log.warning("vault token file unreadable: %s", type(e).__name__)
            raise KeyServiceUnavailable() from e

    def _new_client(self) -> hvac.Client:
        token = self._file_token() if self._token_file else self._token
        client = hvac.Client(
            url=self._addr,
            token=token,
            timeout=self._timeout,
            adapter=_WithinDeadline,
            verify=_environment_verify(),
            proxies=requests.utils.get_environ_proxies(self._addr),
        )
        # requests reads the proxy, no-proxy, CA bundle and netrc settings from the
        # environment again on every request (a scan of os.environ: about half an
        # unwrap's Python time, measured). They are resolved once, above, with the same
        # precedence; a Vault token needs no netrc credentials.
        client.adapter.session.trust_env = False
        if self._role_id and self._secret_id:
            resp = client.auth.approle.login(role_id=self._role_id, secret_id=self._secret_id)
            ttl = resp["auth"].get("lease_duration")
            self._token_ttl = float(ttl) if ttl else None
            self._schedule_renewal(ttl)
        else:
            self._renew_at = None
        return client

    def _schedule_renewal(self, ttl: Any) -> None:
        # Renew when two thirds of the lease have passed.
        if ttl:
            self._renew_at = self._monotonic() + float(ttl) * 2 / 3
        else:
            self._renew_at = None

    def _renew(self, client: hvac.Client) -> hvac.Client:
        try:
            resp = client.auth.token.renew_self()
            ttl = resp["auth"].get("lease_duration")
            if not ttl or (self._token_ttl and float(ttl) < self._token_ttl / 3):
                # Renewal is capped by the token's max TTL: log in again instead.
                raise hvac.exceptions.Forbidden("token near its max TTL")
            self._schedule_renewal(ttl)
            log.info("vault token renewed")
            return client
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as e:
            # Past its max TTL, or revoked: log in again.
            log.info("vault token renewal failed (%s); logging in again", type(e).__name__)
            return self._new_client()

    def client(self) -> hvac.Client:
        # One client (one HTTP session) per process: never share sockets across fork.
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                client = self._new_client()
                # Made from the hvac client's own settings, before it is kept: a
                # transport that cannot be made (a CA file missing) fails this call.
                self._lean = _lean_transport(self._addr, client)
                self._client, self._client_pid = client, os.getpid()
            elif self._renew_at is not None and self._monotonic() >= self._renew_at:
                self._client = self._renew(self._client)
            return self._client

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except DecryptionError:
            raise
        except hvac.exceptions.InvalidRequest as e:
            # Transit answers 400 when a ciphertext fails authentication
            # (wrong derivation context, tampered or foreign ciphertext).
            raise DecryptionError() from e
        except hvac.exceptions.RateLimitExceeded as e:
            # A Vault rate-limit quota (the unwrap budget Vault keeps per tenant):
            # never a fallback, the caller answers 503 and raises an alert.
            log.warning("vault rate-limit quota exceeded")
            raise KeyServiceThrottled() from e
        except hvac.exceptions.Forbidden as e:
            log.warning("vault refused the operation (policy): %s", type(e).__name__)
            raise KeyServiceUnavailable(
                "Vault refused the operation: the credentials' policy does not allow it"
            ) from e
        except hvac.exceptions.VaultError as e:
            log.warning("vault error: %s", type(e).__name__)
            raise KeyServiceUnavailable() from e
        except (requests.exceptions.RequestException, OSError, http.client.HTTPException) as e:
            log.warning("vault unreachable: %s", type(e).__name__)
            raise KeyServiceUnavailable() from e

    def _call(self, fn: Callable[[hvac.Client], T]) -> T:
        # Past the request's deadline no Vault request starts: _WithinDeadline refuses it.
        with self._translated():
            try:
                return fn(self.client())
            except hvac.exceptions.Forbidden:
                if not self._relogs_in():
                    raise
                # An expired token: log in again (or re-read the token file) once.
                with self._lock:
                    self._client = None
                return fn(self.client())

    def _post(self, path: str, payload: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        """POST to Vault (``/v1/...``) with the client's token: over the lean transport,
        or through hvac where that cannot go (a proxy, a redirect). `idempotent`: the
        call may be sent again when a kept-alive connection turns out closed."""

        def run(c: hvac.Client) -> dict[str, Any]:
            lean = self._lean
            if lean is not None:
                headers = {"X-Vault-Token": c.token}
                if c.adapter.namespace:
                    headers["X-Vault-Namespace"] = c.adapter.namespace
                try:
                    with _within_deadline(self._timeout) as wait:
                        return lean.post(
                            path, payload, headers=headers, timeout=wait, idempotent=idempotent
                        )
                except Redirected:
                    pass  # hvac follows it
            answer = c.adapter.post(path, json=payload)
            if not isinstance(answer, dict):  # hvac hands back a non-200 success as is
                raise hvac.exceptions.UnexpectedError("Vault's answer is not a JSON object")
            return answer

        return self._call(run)

    def health(self) -> dict[str, Any]:
        """Readiness: reachable, initialized, unsealed. Never raises."""
        try:
            with self._translated():
                status = self.client().sys.read_health_status(method="GET")
                if isinstance(status, requests.Response):
                    body = status.json()
                else:
                    body = dict(status)
                return {
                    "ok": bool(body.get("initialized")) and not body.get("sealed", True),
                    "sealed": bool(body.get("sealed", True)),
                }
        except Exception as e:
            log.warning("vault health check failed: %s", type(e).__name__)
            return {"ok": False, "sealed": None}


def _lean_transport(addr: str, client: hvac.Client) -> LeanTransport | None:
    """The lean transport for `addr`, trusting and presenting what the hvac client's
    session does (its CA setting, or requests' CA bundle; VAULT_CLIENT_CERT and
    VAULT_CLIENT_KEY), or None where a proxy from the environment applies to `addr`
    (hvac's session goes through the proxy; this transport does not)."""
    if requests.utils.get_environ_proxies(addr):
        return None
    settings = client.adapter._kwargs
    verify = settings.get("verify", True)
    if verify is True:
        verify = requests.utils.DEFAULT_CA_BUNDLE_PATH
    cert = settings.get("cert")
    if isinstance(cert, str):
        cert = (cert, None)
    return LeanTransport(addr, verify=verify, client_cert=tuple(cert) if cert else None)
