"""Progress of a run: bars on a terminal (rich), nothing more than the log lines otherwise.

The harvest asks its :class:`Display` for one :class:`Task` per phase (upload,
job, download) and updates it as it goes. When stderr is a terminal the tasks
are rich progress bars, and log lines print above them; when it is not (a pipe,
a file, CI), :func:`display` gives a display whose tasks do nothing, and the
run's log has one line per phase instead.
"""

import sys

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

#: Units a task counts in, as shown beside its bar.
UNITS = ("bytes", "rows", "chunks")


class Task:
    """One phase's progress: ``update(done, total=...)``, ``finish()``. This one shows nothing."""

    def update(self, done, *, total=None, description=None):
        """Say how much is done (and, when it becomes known or changes, of how much)."""

    def finish(self):
        """Mark the phase done."""


class Display:
    """Progress display that shows nothing: what a run uses when stderr is not a terminal."""

    def task(self, description, *, total=None, unit="rows"):
        """Start a phase; return its :class:`Task`."""
        return Task()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass


class RichDisplay(Display):
    """Progress bars drawn by rich on ``console`` (default: a console on stderr)."""

    def __init__(self, console=None):
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            _AmountColumn(),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            # Log lines written to stderr meanwhile are printed above the bars, not through them.
            redirect_stderr=True,
            redirect_stdout=False,
        )

    def task(self, description, *, total=None, unit="rows"):
        return _RichTask(self.progress, self.progress.add_task(description, total=total, unit=unit))

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc_info):
        self.progress.stop()


class _RichTask(Task):
    def __init__(self, progress, task_id):
        self.progress, self.task_id = progress, task_id

    def update(self, done, *, total=None, description=None):
        fields = {"completed": done}
        if total is not None:
            fields["total"] = total
        if description is not None:
            fields["description"] = description
        self.progress.update(self.task_id, **fields)

    def finish(self):
        task = self.progress.tasks[self.task_id]
        total = task.total if task.total is not None else task.completed
        self.progress.update(self.task_id, total=total, completed=total)


class _AmountColumn(ProgressColumn):
    """How much of how much, in the task's unit: ``12.3 MB/1.0 GB``, ``250,000/1,000,000 rows``."""

    def render(self, task):
        return Text(amount(task.completed, task.total, task.fields.get("unit", "rows")), style="progress.download")


def amount(done, total, unit):
    """``done`` of ``total`` (None: unknown) in ``unit`` as text: ``12.3 MB/1.0 GB``, ``250,000/1,000,000 rows``."""
    if unit == "bytes":
        return f"{decimal(int(done))}/{decimal(int(total))}" if total is not None else decimal(int(done))
    shown = f"{int(done):,}/{int(total):,}" if total is not None else f"{int(done):,}"
    return f"{shown} {unit}"


def display(stream=None):
    """Return the display for a run: :class:`RichDisplay` if ``stream`` (default stderr) is a terminal, else :class:`Display`."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return RichDisplay() if isatty is not None and isatty() else Display()
