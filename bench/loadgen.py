"""One closed-loop HTTP load generator for every system under test.

`run_load` drives a base URL with a fixed number of keep-alive connections, each
cycling through the same request list, for a bounded time, and reports
throughput and latency percentiles. It uses ``wrk`` when it is installed (a
generated Lua script serves the request list) and otherwise a multi-process
asyncio client written here. Both are closed-loop (a connection sends its next
request when the previous answer arrived), so the two are comparable with each
other in kind, not in cost: the Python client needs far more CPU per request,
which on a small machine it takes away from the servers.

Requests answered with a status >= 400, and socket errors, count as errors.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TOOLS = ("auto", "wrk", "python")


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes | None = field(default=None, repr=False)

    @classmethod
    def get(cls, path: str, token: str) -> HttpRequest:
        return cls("GET", path, (("Authorization", f"Bearer {token}"),))

    @classmethod
    def post_json(cls, path: str, token: str, payload: Any) -> HttpRequest:
        return cls(
            "POST",
            path,
            (("Authorization", f"Bearer {token}"), ("Content-Type", "application/json")),
            json.dumps(payload).encode("utf-8"),
        )

    def wire(self, host: str) -> bytes:
        """HTTP/1.1 keep-alive bytes of this request."""
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        if self.body is not None:
            lines.append(f"Content-Length: {len(self.body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + (self.body or b"")


@dataclass(frozen=True)
class LoadResult:
    tool: str
    seconds: float
    connections: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    # What the errors were (the Python generator only): status codes ("503") and
    # socket failures (the exception's name), so a failed request can be looked into.
    error_kinds: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def combine(results: list[LoadResult]) -> LoadResult:
    """Several slices of one system's run as one: throughput over the summed time;
    latency percentiles and mean weighted by requests (an approximation: wrk
    reports percentiles, not histograms)."""
    if len(results) == 1:
        return results[0]
    total = sum(r.requests for r in results)
    seconds = sum(r.seconds for r in results)

    def weighted(values: list[float]) -> float:
        if not total:
            return math.nan
        return sum(v * r.requests for v, r in zip(values, results, strict=True)) / total

    return LoadResult(
        tool=results[0].tool,
        seconds=seconds,
        connections=results[0].connections,
        requests=total,
        errors=sum(r.errors for r in results),
        rps=total / seconds if seconds else 0.0,
        p50_ms=weighted([r.p50_ms for r in results]),
        p99_ms=weighted([r.p99_ms for r in results]),
        mean_ms=weighted([r.mean_ms for r in results]),
        error_kinds=dict(sum((Counter(r.error_kinds) for r in results), Counter())),
    )


def resolve_tool(tool: str) -> str:
    if tool not in TOOLS:
        raise ValueError(f"load generator must be one of {TOOLS}")
    if tool == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if tool == "wrk" and not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed (apt-get install -y wrk), use --loadgen python")
    return tool


def run_load(
    base_url: str,
    requests: list[HttpRequest],
    *,
    seconds: float,
    connections: int,
    tool: str = "auto",
    workdir: Path | None = None,
) -> LoadResult:
    """Drive `base_url` with `requests` (cycled) for `seconds` over `connections`."""
    if not requests:
        raise ValueError("no requests to send")
    resolved = resolve_tool(tool)
    if resolved == "wrk":
        return _run_wrk(base_url, requests, seconds, connections, workdir)
    return _run_python(base_url, requests, seconds, connections)


# -- wrk ---------------------------------------------------------------------------------


def _lua_string(value: str) -> str:
    level = 0
    while f"]{'=' * level}]" in value:
        level += 1
    eq = "=" * level
    # A long bracket drops a newline right after the opening bracket: never start with one.
    return f"[{eq}[{value}]{eq}]" if not value.startswith("\n") else json.dumps(value)


def _wrk_script(requests: list[HttpRequest]) -> str:
    entries = []
    for r in requests:
        # Spaces matter: "[[[" would open a long string.
        headers = ", ".join(f"[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in r.headers)
        body = _lua_string(r.body.decode("utf-8")) if r.body is not None else "nil"
        entries.append(
            f"    wrk.format({_lua_string(r.method)}, {_lua_string(r.path)}, "
            f"{{{headers}}}, {body}),"
        )
    # The table is built in init(): wrk sets the Host header only after loading the script.
    return (
        "-- generated by bench.loadgen\n"
        "local reqs = {}\n"
        "local i = 0\n"
        "local counter = 0\n"
        "function setup(thread)\n"
        "  thread:set('offset', counter * 7919)\n"
        "  counter = counter + 1\n"
        "end\n"
        "function init(args)\n"
        "  reqs = {\n" + "\n".join(entries) + "\n  }\n"
        "  i = (offset or 0) % #reqs\n"
        "end\n"
        "function request()\n"
        "  i = i % #reqs + 1\n"
        "  return reqs[i]\n"
        "end\n"
        "function done(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        '  io.write(string.format(\'BENCH_JSON {"requests": %d, "duration_us": %d, '
        '"errors": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f}\\n\', '
        "summary.requests, summary.duration, "
        "e.connect + e.read + e.write + e.status + e.timeout, "
        "latency:percentile(50), latency:percentile(99), latency.mean))\n"
        "end\n"
    )


def _run_wrk(
    base_url: str,
    requests: list[HttpRequest],
    seconds: float,
    connections: int,
    workdir: Path | None,
) -> LoadResult:
    with tempfile.TemporaryDirectory(dir=workdir, prefix="wrk-") as d:
        # The script carries bench-only bearer tokens: private directory, deleted after.
        script = Path(d) / "requests.lua"
        script.write_text(_wrk_script(requests), encoding="utf-8")
        # One wrk thread drives thousands of requests per second: leave the other
        # core to the servers.
        argv = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            base_url,
        ]
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line.removeprefix("BENCH_JSON "))
            duration = data["duration_us"] / 1e6
            return LoadResult(
                tool="wrk",
                seconds=duration,
                connections=connections,
                requests=int(data["requests"]),
                errors=int(data["errors"]),
                rps=data["requests"] / duration if duration else 0.0,
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                mean_ms=float(data["mean_us"]) / 1000,
            )
    raise RuntimeError(f"wrk failed (exit {proc.returncode}): {proc.stderr.strip()[:500]}")


# -- Python fallback -----------------------------------------------------------------------


@dataclass
class _Tally:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return (status, server closes the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length: int | None = None
    chunked = close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and value == "close":
            close = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()
        close = True
    return status, close


async def _connection(
    host: str, port: int, wire: list[bytes], start: int, deadline: float, tally: _Tally
) -> None:
    i = start
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while time.perf_counter() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            raw = wire[i % len(wire)]
            i += 1
            started = time.perf_counter()
            writer.write(raw)
            status, close = await asyncio.wait_for(_read_response(reader), timeout=10)
            tally.latencies.append(time.perf_counter() - started)
            tally.requests += 1
            if status >= 400:
                tally.errors += 1
                tally.kinds[str(status)] += 1
            if close:
                writer.close()
                writer = None
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as e:
            tally.errors += 1
            tally.kinds[type(e).__name__] += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def _python_process(
    base_url: str, wire: list[bytes], connections: int, offset: int, seconds: float
) -> tuple[int, int, float, list[float], dict[str, int]]:
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    async def main() -> tuple[float, list[_Tally]]:
        started = time.perf_counter()
        deadline = started + seconds
        tallies = [_Tally() for _ in range(connections)]
        await asyncio.gather(
            *(
                _connection(host, port, wire, offset + k * 7919, deadline, t)
                for k, t in enumerate(tallies)
            )
        )
        return time.perf_counter() - started, tallies

    elapsed, tallies = asyncio.run(main())
    latencies = [x for t in tallies for x in t.latencies]
    kinds = sum((t.kinds for t in tallies), Counter())
    return (
        sum(t.requests for t in tallies),
        sum(t.errors for t in tallies),
        elapsed,
        latencies,
        dict(kinds),
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def _run_python(
    base_url: str, requests: list[HttpRequest], seconds: float, connections: int
) -> LoadResult:
    host = urlsplit(base_url).netloc
    wire = [r.wire(host) for r in requests]
    processes = max(1, min(2, connections))
    shares = [
        connections // processes + (1 if k < connections % processes else 0)
        for k in range(processes)
    ]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        results = pool.starmap(
            _python_process,
            [(base_url, wire, n, k * 104729, seconds) for k, n in enumerate(shares)],
        )
    total = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    rps = sum(r[0] / r[2] for r in results if r[2] > 0)
    latencies = sorted(x for r in results for x in r[3])
    return LoadResult(
        tool="python",
        seconds=max(r[2] for r in results),
        connections=connections,
        requests=total,
        errors=errors,
        rps=rps,
        p50_ms=_percentile(latencies, 50) * 1000,
        p99_ms=_percentile(latencies, 99) * 1000,
        mean_ms=(sum(latencies) / len(latencies) * 1000) if latencies else math.nan,
        error_kinds=dict(sum((Counter(r[4]) for r in results), Counter())),
    )
