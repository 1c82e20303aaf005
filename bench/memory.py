"""Wall time and peak memory of processes, for the scale benchmark (Linux: ``/usr/bin/time`` and ``/proc``).

- :func:`timed` runs a command under ``/usr/bin/time -v`` and reads its wall
  time, CPU time and "Maximum resident set size".
- :class:`PeakSampler` follows the processes of a running stack (the worker's
  process group, the gateway's process tree, Redis) in a thread and keeps each
  one's ``VmHWM`` (peak resident set) from ``/proc/<pid>/status`` and the CPU time
  it used meanwhile: a pool process that exits before the end still counts (up
  to its last sample).
- :func:`redis_memory` is Redis's own ``INFO memory`` peak.
"""

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis

TIME = "/usr/bin/time"
#: Seconds between two looks at ``/proc`` while a stack runs.
SAMPLE_SECONDS = 0.2


@dataclass
class Timed:
    """One command measured by ``/usr/bin/time -v``."""

    returncode: int
    wall: float  # seconds, "Elapsed (wall clock) time"
    user: float  # CPU seconds in user mode
    system: float  # CPU seconds in the kernel
    max_rss_kb: int  # "Maximum resident set size (kbytes)"
    stdout: str


def check_time():
    """Refuse to run without GNU time's ``-v`` (Debian/Ubuntu package ``time``)."""
    if not (Path(TIME).exists() and os.access(TIME, os.X_OK)):
        raise SystemExit(f"bench: {TIME} is needed for wall time and peak RSS (apt-get install time)")


def timed(argv, *, log_path, cwd=None, env=None, timeout=None):
    """Run ``argv`` under ``/usr/bin/time -v``; stderr goes to ``log_path``, stdout is returned in :class:`Timed`.

    Past ``timeout`` seconds the command and everything it started are killed (a session of their own) and
    the result has ``returncode`` -9 and no figures.
    """
    report = Path(log_path).with_suffix(".time")
    report.unlink(missing_ok=True)
    started = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [TIME, "-v", "-o", str(report), *map(str, argv)],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
        )  # fmt: skip
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Timed(-9, time.monotonic() - started, 0.0, 0.0, 0, "")
    fields = dict(line.strip().rsplit(": ", 1) for line in report.read_text().splitlines() if ": " in line)
    return Timed(
        returncode=proc.returncode,
        wall=_clock(fields["Elapsed (wall clock) time (h:mm:ss or m:ss)"]),
        user=float(fields["User time (seconds)"]),
        system=float(fields["System time (seconds)"]),
        max_rss_kb=int(fields["Maximum resident set size (kbytes)"]),
        stdout=stdout.decode(errors="replace"),
    )


def _clock(text):
    """Seconds of GNU time's ``h:mm:ss`` or ``m:ss.ss``."""
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


# --- processes of a running stack ---------------------------------------------------


TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid):
    """``(ppid, pgrp, CPU seconds)`` of a process, or None once it has gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), int(fields[2]), (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _hwm_kb(pid):
    """``VmHWM`` (peak resident set, kB) of a process, or None once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(found.group(1)) if found else None


def _all_pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def process_group(pgid):
    """A finder of the pids in process group ``pgid`` (a worker started with ``start_new_session``, its pool)."""
    return lambda table: [pid for pid, (ppid, pgrp, cpu) in table.items() if pgrp == pgid]


def process_tree(root):
    """A finder of ``root`` and its descendants (gunicorn's master and its workers)."""

    def find(table):
        found, frontier = [], [root]
        while frontier:
            pid = frontier.pop()
            if pid in table:
                found.append(pid)
                frontier.extend(child for child, (ppid, _, _) in table.items() if ppid == pid)
        return found

    return find


class PeakSampler:
    """Peak resident memory of named sets of processes, sampled every :data:`SAMPLE_SECONDS` in a thread.

    ``with PeakSampler({"worker": process_group(pid), ...}) as sampler:``; afterwards
    ``sampler.peaks[name]`` is ``{pid: VmHWM kB}`` over every process seen in the set,
    and ``sampler.cpu_seconds(name)`` the CPU time they used inside the ``with`` block.
    """

    def __init__(self, finders):
        self.finders = finders
        self.peaks = {name: {} for name in finders}
        self._cpu = {name: {} for name in finders}  # pid -> [CPU seconds at the first sample, at the last]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-peak-sampler", daemon=True)

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self):
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()

    def sample(self):
        table = {}
        for pid in _all_pids():
            stat = _stat(pid)
            if stat is not None:
                table[pid] = stat
        first = not self._thread.is_alive() and not self._stop.is_set()
        for name, find in self.finders.items():
            for pid in find(table):
                kb = _hwm_kb(pid)
                if kb is not None:
                    self.peaks[name][pid] = max(kb, self.peaks[name].get(pid, 0))
                # A process born during the run used all its CPU time during it.
                seen = self._cpu[name].setdefault(pid, [table[pid][2] if first else 0.0, 0.0])
                seen[1] = table[pid][2]

    def largest_kb(self, name):
        """The highest peak of one process of the set."""
        return max(self.peaks[name].values(), default=0)

    def summed_kb(self, name):
        """The peaks of the set's processes added up: an upper bound (pages shared after a fork count in each)."""
        return sum(self.peaks[name].values())

    def processes(self, name):
        return len(self.peaks[name])

    def cpu_seconds(self, name):
        """CPU time (user + system) the set's processes used between the first sample and the last."""
        return sum(last - first for first, last in self._cpu[name].values())


def redis_memory(url):
    """Redis's ``INFO memory`` peak (``used_memory_peak`` bytes and ``_human``), its version and pid."""
    client = redis.Redis.from_url(url)
    try:
        memory, server = client.info("memory"), client.info("server")
    finally:
        client.close()
    return {
        "peak_bytes": memory["used_memory_peak"],
        "peak_human": memory["used_memory_peak_human"],
        "version": server["redis_version"],
        "pid": server["process_id"],
    }


def redis_version():
    """The version of the ``redis-server`` on the PATH, or None."""
    path = shutil.which("redis-server")
    if path is None:
        return None
    found = re.search(r"v=(\S+)", subprocess.run([path, "--version"], capture_output=True, text=True).stdout)
    return found.group(1) if found else None

