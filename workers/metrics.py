"""Job figures for ``GET /metrics``: counted in Redis as jobs are submitted and end, read in one HGETALL.

Several gateway processes on several hosts, and several worker hosts, share nothing but Redis, so the
job figures live there, in one hash (:data:`workers.jobstore.METRICS_KEY`): every gateway then reports
the same totals, whichever worker host did the work. Whoever makes a change counts it:

- ``submitted``: :meth:`~workers.jobstore.JobStore.create`, in the pipeline that writes the record;
- ``finished:<status>``, the job duration and, for a completed job, its steps' seconds: whoever ended
  the job, right after the end (the end is compare-and-set, so exactly one caller counts each job).

A histogram is kept per bucket, not cumulated, so an observation is one HINCRBY whatever the number of
buckets: ``<name>:le:<bound>[:<label>]`` counts the observations above the bound before it and at most
this one, ``<name>:sum[:<label>]`` adds them up. :class:`JobFigures` cumulates them at collection, into
today's bounds (a field of a bound since dropped counts in the next bound up, where it still belongs).

Label values are never user data: the status is one of three, and an operation name is counted only
when it is in the registry (never a job id, a token or a column name).
"""

import bisect
import math
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from workers.status import TERMINAL

#: Field of the number of jobs submitted.
SUBMITTED = "submitted"
#: Statuses a job ends with, in the order they are exposed.
FINISHED_STATUSES = tuple(sorted(status.value for status in TERMINAL))


def finished_field(status):
    """Field of the number of jobs that ended ``status``."""
    return f"finished:{status}"


@dataclass(frozen=True)
class Histogram:
    """A histogram kept in the hash: ``name`` is its fields' prefix, ``bounds`` its buckets' upper bounds."""

    name: str
    bounds: tuple

    def observe(self, pipe, key, value, label=None):
        """Queue on ``pipe`` the increments of one observation of ``value`` (``label``: its label value)."""
        bound = self.bounds[bisect.bisect_left(self.bounds, value)]
        pipe.hincrby(key, self._field("le", floatToGoString(bound), label), 1)
        pipe.hincrbyfloat(key, self._field("sum", None, label), value)

    def _field(self, kind, bound, label):
        return ":".join(part for part in (self.name, kind, bound, label) if part is not None)

    def read(self, fields):
        """``{label: (cumulative [(bound text, count)], sum)}`` from the hash's decoded ``fields``
        (label None for an unlabelled histogram)."""
        counts, sums = {}, {}
        prefix = f"{self.name}:"
        for field, value in fields.items():
            if not field.startswith(prefix):
                continue
            kind, _, rest = field[len(prefix):].partition(":")
            if kind == "sum":
                sums[rest or None] = float(value)
            elif kind == "le":
                bound, _, label = rest.partition(":")  # a bound has no colon; a label may
                index = min(bisect.bisect_left(self.bounds, float(bound)), len(self.bounds) - 1)
                counts.setdefault(label or None, [0] * len(self.bounds))[index] += int(value)
        figures = {}
        for label, per_bucket in counts.items():
            total, buckets = 0, []
            for bound, count in zip(self.bounds, per_bucket):
                total += count
                buckets.append((floatToGoString(bound), total))
            figures[label] = (buckets, sums.get(label, 0.0))
        return figures


#: Seconds from a job's ``created_at`` to its ``finished_at``: what its submitter waited, queue included.
JOB_SECONDS = Histogram(
    "job_seconds", (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, math.inf)
)
#: Seconds one step of a completed job took, summed over its chunks (the summary's ``operations[].seconds``).
OPERATION_SECONDS = Histogram(
    "operation_seconds",
    (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, math.inf),
)


def count_submitted(pipe, key):
    """Queue on ``pipe`` the count of one job submitted (the pipeline that creates its record)."""
    pipe.hincrby(key, SUBMITTED, 1)


def count_end(pipe, key, status, seconds, summary=None):
    """Queue on ``pipe`` the figures of a job that ended ``status`` ``seconds`` after its creation;
    ``summary`` (a completed job's) adds each step's seconds under its operation's name."""
    # Imported here: the job store (which imports this module) stays light for whoever needs no operations;
    # whoever ends a completed job has the catalogue loaded already.
    from workers.operations import REGISTRY

    pipe.hincrby(key, finished_field(status), 1)
    JOB_SECONDS.observe(pipe, key, max(seconds, 0.0))
    for step in (summary or {}).get("operations", ()):
        if step.get("name") in REGISTRY:  # a registered name: never a user's string in a label
            OPERATION_SECONDS.observe(pipe, key, float(step["seconds"]), step["name"])


def seconds_between(start, end):
    """Seconds from ``start`` to ``end``, two ISO 8601 texts (a record's ``created_at`` and ``finished_at``)."""
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


class JobFigures(Collector):
    """The job figures of the hash at ``key``, one HGETALL per collection, with two gauges read then:
    ``jobs_running()`` (jobs being run now) and ``queue_depth()`` (messages waiting), when given."""

    def __init__(self, redis_client, key, jobs_running=None, queue_depth=None):
        self.redis, self.key = redis_client, key
        self.jobs_running, self.queue_depth = jobs_running, queue_depth

    def collect(self):
        fields = {name.decode(): value.decode() for name, value in self.redis.hgetall(self.key).items()}
        yield CounterMetricFamily(
            "datajobs_jobs_submitted", "Jobs accepted by any gateway.", value=int(fields.get(SUBMITTED, 0))
        )
        finished = CounterMetricFamily("datajobs_jobs_finished", "Jobs that ended, by status.", labels=["status"])
        for status in FINISHED_STATUSES:
            finished.add_metric([status], int(fields.get(finished_field(status), 0)))
        yield finished

        duration = HistogramMetricFamily(
            "datajobs_job_duration_seconds", "Seconds from a job's creation to its end (queueing included)."
        )
        buckets, total = JOB_SECONDS.read(fields).get(None, (self._empty(JOB_SECONDS), 0.0))
        duration.add_metric([], buckets, total)
        yield duration

        steps = HistogramMetricFamily(
            "datajobs_operation_seconds",
            "Seconds a step of a completed job took, summed over its chunks, by operation.",
            labels=["operation"],
        )
        for operation, (buckets, total) in sorted(OPERATION_SECONDS.read(fields).items()):
            steps.add_metric([operation], buckets, total)
        yield steps

        if self.jobs_running is not None:
            yield GaugeMetricFamily("datajobs_jobs_running", "Jobs some worker runs now.", value=self.jobs_running())
        if self.queue_depth is not None:
            yield GaugeMetricFamily(
                "datajobs_queue_depth", "Messages waiting in the jobs' queue (jobs, chunks, joins).",
                value=self.queue_depth(),
            )

    @staticmethod
    def _empty(histogram):
        return [(floatToGoString(bound), 0) for bound in histogram.bounds]
