"""How the benchmarks print their figures: units, plain-text and Markdown tables, the machine line."""

import os
import platform

import celery
import pandas as pd
import pyarrow as pa


def ms(seconds):
    return f"{seconds * 1000:.1f} ms"


def secs(seconds):
    return f"{seconds:.2f} s"


def ratio(a, b, digits=1):
    return f"{a / b:.{digits}f}×" if b else "n/a"


def mb(kilobytes):
    """Memory given in kB (``/usr/bin/time``, ``/proc``), in MB."""
    return f"{kilobytes / 1024:,.0f} MB"


def table(header, rows):
    """Plain-text table, columns padded to their widest cell."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = lambda row: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def markdown_table(header, rows):
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    )


def machine(redis_version):
    """The machine and the versions the figures depend on, for a heading."""
    return (
        f"{len(os.sched_getaffinity(0))} CPUs (nproc), Python {platform.python_version()}, pandas {pd.__version__}, "
        f"pyarrow {pa.__version__}, Celery {celery.__version__}, Redis {redis_version}"
    )
