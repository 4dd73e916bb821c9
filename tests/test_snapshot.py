"""
Tests for L{lbproxy._snapshot} and the counters it reads
(L{lbproxy._counters}): a L{LoadBalancerService} on a fake clock, driven
byte by byte, and what C{GET /api/status} of its C{[admin]} listener
shows.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import LoadBalancerService, parseConfigText
from lbproxy._certificates import loadChain
from lbproxy._counters import LATENCY_BOUNDS, Histogram
from lbproxy._snapshot import certificateStatus, upstreamStatus
from tests.certificates import Authority
from tests.test_health import NoJitter, makeChecker, makePool

_SITE = """
[lbproxy]
listen = tcp:8080:interface=127.0.0.1
access_log = off

[upstream:app]
servers = 127.0.0.1:9001
    127.0.0.1:9002

[vhost:app]
server_names = app.example
upstream = app

[admin]
listen = tcp:9000:interface=127.0.0.1
"""

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
_MISSING = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno"


def runningService(
    testCase: SynchronousTestCase,
) -> tuple[MemoryReactorClock, LoadBalancerService]:
    """
    A L{LoadBalancerService} of L{_SITE}, started on a fake clock at 1000 s
    and stopped at the end of C{testCase}.
    """
    reactor = MemoryReactorClock()
    reactor.advance(1000)
    service = LoadBalancerService(parseConfigText(_SITE), reactor)
    service.startService()
    testCase.addCleanup(service.stopService)
    return reactor, service


class HistogramTests(SynchronousTestCase):
    def test_buckets(self) -> None:
        """
        An observation goes to the first bucket whose bound is at least
        the value (Prometheus' C{le}); those above every bound to the last.
        """
        histogram = Histogram()
        for seconds in (0.0, 0.005, 0.0051, 10.0, 10.5, 0.3):
            histogram.observe(seconds)
        expected = [0] * (len(LATENCY_BOUNDS) + 1)
        expected[0] = 2  # 0 and 0.005 (le 0.005)
        expected[1] = 1  # 0.0051 (le 0.01)
        expected[6] = 1  # 0.3 (le 0.5)
        expected[10] = 1  # 10.0 (le 10)
        expected[11] = 1  # 10.5 (+Inf)
        self.assertEqual(histogram.counts, expected)
        self.assertAlmostEqual(histogram.sum, 20.8101)
        self.assertEqual(histogram.asDict()["count"], 6)


class ServiceSnapshotTests(SynchronousTestCase):
    """
    The counters a running service keeps, as its snapshot shows them.
    """

    def setUp(self) -> None:
        self.reactor, self.service = runningService(self)

    def client(self) -> tuple[Any, StringTransport]:
        peer = IPv4Address("TCP", "192.0.2.1", 4321)
        channel = self.service.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        channel.makeConnection(transport)
        return channel, transport

    def backendFor(self, index: int) -> tuple[int, Any, StringTransport]:
        """
        Accept the connection attempt C{index} of the reactor's: the
        backend port, its protocol and transport.
        """
        _, port, factory, _, _ = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return port, protocol, transport

    def backendStatus(self, snapshot: dict[str, Any], port: int) -> dict[str, Any]:
        (upstream,) = snapshot["upstreams"]
        return next(b for b in upstream["backends"] if b["name"].endswith(f":{port}"))

    def test_requestsCounted(self) -> None:
        """
        Each response is counted by status class on its backend and its
        vhost, with its time in their histograms; a request no vhost
        takes is counted apart; connections and requests in flight are
        shown.
        """
        channel, transport = self.client()
        channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: app.example\r\n\r\n")
        first, protocol, _ = self.backendFor(0)
        snapshot = self.service.snapshot()
        self.assertEqual((snapshot["connections"], snapshot["active_requests"]), (1, 1))
        self.reactor.advance(0.02)
        protocol.dataReceived(_OK)
        channel.dataReceived(b"GET /b HTTP/1.1\r\nHost: app.example\r\n\r\n")
        second, protocol2, _ = self.backendFor(1)
        self.reactor.advance(0.3)
        protocol2.dataReceived(_MISSING)
        channel.dataReceived(b"GET /c HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n")
        self.assertIn(b"HTTP/1.1 404", transport.value().split(b"\r\n\r\nno")[-1])

        snapshot = self.service.snapshot()
        self.assertEqual(snapshot["version"], 1)
        self.assertEqual(snapshot["time"], self.reactor.seconds())
        self.assertEqual(snapshot["active_requests"], 0)
        a = self.backendStatus(snapshot, first)
        b = self.backendStatus(snapshot, second)
        self.assertEqual(
            (a["requests"], a["responses"], a["responses_by_class"]["2xx"]), (1, 1, 1)
        )
        self.assertEqual(
            (b["requests"], b["responses"], b["responses_by_class"]["4xx"]), (1, 1, 1)
        )
        self.assertEqual(a["response_time_histogram"]["counts"][2], 1)  # le 0.025
        self.assertEqual(b["response_time_histogram"]["counts"][6], 1)  # le 0.5
        self.assertAlmostEqual(b["response_time_histogram"]["sum"], 0.3)
        (vhost,) = snapshot["vhosts"]
        self.assertEqual(vhost["name"], "app")
        self.assertEqual(vhost["server_names"], ["app.example"])
        self.assertEqual(vhost["requests"], 2)
        self.assertEqual(
            vhost["responses_by_class"], {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 1, "5xx": 0}
        )
        self.assertEqual(vhost["duration_histogram"]["count"], 2)
        self.assertEqual(snapshot["unrouted"]["responses_by_class"]["4xx"], 1)
        self.assertEqual(snapshot["unrouted"]["duration_histogram"]["count"], 1)
        self.assertEqual(snapshot["upstreams"][0]["retries"], 0)
        json.dumps(snapshot)

    def test_retryCounted(self) -> None:
        """
        A GET refused by one backend and sent to the other counts one retry
        for the upstream and one failure for the first backend; only the
        second has a response.
        """
        channel, transport = self.client()
        channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: app.example\r\n\r\n")
        _, port, factory, _, _ = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        second, protocol, _ = self.backendFor(1)
        protocol.dataReceived(_OK)
        self.assertTrue(transport.value().endswith(b"ok"))
        snapshot = self.service.snapshot()
        self.assertEqual(snapshot["upstreams"][0]["retries"], 1)
        refused = self.backendStatus(snapshot, port)
        self.assertEqual((refused["failures"], refused["responses"]), (1, 0))
        self.assertEqual(self.backendStatus(snapshot, second)["responses"], 1)
        self.assertEqual(snapshot["vhosts"][0]["responses_by_class"]["2xx"], 1)

    def test_reloads(self) -> None:
        """
        Reloads taken and refused are counted, with when the running
        configuration was taken and whether the latest reload was.
        """
        path = self.mktemp()
        snapshot = self.service.snapshot()
        self.assertEqual(
            (snapshot["reloads"], snapshot["reload_failures"], snapshot["last_reload_ok"]),
            (0, 0, True),
        )
        self.assertEqual(snapshot["config_loaded"], 1000)
        with open(path, "w") as f:
            f.write("[lbproxy]\nbogus = 1\n")
        self.assertFalse(self.service.reloadFromFile(path))
        self.flushLoggedErrors()
        self.reactor.advance(5)
        with open(path, "w") as f:
            f.write(_SITE)
        snapshot = self.service.snapshot()
        self.assertEqual(
            (snapshot["reloads"], snapshot["reload_failures"], snapshot["last_reload_ok"]),
            (0, 1, False),
        )
        self.assertTrue(self.service.reloadFromFile(path))
        snapshot = self.service.snapshot()
        self.assertEqual(
            (snapshot["reloads"], snapshot["reload_failures"], snapshot["last_reload_ok"]),
            (1, 1, True),
        )
        self.assertEqual(snapshot["config_loaded"], 1005)

    def test_apiStatus(self) -> None:
        """
        C{GET /api/status} of the C{[admin]} listener answers the snapshot
        as JSON; other methods get 405.
        """
        assert self.service.admin is not None
        treq = StubTreq(self.service.admin)
        d = treq.get("http://127.0.0.1:9000/api/status")
        treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual(body, json.loads(json.dumps(self.service.snapshot())))
        d = treq.post("http://127.0.0.1:9000/api/status", data=b"{}")
        treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])


class HealthSnapshotTests(SynchronousTestCase):
    def test_probesCounted(self) -> None:
        """
        A backend's active checks show probes passed and failed in total,
        and the latest one's result, latency and time.
        """
        clock = Clock()
        clock.advance(50)
        pool, backends = makePool(2, clock)
        answers: list[Deferred[str]] = []

        def probe(backend: Any) -> Deferred[str]:
            answers.append(Deferred())
            return answers[-1]

        checker = makeChecker(pool, clock, probe, random=NoJitter(), timeout=5.0)
        checker.startService()
        self.addCleanup(checker.stopService)
        clock.advance(0)
        first, second = answers
        clock.advance(0.25)
        first.callback("status 200")
        second.errback(ConnectionRefusedError())
        health = [b["health"] for b in upstreamStatus(pool, checker)["backends"]]
        self.assertEqual(
            health[0],
            {
                "passed": 1,
                "failed": 0,
                "last_passed": True,
                "last_result": "passed: status 200",
                "last_latency": 0.25,
                "last_time": 50.25,
            },
        )
        self.assertEqual(
            (health[1]["passed"], health[1]["failed"], health[1]["last_passed"]),
            (0, 1, False),
        )
        self.assertIn("refused", health[1]["last_result"])
        self.assertIsNone(upstreamStatus(pool)["backends"][0]["health"])


class CertificateSnapshotTests(SynchronousTestCase):
    def test_expiry(self) -> None:
        """
        A certificate is shown with its file, its names and the end of
        its validity, as ISO 8601 and seconds since the epoch.
        """
        directory = os.path.abspath(self.mktemp())
        chainPath, keyPath = Authority().write(directory, ["a.test", "b.test"], days=30)
        chain = loadChain(chainPath, keyPath)
        status = certificateStatus(chain)
        self.assertEqual(status["file"], chainPath)
        self.assertEqual(status["names"], ["a.test", "b.test"])
        notAfter = datetime.datetime.fromisoformat(status["not_after"])
        self.assertEqual(notAfter, chain.notAfter)
        self.assertEqual(status["not_after_timestamp"], chain.notAfter.timestamp())
        json.dumps(status)

