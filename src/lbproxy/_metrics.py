# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics, at C{/metrics} of the C{[admin]} listener.

The figures come from an admin snapshot (L{lbproxy._snapshot}), never from
the live objects: lbproxy keeps its counters in plain lists and integers
on its backends and vhosts (L{lbproxy._counters}), which cost a request no
label lookup, and a scrape turns one snapshot into metric families through
one custom collector (L{SnapshotCollector}) on a private
L{CollectorRegistry <prometheus_client.registry.CollectorRegistry>},
written out by C{prometheus_client}'s own exposition code.  In C{workers}
mode the parent can hand it the sum of its workers' snapshots.

The metrics (counters end in C{_total}; times are seconds)::

    lbproxy_requests_total{vhost,code_class}                    counter
    lbproxy_request_duration_seconds{vhost}                     histogram
    lbproxy_upstream_requests_total{upstream,backend}           counter
    lbproxy_upstream_responses_total{upstream,backend,code_class} counter
    lbproxy_upstream_failures_total{upstream,backend}           counter
    lbproxy_upstream_response_seconds{upstream,backend}         histogram
    lbproxy_active_requests{upstream,backend}                   gauge
    lbproxy_backend_state{upstream,backend,state}               gauge
    lbproxy_backend_weight{upstream,backend}                    gauge
    lbproxy_backend_effective_weight{upstream,backend}          gauge
    lbproxy_health_checks_total{upstream,backend,result}        counter
    lbproxy_health_check_last_passed{upstream,backend}          gauge
    lbproxy_health_check_last_latency_seconds{upstream,backend} gauge
    lbproxy_health_check_last_timestamp_seconds{upstream,backend} gauge
    lbproxy_retries_total{upstream}                             counter
    lbproxy_retries_refused_total{upstream}                     counter
    lbproxy_queued_requests{upstream}                           gauge
    lbproxy_queue_refused_total{upstream,reason}                counter
    lbproxy_backend_ejections_total{upstream,backend}           counter
    lbproxy_backends_added_total{upstream}                      counter
    lbproxy_backends_removed_total{upstream}                    counter
    lbproxy_dns_lookups_total{upstream}                         counter
    lbproxy_dns_lookup_failures_total{upstream}                 counter
    lbproxy_dns_addresses{upstream,name}                        gauge
    lbproxy_dns_last_answer_timestamp_seconds{upstream,name}    gauge
    lbproxy_etcd_revision{upstream}                             gauge
    lbproxy_etcd_watching{upstream}                             gauge
    lbproxy_etcd_reads_total{upstream}                          counter
    lbproxy_etcd_events_total{upstream}                         counter
    lbproxy_etcd_failures_total{upstream}                       counter
    lbproxy_etcd_keys{upstream}                                 gauge
    lbproxy_etcd_rejected_keys{upstream}                        gauge
    lbproxy_connections                                         gauge
    lbproxy_connections_refused_total                           counter
    lbproxy_reloads_total                                       counter
    lbproxy_reload_failures_total                               counter
    lbproxy_last_reload_successful                              gauge
    lbproxy_config_loaded_timestamp_seconds                     gauge
    lbproxy_certificate_expiry_timestamp_seconds{file,name}     gauge

