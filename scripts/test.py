"""``make test``: the whole suite as two pytest runs at once, one per CPU of a small machine.

The tests that start processes (``-m integration``: real workers, gateways and Redis servers, one after the
other, since they time what they start) run in the foreground, their output shown as it comes. The unit tests
(``-m "not integration"``, which start nothing and spend their time in Python) run beside them; their output is
shown when both have ended. The exit status is the first run's that failed, else 0.

Arguments are passed to both runs (``make test PYTEST_ARGS=-x``).
"""

import subprocess
import sys
import tempfile
from pathlib import Path


def pytest(marks, *args, **popen):
    return subprocess.Popen([sys.executable, "-m", "pytest", "-m", marks, *args], **popen)


def main(args):
    with tempfile.TemporaryDirectory(prefix="datajobs-unit-") as scratch, tempfile.TemporaryFile() as unit_output:
        # Its own temporary folder and no cache: nothing the two runs could both write at once.
        unit = pytest("not integration", "-p", "no:cacheprovider", f"--basetemp={Path(scratch) / 'tmp'}", *args,
                      stdout=unit_output, stderr=subprocess.STDOUT)
        processes = pytest("integration", *args).wait()
        unit.wait()
        unit_output.seek(0)
        print("\n" + " unit tests (run meanwhile) ".center(80, "="), flush=True)
        sys.stdout.buffer.write(unit_output.read())
        sys.stdout.flush()
    return next((status for status in (processes, unit.returncode) if status), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
