"""Tests that need ../shared (corpora, real Asterisk captures, the Asterisk build): never skipped in silence.

Every such test skips with a reason that starts with ``../shared``. The run ends with one line naming how many
skipped, where and why; under ``CI=true`` with ../shared present any such skip fails the run (CI has the
corpora, so a skip there hides a broken test). tests/conftest.py installs the hooks.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
PREFIX = "../shared"  # how the skip reason of every ../shared-dependent test starts

skipped: list[tuple[str, str]] = []  # (node id, reason) of this session's ../shared skips


def verdict(skips: list[tuple[str, str]], shared_present: bool, ci: bool) -> tuple[str | None, bool]:
    """The closing line for ``skips`` (None when there are none) and whether they fail the run."""
    if not skips:
        return None, False
    areas = Counter("/".join(node.split("::")[0].split("/")[:2]) for node, _ in skips)
    where = ", ".join(f"{area} {n}" for area, n in sorted(areas.items()))
    if not shared_present:
        return (f"skipped {len(skips)} tests that need ../shared (the corpora and the Asterisk build; "
                f"not found at {SHARED}): {where}; put shared/ beside the checkout to run them"), False
    fail = ci
    return (f"{'FAILED (CI=true): ' if fail else ''}{len(skips)} tests that need ../shared skipped although it is "
            f"present ({where}), e.g. {skips[0][1]}"), fail


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and _reason(report).startswith(PREFIX):
        skipped.append((report.nodeid, _reason(report)))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _, fail = verdict(skipped, SHARED.is_dir(), os.environ.get("CI") == "true")
    if fail and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    line, fail = verdict(skipped, SHARED.is_dir(), os.environ.get("CI") == "true")
    if line:
        terminalreporter.write_line(line, red=fail, yellow=not fail, bold=True)
