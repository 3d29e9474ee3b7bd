"""The lean Transit transport against small local HTTP servers (real sockets, no
Vault): what it does with kept-alive connections a server closed, with Vault's error
statuses, redirects, proxies, silence past the deadline, forks and TLS."""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import os
import select
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest
import requests.utils
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crypto import DecryptionError, WrappedKey
from service import deadline
from service.adapters.vault import VaultKeyService
from service.adapters.vault import transport as transport_module
from service.adapters.vault.client import _lean_transport
from service.adapters.vault.transport import LeanTransport
from service.errors import KeyServiceThrottled, KeyServiceUnavailable

PLAINTEXT = b"k" * 32
_ANSWER = {
    "data": {"plaintext": base64.b64encode(PLAINTEXT).decode(), "ciphertext": "vault:v1:AAAA"}
}
_ENV = ("VAULT_CACERT", "VAULT_CAPATH", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_PROXY = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        served = getattr(self, "served", 0) + 1
        self.served = served
        server.seen.append((self.client_address, self.requestline, dict(self.headers)))
        server.behaviour(self, served)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behaviour: Callable[[_Handler, int], None]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = behaviour
        self.seen: list[tuple[Any, str, dict[str, str]]] = []

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def connections(self) -> int:
        return len({c for c, _, _ in self.seen})


def answer(handler: _Handler, status: int = 200, body: Any = _ANSWER, **headers: str) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ENV + _PROXY:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[_Handler, int], None]], _Server]]:
    servers: list[_Server] = []

    def start(
        behaviour: Callable[[_Handler, int], None], tls: ssl.SSLContext | None = None
    ) -> _Server:
        server = _Server(behaviour)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _keys(addr: str, timeout: float = 2.0) -> VaultKeyService:
    return VaultKeyService(addr=addr, token="s.test", timeout=timeout)


def _unwrap(keys: VaultKeyService) -> bytes:
    return keys.unwrap(WrappedKey("vault:v1:AAAA", 1), tenant_id="t1", context=b"ctx")


def test_one_connection_carries_consecutive_calls(serve: Any) -> None:
    server = serve(lambda h, n: answer(h))
    keys = _keys(server.addr)
    for _ in range(4):
        assert _unwrap(keys) == PLAINTEXT
    assert server.connections == 1
    line = server.seen[0][1]
    assert line == "POST /v1/transit/decrypt/sealednotes-dek-t1 HTTP/1.1"
    headers = server.seen[0][2]
    assert headers["X-Vault-Token"] == "s.test"
    assert headers["X-Vault-Request"] == "true"


def _close_on_second(handler: _Handler, served: int) -> None:
    """A server that reads a kept-alive connection's second request and hangs up
    without an answer: the connection was stale when the client reused it."""
    if served >= 2:
        handler.close_connection = True
        handler.connection.shutdown(2)
        return
    answer(handler)


def test_a_stale_connection_is_replaced_for_an_idempotent_call(serve: Any) -> None:
    server = serve(_close_on_second)
    keys = _keys(server.addr)
    assert _unwrap(keys) == PLAINTEXT
    assert _unwrap(keys) == PLAINTEXT  # the hung-up request is sent again, once
    assert len(server.seen) == 3
    assert server.connections == 2


def test_a_data_key_is_never_requested_twice(serve: Any) -> None:
    server = serve(_close_on_second)
    keys = _keys(server.addr)
    keys.new_data_key(tenant_id="t1", context=b"ctx")
    with pytest.raises(KeyServiceUnavailable):
        keys.new_data_key(tenant_id="t1", context=b"ctx")
    # Vault may have made the second key before hanging up: asking again would make a
    # third, which no database record would ever match.
    assert len(server.seen) == 2
    keys.new_data_key(tenant_id="t1", context=b"ctx")  # the next call: a new connection
    assert server.connections == 2


def test_a_connection_the_server_closed_while_idle_is_not_reused(serve: Any) -> None:
    def answer_then_hang_up(handler: _Handler, served: int) -> None:
        answer(handler)  # kept alive, as far as the client can tell, then closed
        handler.wfile.flush()
        handler.close_connection = True

    server = serve(answer_then_hang_up)
    keys = _keys(server.addr)
    keys.new_data_key(tenant_id="t1", context=b"ctx")
    idle = keys._lean._idle[0].sock  # type: ignore[union-attr]
    assert select.select([idle], [], [], 10)[0]  # the hang-up has reached the client
    keys.new_data_key(tenant_id="t1", context=b"ctx")  # not idempotent: no second try
    assert len(server.seen) == 2
    assert server.connections == 2


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, DecryptionError),
        (429, KeyServiceThrottled),
        (403, KeyServiceUnavailable),
        (404, KeyServiceUnavailable),
        (500, KeyServiceUnavailable),
        (503, KeyServiceUnavailable),
    ],
)
def test_vaults_error_statuses_are_the_services_errors(
    serve: Any, status: int, expected: type[Exception]
) -> None:
    server = serve(lambda h, n: answer(h, status, {"errors": ["nope"]}))
    with pytest.raises(expected):
        _unwrap(_keys(server.addr))


