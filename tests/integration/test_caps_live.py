"""
Backend protection on real sockets: C{max_conns} and the queue, outlier
ejection and the retry budget, with real backends on 127.0.0.1, the proxy
on a loopback port and real HTTP clients.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lbproxy import Backend, BackendState, Pool, UpstreamResource
from lbproxy.testing import startServer


class _Counting(Resource):
    """
    Answers C{status} with its name, after C{delay} seconds or, with
    C{hold}, when the test releases the requests; counts the requests and
    the most it had in flight at once.
    """

    isLeaf = True

    def __init__(self, name: bytes, delay: float = 0.0, hold: bool = False) -> None:
        Resource.__init__(self)
        self.name = name
        self.delay = delay
        self.hold = hold
        self.status = 200
        self.requests = 0
        self.inFlight = 0
        self.mostInFlight = 0
        self.held: list[Any] = []

    def render(self, request: Any) -> Any:
        self.requests += 1
        self.inFlight += 1
        self.mostInFlight = max(self.mostInFlight, self.inFlight)
        if self.hold:
            self.held.append(request)
        elif self.delay:
            call = reactor.callLater(self.delay, self._answer, request)
            request.notifyFinish().addErrback(lambda _: call.cancel())
        else:
            self._answer(request)
        return NOT_DONE_YET

    def _answer(self, request: Any) -> None:
        self.inFlight -= 1
        request.setResponseCode(self.status)
        request.write(self.name)
        request.finish()

    def release(self) -> None:
        """
        Answer every held request.
        """
        held, self.held = self.held, []
        for request in held:
            self._answer(request)


class _Reset(Protocol):
    """
    A backend that has crashed behind its port: it accepts, then resets.
    """

    def connectionMade(self) -> None:
        self.factory.connections += 1  # type: ignore[attr-defined]
        assert self.transport is not None
        self.transport.abortConnection()


class _Raw(Protocol):
    """
    A client that sends one request and keeps what comes back.
    """

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class LiveCapsTests(TestCase):
    """
    C{max_conns}, the queue, C{eject_on} and C{retry_budget} in the real
    data path.
    """

    timeout = 60

    def setUp(self) -> None:
        connections = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(connections.closeCachedConnections)
        self.agent = Agent(reactor, pool=connections)

    @inlineCallbacks
    def startPool(self, resources: list[Any], maxConns: Any = None, **kwargs: Any) -> Any:
        """
        Serve each resource on its own port (a L{Factory} is served as it
        is), and a proxy over them all.
        """
        backends = []
        for resource in resources:
            if isinstance(resource, Factory):
                port = reactor.listenTCP(0, resource, interface="127.0.0.1")
                self.addCleanup(port.stopListening)
                number = port.getHost().port
            else:
                server = yield startServer(resource, reactor)
                self.addCleanup(server.stop)
                number = server.port
            backends.append(Backend("127.0.0.1", number, maxConns=maxConns))
        pool = Pool("live", backends, None, reactor, **kwargs)
        self.addCleanup(pool.close)
        proxy = yield startServer(UpstreamResource(pool), reactor)
        self.addCleanup(proxy.stop)
        self.proxyPort = proxy.port
        self.url = b"http://127.0.0.1:%d/" % (proxy.port,)
        self.pool = pool
        self.backends = backends
        return backends

    @inlineCallbacks
    def get(self) -> Any:
        """
        GET through the proxy: a L{Deferred} firing with C{(status, body)}.
        """
        response = yield self.agent.request(b"GET", self.url)
        body = yield readBody(response)
        return response.code, body

    @inlineCallbacks
    def waitFor(self, condition: Callable[[], bool], within: float = 5.0) -> Any:
        """
        Poll C{condition} every 10 ms until it holds, failing the test if it
        does not within C{within} seconds.
        """
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                self.fail(f"condition not met within {within}s")
            yield deferLater(reactor, 0.01, lambda: None)

    @inlineCallbacks
    def test_oneAtATime(self) -> Any:
        """
        A backend with C{max_conns=1} that takes 50 ms per request serves
        5 concurrent requests one after the other: all 200, never two at
        once, and the last answered about 5 × 50 ms after they were sent.
        """
        slow = _Counting(b"slow", delay=0.05)
        yield self.startPool([slow], maxConns=1)
        started = time.monotonic()
        results = yield gatherResults([self.get() for _ in range(5)])
        took = time.monotonic() - started
        self.assertEqual(results, [(200, b"slow")] * 5)
        self.assertEqual((slow.requests, slow.mostInFlight), (5, 1))
        self.assertGreaterEqual(took, 0.2)
        self.assertEqual(len(self.pool.queue), 0)

    @inlineCallbacks
    def test_fullQueue(self) -> Any:
        """
        With C{max_conns=1} and C{queue=1}, a third concurrent request
        gets 503 while the first is in flight and the second waits; those
        two are then answered.
        """
        held = _Counting(b"held", hold=True)
        yield self.startPool([held], maxConns=1, queue=1)
        # Either may reach the proxy first: one is held, the other waits.
        both = gatherResults([self.get(), self.get()])
        yield self.waitFor(lambda: len(held.held) == 1 and len(self.pool.queue) == 1)
        code, body = yield self.get()
        self.assertEqual(code, 503)
        self.assertIn(b"503 Service Unavailable", body)
        held.release()
        yield self.waitFor(lambda: len(held.held) == 1 and len(self.pool.queue) == 0)
        held.release()
        self.assertEqual((yield both), [(200, b"held")] * 2)
        self.assertEqual(held.requests, 2)

    @inlineCallbacks
    def test_queuedClientLeaves(self) -> Any:
        """
        A queued client that disconnects frees its place at once: with
        C{queue=1}, the next request waits instead of getting 503, and the
        one that left never reaches the backend.
        """
        held = _Counting(b"held", hold=True)
        yield self.startPool([held], maxConns=1, queue=1)
        first = self.get()
        yield self.waitFor(lambda: len(held.held) == 1)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxyPort)
        leaving = yield connectProtocol(endpoint, _Raw())
        leaving.transport.write(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
        yield self.waitFor(lambda: len(self.pool.queue) == 1)
        leaving.transport.loseConnection()
        yield self.waitFor(lambda: len(self.pool.queue) == 0)
        self.assertEqual(self.pool.queue.left, 1)
        third = self.get()
        yield self.waitFor(lambda: len(self.pool.queue) == 1)
        held.release()
        self.assertEqual((yield first), (200, b"held"))
        yield self.waitFor(lambda: len(held.held) == 1)
        held.release()
        self.assertEqual((yield third), (200, b"held"))
        self.assertEqual(held.requests, 2)
        self.assertEqual(leaving.received, b"")

    @inlineCallbacks
    def test_ejectedAndBack(self) -> Any:
        """
        With C{eject_on = 5xx}, a backend answering 500 is ejected after
        C{max_fails} such answers (the 500s still reach the client), takes
        no request while out, and takes requests again after the ejection
        time.
        """
        good, bad = _Counting(b"good"), _Counting(b"bad")
        bad.status = 500
        yield self.startPool(
            [good, bad], ejectOn=range(500, 600), maxFails=2, failTimeout=1.0
        )
        codes: Counter[int] = Counter()
        for _ in range(4):
            code, _ = yield self.get()
            codes[code] += 1
        self.assertEqual(codes, Counter({200: 2, 500: 2}))
        backend = self.backends[1]
        self.assertIs(backend.state, BackendState.FAILED)
        self.assertEqual(
            backend.stateReason, "ejected: 2 responses 500 within 1s; out for 1s"
        )
        out = bad.requests
        for _ in range(5):
            self.assertEqual((yield self.get()), (200, b"good"))
        self.assertEqual(bad.requests, out)
        bad.status = 200
        yield self.waitFor(lambda: backend.state is BackendState.UP, 3.0)
        bodies = []
        for _ in range(4):
            code, body = yield self.get()
            bodies.append(body)
        self.assertIn(b"bad", bodies)

    @inlineCallbacks
    def test_ejectionCap(self) -> Any:
        """
        When every one of 4 backends answers 500, C{max_ejection = 50%}
        keeps 2 of them in: clients get the backends' 500s, never a 502.
        """
        resources = [_Counting(b"%d" % i) for i in range(4)]
        for resource in resources:
            resource.status = 500
        yield self.startPool(
            resources, ejectOn=range(500, 600), maxFails=1, failTimeout=30.0,
            maxEjection=0.5,
        )
        codes: Counter[int] = Counter()
        for _ in range(40):
            code, _ = yield self.get()
            codes[code] += 1
        self.assertEqual(codes, Counter({500: 40}))
        states = Counter(b.state for b in self.backends)
        self.assertEqual(states, Counter({BackendState.FAILED: 2, BackendState.UP: 2}))

    @inlineCallbacks
    def test_budgetDuringAnOutage(self) -> Any:
        """
        With half of 4 backends resetting every connection and passive
        health off, 100 GETs make at most 20% retries (C{retry_budget})
        instead of one for each request that met a dead backend; the
        connection attempts the dead backends saw add up.
        """
        deadFactories = []
        for _ in range(2):
            factory = Factory.forProtocol(_Reset)
            factory.connections = 0  # type: ignore[attr-defined]
            deadFactories.append(factory)
        alive = [_Counting(b"a"), _Counting(b"b")]
        yield self.startPool(
            [alive[0], deadFactories[0], alive[1], deadFactories[1]],
            maxFails=0,
            retryBudget=0.2,
        )
        codes: Counter[int] = Counter()
        for _ in range(100):
            code, _ = yield self.get()
            codes[code] += 1
        budget = self.pool.budget
        assert budget is not None
        dead = sum(f.connections for f in deadFactories)  # type: ignore[attr-defined]
        servedAlive = sum(r.requests for r in alive)
        self.assertEqual(budget.requests, 100)
        self.assertLessEqual(self.pool.retries, 20)
        self.assertGreater(budget.refused, 0)
        # Every attempt went to a backend: 100 first ones, plus retries.
        self.assertEqual(dead + servedAlive, 100 + self.pool.retries)
        self.assertEqual(codes[200], servedAlive)
        self.assertEqual(codes[502], 100 - servedAlive)
        # Without the budget, each of the ~50 first attempts on a dead
        # backend would have been retried.
        self.assertGreater(dead, 40)
