"""PostgreSQL 15 servers for the drills (Debian's postgresql-15 binaries, run as
the `postgres` OS user), optionally inside a network namespace: a primary and a
synchronous streaming standby made with pg_basebackup. Trust authentication on
the drill's private addresses only: these servers live for one test."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.drills.common import need, run

PG_BIN = Path(os.environ.get("SEALEDNOTES_DRILL_PG_BIN", "/usr/lib/postgresql/15/bin"))


def pg_tool(name: str) -> str:
    return need(name, str(PG_BIN / name))


def _as_postgres(argv: list[str], netns: str | None) -> list[str]:
    prefix = [need("ip"), "netns", "exec", netns] if netns else []
    return [*prefix, need("runuser"), "-u", "postgres", "--", *argv]


@dataclass
class PgNode:
    name: str
    datadir: Path
    host: str  # the address it listens on (and that others reach it by)
    port: int = 5432
    netns: str | None = None

    @property
    def logfile(self) -> Path:
        return self.datadir.parent / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def dsn(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"

    def _run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run(_as_postgres(argv, self.netns), timeout=timeout)

    def _prepare_dir(self) -> None:
        if self.datadir.exists():
            shutil.rmtree(self.datadir)
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        # postgres must reach its data directory through the parent directories.
        for parent in self.datadir.parents:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)

    def initdb(self, synchronous_standby: str | None = None) -> PgNode:
        self._prepare_dir()
        self.datadir.mkdir(mode=0o700)
        shutil.chown(self.datadir, "postgres", "postgres")
        self._run(
            [pg_tool("initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
             "--no-sync", "-E", "UTF8", "--locale=C"]
        )  # fmt: skip
        conf = [
            f"listen_addresses = '{self.host}'",
            f"port = {self.port}",
            "unix_socket_directories = ''",
            "max_connections = 200",
            "wal_level = replica",
            "max_wal_senders = 5",
            "wal_keep_size = '256MB'",
            "hot_standby = on",
            "fsync = on",
            "synchronous_commit = on",
            "shared_buffers = '64MB'",
            "log_min_messages = warning",
        ]
        if synchronous_standby:
            # A COMMIT is acknowledged only once the standby has flushed it.
            conf.append(f"synchronous_standby_names = 'FIRST 1 ({synchronous_standby})'")
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n")
        with open(self.datadir / "pg_hba.conf", "w") as f:
            f.write(
                "local all all trust\n"
                "host all all 0.0.0.0/0 trust\n"
                "host replication all 0.0.0.0/0 trust\n"
            )
        return self

    def standby_of(self, primary: PgNode, application_name: str) -> PgNode:
        self._prepare_dir()
        self.datadir.mkdir(mode=0o700)
        shutil.chown(self.datadir, "postgres", "postgres")
        self._run(
            [pg_tool("pg_basebackup"), "-h", primary.host, "-p", str(primary.port), "-U",
             "postgres", "-D", str(self.datadir), "-X", "stream", "-R", "--no-sync", "-c", "fast"],
            timeout=300,
        )  # fmt: skip
        with open(self.datadir / "postgresql.auto.conf", "a") as f:
            f.write(
                f"primary_conninfo = 'host={primary.host} port={primary.port} user=postgres "
                f"application_name={application_name}'\n"
            )
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(
                f"listen_addresses = '{self.host}'\nport = {self.port}\n"
                f"unix_socket_directories = ''\n"
                # Promoted, it keeps requiring a synchronous standby: none here, so clear it.
                "synchronous_standby_names = ''\n"
            )
        return self

    def start(self) -> PgNode:
        if not self.logfile.exists():
            self.logfile.touch()
            shutil.chown(self.logfile, "postgres", "postgres")
        try:
            self._run(
                [pg_tool("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                 "-w", "-t", "60", "start"],
                timeout=90,
            )  # fmt: skip
        except AssertionError as e:
            log = self.logfile.read_text(errors="replace")[-3000:]
            raise AssertionError(f"{self.name} did not start:\n{log}") from e
        return self

    def crash(self) -> None:
        """The host dies: the postmaster and every backend are killed at once."""
        pid = self.postmaster_pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), 9)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)

    def promote(self) -> None:
        self._run([pg_tool("pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60", "promote"])

    def stop(self) -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        proc = subprocess.run(
            _as_postgres([pg_tool("pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w",
                          "-t", "30", "stop"], self.netns),
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            self.crash()

    def postmaster_pid(self) -> int | None:
        pidfile = self.datadir / "postmaster.pid"
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn(database), autocommit=True, connect_timeout=5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.split(")")[-1].split()[0] == "Z":
            return False
    return True
