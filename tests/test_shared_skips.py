"""Tests that need ../shared never skip in silence: one closing line, and under CI=true a failed run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.shared_skips import verdict

REPO = Path(__file__).resolve().parents[1]
SKIPS = [("tests/pbx/test_ami.py::test_a", "../shared not present: asterisk/dist is needed"),
         ("tests/pbx/test_sip_path.py::test_b[x/y]", "../shared not present: asterisk/dist is needed"),
         ("tests/training/test_train_shared_data.py::test_c", "../shared/data not present: cremad is missing")]


def test_without_shared_one_line_names_what_skipped_and_the_run_passes() -> None:
    line, fail = verdict(SKIPS, shared_present=False, ci=True)
    assert "skipped 3 tests that need ../shared" in line and "tests/pbx 2, tests/training 1" in line
    assert not fail


def test_in_ci_with_shared_present_any_such_skip_fails_the_run() -> None:
    line, fail = verdict(SKIPS[:1], shared_present=True, ci=True)
    assert fail and line.startswith("FAILED (CI=true): 1 tests") and "asterisk/dist is needed" in line
    assert verdict(SKIPS[:1], shared_present=True, ci=False)[1] is False  # a developer's run only says so
    assert verdict([], shared_present=True, ci=True) == (None, False)


def run_pytest(tmp_path: Path, shared: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    """pytest on one test that skips as a ../shared-dependent test does, the hooks pointed at ``shared``."""
    (tmp_path / "conftest.py").write_text(
        "from pathlib import Path\n"
        "import tests.support.shared_skips as shared_skips\n"
        "from tests.support.shared_skips import pytest_runtest_logreport, pytest_sessionfinish, pytest_terminal_summary\n"
        f"shared_skips.SHARED = Path({str(shared)!r})\n")
    (tmp_path / "test_it.py").write_text(
        "import pytest\n\ndef test_needs_shared():\n    pytest.skip('../shared not present: x is needed')\n\n"
        "def test_other():\n    pass\n")
    env = {**os.environ, "CI": "true" if ci else "", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)


def test_the_hooks_print_the_line_and_fail_a_ci_run(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    missing = run_pytest(tmp_path, shared, ci=True)
    assert missing.returncode == 0, missing.stdout
    assert "skipped 1 tests that need ../shared" in missing.stdout
    shared.mkdir()
    present = run_pytest(tmp_path, shared, ci=True)
    assert present.returncode == 1, present.stdout  # pytest alone exits 0 here: 1 passed, 1 skipped
    assert "FAILED (CI=true): 1 tests that need ../shared skipped" in present.stdout
