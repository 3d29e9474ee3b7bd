"""make bench's verdicts: a ratio taken from slices that disagree is not a result."""

from __future__ import annotations

import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench import report
from bench.loadgen import HttpRequest, LoadResult, combine, run_load


def _result(rps: float) -> LoadResult:
    return LoadResult("python", 10.0, 16, int(rps * 10), 0, rps, 10.0, 20.0, 10.0)


def _read(plaintext_slices: list[float]) -> dict[str, dict[str, object]]:
    results = {"plaintext": _result(1500), "sealednotes": _result(900), "transit": _result(600)}
    slices = {"plaintext": plaintext_slices, "sealednotes": [905, 895], "transit": [600, 600]}
    return report.http_summary("read", results, None, slices)["ratios"]


def test_a_ratio_from_disagreeing_slices_is_neither_met_nor_missed() -> None:
    ratios = _read([2100, 900])
    assert ratios["sealednotes_vs_plaintext"]["met"] is None
    assert ratios["sealednotes_vs_plaintext"]["noisy"] == ["plaintext"]
    assert "NOISY" in report._verdict(ratios["sealednotes_vs_plaintext"])
    # The other peer's slices agree: its verdict stands.
    assert ratios["sealednotes_vs_transit"]["met"] is True
    assert ratios["sealednotes_vs_transit"]["noisy"] == []


def test_agreeing_slices_give_a_verdict() -> None:
    ratios = _read([1520, 1480])
    assert ratios["sealednotes_vs_plaintext"]["met"] is True
    assert ratios["sealednotes_vs_plaintext"]["noisy"] == []


def test_combined_slices_add_up_their_error_kinds() -> None:
    a = replace(_result(100.0), errors=2, error_kinds={"503": 1, "ConnectionResetError": 1})
    b = replace(_result(100.0), errors=1, error_kinds={"503": 1})
    combined = combine([a, b])
    assert combined.errors == 3
    assert combined.error_kinds == {"503": 2, "ConnectionResetError": 1}
    assert combined.as_dict()["error_kinds"] == {"503": 2, "ConnectionResetError": 1}


class _Refusing(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_python_load_generator_says_what_the_errors_were(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_load(
            url,
            [HttpRequest.get("/v1/notes/x", "t")],
            seconds=0.5,
            connections=2,
            tool="python",
            workdir=tmp_path,
        )
    finally:
        server.shutdown()
    assert result.errors == result.requests > 0
    assert result.error_kinds == {"503": result.errors}


def test_the_cold_read_is_judged_against_the_warm_read_of_its_own_path() -> None:
    timings = [
        {"operation": "Sealed Notes warm read, untraced", "p50_ms": 2.0},
        {"operation": "Sealed Notes cold read, untraced", "p50_ms": 4.5},
        {"operation": "Sealed Notes warm read, remembered caller", "p50_ms": 1.0},
        {"operation": "Sealed Notes cold read, remembered caller", "p50_ms": 4.5},
        {
            "operation": "Sealed Notes cold read, remembered caller, note unknown to the worker",
            "p50_ms": 3.25,
        },
    ]
    lines = report.cold_read_lines(timings)
    assert lines == [
        "  Sealed Notes cold read, untraced - warm, p50: +2.50 ms (target <= +3 ms: ok)",
        "  Sealed Notes cold read, remembered caller - warm, p50: +3.50 ms"
        " (target <= +3 ms: missed)",
        "  Sealed Notes cold read, remembered caller, note unknown to the worker - warm, p50:"
        " +2.25 ms (target <= +3 ms: ok)",
    ]
    assert report.cold_read_lines(timings[:1]) == []


def test_postgres_cpu_per_warm_read_is_judged_against_its_target() -> None:
    def read(postgres: float) -> dict[str, object]:
        return {"sealednotes": {"cpu_ms_per_request": {"server": 0.8, "postgres": postgres}}}

    assert report.postgres_cpu_lines(read(0.36)) == [
        "       Sealed Notes PostgreSQL CPU per warm read: 0.36 ms (target <= 0.5 ms: ok)"
    ]
    assert report.postgres_cpu_lines(read(0.84)) == [
        "       Sealed Notes PostgreSQL CPU per warm read: 0.84 ms (target <= 0.5 ms: missed)"
    ]
    # No CPU samples (the sampler could not read the backends): no verdict at all.
    assert report.postgres_cpu_lines({"sealednotes": {"cpu_ms_per_request": {}}}) == []
    assert report.postgres_cpu_lines(read(float("nan"))) == []
