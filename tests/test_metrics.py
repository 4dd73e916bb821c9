"""
Tests for L{lbproxy._metrics}: the Prometheus exposition of an admin
snapshot, read back with C{prometheus_client}'s own parser.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._certificates import loadChain
from lbproxy._counters import LATENCY_BOUNDS
from lbproxy._metrics import NO_VHOST, STATES, metricsText
from lbproxy._snapshot import certificateStatus
from lbproxy._workeradmin import WorkerAnswer, mergeSnapshots, singleValues
from tests.certificates import Authority
from tests.test_health import NoJitter, makeChecker, makePool
from tests.test_snapshot import runningService


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of an exposition, by name and sorted labels.
    """
    found = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def key(metric: str, /, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """
    The key of a sample of L{samples}.
    """
    return metric, tuple(sorted(labels.items()))


#: The families of the backends an upstream gained and lost and of its
#: source (DNS or etcd), by the start of their names.
SOURCE_FAMILIES = ("lbproxy_backends_added", "lbproxy_backends_removed", "lbproxy_dns_", "lbproxy_etcd_")


def sourceLines(text: bytes, upstream: str) -> list[str]:
    """
    The sample lines, as written, of L{SOURCE_FAMILIES} for C{upstream}.
    """
    return [
        line
        for line in text.decode("utf-8").splitlines()
        if line.startswith(SOURCE_FAMILIES) and f'upstream="{upstream}"' in line
    ]


def dnsSource(**keys: Any) -> dict[str, Any]:
    """
    The C{source} of an upstream whose backends come from three C{resolve}
    lines: one answered at the time 88, one whose latest lookup failed
    after an answer at 40, and one whose every lookup failed; with
    C{keys}.
    """
    return {
        "kind": "dns",
        "lookups": 40,
        "lookup_failures": 2,
        "lines": [
            {"name": "app.internal:8080", "addresses": 2, "last_answer": 88.0,
             "next_lookup": 118.0, "error": None},
            {"name": "_http._tcp.svc.internal", "addresses": 1, "last_answer": 40.0,
             "next_lookup": 101.0, "error": "DNS lookup timed out"},
            {"name": "new.internal:8080", "addresses": 0, "last_answer": None,
             "next_lookup": 101.0, "error": "no such name"},
        ],
        **keys,
    }


def etcdSource(**keys: Any) -> dict[str, Any]:
    """
    The C{source} of an upstream whose backends come from etcd, at
    revision 42 and watching, with C{keys}.
    """
    return {
        "kind": "etcd",
        "prefix": "/lbproxy/upstreams/app/",
        "endpoint": "http://127.0.0.1:2379",
        "revision": 42,
        "watching": True,
        "reads": 3,
        "events": 17,
        "failures": 2,
        "keys": 5,
        "rejected": 1,
        "error": None,
        **keys,
    }


def families(text: bytes) -> dict[str, str]:
    """
    The type of each family of an exposition, by name.
    """
    return {f.name: f.type for f in text_string_to_metric_families(text.decode("utf-8"))}


class ServiceMetricsTests(SynchronousTestCase):
    """
    The metrics of a running service on a fake clock.
    """

    def setUp(self) -> None:
        self.reactor, self.service = runningService(self)

    def proxy(self, count: int) -> list[int]:
        """
        Send C{count} GETs over one client connection, each answered by
        the backend it went to after 20 ms: 200 from the backend picked
        first, 503 from the other.

        @return: the ports of the two backends, in the order they were
            first picked.
        """
        peer = IPv4Address("TCP", "192.0.2.1", 4321)
        channel = self.service.site.buildProtocol(peer)
        channel.makeConnection(StringTransport(peerAddress=peer))
        backends: list[tuple[int, Any, StringTransport]] = []
        for _ in range(count):
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
            for _, port, factory, _, _ in self.reactor.tcpClients[len(backends):]:
                protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
                transport = StringTransport()
                protocol.makeConnection(transport)
                backends.append((port, protocol, transport))
            (index,) = [i for i, (_, _, t) in enumerate(backends) if t.value()]
            _, protocol, transport = backends[index]
            transport.clear()
            self.reactor.advance(0.02)
            status = b"200 OK" if index == 0 else b"503 Busy"
            protocol.dataReceived(b"HTTP/1.1 %s\r\nContent-Length: 0\r\n\r\n" % status)
        return [port for port, _, _ in backends]

    def test_counters(self) -> None:
        """
        Requests by vhost and class, requests and responses by backend and
        class, the histograms' counts, sums and buckets, and the states of
        the backends are those of the requests sent.
        """
        first, second = self.proxy(10)
        text, contentType = metricsText(self.service.snapshot())
        self.assertTrue(contentType.startswith("text/plain"))
        found = samples(text)
        requests = "lbproxy_requests_total"
        self.assertEqual(found[key(requests, vhost="app", code_class="2xx")], 5)
        self.assertEqual(found[key(requests, vhost="app", code_class="5xx")], 5)
        self.assertEqual(found[key(requests, vhost="app", code_class="4xx")], 0)
        self.assertEqual(found[key(requests, vhost=NO_VHOST, code_class="2xx")], 0)
        duration = "lbproxy_request_duration_seconds"
        self.assertEqual(found[key(duration + "_count", vhost="app")], 10)
        self.assertAlmostEqual(found[key(duration + "_sum", vhost="app")], 0.2)
        self.assertEqual(found[key(duration + "_bucket", vhost="app", le="0.01")], 0)
        self.assertEqual(found[key(duration + "_bucket", vhost="app", le="0.025")], 10)
        self.assertEqual(found[key(duration + "_bucket", vhost="app", le="+Inf")], 10)
        for port, codeClass in [(first, "2xx"), (second, "5xx")]:
            which = dict(upstream="app", backend=f"127.0.0.1:{port}")
            self.assertEqual(found[key("lbproxy_upstream_requests_total", **which)], 5)
            self.assertEqual(
                found[key("lbproxy_upstream_responses_total", code_class=codeClass, **which)],
                5,
            )
            self.assertEqual(found[key("lbproxy_upstream_failures_total", **which)], 0)
            self.assertEqual(found[key("lbproxy_upstream_response_seconds_count", **which)], 5)
            self.assertEqual(found[key("lbproxy_active_requests", **which)], 0)
            for state in STATES:
                self.assertEqual(
                    found[key("lbproxy_backend_state", state=state, **which)],
                    1 if state == "up" else 0,
                )
        self.assertEqual(found[key("lbproxy_retries_total", upstream="app")], 0)
        self.assertEqual(found[key("lbproxy_connections")], 1)
        self.assertEqual(found[key("lbproxy_reloads_total")], 0)
        self.assertEqual(found[key("lbproxy_last_reload_successful")], 1)
        self.assertEqual(found[key("lbproxy_config_loaded_timestamp_seconds")], 1000)

    def test_types(self) -> None:
        """
        Each family has the type the module docstring gives it.
        """
        types = families(metricsText(self.service.snapshot())[0])
        self.assertEqual(types["lbproxy_requests"], "counter")
        self.assertEqual(types["lbproxy_request_duration_seconds"], "histogram")
        self.assertEqual(types["lbproxy_upstream_response_seconds"], "histogram")
        self.assertEqual(types["lbproxy_backend_state"], "gauge")
        self.assertEqual(types["lbproxy_reload_failures"], "counter")
        self.assertEqual(types["lbproxy_certificate_expiry_timestamp_seconds"], "gauge")

    def test_fromSnapshotOnly(self) -> None:
        """
        The metrics are rendered from the snapshot dict alone: a snapshot
        that went through JSON (as a workers parent gets it) gives the same
        text.
        """
        self.proxy(3)
        snapshot = self.service.snapshot()
        self.assertEqual(
            metricsText(json.loads(json.dumps(snapshot)))[0], metricsText(snapshot)[0]
        )

    def test_openMetrics(self) -> None:
        """
        A scraper that asks for OpenMetrics gets it.
        """
        text, contentType = metricsText(
            self.service.snapshot(), "application/openmetrics-text; version=1.0.0"
        )
        self.assertTrue(contentType.startswith("application/openmetrics-text"))
        self.assertTrue(text.endswith(b"# EOF\n"))

    def test_adminListener(self) -> None:
        """
        C{GET /metrics} of the C{[admin]} listener answers the exposition;
        C{POST} gets 405 as JSON.
        """
        assert self.service.admin is not None
        treq = StubTreq(self.service.admin)
        d = treq.get("http://127.0.0.1:9000/metrics")
        treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertTrue(
            response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        )
        body = self.successResultOf(response.content())
        self.assertIn("lbproxy_requests", families(body))
        d = treq.post("http://127.0.0.1:9000/metrics", data=b"")
        treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 405)
        self.assertIn("error", json.loads(self.successResultOf(response.content())))


