# -*- test-case-name: tests.test_counters -*-
"""
The counters lbproxy keeps as requests pass: responses by status class and
latency histograms, made to cost a few list operations per request.

Each object that is counted (a backend, a virtual host) holds its own
counters, made when it is made, so that counting a request is an index
into a list it already has: no dictionary keyed by labels is looked up
per request, as C{prometheus_client}'s own metric objects would do.  The
admin snapshot (L{lbproxy._snapshot}) reads them, and the Prometheus
collector (L{lbproxy._metrics}) renders that snapshot.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

#: The upper bounds, in seconds, of the latency histograms' buckets (the
#: last, unbounded one is C{+Inf}): Prometheus' default buckets, from
#: 5 ms to 10 s.
LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """
    How many observations fell in each bucket of L{LATENCY_BOUNDS}, and
    their sum: a Prometheus histogram's figures, kept per bucket (not
    cumulative), so that two of them add up item by item.

    Observing is one C{bisect} into the bounds and one increment of a list
    made beforehand.

    @ivar counts: one count per bucket: C{counts[i]} observations were at
        most C{LATENCY_BOUNDS[i]} and more than the bound before it; the
        last item counts those above every bound.
    @ivar sum: the sum of the observations, in seconds.
    """

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """
        Count one observation of C{seconds}.
        """
        self.counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.sum += seconds

    def asDict(self) -> dict[str, Any]:
        """
        The histogram as the admin snapshot shows it: C{bounds} (the finite
        upper bounds), C{counts} (per bucket, the last one unbounded),
        C{count} and C{sum}.
        """
        counts = list(self.counts)
        return {
            "bounds": list(LATENCY_BOUNDS),
            "counts": counts,
            "count": sum(counts),
            "sum": self.sum,
        }


def statusClasses() -> list[int]:
    """
    A new list of counts by status class, indexed by C{code // 100}: ten
    items, so that any three-digit status (C{000} to C{999}, which is what
    lbproxy accepts from a backend) has its place.
    """
    return [0] * 10


def classCounts(counts: list[int]) -> dict[str, int]:
    """
    Counts by status class (a list made by L{statusClasses}) as the admin
    snapshot shows them: C{"1xx"} to C{"5xx"} always, any other class only
    when some response had it.
    """
    return {
        f"{index}xx": count
        for index, count in enumerate(counts)
        if 1 <= index <= 5 or count
    }


class RequestCounts:
    """
    The client requests of one virtual host (or of none: those no vhost
    took): how many ended with each status class, and how long each took
    from its head to its end.

    @ivar classes: counts by status class, indexed by C{code // 100} (see
        L{statusClasses}).
    @ivar durations: a L{Histogram} of the seconds from the request's head
        to the end of its response.
    """

    __slots__ = ("classes", "durations")

    def __init__(self) -> None:
        self.classes = statusClasses()
        self.durations = Histogram()

    def asDict(self) -> dict[str, Any]:
        """
        The counts as the admin snapshot shows them: C{requests} (the
        total), C{responses_by_class} (see L{classCounts}) and
        C{duration_histogram} (see L{Histogram.asDict}).
        """
        return {
            "requests": sum(self.classes),
            "responses_by_class": classCounts(self.classes),
            "duration_histogram": self.durations.asDict(),
        }
