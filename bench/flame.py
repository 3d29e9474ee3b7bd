"""A flame graph of Sealed Notes' warm read under load: py-spy samples every
gunicorn worker while the load generator runs, keeping only samples that hold the
GIL (Python's own CPU; waits on PostgreSQL and sockets release it), and writes an
SVG. Wide frames are where the next millisecond is."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

from bench.loadgen import HttpRequest, run_load
from bench.stack import ServerProcess


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


def record_flame_graph(
    server: ServerProcess,
    requests: list[HttpRequest],
    *,
    out: Path,
    seconds: float,
    connections: int,
    loadgen: str,
    workdir: Path,
) -> Path | None:
    """Profile `server` (master and workers) for `seconds` under the read load.
    Returns the SVG path, or None when py-spy is missing or cannot attach."""
    tool = py_spy()
    if tool is None or server.pid is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        tool,
        "record",
        "--pid",
        str(server.pid),
        "--subprocesses",
        "--nonblocking",  # never pause the workers: the profile must not slow them
        "--gil",  # only samples holding the GIL: Python's CPU, not waits on sockets
        "--rate",
        "250",
        "--duration",
        str(int(seconds)),
        "--format",
        "raw" if out.suffix == ".txt" else "flamegraph",  # .txt: collapsed stacks
        "--output",
        str(out),
    ]
    log_path = workdir / "py-spy.log"
    with open(log_path, "wb") as log:
        profiler = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        load = threading.Thread(
            target=run_load,
            args=(server.url, requests),
            kwargs={
                "seconds": seconds,
                "connections": connections,
                "tool": loadgen,
                "workdir": workdir,
            },
            daemon=True,
        )
        load.start()
        load.join()
        try:
            profiler.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            profiler.kill()
            return None
    return out if profiler.returncode == 0 and out.exists() else None
