"""The harvester on jobs that are still running: Ctrl-C during ``run`` and ``wait``, ``run --cancel-on-interrupt``,
``harvester cancel``, against the shared ``pair`` stack and its test-only ``sleep`` operation.

Ctrl-C is a real SIGINT sent to a real ``harvester`` process, once its stderr says the job exists.
"""

import errno
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time

import pytest
import requests

from tests.faults.conftest import HARVESTER, harvest_command, sleep_step, submit_started, wait_for

#: Seconds the jobs here sleep in their one step: long enough to be interrupted, short enough that the stack
#: is idle again soon after (a cancelled step runs on to its end, well within CANCEL_GRACE_SECONDS).
STEP_SECONDS = 2


@pytest.fixture(scope="module")
def stack(shared_stack):
    return shared_stack("pair")


class Harvester:
    """A ``harvester`` process whose stderr is read as it comes, to act when a line shows up."""

    def __init__(self, args):
        # SIGINT as the default action in the child, whatever the test runner's: Python then raises
        # KeyboardInterrupt on it (an inherited "ignore" would stay ignored).
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self._reader.start()

    def wait_for(self, pattern, timeout=30):
        """The match of ``pattern`` in the first stderr line it matches, once there is one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            assert self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s: {''.join(self.lines)}")

    def interrupt(self, timeout=30):
        """Ctrl-C: SIGINT, then :meth:`finish`."""
        self.proc.send_signal(signal.SIGINT)
        return self.finish(timeout)

    def finish(self, timeout=30):
        """``(exit code, stdout, stderr)`` once the process has ended."""
        stdout = self.proc.stdout.read()
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code, stdout, "".join(self.lines)


def ran(args, timeout=60):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def status(stack, job_id):
    return requests.get(f"{stack.url}/jobs/{job_id}", timeout=10).json()["status"]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,name\n1,a\n2,b\n3,c\n")
    return path


SLEEP = ["--op", f'sleep:{{"seconds": {STEP_SECONDS}}}']


def test_ctrl_c_during_run_leaves_the_job_running_and_the_printed_wait_writes_its_output(stack, source, tmp_path):
    output = tmp_path / "out.jsonl"
    harvest = Harvester(harvest_command(stack.url, source, output, *SLEEP))
    job_id = harvest.wait_for(r"Submitted job (\S+)").group(1)

    code, stdout, stderr = harvest.interrupt()

    assert code == 130, stderr
    assert "Aborted!" not in stderr
    assert f"Interrupted: job {job_id} goes on at the gateway" in stderr
    wait_line = f"harvester wait {job_id} --output {output} --gateway {stack.url}"
    assert f"  Follow it and write its output: {wait_line}\n" in stderr
    assert f"  Cancel it: harvester cancel {job_id} --gateway {stack.url}\n" in stderr
    assert status(stack, job_id) in ("started", "processing")
    assert not output.exists()

    # The command printed goes on: it follows the job to its end and writes the output, with its manifest.
    waited = ran([HARVESTER, *shlex.split(wait_line)[1:]])
    assert waited.returncode == 0, waited.stderr
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == [1, 2, 3]
    assert json.loads((tmp_path / "out.jsonl.manifest.json").read_text())["job_id"] == job_id


def test_ctrl_c_during_run_with_cancel_on_interrupt_cancels_the_job(stack, source, tmp_path):
    harvest = Harvester(harvest_command(stack.url, source, tmp_path / "out.csv", *SLEEP, "--cancel-on-interrupt"))
    job_id = harvest.wait_for(r"Submitted job (\S+)").group(1)

    code, _, stderr = harvest.interrupt()

    assert code == 130, stderr
    assert f"Interrupted: job {job_id} is cancelled (--cancel-on-interrupt).\n" in stderr
    assert status(stack, job_id) == "cancelled"
    assert list(tmp_path.iterdir()) == [source]


def test_ctrl_c_of_wait_then_cancel_a_running_job(stack, tmp_path):
    job_id = submit_started(stack.url, [sleep_step(STEP_SECONDS, tmp_path / "pids")], tmp_path / "pids")
    waiting = Harvester([HARVESTER, "wait", job_id, "--gateway", stack.url])
    waiting.wait_for(rf"Job {job_id} processing")

    code, _, stderr = waiting.interrupt()
    cancelled = ran([HARVESTER, "cancel", job_id, "--gateway", stack.url])
    again = ran([HARVESTER, "cancel", job_id, "--gateway", stack.url])

    assert code == 130, stderr
    assert f"  Follow it and write its output: harvester wait {job_id} --output PATH --gateway {stack.url}\n" in stderr
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"Job {job_id} cancelled.")
    assert wait_for(stack.url, job_id)["status"] == "cancelled"
    assert again.returncode == 2
    assert f"Job {job_id} had already ended: it is cancelled." in again.stderr


def test_ctrl_c_during_the_upload_submits_nothing(stack, tmp_path):
    # A source that is still being written (a FIFO): the harvester is reading it when Ctrl-C comes.
    fifo = tmp_path / "slow.csv"
    os.mkfifo(fifo)
    newest = requests.get(f"{stack.url}/jobs?limit=1", timeout=10).json()["jobs"]
    harvest = Harvester(harvest_command(stack.url, fifo, tmp_path / "out.csv"))
    writer = _open_writer(fifo)
    try:
        os.write(writer, b"id,name\n1,a\n")
        harvest.wait_for(r"Uploading .*slow\.csv")
        time.sleep(0.2)  # into the read that waits for more
        harvest.proc.send_signal(signal.SIGINT)
    finally:
        os.close(writer)  # the end of the source: a read blocked on it returns

    code, _, stderr = harvest.finish()

    assert code == 130, stderr
    assert "Interrupted: nothing was submitted.\n" in stderr
    assert requests.get(f"{stack.url}/jobs?limit=1", timeout=10).json()["jobs"] == newest


def _open_writer(fifo, timeout=10):
    """Open ``fifo`` for writing once a reader has it open (without blocking the test for ever)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
