"""Processes the benchmark starts and stops itself.

* PostgreSQL: ``SEALEDNOTES_BENCH_DATABASE_URL`` (an admin URL) when set, else an
  embedded server in the work directory. Either way the benchmark works in a
  database of its own, created here and dropped at the end, with a service
  role of its own (the service never runs as the schema owner).
* OpenBao: a ``bao server -dev`` (in memory).
* gunicorn servers: `ServerProcess`, one process group per server, stopped by
  its own process-group id.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from bench.cpu import parent_pid
from service.adapters.postgres import Store
from service.adapters.vault import VaultKeyService
from service.devtools.stack import (
    BaoServer,
    EmbeddedPostgres,
    database_url,
    ensure_database,
    free_port,
    url_with_user,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL_ENV = "SEALEDNOTES_BENCH_DATABASE_URL"


@dataclass
class Stack:
    """PostgreSQL + OpenBao for one benchmark run, with a fresh database."""

    workdir: Path
    admin_url: str = field(repr=False)
    owner_url: str = field(repr=False)  # the bench database, as the schema owner
    app_url: str = field(repr=False)  # the bench database, as the service role
    database: str
    app_role: str
    bao: BaoServer
    postgres: str  # "embedded" or "external"
    _embedded: EmbeddedPostgres | None = None

    @classmethod
    def start(cls, workdir: Path) -> Stack:
        external = os.environ.get(DATABASE_URL_ENV) or None
        embedded: EmbeddedPostgres | None = None
        bao: BaoServer | None = None
        try:
            if external:
                admin_url = external
            else:
                embedded = EmbeddedPostgres(workdir / "pgdata").start()
                admin_url = embedded.admin_url
            suffix = secrets.token_hex(4)
            database = f"sealednotes_bench_{suffix}"
            app_role = f"sealednotes_bench_app_{suffix}"
            ensure_database(admin_url, database, drop=True)
            owner_url = database_url(admin_url, database)
            Store(owner_url).migrate(app_role=app_role)
            bao = BaoServer(workdir / "openbao", dev=True).start()
            keys = VaultKeyService(addr=bao.addr, token=bao.root_token)
            keys.ensure_transit_mount()
            keys.ensure_audit_signing_key()
            return cls(
                workdir=workdir,
                admin_url=admin_url,
                owner_url=owner_url,
                app_url=url_with_user(owner_url, app_role),
                database=database,
                app_role=app_role,
                bao=bao,
                postgres="external" if external else "embedded",
                _embedded=embedded,
            )
        except BaseException:
            if bao is not None:
                bao.stop()
            if embedded is not None:
                embedded.stop()
            raise

    def stop(self) -> None:
        """Stop OpenBao; drop the bench database and role (external server) or stop
        the embedded server."""
        self.bao.stop()
        if self._embedded is not None:
            self._embedded.stop()
            return
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.admin_url, autocommit=True) as conn,
        ):
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.database)
                )
            )
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.app_role)))

    @property
    def bao_pid(self) -> int | None:
        return self.bao.process.pid if self.bao.process is not None else None

    def postmaster_pid(self) -> int | None:
        """The PostgreSQL postmaster's pid when the server runs on this machine."""
        with psycopg.connect(self.owner_url) as conn:
            backend = conn.info.backend_pid
            try:  # a remote server's backend pid may name an unrelated local process
                local = Path(f"/proc/{backend}/comm").read_text().startswith("postgres")
            except OSError:
                local = False
            ppid = parent_pid(backend) if local else None
        return ppid or None

    def settle(self) -> None:
        """After seeding: vacuum, analyze and checkpoint the bench database, so that no
        system's slice meets autovacuum, fresh statistics or the seed's checkpoint."""
        with psycopg.connect(self.owner_url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
        with (
            contextlib.suppress(psycopg.Error),  # a server that refuses: measured as is
            psycopg.connect(self.admin_url, autocommit=True) as conn,
        ):
            conn.execute("CHECKPOINT")

    def server_version(self) -> str:
        with psycopg.connect(self.owner_url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


class ServerProcess:
    """A gunicorn server in its own process group, logging to a file."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], workdir: Path, port: int
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        # Where its Prometheus metrics are served (Sealed Notes: its own port).
        self.metrics_url = self.url + "/metrics"
        self.log_path = workdir / f"{name}.log"
        self._argv = argv
        self._env = env
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 60) -> ServerProcess:
        env = {**os.environ, **self._env}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                self._argv,
                env=env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:  # noqa: S310
                    if resp.status == 200:
                        return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer /healthz; see {self.log_path}")

    def stop(self) -> None:
        proc = self._process
        if proc is None:
            return
        self._process = None
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@dataclass(frozen=True)
class ServingShape:
    """The same gunicorn shape for every system under test."""

    workers: int
    threads: int
    pool_size: int


def sealednotes_server(
    stack: Stack, shape: ServingShape, metrics_dir: Path, workdir: Path
) -> ServerProcess:
    """`sealednotes serve` as the service role, with budgets raised so nothing throttles."""
    metrics_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    big = "1000000"
    env = {
        "SEALEDNOTES_DATABASE_URL": stack.app_url,
        "VAULT_ADDR": stack.bao.addr,
        "VAULT_TOKEN": stack.bao.root_token,
        "SEALEDNOTES_BIND": f"127.0.0.1:{port}",
        "SEALEDNOTES_WORKERS": str(shape.workers),
        "SEALEDNOTES_THREADS": str(shape.threads),
        # One in-flight slot per thread: the load never trips the 503 load shedder.
        "SEALEDNOTES_MAX_IN_FLIGHT": str(shape.threads),
        "SEALEDNOTES_POOL_MIN": str(shape.pool_size),
        "SEALEDNOTES_POOL_MAX": str(shape.pool_size),
        "SEALEDNOTES_RELEASE_PER_HOUR": big,
        "SEALEDNOTES_RELEASE_PER_DAY": big,
        "SEALEDNOTES_TENANT_RELEASE_PER_HOUR": big,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    metrics_port = free_port()
    env["SEALEDNOTES_METRICS_BIND"] = f"127.0.0.1:{metrics_port}"
    argv = [sys.executable, "-m", "service.cli", "serve", "--workers", str(shape.workers)]
    server = ServerProcess("sealednotes", argv, env, workdir, port)
    server.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    return server


def peer_server(
    stack: Stack,
    mode: str,
    shape: ServingShape,
    workdir: Path,
    keepalive: int = 5,
    *,
    sync: bool = False,
    lean_vault: bool = False,
) -> ServerProcess:
    """A comparison server from `bench.peers` under gunicorn: gthread in the same
    shape as Sealed Notes, or (`sync`) the peer at its own best: plain sync workers,
    2 x cores + 1 of them, one connection each. `lean_vault`: the Transit peer calls
    Transit over Sealed Notes' own lean transport (kept-alive http.client connections)."""
    port = free_port()
    if sync:
        shape = ServingShape(workers=2 * (os.cpu_count() or 1) + 1, threads=1, pool_size=1)
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        str(shape.workers),
        "--worker-class",
        "sync" if sync else "gthread",
        "--threads",
        str(shape.threads),
        "--keep-alive",
        str(keepalive),
        "--bind",
        f"127.0.0.1:{port}",
        "--access-logfile",
        "-",
        "bench.peers:create_app()",
    ]
    env = {
        "BENCH_PEER_MODE": mode,
        "BENCH_PEER_DATABASE_URL": stack.owner_url,
        "BENCH_PEER_POOL_SIZE": str(shape.pool_size),
        "VAULT_ADDR": stack.bao.addr,
        "VAULT_TOKEN": stack.bao.root_token,
        "BENCH_PEER_LEAN_VAULT": "1" if lean_vault else "0",
    }
    suffix = ("-sync" if sync else "") + ("-lean" if lean_vault else "")
    return ServerProcess(f"peer-{mode}{suffix}", argv, env, workdir, port)
