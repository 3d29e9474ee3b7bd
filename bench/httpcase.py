"""One HTTP case (read or create): every system under the same load in interleaved
slices, with CPU per request and Sealed Notes' key-cache counters."""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench import report
from bench.cpu import CpuMeter
from bench.loadgen import HttpRequest, LoadResult, combine, run_load
from bench.seed import Dataset, check_response_body
from bench.stack import ServerProcess, Stack

MAX_WARMUP_SLICES = 5


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _http(url: str, request: HttpRequest | None = None, timeout: float = 10) -> tuple[int, bytes]:
    req = urllib.request.Request(  # noqa: S310 - loopback only
        url,
        data=request.body if request else None,
        method=request.method if request else "GET",
        headers=dict(request.headers) if request else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def preflight(servers: dict[str, ServerProcess], data: Dataset) -> None:
    """Every system answers the same note with the same text, and accepts a create."""
    note = data.notes[-1]
    read = data.read_requests()
    read_one = next(r for r in read if r.path.endswith(note.id))
    create_one = data.create_requests()[0]
    for name, server in servers.items():
        status, body = _http(server.url + read_one.path, read_one)
        if status != 200 or not check_response_body(body, note):
            raise RuntimeError(f"{name}: pre-flight read answered {status}; see {server.log_path}")
        status, _ = _http(server.url + create_one.path, create_one)
        if status != 201:
            raise RuntimeError(f"{name}: pre-flight create answered {status}")


def key_cache_counts(server: ServerProcess) -> dict[str, float]:
    """Sealed Notes' key cache hit/miss counters, summed over its workers."""
    status, body = _http(server.metrics_url)
    counts = {"hit": 0.0, "miss": 0.0}
    if status != 200:
        return counts
    for line in body.decode().splitlines():
        if line.startswith("sealednotes_key_cache_total{"):
            labels, _, value = line.rpartition(" ")
            for result in counts:
                if f'result="{result}"' in labels:
                    counts[result] += float(value)
    return counts


def warm_up(
    server: ServerProcess,
    requests: list[HttpRequest],
    args: argparse.Namespace,
    workdir: Path,
    *,
    until_keys_cached: bool,
) -> None:
    """Unmeasured load first. For Sealed Notes, "warm" means every worker already
    holds every patient's key: repeat warm-up slices (at most MAX_WARMUP_SLICES)
    until one passes without a key-cache miss."""
    if args.warmup <= 0:
        return
    for _ in range(MAX_WARMUP_SLICES if until_keys_cached else 1):
        before = key_cache_counts(server) if until_keys_cached else None
        run_load(
            server.url,
            requests,
            seconds=args.warmup,
            connections=args.connections,
            tool=args.loadgen,
            workdir=workdir,
        )
        if before is None or key_cache_counts(server)["miss"] == before["miss"]:
            return


def run_http_case(
    case: str,
    requests: list[HttpRequest],
    servers: dict[str, ServerProcess],
    stack: Stack,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    """Every system under the same load, in interleaved slices: the measured
    `args.seconds` per system are split into `args.rounds` slices, run in the
    order A B C, then C B A, and so on, so that a drift in background load on the
    machine falls on every system alike. Each slice has its own warm-up."""
    slices: dict[str, list[LoadResult]] = {name: [] for name in servers}
    postmaster = stack.postmaster_pid()
    meters: dict[str, CpuMeter] = {}
    for name, server in servers.items():
        roots = {"server": server.pid or 0, "openbao": stack.bao_pid or 0}
        if postmaster is not None:
            roots["postgres"] = postmaster
        meters[name] = CpuMeter(roots)
    cpu: dict[str, dict[str, float]] = {name: {} for name in servers}
    loadavg: dict[str, list[float]] = {name: [] for name in servers}
    cache_delta = {"hit": 0.0, "miss": 0.0}
    order = list(servers)
    seconds = args.seconds / args.rounds
    for round_ in range(args.rounds):
        for name in order if round_ % 2 == 0 else order[::-1]:
            server = servers[name]
            log(f"{case}: {name} (slice {round_ + 1}/{args.rounds}, {seconds:g} s)")
            warm_up(server, requests, args, workdir, until_keys_cached=name == "sealednotes")
            loadavg[name].append(round(os.getloadavg()[0], 2))
            before = key_cache_counts(server) if name == "sealednotes" else None
            cpu_before = meters[name].sample()
            result = run_load(
                server.url,
                requests,
                seconds=seconds,
                connections=args.connections,
                tool=args.loadgen,
                workdir=workdir,
            )
            for k, v in CpuMeter.delta(cpu_before, meters[name].sample()).items():
                cpu[name][k] = cpu[name].get(k, 0.0) + v
            if before is not None:
                after = key_cache_counts(server)
                for k in cache_delta:
                    cache_delta[k] += after[k] - before[k]
            log(
                f"{case}: {name}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                f"p99 {result.p99_ms:.2f} ms, {result.errors} errors"
                + (f" {result.error_kinds}" if result.error_kinds else "")
            )
            slices[name].append(result)
    combined = {name: combine(r) for name, r in slices.items()}
    cpu_per_request = {
        name: {k: v / combined[name].requests * 1000 for k, v in cpu[name].items()}
        for name in servers
        if cpu[name] and combined[name].requests
    }
    slices_rps = {name: [round(r.rps, 1) for r in results] for name, results in slices.items()}
    summary = report.http_summary(case, combined, cpu_per_request, slices_rps)
    summary["slices_rps"] = slices_rps
    summary["key_cache"] = {k: int(v) for k, v in cache_delta.items()}
    summary["loadavg"] = loadavg
    summary["requests_in_rotation"] = len(requests)
    return summary
