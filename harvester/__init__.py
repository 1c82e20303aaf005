"""The harvester: a command-line client of the datajobs gateway.

It reads a dataset (CSV, TSV, JSON, JSON Lines, Parquet, Arrow; a file or an
http(s) URL) in Arrow batches, uploads it in parts, runs a job of operations on
it, follows the job, downloads the result batch by batch and writes it with a
manifest beside it. Memory holds a few batches, whatever the size of the data.

- ``transport``: sessions, the retry policy, deadlines, the token; ``client``: the
  gateway's commands (the benchmarks use it too).
- ``sources``: reading a source as record batches; ``upload``: sending them as a dataset in parts.
- ``download``: the result as an Arrow stream; ``outputs``: writing it, atomically.
- ``formulas``: the CSV formula guard (the gateway's CSV download uses it too).
- ``io``: formats by extension, the output checks, atomic files.
- ``operations``: ``--op`` specs and operations files.
- ``harvest``: one run, from source to output; ``manifest``: the file written beside the output.
- ``progress``: progress bars; ``report``: text for the terminal; ``cli``: the click commands and exit codes.
- ``errors``: the exceptions, all under :class:`~harvester.errors.HarvesterError`.
"""

__version__ = "0.1.0"
