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