class SnapshotPartsTests(SynchronousTestCase):
    """
    The parts of a snapshot a service on a fake clock does not fill in:
    health checks and certificates.
    """

    def snapshot(self, upstreams: list[Any], certificates: list[Any]) -> dict[str, Any]:
        empty = {
            "requests": 0,
            "responses_by_class": {},
            "duration_histogram": {
                "bounds": list(LATENCY_BOUNDS),
                "counts": [0] * (len(LATENCY_BOUNDS) + 1),
                "count": 0,
                "sum": 0.0,
            },
        }
        return {
            "version": 1, "time": 0.0, "config_loaded": None, "reloads": 0,
            "reload_failures": 0, "last_reload_ok": True, "connections": 0,
            "connections_refused": 0, "active_requests": 0,
            "upstreams": upstreams, "vhosts": [], "unrouted": empty,
            "certificates": certificates,
        }

    def upstream(self, name: str, **keys: Any) -> dict[str, Any]:
        """
        An upstream of a snapshot, without backends, with C{keys}.
        """
        return {
            "name": name, "retries": 0, "retries_refused": 0, "queued": 0,
            "queue_rejected": 0, "queue_timed_out": 0, "backends": [], **keys,
        }

    def test_dnsSource(self) -> None:
        """
        An upstream whose backends come from DNS has its backends added and
        removed, its lookups and failed lookups, and per C{resolve} line its
        addresses and, once it has had one, when its last good answer came;
        none of the etcd families.
        """
        upstream = self.upstream("app", backends_added=3, backends_removed=1, source=dnsSource())
        text = metricsText(self.snapshot([upstream], []))[0]
        self.assertEqual(
            sourceLines(text, "app"),
            [
                'lbproxy_backends_added_total{upstream="app"} 3.0',
                'lbproxy_backends_removed_total{upstream="app"} 1.0',
                'lbproxy_dns_lookups_total{upstream="app"} 40.0',
                'lbproxy_dns_lookup_failures_total{upstream="app"} 2.0',
                'lbproxy_dns_addresses{name="app.internal:8080",upstream="app"} 2.0',
                'lbproxy_dns_addresses{name="_http._tcp.svc.internal",upstream="app"} 1.0',
                'lbproxy_dns_addresses{name="new.internal:8080",upstream="app"} 0.0',
                'lbproxy_dns_last_answer_timestamp_seconds{name="app.internal:8080",'
                'upstream="app"} 88.0',
                'lbproxy_dns_last_answer_timestamp_seconds{name="_http._tcp.svc.internal",'
                'upstream="app"} 40.0',
            ],
        )
        types = families(text)
        self.assertEqual(
            [
                types[f"lbproxy_{name}"]
                for name in (
                    "backends_added", "backends_removed", "dns_lookups",
                    "dns_lookup_failures", "dns_addresses",
                    "dns_last_answer_timestamp_seconds",
                )
            ],
            ["counter", "counter", "counter", "counter", "gauge", "gauge"],
        )

    def test_etcdSource(self) -> None:
        """
        An upstream whose backends come from etcd has its backends added and
        removed, and its revision, whether it watches (1 or 0), its reads,
        events and failures, and its keys and rejected keys; none of the DNS
        families.
        """
        source = etcdSource()
        stopped = dict(source, revision=0, watching=False, error="connection refused")
        snapshot = self.snapshot(
            [
                self.upstream("app", backends_added=6, backends_removed=1, source=source),
                self.upstream("api", backends_added=0, backends_removed=0, source=stopped),
            ],
            [],
        )
        text = metricsText(snapshot)[0]
        self.assertEqual(
            sourceLines(text, "app"),
            [
                'lbproxy_backends_added_total{upstream="app"} 6.0',
                'lbproxy_backends_removed_total{upstream="app"} 1.0',
                'lbproxy_etcd_revision{upstream="app"} 42.0',
                'lbproxy_etcd_watching{upstream="app"} 1.0',
                'lbproxy_etcd_reads_total{upstream="app"} 3.0',
                'lbproxy_etcd_events_total{upstream="app"} 17.0',
                'lbproxy_etcd_failures_total{upstream="app"} 2.0',
                'lbproxy_etcd_keys{upstream="app"} 5.0',
                'lbproxy_etcd_rejected_keys{upstream="app"} 1.0',
            ],
        )
        found = samples(text)
        self.assertEqual(found[key("lbproxy_etcd_revision", upstream="api")], 0)
        self.assertEqual(found[key("lbproxy_etcd_watching", upstream="api")], 0)
        types = families(text)
        self.assertEqual(
            [
                types[f"lbproxy_etcd_{name}"]
                for name in (
                    "revision", "watching", "reads", "events", "failures", "keys",
                    "rejected_keys",
                )
            ],
            ["gauge", "gauge", "counter", "counter", "counter", "gauge", "gauge"],
        )

    def test_fixedServers(self) -> None:
        """
        An upstream with fixed servers (no C{source}) has its backends added
        and removed (by an application that calls C{Pool.setBackends}) and
        no DNS or etcd family; one
        of an older snapshot, without these keys at all, has 0 of each.
        """
        snapshot = self.snapshot(
            [
                self.upstream("app", backends_added=2, backends_removed=2, source=None),
                self.upstream("old"),
            ],
            [],
        )
        text = metricsText(snapshot)[0]
        self.assertEqual(
            sourceLines(text, "app"),
            [
                'lbproxy_backends_added_total{upstream="app"} 2.0',
                'lbproxy_backends_removed_total{upstream="app"} 2.0',
            ],
        )
        self.assertEqual(
            sourceLines(text, "old"),
            [
                'lbproxy_backends_added_total{upstream="old"} 0.0',
                'lbproxy_backends_removed_total{upstream="old"} 0.0',
            ],
        )

    def test_workers(self) -> None:
        """
        In C{workers} mode (the workers' snapshots merged, one value taken
        where they differ), the counters are the sums of the workers', and
        the etcd revision the lowest: the worker furthest behind.
        """
        def worker(number: int, revision: int, events: int) -> WorkerAnswer:
            source = etcdSource(revision=revision, reads=1, events=events, failures=0)
            upstream = self.upstream("app", backends_added=2, backends_removed=0, source=source)
            return WorkerAnswer(number, 100 + number, 200, self.snapshot([upstream], []))

        merged = mergeSnapshots([worker(0, 42, 7), worker(1, 40, 5)])
        text = metricsText(singleValues(merged))[0]
        self.assertEqual(
            sourceLines(text, "app"),
            [
                'lbproxy_backends_added_total{upstream="app"} 4.0',
                'lbproxy_backends_removed_total{upstream="app"} 0.0',
                'lbproxy_etcd_revision{upstream="app"} 40.0',
                'lbproxy_etcd_watching{upstream="app"} 1.0',
                'lbproxy_etcd_reads_total{upstream="app"} 2.0',
                'lbproxy_etcd_events_total{upstream="app"} 12.0',
                'lbproxy_etcd_failures_total{upstream="app"} 0.0',
                'lbproxy_etcd_keys{upstream="app"} 5.0',
                'lbproxy_etcd_rejected_keys{upstream="app"} 1.0',
            ],
        )

    def test_limits(self) -> None:
        """
        What a vhost's limits did: refused by rate and by conn, held back,
        and the keys remembered and in flight; a vhost without limits has
        none of these.
        """
        snapshot = self.snapshot([], [])
        counts = dict(snapshot["unrouted"])
        snapshot["vhosts"] = [
            dict(
                counts,
                name="app",
                limits={
                    "refused_rate": 7,
                    "refused_conn": 2,
                    "delayed": 3,
                    "clients": 40,
                    "in_flight": 5,
                },
            ),
            dict(counts, name="other", limits=None),
        ]
        found = samples(metricsText(snapshot)[0])
        self.assertEqual(found[key("lbproxy_limit_refused_total", vhost="app", limit="rate")], 7)
        self.assertEqual(found[key("lbproxy_limit_refused_total", vhost="app", limit="conn")], 2)
        self.assertEqual(found[key("lbproxy_limit_delayed_total", vhost="app")], 3)
        self.assertEqual(found[key("lbproxy_limit_keys", vhost="app")], 40)
        self.assertEqual(found[key("lbproxy_limit_keys_in_flight", vhost="app")], 5)
        self.assertEqual(
            [k for k in found if "limit" in k[0] and ("vhost", "other") in k[1]], []
        )

    def test_health(self) -> None:
        """
        Probes passed and failed, and the latest one's result, latency and
        time, per backend; a backend not probed yet has counts only.
        """
        from twisted.internet.defer import succeed
        from twisted.internet.task import Clock

        from lbproxy._snapshot import upstreamStatus

        clock = Clock()
        clock.advance(10)
        pool, backends = makePool(2, clock)
        checker = makeChecker(
            pool, clock, lambda b: succeed("status 200"), random=NoJitter()
        )
        pool.disable(backends[1])  # not probed
        checker.startService()
        self.addCleanup(checker.stopService)
        clock.advance(0)
        found = samples(metricsText(self.snapshot([upstreamStatus(pool, checker)], []))[0])
        which = dict(upstream="app", backend="127.0.0.1:9001")
        checks = "lbproxy_health_checks_total"
        self.assertEqual(found[key(checks, result="pass", **which)], 1)
        self.assertEqual(found[key(checks, result="fail", **which)], 0)
        self.assertEqual(found[key("lbproxy_health_check_last_passed", **which)], 1)
        self.assertEqual(found[key("lbproxy_health_check_last_latency_seconds", **which)], 0)
        self.assertEqual(found[key("lbproxy_health_check_last_timestamp_seconds", **which)], 10)
        other = dict(upstream="app", backend="127.0.0.1:9002")
        self.assertEqual(found[key(checks, result="pass", **other)], 0)
        self.assertNotIn(key("lbproxy_health_check_last_passed", **other), found)

    def test_certificates(self) -> None:
        """
        A certificate's expiry is given for each name it is for.
        """
        directory = os.path.abspath(self.mktemp())
        chainPath, keyPath = Authority().write(directory, ["a.test", "b.test"], days=30)
        chain = loadChain(chainPath, keyPath)
        found = samples(metricsText(self.snapshot([], [certificateStatus(chain)]))[0])
        for name in ("a.test", "b.test"):
            self.assertEqual(
                found[
                    key("lbproxy_certificate_expiry_timestamp_seconds", file=chainPath, name=name)
                ],
                chain.notAfter.timestamp(),
            )
        self.assertNotIn(key("lbproxy_config_loaded_timestamp_seconds"), found)
