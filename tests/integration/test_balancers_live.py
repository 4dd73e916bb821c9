"""
Balancers on real sockets: a pool of real backends on 127.0.0.1, the proxy
resource served on a loopback port, and a real HTTP client.
"""

from __future__ import annotations

from collections import Counter
from random import Random
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lbproxy import Backend, Pool, UpstreamResource
from lbproxy.balancers import PeakEWMA, Sticky
from lbproxy.testing import startServer


class _Named(Resource):
    """
    Answers with its name (and a cookie of its own), after C{delay} seconds.
    """

    isLeaf = True

    def __init__(self, name: bytes, delay: float = 0.0) -> None:
        Resource.__init__(self)
        self.name = name
        self.delay = delay
        self.pending: set[Any] = set()

    def render(self, request: Any) -> Any:
        request.addCookie(b"app", self.name)
        if not self.delay:
            return self.name
        call = reactor.callLater(self.delay, self._answer, request)
        self.pending.add(call)
        request.notifyFinish().addErrback(lambda _: call.cancel())
        return NOT_DONE_YET

    def _answer(self, request: Any) -> None:
        self.pending = {c for c in self.pending if c.active()}
        request.write(self.name)
        request.finish()


class LiveBalancerTests(TestCase):
    """
    Balancers in the real data path.
    """

    timeout = 60

    def setUp(self) -> None:
        connections = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(connections.closeCachedConnections)
        self.agent = Agent(reactor, pool=connections)

    @inlineCallbacks
    def startPool(self, balancer: Any, resources: list[_Named]) -> Any:
        """
        Serve each resource on its own port, and a proxy over them all.

        @return: a L{Deferred} firing with the backend servers.
        """
        servers = []
        for resource in resources:
            server = yield startServer(resource, reactor)
            self.addCleanup(server.stop)
            servers.append(server)
        backends = [Backend("127.0.0.1", s.port) for s in servers]
        pool = Pool("live", backends, balancer, reactor, maxFails=1, failTimeout=30)
        self.addCleanup(pool.close)
        proxy = yield startServer(UpstreamResource(pool), reactor)
        self.addCleanup(proxy.stop)
        self.url = b"http://127.0.0.1:%d/" % (proxy.port,)
        self.pool = pool
        return servers

    @inlineCallbacks
    def get(self, cookie: Optional[bytes] = None) -> Any:
        """
        GET through the proxy.

        @return: a L{Deferred} firing with the body and the C{Set-Cookie}
            values.
        """
        headers = Headers()
        if cookie is not None:
            headers.setRawHeaders(b"cookie", [cookie])
        response = yield self.agent.request(b"GET", self.url, headers)
        body = yield readBody(response)
        return body, response.headers.getRawHeaders(b"set-cookie", [])

    @inlineCallbacks
    def test_ewmaAvoidsSlowBackend(self) -> Any:
        """
        With one backend 50 ms slower than its peer, ewma sends it under 15%
        of 200 requests (four clients, fifty requests each).
        """
        fast, slow = _Named(b"fast"), _Named(b"slow", delay=0.05)
        yield self.startPool(PeakEWMA(Random(51)), [fast, slow])
        seen: Counter[bytes] = Counter()

        @inlineCallbacks
        def client() -> Any:
            for _ in range(50):
                body, _ = yield self.get()
                seen[body] += 1

        yield gatherResults([client() for _ in range(4)])
        self.assertEqual(sum(seen.values()), 200)
        self.assertLess(seen[b"slow"], 30, seen)

    @inlineCallbacks
    def test_stickyCookieRoundTrip(self) -> Any:
        """
        The first response sets the sticky cookie next to the backend's own;
        20 requests carrying it reach the same backend; when that backend
        dies, the request is answered by another and the cookie re-pinned.
        """
        resources = [_Named(b"one"), _Named(b"two"), _Named(b"three")]
        servers = yield self.startPool(Sticky(), resources)
        body, cookies = yield self.get()
        [sticky] = [c for c in cookies if c.startswith(b"lbproxy_sticky=")]
        self.assertIn(b"app=" + body, cookies)
        value = sticky.split(b";")[0]
        pinned = body
        for _ in range(20):
            body, cookies = yield self.get(cookie=value)
            self.assertEqual(body, pinned)
            self.assertEqual([c for c in cookies if c.startswith(b"lbproxy_")], [])
        names = [r.name for r in resources]
        yield servers[names.index(pinned)].stop()
        body, cookies = yield self.get(cookie=value)
        self.assertNotEqual(body, pinned)
        [sticky] = [c for c in cookies if c.startswith(b"lbproxy_sticky=")]
        repinned = sticky.split(b";")[0]
        self.assertNotEqual(repinned, value)
        for _ in range(5):
            again, _ = yield self.get(cookie=repinned)
            self.assertEqual(again, body)
