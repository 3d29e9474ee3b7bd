"""Hosts for the failover drill: one network namespace per host, each with a
veth pair onto one bridge in the root namespace (where the test itself runs,
as the clients' host). Everything is removed on exit, processes included."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.drills.common import need, run


@dataclass
class Host:
    name: str
    netns: str
    ip: str

    def cmd(self, *argv: str) -> list[str]:
        """argv run inside this host's network namespace."""
        return [need("ip"), "netns", "exec", self.netns, *argv]

    def pids(self) -> list[int]:
        out = run([need("ip"), "netns", "pids", self.netns], check=False).stdout
        return [int(p) for p in out.split()]

    def kill_everything(self) -> None:
        """The host dies: every process in its namespace gets SIGKILL at once."""
        for _ in range(5):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    def cut(self, keep: str) -> None:
        """Lose every packet that comes to this host from anywhere but `keep` (the
        clients' host): it still answers its clients, but hears from neither
        PostgreSQL nor Vault. What it sends leaves, as it would into a partition;
        dropping it on the way out instead would be a local firewall, which the
        kernel reports to TCP and waits out differently from a network that
        silently loses packets."""
        rules = (
            "table inet drillcut {\n"
            "  chain in {\n"
            "    type filter hook input priority 0; policy accept;\n"
            '    iifname "lo" accept\n'
            f"    ip saddr {keep} accept\n"
            "    drop\n"
            "  }\n"
            "}\n"
        )
        run(self.cmd(need("nft"), "-f", "-"), input=rules.encode())

    def restore(self) -> None:
        run(self.cmd(need("nft"), "delete", "table", "inet", "drillcut"))


@dataclass
class Network:
    """A /24 on a bridge; .1 is the root namespace (the test and its clients)."""

    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    hosts: dict[str, Host] = field(default_factory=dict)
    subnet: str = ""

    def __post_init__(self) -> None:
        # A per-run /24 inside 10.231.0.0/16, only ever on this bridge.
        self.subnet = f"10.231.{int(self.tag, 16) % 250 + 1}"
        self.bridge = f"snbr{self.tag}"
        self.gateway = f"{self.subnet}.1"

    def create(self) -> None:
        ip = need("ip")
        run([ip, "link", "add", self.bridge, "type", "bridge"])
        run([ip, "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
        run([ip, "link", "set", self.bridge, "up"])

    def add_host(self, name: str, octet: int) -> Host:
        ip = need("ip")
        host = Host(name, f"sn{self.tag}-{name}", f"{self.subnet}.{octet}")
        outside, inside = f"sn{self.tag}{octet}h", f"sn{self.tag}{octet}n"
        run([ip, "netns", "add", host.netns])
        self.hosts[name] = host
        run([ip, "link", "add", outside, "type", "veth", "peer", "name", inside])
        run([ip, "link", "set", outside, "master", self.bridge, "up"])
        run([ip, "link", "set", inside, "netns", host.netns])
        run(host.cmd(ip, "link", "set", inside, "name", "eth0"))
        run(host.cmd(ip, "addr", "add", f"{host.ip}/24", "dev", "eth0"))
        run(host.cmd(ip, "link", "set", "eth0", "up"))
        run(host.cmd(ip, "link", "set", "lo", "up"))
        return host

    def destroy(self) -> None:
        ip = need("ip")
        for host in self.hosts.values():
            host.kill_everything()
            subprocess.run([ip, "netns", "del", host.netns], capture_output=True, check=False)
        self.hosts.clear()
        subprocess.run([ip, "link", "del", self.bridge], capture_output=True, check=False)


@contextlib.contextmanager
def network() -> Iterator[Network]:
    net = Network()
    try:
        net.create()
        yield net
    finally:
        net.destroy()
