"""
Active health checks on real sockets: lbproxy in this process, backends on
127.0.0.1 whose C{/healthz} flips between healthy and not, a real client.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lbproxy import LoadBalancerService, parseConfigText
from lbproxy._backend import BackendState
from lbproxy._health import HealthChecker
from lbproxy.testing import startServer


class FlippingBackend(Resource):
    """
    A backend whose health an attribute decides.

    While healthy, C{/healthz} answers 200 and every other path answers
    200 with the backend's name.  While sick, C{/healthz} answers 503 and
    every other request has its connection cut, the way a crashing
    application server would, so that only retrying on another backend
    keeps clients from seeing errors.

    @ivar hits: requests other than health checks received.
    @ivar probes: health checks received.
    """

    isLeaf = True

    def __init__(self, name: bytes) -> None:
        Resource.__init__(self)
        self.name = name
        self.healthy = True
        self.hits = 0
        self.probes = 0

    def render_GET(self, request: Any) -> Any:
        if request.path == b"/healthz":
            self.probes += 1
            if self.healthy:
                return b"ok\n"
            request.setResponseCode(503)
            return b"sick\n"
        self.hits += 1
        if self.healthy:
            return self.name + b"\n"
        request.channel.transport.abortConnection()
        return NOT_DONE_YET


_CONFIG = """
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = off

[upstream:app]
servers =
    127.0.0.1:{a}
    127.0.0.1:{b}
max_fails = 0
health_check = /healthz
health_interval = 500ms
health_timeout = 400ms
health_fall = 2
health_rise = 2
{extra}

