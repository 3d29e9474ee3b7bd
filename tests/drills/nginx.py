"""Debian's nginx running deploy/nginx/sealednotes.conf.template, as the drill's
reverse proxy (its own prefix directory, foreground, stopped by the fixture)."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

from tests.drills.common import need, run, stop_process

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "sealednotes.conf.template"


def render(template: str, values: dict[str, str]) -> str:
    """envsubst as the nginx image does it: only ${NAME} for the names given."""

    def sub(m: re.Match[str]) -> str:
        return values.get(m.group(1), m.group(0))

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)\}", sub, template)


class Nginx:
    def __init__(self, prefix: Path, upstream: str, listen: str) -> None:
        self.prefix = prefix
        self.listen = listen
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "sealednotes.conf").write_text(
            render(TEMPLATE.read_text(), {"SEALEDNOTES_UPSTREAM": upstream, "NGINX_LISTEN": listen})
        )
        temp = prefix / "temp"
        temp.mkdir(exist_ok=True)
        temp.chmod(0o777)
        (prefix / "nginx.conf").write_text(
            f"""
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {prefix}/sealednotes.conf;
}}
"""
        )
        self.nginx = need("nginx", "/usr/sbin/nginx")
        run([self.nginx, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")])
        self.log = open(prefix / "access.log", "wb")
        self.process = subprocess.Popen(
            [self.nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        host, _, port = listen.rpartition(":")
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((host or "127.0.0.1", int(port)), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(
                        "nginx did not start: " + (prefix / "error.log").read_text()
                    ) from None
                time.sleep(0.1)

    def access_log(self) -> str:
        return (self.prefix / "access.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()
