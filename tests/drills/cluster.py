"""The failover drill's topology, several hosts each in its own network namespace:

    vault1..3  OpenBao, integrated storage (Raft), one cluster     .11 .12 .13
    pg1, pg2   PostgreSQL 15 primary + synchronous streaming standby .21 .22
    app1, app2 `sealednotes serve` + a local haproxy in front of Vault .31 .32
    root ns    the test: clients, ops commands                      .1

Each app host reaches Vault through its own haproxy (127.0.0.1:8200), which
health-checks the three nodes and sends traffic to the active one only; the
service code knows a single VAULT_ADDR. PostgreSQL is a libpq multi-host URL
with target_session_attrs=read-write, so after a promotion the pool's new
connections land on the new primary."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.devtools.stack import bao_binary
from tests.drills.common import need, run, stop_process, wait_for
from tests.drills.netns import Host, Network
from tests.drills.pg import PgNode

REPO = Path(__file__).resolve().parents[2]
SEALEDNOTES = str(Path(sys.executable).parent / "sealednotes")
APP_ROLE = "sealednotes_app"
DATABASE = "sealednotes"
# libpq: try both hosts, take the writable one; give up on a silent host after
# 2 s (connect) and on unacknowledged data after 2 s (tcp_user_timeout), so a
# cut network is an error within the service's 2 s database budget, not a hang.
# (SEALEDNOTES_DRILL_PG_PARAMS overrides them, to try other settings.)
PG_PARAMS = os.environ.get(
    "SEALEDNOTES_DRILL_PG_PARAMS",
    "target_session_attrs=read-write&connect_timeout=2&tcp_user_timeout=2000"
    "&keepalives=1&keepalives_idle=5&keepalives_interval=1&keepalives_count=3",
)


def http(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 5
) -> tuple[int, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"X-Vault-Token": token} if token else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw) if raw else None
        except ValueError:
            return e.code, None


@dataclass
class VaultNode:
    host: Host
    workdir: Path
    peers: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"http://{self.host.ip}:8200"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "raft").mkdir(exist_ok=True)
        joins = "".join(
            f'  retry_join {{\n    leader_api_addr = "http://{p}:8200"\n  }}\n'
            for p in self.peers
            if p != self.host.ip
        )
        (self.workdir / "bao.hcl").write_text(
            f'storage "raft" {{\n  path = "{self.workdir / "raft"}"\n'
            f'  node_id = "{self.host.name}"\n  performance_multiplier = 1\n{joins}}}\n'
            f'listener "tcp" {{\n  address = "{self.host.ip}:8200"\n'
            f'  cluster_address = "{self.host.ip}:8201"\n  tls_disable = true\n}}\n'
            f'api_addr = "http://{self.host.ip}:8200"\n'
            f'cluster_addr = "https://{self.host.ip}:8201"\n'
            "disable_mlock = true\n"
            'log_level = "info"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self.workdir)
        log = open(self.workdir / "bao.log", "ab")
        self.process = subprocess.Popen(
            self.host.cmd(bao_binary(), "server", f"-config={self.workdir / 'bao.hcl'}"),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        wait_for(f"{self.host.name} listening", lambda: self.health() is not None, 30)

    def health(self) -> dict[str, Any] | None:
        try:
            _, body = http("GET", self.addr + "/v1/sys/health?standbyok=true", timeout=2)
            return dict(body) if body else None
        except OSError:
            return None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@dataclass
class Replica:
    host: Host
    workdir: Path
    haproxy: subprocess.Popen[bytes] | None = None
    serve: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host.ip}:8080"

    def start(self, vault_nodes: list[VaultNode], env: dict[str, str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(f"    server {v.host.name} {v.host.ip}:8200 check" for v in vault_nodes)
        # The same file as deploy/haproxy/vault.cfg, with the drill's addresses.
        template = (REPO / "deploy" / "haproxy" / "vault.cfg").read_text()
        head, rest = template.split("    # -- servers --\n", 1)
        cfg = head + servers + "\n" + rest.split("    # -- end servers --\n", 1)[1]
        (self.workdir / "haproxy.cfg").write_text(cfg)
        run([need("haproxy", "/usr/sbin/haproxy"), "-c", "-f", str(self.workdir / "haproxy.cfg")])
        hlog = open(self.workdir / "haproxy.log", "ab")
        self.haproxy = subprocess.Popen(
            self.host.cmd(need("haproxy", "/usr/sbin/haproxy"), "-db", "-f",
                          str(self.workdir / "haproxy.cfg")),
            stdout=hlog, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        hlog.close()
        slog = open(self.workdir / "serve.log", "ab")
        full_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))},
            **env,
            "VAULT_ADDR": "http://127.0.0.1:8200",
            "SEALEDNOTES_BIND": f"{self.host.ip}:8080",
            # Inside the drill's directory, removed with it.
            "PROMETHEUS_MULTIPROC_DIR": str(self.workdir / "metrics"),
        }
        (self.workdir / "metrics").mkdir(exist_ok=True)
        self.serve = subprocess.Popen(
            self.host.cmd(SEALEDNOTES, "serve"),
            stdout=slog,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
        slog.close()

        def ready() -> bool:
            assert self.serve is not None and self.serve.poll() is None, self.log()
            return http("GET", self.url + "/readyz", timeout=3)[0] == 200

        wait_for(f"{self.host.name} /readyz", ready, 60)

    def log(self) -> str:
        return (self.workdir / "serve.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        for proc in (self.serve, self.haproxy):
            if proc is not None:
                stop_process(proc)


@dataclass
class Cluster:
    net: Network
    workdir: Path
    vaults: list[VaultNode] = field(default_factory=list)
    pgs: list[PgNode] = field(default_factory=list)
    replicas: list[Replica] = field(default_factory=list)
    root_token: str = ""
    unseal_keys: list[str] = field(default_factory=list)
    approle: dict[str, str] = field(default_factory=dict)

    # -- Vault ----------------------------------------------------------------------
    def start_vault(self) -> None:
        hosts = [self.net.add_host(f"vault{i}", 10 + i) for i in (1, 2, 3)]
        ips = [h.ip for h in hosts]
        self.vaults = [VaultNode(h, self.workdir / h.name, ips) for h in hosts]
        for v in self.vaults:
            v.start()
        first = self.vaults[0]
        status, init = http(
            "PUT",
            first.addr + "/v1/sys/init",
            {"secret_shares": 1, "secret_threshold": 1},
            timeout=60,
        )
        assert status == 200, init
        self.root_token = init["root_token"]
        self.unseal_keys = init["keys_base64"]
        self.unseal(first)
        wait_for("vault1 active", lambda: self.leader() == first, 60)
        for v in self.vaults[1:]:
            # retry_join: a node joins the cluster when it is given the unseal key.
            wait_for(f"{v.host.name} unsealed", lambda v=v: self._unseal_once(v), 90, 1.0)

        def three_voters() -> bool:
            _, cfg = http("GET", first.addr + "/v1/sys/storage/raft/configuration",
                          token=self.root_token)  # fmt: skip
            servers = cfg["data"]["config"]["servers"]
            return len(servers) == 3 and all(s["voter"] for s in servers)

        wait_for("three Raft voters", three_voters, 90, 1.0)

    def _unseal_once(self, v: VaultNode) -> bool:
        for key in self.unseal_keys:
            with contextlib.suppress(OSError):
                http("PUT", v.addr + "/v1/sys/unseal", {"key": key}, timeout=10)
        h = v.health()
        return bool(h and h.get("initialized") and not h.get("sealed"))

    def unseal(self, v: VaultNode) -> None:
        wait_for(f"{v.host.name} unsealed", lambda: self._unseal_once(v), 60, 0.5)

    def leader(self) -> VaultNode | None:
        for v in self.vaults:
            if v.process is None:
                continue
            with contextlib.suppress(OSError, KeyError, TypeError):
                _, body = http("GET", v.addr + "/v1/sys/leader", timeout=2)
                addr = body["leader_address"]
                for cand in self.vaults:
                    if cand.addr == addr and cand.process is not None:
                        h = cand.health()
                        if h and not h.get("standby") and not h.get("sealed"):
                            return cand
        return None

    # -- PostgreSQL -----------------------------------------------------------------
    def start_postgres(self) -> None:
        h1 = self.net.add_host("pg1", 21)
        h2 = self.net.add_host("pg2", 22)
        primary = PgNode("pg1", self.workdir / "pg1", h1.ip, 5432, h1.netns)
        standby = PgNode("pg2", self.workdir / "pg2", h2.ip, 5432, h2.netns)
        primary.initdb(synchronous_standby="pg2").start()
        standby.standby_of(primary, application_name="pg2").start()
        self.pgs = [primary, standby]

        def synchronous() -> bool:
            with primary.connect() as conn:
                row = conn.execute(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'pg2'"
                ).fetchone()
            return bool(row and row[0] == "sync")

        wait_for("pg2 a synchronous standby", synchronous, 60)
        with primary.connect() as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def app_database_url(self) -> str:
        hosts = ",".join(f"{p.host}:{p.port}" for p in self.pgs)
        return f"postgresql://{APP_ROLE}@{hosts}/{DATABASE}?{PG_PARAMS}"

    def owner_database_url(self) -> str:
        hosts = ",".join(f"{p.host}:{p.port}" for p in self.pgs)
        return f"postgresql://postgres@{hosts}/{DATABASE}?{PG_PARAMS}"

    # -- the service ----------------------------------------------------------------
    def ops(self, *argv: str) -> dict[str, Any]:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))},
            "SEALEDNOTES_DATABASE_URL": self.owner_database_url(),
            "VAULT_ADDR": self.vaults[0].addr,
            "VAULT_TOKEN": self.root_token,
            # The drill measures failover, not Vault's unwrap quota (its own tests do):
            # with the key cache off every read unwraps, so leave room.
            "SEALEDNOTES_VAULT_UNWRAP_HEADROOM": "1000",
        }
        out = run([SEALEDNOTES, *argv, "--json"], env=env, timeout=120).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))

    def start_service(self, extra_env: dict[str, str]) -> None:
        self.ops("migrate", "--app-role", APP_ROLE)
        # The service's AppRole works only from the drill's own network.
        setup = self.ops(
            "vault-setup", "--issue-secret-id", "--bound-cidr", f"{self.net.subnet}.0/24"
        )
        self.approle = dict(setup["approle"])
        env = {
            "SEALEDNOTES_DATABASE_URL": self.app_database_url(),
            "SEALEDNOTES_VAULT_ROLE_ID": self.approle["role_id"],
            "SEALEDNOTES_VAULT_SECRET_ID": self.approle["secret_id"],
            **extra_env,
        }
        for i in (1, 2):
            host = self.net.add_host(f"app{i}", 30 + i)
            replica = Replica(host, self.workdir / host.name)
            self.replicas.append(replica)
            replica.start(self.vaults, env)

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()
        for v in self.vaults:
            v.stop()
        for p in self.pgs:
            p.stop()
