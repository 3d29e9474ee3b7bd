"""make bench's verdicts: a ratio taken from slices that disagree is not a result."""

from __future__ import annotations

from bench import report
from bench.loadgen import LoadResult


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
