"""Shared helpers for the drills: prerequisites that fail (never skip), commands,
latency figures, and the figures table printed at the end of `make drills`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

# Every figure a drill measures, printed by conftest.pytest_terminal_summary and
# written to $SEALEDNOTES_DRILL_FIGURES (default: drill-figures.json in the cwd).
FIGURES: dict[str, Any] = {}


def record(name: str, value: Any) -> None:
    FIGURES[name] = value
    print(f"\nFIGURE {name} = {value}")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the drills need root (network namespaces, chroot, podman); CI runs as root")


def need(binary: str, *candidates: str) -> str:
    """The path of a program the drill needs; a missing one FAILS the drill."""
    for c in (*candidates, binary):
        if os.path.isabs(c) and os.access(c, os.X_OK):
            return c
        found = shutil.which(c)
        if found:
            return found
    pytest.fail(f"{binary} not found: .ci/run installs it (apt-get install ...)")


def run(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        input=input.decode() if input is not None else None,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
        )
    return proc


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("inf")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))  # nearest rank
    return ordered[index]


def wait_for(
    what: str, probe: Callable[[], bool], timeout: float = 60, interval: float = 0.2
) -> float:
    """Poll until probe() is true; returns the seconds waited, fails after timeout."""
    started = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - started < timeout:
        try:
            if probe():
                return time.monotonic() - started
        except Exception as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def write_figures() -> Path:
    path = Path(os.environ.get("SEALEDNOTES_DRILL_FIGURES", "drill-figures.json"))
    with contextlib.suppress(OSError):
        path.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
    return path


@contextlib.contextmanager
def terminating(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    """SIGTERM the process group (started with start_new_session), then SIGKILL."""
    import signal

    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
