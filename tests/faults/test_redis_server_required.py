"""Without ``redis-server`` the fault tests that need one error, saying what to install; none is skipped."""

import subprocess
import sys
from pathlib import Path

from tests.faults.conftest import NO_REDIS_SERVER

ROOT = Path(__file__).resolve().parents[2]
#: A test that needs a redis-server of its own (a shared stack), and one that starts nothing.
NEEDS_ONE = "tests/faults/test_limits.py::test_a_body_over_the_size_limit_is_413"
NEEDS_NONE = "tests/faults/test_pickle.py::test_no_shipped_module_can_evaluate_text_or_run_a_shell"


def test_without_redis_server_a_fault_test_errors_saying_what_to_install_and_none_is_skipped(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()  # the PATH: no redis-server on it
    env = {"PATH": str(empty), "HOME": str(tmp_path), "COLUMNS": "1000"}  # wide: the summary lines whole

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", NEEDS_ONE, NEEDS_NONE],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert run.returncode == 1, run.stdout + run.stderr
    summary = run.stdout.strip().splitlines()[-1]
    assert "1 passed" in summary and "1 error" in summary and "skipped" not in summary, run.stdout
    assert f"ERROR {NEEDS_ONE} - Failed: {NO_REDIS_SERVER}" in run.stdout
    assert "apt-get install redis-server" in NO_REDIS_SERVER