def test_an_answer_that_is_not_json_is_unavailable(serve: Any) -> None:
    def garbage(handler: _Handler, served: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "5")
        handler.end_headers()
        handler.wfile.write(b"<html")

    server = serve(garbage)
    with pytest.raises(KeyServiceUnavailable):
        _unwrap(_keys(server.addr))


def test_a_refusal_echoing_the_request_logs_neither_token_nor_ciphertext(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def echo(handler: _Handler, served: int) -> None:
        seen = server.seen[-1]
        answer(handler, 400, {"errors": [repr(seen)]})  # token and all

    server = serve(echo)
    keys = VaultKeyService(addr=server.addr, token="s.SECRET-TOKEN", timeout=2)
    caplog.set_level("DEBUG")
    with pytest.raises(DecryptionError):
        keys.unwrap(WrappedKey("vault:v1:SECRET-CIPHERTEXT", 1), tenant_id="t1", context=b"c")
    assert "SECRET-TOKEN" in server.seen[-1][2]["X-Vault-Token"]
    assert "SECRET" not in caplog.text


def test_a_redirect_is_followed_through_hvac(serve: Any) -> None:
    active = serve(lambda h, n: answer(h))
    standby = serve(lambda h, n: answer(h, 307, {}, Location=active.addr + h.path))
    assert _unwrap(_keys(standby.addr)) == PLAINTEXT
    assert len(standby.seen) == 2  # the lean call, then hvac's
    assert active.seen[0][1].startswith("POST /v1/transit/decrypt/sealednotes-dek-t1 ")


def test_with_a_proxy_for_vault_the_calls_go_through_hvac_and_the_proxy(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = serve(lambda h, n: answer(h))
    monkeypatch.setenv("HTTP_PROXY", proxy.addr)
    assert (
        _lean_transport("http://vault.internal:8200", hvac.Client(url="http://vault.internal:8200"))
        is None
    )
    keys = _keys("http://vault.internal:8200")
    assert _unwrap(keys) == PLAINTEXT
    # A proxy is asked for the absolute URL.
    assert proxy.seen[0][1].startswith("POST http://vault.internal:8200/v1/transit/decrypt/")


def test_no_proxy_naming_vault_keeps_the_lean_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "vault.internal")
    assert isinstance(
        _lean_transport(
            "http://vault.internal:8200", hvac.Client(url="http://vault.internal:8200")
        ),
        LeanTransport,
    )


def _silent(handler: _Handler, served: int) -> None:
    time.sleep(3)


def test_a_silent_vault_is_unavailable_after_the_timeout(serve: Any) -> None:
    server = serve(_silent)
    started = time.monotonic()
    with pytest.raises(KeyServiceUnavailable):
        _unwrap(_keys(server.addr, timeout=0.3))
    assert time.monotonic() - started < 2.0  # the server would answer after 3 s


def test_near_the_deadline_a_silent_vault_waits_only_for_what_is_left(serve: Any) -> None:
    server = serve(_silent)
    keys = _keys(server.addr, timeout=2.0)
    token = deadline.start(0.3)
    try:
        started = time.monotonic()
        with pytest.raises(deadline.DeadlineExceeded):
            _unwrap(keys)
        assert time.monotonic() - started < 1.5  # not the 2 s timeout
    finally:
        deadline.reset(token)


def test_past_the_deadline_no_call_is_made(serve: Any) -> None:
    server = serve(lambda h, n: answer(h))
    keys = _keys(server.addr)
    token = deadline.start(-1)
    try:
        with pytest.raises(deadline.DeadlineExceeded):
            _unwrap(keys)
    finally:
        deadline.reset(token)
    assert server.seen == []


def test_a_forked_worker_never_uses_its_parents_connections(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(lambda h, n: answer(h))
    lean = LeanTransport(server.addr, verify=True)

    def call() -> None:
        lean.post("/v1/x", {}, headers={}, timeout=2, idempotent=True)

    call()
    parent_idle = list(lean._idle)
    monkeypatch.setattr(transport_module.os, "getpid", lambda: -1)
    call()
    assert server.connections == 2
    assert parent_idle[0].sock is not None  # the parent's socket: left alone, not closed


def test_a_forked_child_opens_its_own_connection(serve: Any) -> None:
    server = serve(lambda h, n: answer(h))
    keys = _keys(server.addr)
    assert _unwrap(keys) == PLAINTEXT
    pid = os.fork()
    if pid == 0:  # the child: a worker gunicorn forked after the parent used Vault
        ok = False
        try:
            ok = _unwrap(keys) == PLAINTEXT
        except BaseException:
            pass
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _unwrap(keys) == PLAINTEXT  # the parent's connection is still its own
    assert server.connections == 2
    assert len(server.seen) == 3


def test_the_address_must_be_http_or_https() -> None:
    with pytest.raises(ValueError):
        LeanTransport("vault.internal:8200", verify=True)


def _ca(now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test vault CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    tmp: Path,
    stem: str,
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    now: datetime.datetime,
    san: x509.GeneralName,
) -> tuple[Path, Path]:
    """A certificate the CA signed for `san`, and its key (files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)]))
        .issuer_name(ca[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .sign(ca[0], hashes.SHA256())
    )
    paths = (tmp / f"{stem}.pem", tmp / f"{stem}-key.pem")
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@dataclass
class _Tls:
    addr: str
    ca: Path
    client: tuple[Path, Path]  # a client certificate the CA signed, and its key


def _tls_serve(
    serve: Any, tmp: Path, san: x509.GeneralName, *, require_client_cert: bool = False
) -> _Tls:
    now = datetime.datetime.now(datetime.UTC)
    ca = _ca(now)
    ca_path = tmp / "ca.pem"
    ca_path.write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    cert, key = _issue(tmp, "vault", ca, now, san)
    client = _issue(tmp, "client", ca, now, x509.DNSName("sealednotes"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(ca_path)
    server = serve(lambda h, n: answer(h), context)
    return _Tls(f"https://127.0.0.1:{server.server_address[1]}", ca_path, client)


_LOOPBACK = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))


def test_tls_is_verified_against_vaults_ca(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = _tls_serve(serve, tmp_path, _LOOPBACK)
    monkeypatch.setenv("VAULT_CACERT", str(tls.ca))
    assert _unwrap(_keys(tls.addr)) == PLAINTEXT


def test_a_certificate_no_trusted_ca_signed_is_unavailable(serve: Any, tmp_path: Path) -> None:
    tls = _tls_serve(serve, tmp_path, _LOOPBACK)
    with pytest.raises(KeyServiceUnavailable):
        _unwrap(_keys(tls.addr))


def test_a_trusted_certificate_for_another_host_is_unavailable(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = _tls_serve(serve, tmp_path, x509.DNSName("vault.internal"))
    monkeypatch.setenv("VAULT_CACERT", str(tls.ca))
    with pytest.raises(KeyServiceUnavailable):
        _unwrap(_keys(tls.addr))


def test_the_client_certificate_hvac_would_present_is_presented(serve: Any, tmp_path: Path) -> None:
    tls = _tls_serve(serve, tmp_path, _LOOPBACK, require_client_cert=True)
    without = hvac.Client(url=tls.addr, token="t", verify=str(tls.ca))
    lean = _lean_transport(tls.addr, without)
    assert lean is not None
    with pytest.raises((ssl.SSLError, ConnectionError)):
        lean.post("/v1/x", {}, headers={}, timeout=2, idempotent=False)
    cert, key = tls.client
    client = hvac.Client(url=tls.addr, token="t", verify=str(tls.ca), cert=(str(cert), str(key)))
    lean = _lean_transport(tls.addr, client)
    assert lean is not None
    assert lean.post("/v1/x", {}, headers={}, timeout=2, idempotent=False) == _ANSWER


def test_without_a_ca_setting_requests_bundle_is_trusted_as_hvac_does() -> None:
    client = hvac.Client(url="https://vault.internal:8200", token="t")
    lean = _lean_transport("https://vault.internal:8200", client)
    assert lean is not None
    assert client.adapter._kwargs["verify"] is True
    bundle = ssl.create_default_context(cafile=requests.utils.DEFAULT_CA_BUNDLE_PATH)
    assert lean._context is not None
    assert len(lean._context.get_ca_certs()) == len(bundle.get_ca_certs()) > 0
