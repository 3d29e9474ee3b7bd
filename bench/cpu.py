"""CPU time per request, by process group (Linux ``/proc``).

On a machine where the load generator, the servers, PostgreSQL and OpenBao
share two cores, throughput mostly measures CPU per request; CPU time is also
far less disturbed by other work on the machine than wall-clock rates are.
`CpuMeter` samples the user+system time of a few process trees:

* each tree is a root process and all its live descendants, plus what the root
  and they have reaped from exited children (``cutime``/``cstime``), so a
  PostgreSQL backend that exits mid-run is still counted via the postmaster;
* ``loadgen`` is this process's reaped children (wrk, or the Python load
  generator's worker processes), from `resource.getrusage`.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces.
    fields = raw[raw.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) / _TICKS


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of `root`, its live descendants and everything they reaped."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                stats[int(entry.name)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        if pid in stats:
            total += stats[pid][1]
        stack.extend(children.get(pid, ()))
    return total


def reaped_children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parent_pid(pid: int) -> int | None:
    st = _stat(pid)
    return st[0] if st else None


class CpuMeter:
    """Samples named process trees (and the load generator) for CPU deltas."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.available = PROC.is_dir()
        self._roots = {k: v for k, v in roots.items() if (PROC / str(v)).exists()}

    def sample(self) -> dict[str, float]:
        if not self.available:
            return {}
        out = {name: tree_cpu_seconds(pid) for name, pid in self._roots.items()}
        out["loadgen"] = reaped_children_cpu_seconds()
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in after if k in before}
