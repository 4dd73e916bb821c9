# -*- test-case-name: tests.test_snapshot -*-
"""
The admin snapshot: everything an operator looks at in a running lbproxy,
as one JSON-able dict.

C{GET /api/status} of the C{[admin]} listener answers it as it is; the
status page and the Prometheus exposition (L{lbproxy._metrics}) are
rendered from it, never from the live objects, so that in C{workers} mode
the parent can fetch each worker's snapshot, add them up and hand the sum
to the same renderers.  Every count in it is a number that adds up across
workers; states, reasons and times are per process.

Its keys (a dict per upstream, backend, vhost and certificate)::

    version             1
    time                the reactor time of the snapshot (seconds since the epoch)
    config_loaded       when the running configuration was taken (start or reload)
    reloads             reloads taken
    reload_failures     reloads from the file refused (a bad file)
    last_reload_ok      whether the latest reload from the file was taken
    connections         client connections open
    connections_refused client connections closed at max_connections
    active_requests     requests in flight to backends
    upstreams           [{name, retries, retries_refused, queued,
                          queue_rejected, queue_timed_out, queue_left,
                          backends_added, backends_removed, source,
                          backends: [backend...]}]
      source            None for fixed servers, else what its
                        IMembershipSource says: {kind: "dns", lookups,
                        lookup_failures, lines: [{name, addresses,
                        last_answer, next_lookup, error}]} or
                        {kind: "etcd", prefix, endpoint, revision,
                        watching, reads, events, failures, keys,
                        rejected, error}
      backend           {name, url, id, state, reason, since, weight,
                         effective_weight, backup, active, max_conns,
                         requests, responses, responses_by_class,
                         failures, ejections, last_latency,
                         response_time_histogram, health}
      health            None without active checks, else {passed, failed,
                         last_passed, last_result, last_latency, last_time}
    vhosts              [{name, server_names, requests, responses_by_class,
                          duration_histogram, limits}]
      limits            None without limit_rate or limit_conn, else
                        {refused_rate, refused_conn, delayed, clients,
                         in_flight} (see RequestLimits.asDict)
    unrouted            {requests, responses_by_class, duration_histogram}
                        of the requests no vhost took
    certificates        [{file, names, not_after, not_after_timestamp}]

A histogram is C{{bounds, counts, count, sum}}: the finite upper bounds
of its buckets, the count of each bucket (not cumulative; one more than
the bounds, the last unbounded), the total count and the sum of the
observations (see L{lbproxy._counters.Histogram.asDict}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple, Optional

from lbproxy._backend import Backend
from lbproxy._counters import classCounts
from lbproxy._interfaces import IMembershipSource
from lbproxy._pool import Pool

if TYPE_CHECKING:
    from lbproxy._certificates import CertificateChain
    from lbproxy._health import BackendCheck, HealthChecker
    from lbproxy._site import ProxySite
    from lbproxy._vhost import VirtualHost

#: The version of the snapshot's shape.
SNAPSHOT_VERSION = 1


class ReloadCounts(NamedTuple):
    """
    A service's reload figures, for L{buildSnapshot}.
    """

    #: Reloads taken.
    reloads: int
    #: Reloads from the configuration file that were refused.
    failures: int
    #: Whether the latest reload from the file was taken.
    lastOK: bool
    #: The reactor time the running configuration was taken, or L{None}
    #: before the service started.
    loaded: Optional[float]


def healthStatus(check: BackendCheck) -> dict[str, Any]:
    """
    What the snapshot shows of a backend's active checks: probes passed
    and failed in total, and the latest one's result (passed or not, and
    what it found), latency and end time.
    """
    return {
        "passed": check.passed,
        "failed": check.failed,
        "last_passed": check.lastPassed,
        "last_result": check.lastResult,
        "last_latency": check.lastLatency,
        "last_time": check.lastTime,
    }


def backendStatus(
    backend: Backend, check: Optional[BackendCheck] = None
) -> dict[str, Any]:
    """
    What the API shows of one backend: its address, state (with the reason
    and the time, in seconds since the epoch, it began), weights and
    counters, and its latest health check when C{check} is given.
    """
    return {
        "name": backend.name,
        "url": backend.url,
        "id": backend.id,
        "state": backend.state.value,
        "reason": backend.stateReason,
        "since": backend.stateSince,
        "weight": backend.weight,
        "effective_weight": backend.effectiveWeight,
        "backup": backend.backup,
        "active": backend.active,
        "max_conns": backend.maxConns,
        "requests": backend.requests,
        "responses": backend.responses,
        "responses_by_class": classCounts(backend.responseClasses),
        "failures": backend.failures,
        "ejections": backend.ejections,
        "last_latency": backend.lastLatency,
        "response_time_histogram": backend.responseTimes.asDict(),
        "health": None if check is None else healthStatus(check),
    }


def upstreamStatus(
    pool: Pool, checker: Optional[HealthChecker] = None, source: Any = None
) -> dict[str, Any]:
    """
    What the API shows of one upstream: its name, its retries (and those
    its C{retry_budget} refused), its queue (requests waiting now, and
    those refused because it was full, given up after C{queue_timeout}, or
    whose client left while they waited), the backends that joined and
    left it, where they come from (C{source}, an L{IMembershipSource}, or
    L{None} for fixed servers) and its backends (with their health checks,
    from C{checker}).
    """
    checks = {} if checker is None else checker.checks
    queue = pool.queue
    return {
        "name": pool.name,
        "retries": pool.retries,
        "retries_refused": 0 if pool.budget is None else pool.budget.refused,
        "queued": len(queue),
        "queue_rejected": queue.rejected,
        "queue_timed_out": queue.timedOut,
        "queue_left": queue.left,
        "backends_added": pool.backendsAdded,
        "backends_removed": pool.backendsRemoved,
        "source": None if source is None else IMembershipSource(source).status(),
        "backends": [backendStatus(b, checks.get(b)) for b in pool.backends],
    }


def certificateStatus(chain: CertificateChain) -> dict[str, Any]:
    """
    What the snapshot shows of a certificate: its file, the names it is
    for, and the end of its validity (ISO 8601 and seconds since the
    epoch).
    """
    notAfter = chain.notAfter
    return {
        "file": chain.certificatePath,
        "names": list(chain.dnsNames),
        "not_after": notAfter.isoformat(),
        "not_after_timestamp": notAfter.timestamp(),
    }


def buildSnapshot(
    *,
    pools: Mapping[str, Pool],
    healthCheckers: Mapping[str, HealthChecker],
    sources: Mapping[str, Any],
    vhosts: Iterable[VirtualHost],
    site: ProxySite,
    reloads: ReloadCounts,
    certificates: Iterable[CertificateChain],
    now: float,
) -> dict[str, Any]:
    """
    The admin snapshot (see this module's docstring for its keys).

    @param pools: the running pools, by upstream name.
    @param healthCheckers: the running health checkers, by upstream name.
    @param sources: the running L{IMembershipSource}s, by upstream name.
    @param vhosts: the running virtual hosts.
    @param site: the L{ProxySite} of the listeners.
    @param reloads: the service's reload figures.
    @param certificates: the chains of the HTTPS listeners.
    @param now: the reactor's time.
    """
    upstreams = [
        upstreamStatus(p, healthCheckers.get(n), sources.get(n)) for n, p in pools.items()
    ]
    return {
        "version": SNAPSHOT_VERSION,
        "time": now,
        "config_loaded": reloads.loaded,
        "reloads": reloads.reloads,
        "reload_failures": reloads.failures,
        "last_reload_ok": reloads.lastOK,
        "connections": len(site.channels),
        "connections_refused": site.connectionsRefused,
        "active_requests": sum(
            b["active"] for u in upstreams for b in u["backends"]
        ),
        "upstreams": upstreams,
        "vhosts": [
            {
                "name": vhost.name,
                "server_names": list(vhost.serverNames),
                **vhost.requestCounts.asDict(),
                "limits": None if vhost.limits is None else vhost.limits.asDict(),
            }
            for vhost in vhosts
        ],
        "unrouted": site.unroutedCounts.asDict(),
        "certificates": [certificateStatus(c) for c in certificates],
    }
