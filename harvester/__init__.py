"""The harvester: a command-line client of the datajobs gateway.

It reads a dataset (CSV, TSV, JSON, JSON Lines; a file or an http(s) URL),
submits it with a list of operations, polls the job until it ends and writes the
processed records with a manifest beside them.

- ``client``: the HTTP client of the gateway, with its retry policy (the benchmarks use it too).
- ``io``: dataset readers and writers.
- ``operations``: ``--op`` specs and operations files.
- ``harvest``: one run, from source to output; ``manifest``: the file written beside the output.
- ``report``: text for the terminal; ``cli``: the click commands and exit codes.
- ``errors``: the exceptions, all under :class:`~harvester.errors.HarvesterError`.
"""

__version__ = "0.1.0"