C{vhost} is C{-} for the requests no vhost took.  The C{lbproxy_dns_*}
families have samples only for the upstreams whose backends come from
C{resolve} lines, the C{lbproxy_etcd_*} ones only for those whose
backends come from etcd (the upstream's C{source} in the snapshot); C{name}
is a C{resolve} line as written.  C{docs/admin.rst} says what each one
counts.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from lbproxy._backend import BackendState

#: The C{vhost} label of the requests that no vhost took.
NO_VHOST = "-"

#: The values of C{lbproxy_backend_state}'s C{state} label.
STATES = tuple(state.value for state in BackendState)


def _bound(value: float) -> str:
    """
    A bucket's upper bound as the C{le} label writes it (C{0.005},
    C{1.0}).
    """
    return repr(float(value))


def _histogram(
    family: HistogramMetricFamily, labels: list[str], histogram: dict[str, Any]
) -> None:
    """
    Add one histogram of the snapshot (per-bucket counts) to C{family}, as
    Prometheus has them (cumulative, the last C{+Inf}).
    """
    buckets = []
    total = 0
    for bound, count in zip(
        [*map(_bound, histogram["bounds"]), "+Inf"], histogram["counts"]
    ):
        total += count
        buckets.append((bound, total))
    family.add_metric(labels, buckets, histogram["sum"])


def _families(
    table: Iterable[tuple[Any, str, str, str]], labels: list[str]
) -> list[tuple[Any, str]]:
    """
    The families of C{table} (rows of family type, name, help and the
    snapshot field each takes its value from), with C{labels}, each with
    its field.
    """
    return [(kind(name, text, labels=labels), field) for kind, name, text, field in table]


def _addValues(
    families: Iterable[tuple[Any, str]], labels: list[str], record: dict[str, Any]
) -> None:
    """
    Add to each of C{families} (as L{_families} gives them) the value of
    its field in C{record} (a yes-or-no is written 1 or 0).
    """
    for family, field in families:
        family.add_metric(labels, record[field])


def _classes(
    family: CounterMetricFamily, labels: list[str], byClass: dict[str, int]
) -> None:
    for codeClass, count in byClass.items():
        family.add_metric([*labels, codeClass], count)


#: The metrics with one value per backend, taken as they are from a field
#: of the backend's snapshot: (family, name, help, field).
_BACKEND_VALUES: list[tuple[Any, str, str, str]] = [
    (
        CounterMetricFamily,
        "lbproxy_upstream_requests",
        "Requests sent to a backend (each try of a retried request).",
        "requests",
    ),
    (
        CounterMetricFamily,
        "lbproxy_upstream_failures",
        "Exchanges with a backend that failed: connection refused or "
        "broken, timed out, or an invalid response.",
        "failures",
    ),
    (
        CounterMetricFamily,
        "lbproxy_backend_ejections",
        "Times passive health took a backend out (max_fails within "
        "fail_timeout; with eject_on, the statuses it names count).",
        "ejections",
    ),
    (
        GaugeMetricFamily,
        "lbproxy_active_requests",
        "Requests in flight to a backend.",
        "active",
    ),
    (
        GaugeMetricFamily,
        "lbproxy_backend_weight",
        "A backend's configured weight (or the one set through the API).",
        "weight",
    ),
    (
        GaugeMetricFamily,
        "lbproxy_backend_effective_weight",
        "A backend's weight as the balancer uses it (lower while "
        "slow_start ramps it up).",
        "effective_weight",
    ),
]

#: The metrics with one value per vhost with limits, taken as they are
#: from a field of its snapshot's C{limits}: (family, name, help, field).
_LIMIT_VALUES: list[tuple[Any, str, str, str]] = [
    (
        CounterMetricFamily,
        "lbproxy_limit_delayed",
        "Requests a vhost's rate limit held back (limit_delay) rather "
        "than refused.",
        "delayed",
    ),
    (
        GaugeMetricFamily,
        "lbproxy_limit_keys",
        "Keys (clients) a vhost's rate limit remembers now.",
        "clients",
    ),
    (
        GaugeMetricFamily,
        "lbproxy_limit_keys_in_flight",
        "Keys (clients) with requests in flight under a vhost's "
        "limit_conn now.",
        "in_flight",
    ),
]

#: The counters of the backends that joined or left an upstream while it
#: ran, from a field of its snapshot (0 in a snapshot without it):
#: (family, name, help, field).
_CHANGE_VALUES: list[tuple[Any, str, str, str]] = [
    (
        CounterMetricFamily,
        "lbproxy_backends_added",
        "Backends that joined an upstream while it ran (from a DNS answer "
        "or an etcd key), since its pool was built.",
        "backends_added",
    ),
    (
        CounterMetricFamily,
        "lbproxy_backends_removed",
        "Backends that left an upstream while it ran, since its pool was "
        "built.",
        "backends_removed",
    ),
]

#: The metrics of an upstream whose backends come from C{resolve} lines,
#: from a field of its snapshot's C{source}: (family, name, help, field).
_DNS_VALUES: list[tuple[Any, str, str, str]] = [
    (
        CounterMetricFamily,
        "lbproxy_dns_lookups",
        "DNS lookups of an upstream's resolve lines that ended, answered "
        "or failed.",
        "lookups",
    ),
    (
        CounterMetricFamily,
        "lbproxy_dns_lookup_failures",
        "DNS lookups of an upstream's resolve lines that failed (the last "
        "good answer was kept).",
        "lookup_failures",
    ),
]

#: The metrics of an upstream whose backends come from etcd, from a field
#: of its snapshot's C{source}: (family, name, help, field).
_ETCD_VALUES: list[tuple[Any, str, str, str]] = [
    (
        GaugeMetricFamily,
        "lbproxy_etcd_revision",
        "The etcd revision an upstream's backends are at (0 before the "
        "first read).",
        "revision",
    ),
    (
        GaugeMetricFamily,
        "lbproxy_etcd_watching",
        "1 while a watch of an upstream's etcd prefix is open, else 0.",
        "watching",
    ),
    (
        CounterMetricFamily,
        "lbproxy_etcd_reads",
        "Full reads of an upstream's etcd prefix.",
        "reads",
    ),
    (
        CounterMetricFamily,
        "lbproxy_etcd_events",
        "PUT and DELETE events of an upstream's etcd prefix applied.",
        "events",
    ),
    (
        CounterMetricFamily,
        "lbproxy_etcd_failures",
        "Reads and watches of an upstream's etcd prefix that failed (each "
        "retried).",
        "failures",
    ),
    (
        GaugeMetricFamily,
        "lbproxy_etcd_keys",
        "Keys under an upstream's etcd prefix now.",
        "keys",
    ),
    (
        GaugeMetricFamily,
        "lbproxy_etcd_rejected_keys",
        "Keys under an upstream's etcd prefix whose value is not a valid "
        "server line (never applied).",
        "rejected",
    ),
]

#: The gauges of a backend's latest health check probe, from a field of
#: its snapshot's C{health}: (name, help, field).
_LAST_PROBE = [
    (
        "lbproxy_health_check_last_passed",
        "1 when the latest health check probe of a backend passed, else 0.",
        "last_passed",
    ),
    (
        "lbproxy_health_check_last_latency_seconds",
        "Seconds the latest health check probe of a backend took.",
        "last_latency",
    ),
    (
        "lbproxy_health_check_last_timestamp_seconds",
        "When the latest health check probe of a backend ended, in "
        "seconds since the epoch.",
        "last_time",
    ),
]


class SnapshotCollector:
    """
    A C{prometheus_client} collector whose metrics are those of one admin
    snapshot (see the module docstring).
    """

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        yield from self._requests(snapshot)
        yield from self._upstreams(snapshot)
        yield from self._sources(snapshot)
        yield from self._process(snapshot)

    def _requests(self, snapshot: dict[str, Any]) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "lbproxy_requests",
            "Client requests answered, by vhost and by the status class of "
            "the answer.",
            labels=["vhost", "code_class"],
        )
        durations = HistogramMetricFamily(
            "lbproxy_request_duration_seconds",
            "Seconds from a client request's head to the end of its "
            "response (WebSocket tunnels left out).",
            labels=["vhost"],
        )
        refused = CounterMetricFamily(
            "lbproxy_limit_refused",
            "Requests a vhost's limits refused (429), by the limit: rate "
            "(limit_rate) or conn (limit_conn).",
            labels=["vhost", "limit"],
        )
        limited = _families(_LIMIT_VALUES, ["vhost"])
        counted = [(v["name"], v) for v in snapshot["vhosts"]]
        for name, vhost in counted:
            limits = vhost.get("limits")
            if limits is None:
                continue
            refused.add_metric([name, "rate"], limits["refused_rate"])
            refused.add_metric([name, "conn"], limits["refused_conn"])
            _addValues(limited, [name], limits)
        counted.append((NO_VHOST, snapshot["unrouted"]))
        for name, counts in counted:
            _classes(requests, [name], counts["responses_by_class"])
            _histogram(durations, [name], counts["duration_histogram"])
        return [requests, durations, refused, *(family for family, _ in limited)]

    def _upstreams(self, snapshot: dict[str, Any]) -> Iterable[Metric]:
        labels = ["upstream", "backend"]
        plain = _families(_BACKEND_VALUES, labels)
        health = [
            (GaugeMetricFamily(name, text, labels=labels), field)
            for name, text, field in _LAST_PROBE
        ]
        responses = CounterMetricFamily(
            "lbproxy_upstream_responses",
            "Responses received from a backend, by status class.",
            labels=[*labels, "code_class"],
        )
        times = HistogramMetricFamily(
            "lbproxy_upstream_response_seconds",
            "Seconds from the pick of a backend to the end of its response "
            "(nginx's $upstream_response_time; 101 responses left out).",
            labels=labels,
        )
        state = GaugeMetricFamily(
            "lbproxy_backend_state",
            "1 for the state a backend is in, 0 for the others.",
            labels=[*labels, "state"],
        )
        checks = CounterMetricFamily(
            "lbproxy_health_checks",
            "Active health check probes of a backend, by result (pass or fail).",
            labels=[*labels, "result"],
        )
        retries = CounterMetricFamily(
            "lbproxy_retries",
            "Requests sent on to another backend after one failed them.",
            labels=["upstream"],
        )
        refusedRetries = CounterMetricFamily(
            "lbproxy_retries_refused",
            "Retries the upstream's retry_budget refused (the request got 502).",
            labels=["upstream"],
        )
        queued = GaugeMetricFamily(
            "lbproxy_queued_requests",
            "Requests waiting for a backend below its max_conns.",
            labels=["upstream"],
        )
        queueRefused = CounterMetricFamily(
            "lbproxy_queue_refused",
            "Requests answered 503 because every backend was at its max_conns "
            "and the queue was full (reason full) or they waited "
            "queue_timeout (reason timeout).",
            labels=["upstream", "reason"],
        )
        for upstream in snapshot["upstreams"]:
            name = upstream["name"]
            retries.add_metric([name], upstream["retries"])
            refusedRetries.add_metric([name], upstream["retries_refused"])
            queued.add_metric([name], upstream["queued"])
            queueRefused.add_metric([name, "full"], upstream["queue_rejected"])
            queueRefused.add_metric([name, "timeout"], upstream["queue_timed_out"])
            for backend in upstream["backends"]:
                which = [name, backend["name"]]
                _addValues(plain, which, backend)
                _classes(responses, which, backend["responses_by_class"])
                _histogram(times, which, backend["response_time_histogram"])
                for value in STATES:
                    state.add_metric([*which, value], int(backend["state"] == value))
                probes: Optional[dict[str, Any]] = backend["health"]
                if probes is None:
                    continue
                checks.add_metric([*which, "pass"], probes["passed"])
                checks.add_metric([*which, "fail"], probes["failed"])
                if probes["last_passed"] is not None:
                    for family, field in health:
                        family.add_metric(which, float(probes[field]))
        requests, failures, ejections, active, weight, effective = (
            f for f, _ in plain
        )
        return [
            requests, responses, failures, ejections, times, active, state,
            weight, effective, checks, *(family for family, _ in health),
            retries, refusedRetries, queued, queueRefused,
        ]

    def _sources(self, snapshot: dict[str, Any]) -> Iterable[Metric]:
        """
        The backends that joined and left each upstream, and for one whose
        backends come from DNS or etcd (its C{source}), how that goes.
        """
        upstream = ["upstream"]
        changes = _families(_CHANGE_VALUES, upstream)
        dns = _families(_DNS_VALUES, upstream)
        etcd = _families(_ETCD_VALUES, upstream)
        addresses = GaugeMetricFamily(
            "lbproxy_dns_addresses",
            "Backends a resolve line of an upstream has now, from its DNS "
            "answers.",
            labels=[*upstream, "name"],
        )
        answered = GaugeMetricFamily(
            "lbproxy_dns_last_answer_timestamp_seconds",
            "When the latest good DNS answer for a resolve line of an "
            "upstream came, in seconds since the epoch.",
            labels=[*upstream, "name"],
        )
        for pool in snapshot["upstreams"]:
            name = pool["name"]
            for family, field in changes:
                family.add_metric([name], pool.get(field, 0))
            source: Optional[dict[str, Any]] = pool.get("source")
            if source is None:
                continue
            if source["kind"] == "dns":
                _addValues(dns, [name], source)
                for line in source["lines"]:
                    which = [name, line["name"]]
                    addresses.add_metric(which, line["addresses"])
                    if line["last_answer"] is not None:
                        answered.add_metric(which, line["last_answer"])
            elif source["kind"] == "etcd":
                _addValues(etcd, [name], source)
        return [
            *(family for family, _ in changes),
            *(family for family, _ in dns),
            addresses,
            answered,
            *(family for family, _ in etcd),
        ]

    def _process(self, snapshot: dict[str, Any]) -> Iterable[Metric]:
        def gauge(name: str, text: str, value: Optional[float]) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text)
            if value is not None:
                family.add_metric([], value)
            return family

        expiry = GaugeMetricFamily(
            "lbproxy_certificate_expiry_timestamp_seconds",
            "When a certificate of the HTTPS listeners expires, in seconds "
            "since the epoch, for each name it is for.",
            labels=["file", "name"],
        )
        for certificate in snapshot["certificates"]:
            for name in certificate["names"]:
                expiry.add_metric(
                    [certificate["file"], name], certificate["not_after_timestamp"]
                )
        return [
            gauge(
                "lbproxy_connections",
                "Client connections open.",
                snapshot["connections"],
            ),
            CounterMetricFamily(
                "lbproxy_connections_refused",
                "Client connections closed at once because max_connections "
                "were open.",
                snapshot["connections_refused"],
            ),
            CounterMetricFamily(
                "lbproxy_reloads",
                "Reloads of the configuration taken.",
                snapshot["reloads"],
            ),
            CounterMetricFamily(
                "lbproxy_reload_failures",
                "Reloads of the configuration file (SIGHUP) refused.",
                snapshot["reload_failures"],
            ),
            gauge(
                "lbproxy_last_reload_successful",
                "1 when the latest reload of the configuration file was "
                "taken (or there was none), 0 when it was refused.",
                int(snapshot["last_reload_ok"]),
            ),
            gauge(
                "lbproxy_config_loaded_timestamp_seconds",
                "When the running configuration was taken (start or "
                "reload), in seconds since the epoch.",
                snapshot["config_loaded"],
            ),
            expiry,
        ]


def metricsText(
    snapshot: dict[str, Any], accept: Optional[str] = None
) -> tuple[bytes, str]:
    """
    The metrics of C{snapshot} in the exposition format C{accept} (a
    request's C{Accept} header) asks for: Prometheus' text format, or
    OpenMetrics when it asks for that.

    @return: the body, and its C{Content-Type}.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    encoder, contentType = choose_encoder(accept or "")
    return encoder(registry), contentType


def renderMetrics(request: Any, snapshot: dict[str, Any]) -> bytes:
    """
    Answer C{request} (a C{GET /metrics}) with the metrics of C{snapshot}.
    """
    accept = request.getHeader(b"accept")
    body, contentType = metricsText(
        snapshot, None if accept is None else accept.decode("latin-1")
    )
    request.setHeader(b"Content-Type", contentType.encode("ascii"))
    request.setHeader(b"Cache-Control", b"no-store")
    return body
