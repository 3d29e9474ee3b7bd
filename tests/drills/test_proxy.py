"""Slow clients against gunicorn directly and through nginx (deploy/nginx/).

The attack: 20 connections trickling a POST body and 40 trickling request
headers, a byte or a header line a second, reconnecting when dropped. Meanwhile
legitimate clients call GET /v1/me. Directly, gunicorn's threads are held by
the attackers; through nginx, which reads whole requests before passing them
on, the legitimate p99 stays under a second."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from service.devtools.stack import free_port
from service.models import Role
from tests.conftest import LiveServer
from tests.drills.common import percentile, record, require_root, wait_for
from tests.drills.nginx import Nginx
from tests.helpers import StackHelper

pytestmark = pytest.mark.timeout(300)

SLOW_BODIES = 20
SLOW_HEADERS = 40
ATTACK_SECONDS = 20
LEGIT_CLIENTS = 4
LEGIT_TIMEOUT = 5.0


def _slow_body(host: str, port: int, token: str, stop: threading.Event) -> None:
    # An authenticated client (a slow uploader, or a stolen integration token):
    # the app reads the body after authenticating, holding an in-flight slot.
    head = (
        f"POST /v1/patients HTTP/1.1\r\nHost: sealednotes\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    while not stop.is_set():
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(head)
                while not stop.wait(1.0):
                    s.sendall(b" ")
        except OSError:
            stop.wait(0.2)


def _slow_headers(host: str, port: int, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(b"GET /v1/me HTTP/1.1\r\nHost: sealednotes\r\n")
                n = 0
                while not stop.wait(1.0):
                    n += 1
                    s.sendall(f"X-Slow-{n}: {'a' * 10}\r\n".encode())
        except OSError:
            stop.wait(0.2)


def attack(
    base: str, host: str, port: int, token: str, attacker_token: str
) -> tuple[list[float], int, int]:
    """Latencies of legitimate calls under attack (a failure counts as +inf)."""
    stop = threading.Event()
    attackers = [
        threading.Thread(target=_slow_body, args=(host, port, attacker_token, stop), daemon=True)
        for _ in range(SLOW_BODIES)
    ] + [
        threading.Thread(target=_slow_headers, args=(host, port, stop), daemon=True)
        for _ in range(SLOW_HEADERS)
    ]
    for t in attackers:
        t.start()
    time.sleep(2)  # let every attacking connection get going
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    end = time.monotonic() + ATTACK_SECONDS

    def legit() -> None:
        nonlocal failures
        # A new connection per call, as many independent clients would make:
        # each lands on whichever gunicorn worker accepts it (a kept-alive
        # session would stay on one worker and could miss the saturated one).
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                r = requests.get(
                    base + "/v1/me",
                    headers={"Authorization": f"Bearer {token}", "Connection": "close"},
                    timeout=LEGIT_TIMEOUT,
                )
                ok = r.status_code == 200
            except requests.RequestException:
                ok = False
            elapsed = time.monotonic() - started
            with lock:
                latencies.append(elapsed if ok else float("inf"))
                failures += not ok
            time.sleep(0.05)

    clients = [threading.Thread(target=legit) for _ in range(LEGIT_CLIENTS)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    stop.set()
    for t in attackers:
        t.join(5)
    return latencies, failures, len(latencies)


def _fmt(p99: float) -> str:
    return "timeout/failed (>5 s)" if p99 == float("inf") else f"{p99:.3f}s"


def test_slow_clients_direct_vs_through_nginx(
    stack: StackHelper, live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    require_root()
    server = live_server(workers=2)  # `sealednotes serve` defaults: 2 workers x 16 threads
    tenant = stack.tenant()
    doctor = stack.clinician(tenant)
    ehr = stack.principal(tenant, Role.INTEGRATION)
    upstream_port = server.port
    proxy_port = free_port()
    nginx = Nginx(tmp_path / "nginx", f"127.0.0.1:{upstream_port}", f"127.0.0.1:{proxy_port}")
    try:
        proxied = f"http://127.0.0.1:{proxy_port}"
        r = requests.get(proxied + "/v1/me", headers={"Authorization": f"Bearer {doctor.token}",
                         "X-Request-Id": "drill-rid-1"}, timeout=5)  # fmt: skip
        assert r.status_code == 200 and r.headers["X-Request-Id"] == "drill-rid-1", r.headers
        r = requests.get(proxied + "/v1/me", headers={"Authorization": f"Bearer {doctor.token}"},
                         timeout=5)  # fmt: skip
        generated = r.headers["X-Request-Id"]
        assert r.status_code == 200 and len(generated) == 32, r.headers
        # Both logs carry nginx's id: the proxy's access log and the app's.
        wait_for("nginx access log", lambda: f'"request_id":"{generated}"' in nginx.access_log(), 5)
        wait_for("gunicorn access log", lambda: f"rid={generated}" in server.log_text(), 5)
        # Too large: nginx answers 413 itself, gunicorn never reads it.
        big = b"{" + b" " * (9 * 1024 * 1024) + b"}"
        r = requests.post(proxied + "/v1/patients", data=big, timeout=30,
                          headers={"Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 413
        assert requests.get(proxied + "/metrics", timeout=5).status_code == 404

        direct = attack(server.url, "127.0.0.1", upstream_port, doctor.token, ehr.token)
        through = attack(proxied, "127.0.0.1", proxy_port, doctor.token, ehr.token)
    finally:
        nginx.stop()

    p99_direct = percentile(direct[0], 0.99)
    p99_proxy = percentile(through[0], 0.99)
    record("slow_clients_p99_direct_gunicorn", _fmt(p99_direct))
    record("slow_clients_failed_direct_gunicorn", f"{direct[1]}/{direct[2]}")
    record("slow_clients_p99_through_nginx", _fmt(p99_proxy))
    record("slow_clients_failed_through_nginx", f"{through[1]}/{through[2]}")
    # The attack is real (otherwise the comparison proves nothing) ...
    assert p99_direct > 1.0, f"the slow-client attack did not hurt gunicorn: p99 {p99_direct}"
    # ... and nginx absorbs it.
    assert through[1] == 0 and through[2] >= 50, through[1:]
    assert p99_proxy < 1.0, p99_proxy
