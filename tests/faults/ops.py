"""Test-only operations, loaded into the fault tests' gateway and workers through ``OPERATION_MODULES``.

They are registered exactly as the built-in ones are, and never ship in the
default catalogue: only a process started with
``OPERATION_MODULES=tests.faults.ops`` knows them.

A hook on the runner's loading (:func:`_poison`) makes a poison input kill its worker while loading.

The gateway dry-runs every pipeline on a zero-row frame to check column names
(``pipeline.check_columns``), so these do nothing on an empty frame: an
operation must be a pure function of its frame, and these only pretend not to be.
"""

import os
import signal
import time
from pathlib import Path

from workers import runner
from workers.operations import operation

#: A dataset whose first column has this name kills the worker process that loads it (:func:`_poison`).
POISON = "__poison__"


def _poison(table):
    """Kill this worker process with SIGKILL when it loads a table whose first column is :data:`POISON`, as the
    OOM killer would while a process loads an input too large for it: before any step runs. The column's
    first value, if not null, names a file this process's pid is appended to first."""
    if table.num_columns and table.column_names[0] == POISON:
        pid_file = table.column(0)[0].as_py() if table.num_rows else None
        if pid_file:
            with Path(pid_file).open("a") as out:
                out.write(f"{os.getpid()}\n")
        os.kill(os.getpid(), signal.SIGKILL)


# Only worker processes load inputs through the runner (the gateway imports it, never runs it).
runner.LOAD_HOOKS.append(_poison)


@operation(
    {
        "seconds": {"type": "number", "minimum": 0, "description": "How long to sleep."},
        "pid_file": {"type": ["string", "null"], "description": "File to append this process's pid to first."},
    }
)
def sleep(df, seconds, pid_file=None):
    """Sleep, interruptibly (a long step); append this worker process's pid to ``pid_file`` first."""
    if df.empty:
        return df
    if pid_file:
        with Path(pid_file).open("a") as out:
            out.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return df


@operation({})
def crash(df):
    """Kill this worker process with SIGKILL, as the OOM killer would."""
    if df.empty:
        return df
    os.kill(os.getpid(), signal.SIGKILL)
    return df


@operation({"seconds": {"type": "number", "minimum": 0, "description": "How long to hang."}})
def hang(df, seconds):
    """Hang where no signal handler runs (as in a C extension), so only killing the process stops it."""
    if df.empty:
        return df
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # Celery's soft time limit
    time.sleep(seconds)
    return df


@operation(
    {
        "seconds": {"type": "number", "minimum": 0, "description": "How long to sleep, once per chunk."},
        "pid_file": {"type": ["string", "null"], "description": "File to append this process's pid to first."},
    },
    row_local=True,
)
def sleep_chunk(df, seconds, pid_file=None):
    """Sleep once per chunk (a row-local step, so a job's chunks run it in parallel); log the pid and first id."""
    if df.empty:
        return df
    if pid_file:
        with Path(pid_file).open("a") as out:
            out.write(f"{os.getpid()} {df['id'].iloc[0]}\n")
    time.sleep(seconds)
    return df
