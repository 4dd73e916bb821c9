"""
The nginx walk-through on real sockets: lbproxy in this process, real
backends on 127.0.0.1 port 0, a real HTTP client.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.python.log import msg
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lbproxy import LoadBalancerService, parseConfigText
from lbproxy._demo import DemoResource
from lbproxy.testing import RefusingPort, startServer


class Hang(Resource):
    """
    Accepts requests and never answers them.
    """

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.pending = []

    def render(self, request):
        self.pending.append(request)
        return NOT_DONE_YET


class _Digest(Resource):
    """
    Answers a POST with the length and SHA-256 of the body it received.
    """

    isLeaf = True

    def render_POST(self, request):
        body = request.content
        body.seek(0)
        digest = hashlib.sha256()
        size = 0
        while True:
            chunk = body.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            digest.update(chunk)
        return b"%d %s" % (size, digest.hexdigest().encode("ascii"))


class ProxyTestCase(TestCase):
    """
    Starts an lbproxy from a site.ini text and gives a client for it.
    """

    timeout = 60

    def setUp(self):
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=pool))

    @inlineCallbacks
    def startBackend(self, resource):
        server = yield startServer(resource, reactor)
        self.addCleanup(server.stop)
        return server

    @inlineCallbacks
    def startProxy(self, text):
        config = parseConfigText(text, "test.ini")
        service = LoadBalancerService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        ports = yield service.whenListening()
        self.service = service
        self.base = "http://127.0.0.1:%d" % (ports[0].getHost().port,)
        return service

    @inlineCallbacks
    def get(self, path="/", host=None, method="GET", **kwargs):
        headers = {"Host": [host]} if host else {}
        response = yield self.client.request(
            method, self.base + path, headers=headers, **kwargs
        )
        body = yield response.content()
        return response, body


def _upstream(name, *ports, extra=""):
    servers = "\n".join("    127.0.0.1:%d" % p for p in ports)
    return f"[upstream:{name}]\nservers =\n{servers}\n{extra}\n"


_PROXY = """
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = off
"""


class WalkthroughTests(ProxyTestCase):
    """
    Reverse proxy, virtual hosts, load balancing, one backend dies, both die.
    """

    @inlineCallbacks
    def test_evenSplit(self):
        """
        Two equal backends share the requests evenly.
        """
        a = yield self.startBackend(DemoResource("a"))
        b = yield self.startBackend(DemoResource("b"))
        yield self.startProxy(
            _PROXY
            + _upstream("app", a.port, b.port)
            + "[vhost:app]\ndefault = yes\nupstream = app\n"
        )
        seen = Counter()
        for _ in range(40):
            response, body = yield self.get("/")
            self.assertEqual(response.code, 200)
            seen[body] += 1
        self.assertEqual(seen, Counter({b"a\n": 20, b"b\n": 20}))

    @inlineCallbacks
    def test_hostRouting(self):
        """
        The Host header picks the vhost and so the upstream; a host matching
        no vhost gets 404 when no vhost is the default.
        """
        a = yield self.startBackend(DemoResource("a"))
        b = yield self.startBackend(DemoResource("b"))
        yield self.startProxy(
            _PROXY
            + _upstream("one", a.port)
            + _upstream("two", b.port)
            + "[vhost:one]\nserver_names = one.example\nupstream = one\n"
            + "[vhost:two]\nserver_names = *.two.example\nupstream = two\n"
        )
        response, body = yield self.get("/", host="ONE.example:8080")
        self.assertEqual((response.code, body), (200, b"a\n"))
        response, body = yield self.get("/", host="www.two.example")
        self.assertEqual((response.code, body), (200, b"b\n"))
        response, body = yield self.get("/", host="nowhere.example")
        self.assertEqual(response.code, 404)
        self.assertIn(b"404", body)

    @inlineCallbacks
    def test_oneBackendDies(self):
        """
        While requests flow, one backend dies (its connections cut): every
        GET still gets 200, from the other backend.
        """
        a = yield self.startBackend(DemoResource("a"))
        b = yield self.startBackend(DemoResource("b"))
        yield self.startProxy(
            _PROXY
            + _upstream("app", a.port, b.port, extra="fail_timeout = 30s")
            + "[vhost:app]\ndefault = yes\nupstream = app\n"
        )
        codes = Counter()
        bodies = Counter()

        @inlineCallbacks
        def flow(n):
            for _ in range(n):
                response, body = yield self.get("/")
                codes[response.code] += 1
                bodies[body] += 1

        flows = gatherResults([flow(60) for _ in range(4)])
        while sum(codes.values()) < 40:
            yield deferLater(reactor, 0.01, lambda: None)
        before = bodies[b"b\n"]
        yield b.stop()
        yield flows
        self.assertEqual(codes, Counter({200: 240}))
        # b served its share until it died; afterwards at most the four
        # responses already on their way came from it.
        self.assertGreater(before, 10)
        self.assertLessEqual(bodies[b"b\n"], before + 4)

    @inlineCallbacks
    def test_bothBackendsDie(self):
        """
        With every backend dead, the client gets a 502 page, well within the
        connect timeout.
        """
        a, b = RefusingPort(), RefusingPort()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        yield self.startProxy(
            _PROXY
            + _upstream("app", a.port, b.port, extra="connect_timeout = 5s")
            + "[vhost:app]\ndefault = yes\nupstream = app\n"
        )
        for _ in range(3):
            started = time.monotonic()
            response, body = yield self.get("/")
            self.assertEqual(response.code, 502)
            self.assertIn(b"502 Bad Gateway", body)
            self.assertNotIn(b"Traceback", body)
            self.assertLess(time.monotonic() - started, 5)

    @inlineCallbacks
    def test_hangingBackend(self):
        """
        A backend that accepts the request but never answers gets the client
        a 504 once read_timeout has passed.
        """
        hang = Hang()
        a = yield self.startBackend(hang)
        yield self.startProxy(
            _PROXY
            + _upstream("app", a.port, extra="read_timeout = 500ms")
            + "[vhost:app]\ndefault = yes\nupstream = app\n"
        )
        started = time.monotonic()
        response, body = yield self.get("/")
        elapsed = time.monotonic() - started
        self.assertEqual(response.code, 504)
        self.assertIn(b"504 Gateway Timeout", body)
        self.assertGreaterEqual(elapsed, 0.45)
        self.assertLess(elapsed, 5)
        self.assertEqual(len(hang.pending), 1)

    @inlineCallbacks
    def test_keepaliveReuse(self):
        """
        200 requests, 10 at a time, reach the backend over far fewer than 200
        connections.
        """
        a = yield self.startBackend(DemoResource("a"))
        yield self.startProxy(
            _PROXY
            + _upstream("app", a.port, extra="keepalive = 16")
            + "[vhost:app]\ndefault = yes\nupstream = app\n"
        )

        @inlineCallbacks
        def flow(n):
            for _ in range(n):
                response, body = yield self.get("/")
                self.assertEqual(response.code, 200)

        yield gatherResults([flow(20) for _ in range(10)])
        msg(f"keep-alive: 200 requests over {a.connectionsMade} backend connections")
        self.assertLessEqual(a.connectionsMade, 20)

    @inlineCallbacks
    def test_largePost(self):
        """
        A 50 MB request body reaches the backend intact.
        """
        a = yield self.startBackend(_Digest())
        yield self.startProxy(
            _PROXY
            + "max_body_size = 64m\n"
            + _upstream("app", a.port)
            + "[vhost:app]\ndefault = yes\nupstream = app\n"
        )
        payload = os.urandom(1 << 20) * 50
        expected = b"%d %s" % (len(payload), hashlib.sha256(payload).hexdigest().encode())
        import io

        response, body = yield self.get(
            "/upload", method="POST", data=FileBodyProducer(io.BytesIO(payload))
        )
        self.assertEqual((response.code, body), (200, expected))


class _Held(Resource):
    """
    Holds every request until L{release} answers them with C{name}.
    """

    isLeaf = True

    def __init__(self, name):
        Resource.__init__(self)
        self.name = name
        self.pending = []
        self.arrived = Deferred()

    def render(self, request):
        self.pending.append(request)
        if not self.arrived.called:
            self.arrived.callback(None)
        return NOT_DONE_YET

    def release(self):
        for request in self.pending:
            request.write(self.name)
            request.finish()
        self.pending = []


class ReloadTests(ProxyTestCase):
    @inlineCallbacks
    def test_inFlightFinishOnOldPool(self):
        """
        After a reload, new requests go to the new backends while a request
        already in flight finishes on the old one.
        """
        held = _Held(b"old")
        a = yield self.startBackend(held)
        b = yield self.startBackend(DemoResource("new"))
        site = (
            _PROXY
            + "[vhost:app]\ndefault = yes\nupstream = app\n"
        )
        service = yield self.startProxy(site + _upstream("app", a.port))
        inFlight = self.get("/")
        yield held.arrived
        service.reload(parseConfigText(site + _upstream("app", b.port), "test.ini"))
        response, body = yield self.get("/")
        self.assertEqual((response.code, body), (200, b"new\n"))
        held.release()
        response, body = yield inFlight
        self.assertEqual((response.code, body), (200, b"old"))
