"""The scale benchmark's baseline: a plain single-process pandas script, ``read_csv``, the steps, ``to_parquet``.

    .venv/bin/python bench/plain.py SOURCE.csv OUTPUT.parquet

The steps are :data:`bench.workload.OPERATIONS` in ordinary pandas
(:func:`bench.workload.apply`), the file is read with datajobs' null cells
(:func:`bench.workload.read_csv`). It prints one JSON object on stdout: the
seconds of each phase (``start``: the interpreter and the imports) and the rows
written. ``bench/scale.py`` runs it under ``/usr/bin/time -v``.
"""

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import workload  # noqa: E402 (imports pandas)


def main(source, output):
    phases, mark = {"start": time.perf_counter() - STARTED}, time.perf_counter()

    def phase(name):
        nonlocal mark
        now = time.perf_counter()
        phases[name], mark = now - mark, now

    frame = workload.read_csv(source)
    phase("read_csv")
    frame = workload.apply(frame, workload.OPERATIONS)
    phase("steps")
    frame.to_parquet(output, index=False)
    phase("to_parquet")
    print(json.dumps({"phases": phases, "rows_out": len(frame)}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: bench/plain.py SOURCE.csv OUTPUT.parquet")
    sys.exit(main(*sys.argv[1:]))
