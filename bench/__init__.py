"""Side-by-side benchmarks for Sealed Notes (`python -m bench.run`, or `make bench`).

The package starts everything it measures itself: PostgreSQL (embedded, or the
admin URL in ``SEALEDNOTES_BENCH_DATABASE_URL``), an OpenBao dev server, the
Sealed Notes API under gunicorn, and two comparison servers from
`bench.peers` (a plaintext Flask + psycopg app and a "Vault Transit on every
note" app). Every HTTP case drives all three systems with the same load
generator, the same requests and the same gunicorn workers/threads, on
loopback, for a bounded time.

Modules:

* `bench.stack`      PostgreSQL, OpenBao and gunicorn server processes.
* `bench.seed`       tenants, clinicians, patients and notes for all three systems.
* `bench.peers`      the two comparison servers (a gunicorn app factory).
* `bench.loadgen`    wrk when installed, else a multi-process asyncio HTTP client.
* `bench.auditbench` `UnitOfWork.audit.insert_audit_event` against a plain INSERT, 1/4/16 writers.
* `bench.micro`      XChaCha20-Poly1305 seal/open and one Transit unwrap.
* `bench.roundtrips` libpq trace of one warm read and one create (where the time goes).
* `bench.cpu`        CPU time per request of each process tree (/proc).
* `bench.report`     the table and the JSON summary.
* `bench.run`        the command line.
"""
