"""Drills: the image, the reverse proxy and the failover across hosts, run as ops
would run them (`make drills`, root, Debian packages installed by .ci/run).

A drill never skips: a missing prerequisite is a failure, and a skip raised by
anything (a fixture, a plugin) is turned into a failure here, so a drill run
cannot pass without having run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.drills.common import FIGURES, write_figures


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/drills/" in item.nodeid or item.nodeid.startswith("drills/"):
            item.add_marker(pytest.mark.drill)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"drills never skip; this one tried to: {report.longrepr}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    path = write_figures()
    terminalreporter.section("drill figures")
    for name in sorted(FIGURES):
        terminalreporter.write_line(f"{name:48} {FIGURES[name]}")
    terminalreporter.write_line(f"(also in {path})")
