"""`make demo` on a machine with no Redis at all: it falls back to the embedded server and completes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import localstack

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_demo_completes_with_the_embedded_redis_when_none_is_installed():
    env = dict(os.environ)
    env["REDIS_URL"] = f"redis://127.0.0.1:{localstack.free_port()}/0"  # nothing answers there
    env["PATH"] = str(Path(sys.executable).parent)  # and no redis-server on the PATH
    result = subprocess.run(
        [sys.executable, "scripts/demo.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started the embedded fakeredis server" in result.stdout
    assert "completed in" in result.stdout + result.stderr
    assert "125 rows in" in result.stdout + result.stderr
    assert (ROOT / ".demo" / "harvest.cleaned.jsonl.manifest.json").is_file()