[vhost:app]
default = yes
upstream = app
"""


class HealthCheckLiveTests(TestCase):
    """
    Backends leave and rejoin the rotation as their health checks say.
    """

    timeout = 60

    def setUp(self) -> None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @inlineCallbacks
    def start(self, extra: str = "", aHealthy: bool = True) -> Any:
        """
        Start two flipping backends, and a proxy balancing across them.
        """
        self.a = FlippingBackend(b"a")
        self.b = FlippingBackend(b"b")
        self.a.healthy = aHealthy
        servers = []
        for resource in (self.a, self.b):
            server = yield startServer(resource, reactor)
            self.addCleanup(server.stop)
            servers.append(server)
        config = parseConfigText(
            _CONFIG.format(a=servers[0].port, b=servers[1].port, extra=extra),
            "health.ini",
        )
        self.service = LoadBalancerService(config, reactor)
        self.service.startService()
        self.addCleanup(self.stopProxy)
        ports = yield self.service.whenListening()
        self.url = "http://127.0.0.1:%d/" % (ports[0].getHost().port,)
        self.pool = self.service.pools["app"]
        self.backendA, self.backendB = self.pool.backends

    def stopProxy(self) -> Any:
        if self.service.running:
            return self.service.stopService()
        return None

    @inlineCallbacks
    def get(self) -> Any:
        response = yield self.client.get(self.url)
        body = yield response.content()
        return response.code, body

    def flow(self) -> tuple[Counter[int], Callable[[], Deferred[None]]]:
        """
        Send GETs one after the other until told to stop.

        @return: the counts of the status codes seen, and a function that
            stops the flow and returns a L{Deferred} that fires when it has
            stopped.
        """
        codes: Counter[int] = Counter()
        running = [True]

        @inlineCallbacks
        def loop() -> Any:
            while running[0]:
                code, body = yield self.get()
                codes[code] += 1

        done = loop()

        def stop() -> Deferred[None]:
            running[0] = False
            return done

        return codes, stop

    @inlineCallbacks
    def waitFor(self, condition: Callable[[], bool], within: float) -> Any:
        """
        Poll C{condition} until it holds, failing the test if it does not
        within C{within} seconds.

        @return: the seconds it took.
        """
        started = time.monotonic()
        while not condition():
            elapsed = time.monotonic() - started
            if elapsed > within:
                self.fail(f"condition not met within {within}s")
            yield deferLater(reactor, 0.02, lambda: None)
        return time.monotonic() - started

    @inlineCallbacks
    def test_failingBackendLeavesAndComesBack(self) -> None:
        """
        With C{health_interval} 0.5 s and C{health_fall} 2, a backend whose
        checks start failing gets no more traffic within 3 s, and no client
        request fails meanwhile (GETs are retried on the other backend); it
        gets traffic again within 3 s of recovering.
        """
        yield self.start()
        codes, stop = self.flow()
        yield self.waitFor(lambda: self.a.hits > 5 and self.b.hits > 5, 5)

        self.a.healthy = False
        yield self.waitFor(lambda: self.backendA.state is BackendState.DOWN, 3)
        hits = self.a.hits
        served = sum(codes.values())
        yield self.waitFor(lambda: sum(codes.values()) > served + 50, 5)
        self.assertEqual(self.a.hits, hits)

        self.a.healthy = True
        yield self.waitFor(lambda: self.a.hits > hits, 3)
        self.assertIs(self.backendA.state, BackendState.UP)
        yield stop()
        self.assertEqual(list(codes), [200])

        transitions = [
            (e["old"], e["new"], e["reason"])
            for e in self.events
            if e.get("backend") == self.backendA.name and "new" in e
        ]
        self.assertEqual(
            transitions,
            [
                (
                    "up",
                    "down",
                    "2 consecutive failed health checks, latest: "
                    "status 503, expected 200-399",
                ),
                (
                    "down",
                    "up",
                    "2 consecutive passing health checks, latest: status 200",
                ),
            ],
        )

    @inlineCallbacks
    def test_everyBackendDown(self) -> None:
        """
        With every backend down by its checks, requests get 502, and the
        log says that each backend is down and why.
        """
        yield self.start()
        self.a.healthy = self.b.healthy = False
        yield self.waitFor(
            lambda: (
                self.pool.eligible == ()
                and self.backendA.state is self.backendB.state is BackendState.DOWN
            ),
            3,
        )
        hits = self.a.hits + self.b.hits
        for _ in range(3):
            code, body = yield self.get()
            self.assertEqual(code, 502)
            self.assertIn(b"502 Bad Gateway", body)
        self.assertEqual(self.a.hits + self.b.hits, hits)
        explained = [
            e for e in self.events if e.get("upstream") == "app" and "why" in e
        ]
        # the pool says so when its last backend goes, and the proxy for
        # every request it cannot forward
        self.assertEqual(len([e for e in explained if "method" in e]), 3, explained)
        self.assertEqual(len([e for e in explained if "method" not in e]), 1, explained)
        for event in explained:
            for backend in (self.backendA, self.backendB):
                self.assertIn(
                    f"{backend.name} down (2 consecutive failed health checks, "
                    "latest: status 503, expected 200-399)",
                    event["why"],
                )

        self.b.healthy = True
        yield self.waitFor(lambda: self.pool.eligible == (self.backendB,), 3)
        code, body = yield self.get()
        self.assertEqual((code, body), (200, b"b\n"))

    @inlineCallbacks
    def test_mandatory(self) -> None:
        """
        With C{health_mandatory}, a backend that fails its checks from the
        start never gets a request, and a healthy one gets requests after
        its first check.
        """
        yield self.start(extra="health_mandatory = yes", aHealthy=False)
        codes, stop = self.flow()
        yield self.waitFor(lambda: self.b.hits > 0, 3)
        yield self.waitFor(lambda: self.a.probes >= 3, 3)
        yield stop()
        self.assertEqual(self.a.hits, 0)
        self.assertIs(self.backendA.state, BackendState.DOWN)
        self.assertGreater(codes[200], 0)
        # before the first checks, every backend is down
        self.assertLessEqual(set(codes), {200, 502})

    @inlineCallbacks
    def test_stopsCleanly(self) -> None:
        """
        Stopping the service stops the probes: once it has stopped, no
        timer of a health checker is left in the reactor to start another
        one (its probe timer is a L{LoopingCall} of L{HealthChecker._due},
        a probe waiting out its jitter a call of L{HealthChecker._run}).
        """
        yield self.start()
        yield self.waitFor(lambda: self.a.probes >= 2, 3)

        def healthTimers() -> list[Any]:
            found = []
            for call in reactor.getDelayedCalls():
                method = getattr(call.func, "f", call.func)
                if call.active() and isinstance(getattr(method, "__self__", None), HealthChecker):
                    found.append(call)
            return found

        self.assertNotEqual(healthTimers(), [])
        yield self.stopProxy()
        self.assertEqual(healthTimers(), [])
