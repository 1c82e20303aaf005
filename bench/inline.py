"""The scale benchmark's inline-JSON client: the path every job took before datasets were uploaded.

    .venv/bin/python bench/inline.py SOURCE.csv OUTPUT.parquet --gateway URL [--timeout S] [--poll-interval S]

It reads the CSV to records (pyarrow, with datajobs' null cells, so the types
are the harvester's), sends them inline, ``POST /jobs {"dataset": records,
"operations": ...}`` (the gateway must be started with ``MAX_CONTENT_LENGTH`` and
``MAX_RECORDS`` above the body's size and the row count), polls ``GET /jobs/<id>``,
downloads ``GET /jobs/<id>/result?format=jsonl`` and writes the records as
Parquet. Everything is held in memory, as such a client does. It prints one JSON
object on stdout: the seconds of each phase and the rows written.
"""

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import requests  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import workload  # noqa: E402

ENDED = ("completed", "failed", "cancelled")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench/inline.py", description=__doc__.split("\n")[0])
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole run")
    parser.add_argument("--poll-interval", type=float, default=0.25)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.timeout
    phases, mark = {"start": time.perf_counter() - STARTED}, time.perf_counter()

    def phase(name):
        nonlocal mark
        now = time.perf_counter()
        phases[name], mark = now - mark, now

    options = pacsv.ConvertOptions(null_values=workload.CSV_NULLS, strings_can_be_null=True)
    records = pacsv.read_csv(args.source, convert_options=options).to_pylist()
    phase("read_csv")
    body = json.dumps({"dataset": records, "operations": workload.OPERATIONS}, allow_nan=False).encode()
    rows_in = len(records)
    del records
    phase("encode")
    with requests.Session() as session:
        answer = session.post(
            f"{args.gateway}/jobs", data=body, headers={"Content-Type": "application/json"}, timeout=args.timeout
        )
        if answer.status_code != 202:
            sys.exit(f"bench/inline.py: POST /jobs answered {answer.status_code}: {answer.text[:500]}")
        job_id = answer.json()["job_id"]
        del body
        phase("submit")
        while True:
            job = session.get(f"{args.gateway}/jobs/{job_id}", timeout=30).json()
            if job["status"] in ENDED:
                break
            if time.monotonic() > deadline:
                sys.exit(f"bench/inline.py: job {job_id} still {job['status']} at the timeout")
            time.sleep(args.poll_interval)
        if job["status"] != "completed":
            sys.exit(f"bench/inline.py: job {job_id} {job['status']}: {job.get('error')}")
        phase("job")
        with session.get(f"{args.gateway}/jobs/{job_id}/result?format=jsonl", stream=True, timeout=args.timeout) as got:
            got.raise_for_status()
            records = [json.loads(line) for line in got.iter_lines(chunk_size=1 << 20) if line]
        phase("download")
    pq.write_table(pa.Table.from_pylist(records), args.output)
    phase("to_parquet")
    print(json.dumps({"phases": phases, "rows_in": rows_in, "rows_out": len(records), "job_id": job_id}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
