"""
C{limit_rate} and C{limit_conn} on real sockets: a proxy built from a
configuration with limits on its vhosts, a real backend, and clients
connecting from two loopback addresses (127.0.0.1 and 127.0.0.2, which
Linux routes to the loopback interface), so that the limits count real
peers.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseNeverReceived,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lbproxy.config import parseConfigText
from lbproxy.service import LoadBalancerService
from lbproxy.testing import startServer

#: Seconds any one step may take before the test fails.
WAIT = 10

_CONFIG = """
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = off

[upstream:app]
servers = 127.0.0.1:{backend}

[vhost:rate]
server_names = rate.example
upstream = app
limit_rate = 1/m
limit_burst = 1

[vhost:keyed]
server_names = keyed.example
upstream = app
limit_rate = 1/m
limit_key = header:X-API-Key

[vhost:conn]
server_names = conn.example
upstream = app
limit_conn = 1
"""


class _Backend(Resource):
    """
    Answers C{ok}, except C{/slow}, which it holds until the test lets it
    go (L{held}), and tells when such a request arrives and when its
    connection is lost.
    """

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.held = []
        self.arrived = Deferred()
        self.lost = Deferred()

    def render(self, request):
        if request.path != b"/slow":
            return b"ok"
        self.held.append(request)
        request.notifyFinish().addErrback(lambda _: self.lost.callback(None))
        arrived, self.arrived = self.arrived, Deferred()
        arrived.callback(request)
        return NOT_DONE_YET


class LimitsLiveTests(TestCase):
    """
    A client over its limit gets 429 while other clients are served.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.backend = _Backend()
        server = yield startServer(self.backend, reactor)
        self.addCleanup(server.stop)
        config = parseConfigText(_CONFIG.format(backend=server.port), "limits.ini")
        self.service = LoadBalancerService(config, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        (port,) = yield self.service.whenListening().addTimeout(WAIT, reactor)
        self.url = b"http://127.0.0.1:%d" % (port.getHost().port,)

    def request(self, host, source="127.0.0.1", path=b"/", headers=None):
        """
        GET C{path} of vhost C{host} through the proxy from the address
        C{source}, on a connection of its own.

        @return: a L{Deferred} firing with the response.
        """
        agent = Agent(
            reactor, pool=HTTPConnectionPool(reactor, persistent=False), bindAddress=(source, 0)
        )
        sent = Headers({b"host": [host]})
        for name, value in (headers or {}).items():
            sent.setRawHeaders(name, [value])
        return agent.request(b"GET", self.url + path, sent)

    @inlineCallbacks
    def get(self, host, source="127.0.0.1", path=b"/", headers=None):
        """
        L{request}, and read the body.

        @return: a L{Deferred} firing with the status, the C{Retry-After}
            values and the body.
        """
        response = yield self.request(host, source, path, headers).addTimeout(WAIT, reactor)
        body = yield readBody(response).addTimeout(WAIT, reactor)
        return response.code, response.headers.getRawHeaders(b"retry-after"), body

    @inlineCallbacks
    def test_overTheRate(self):
        """
        With C{limit_rate = 1/m} and C{limit_burst = 1}, a client's first
        two requests pass and its third gets 429 with a C{Retry-After} of
        at most a minute and the short page; a client from another
        address is served meanwhile, and then is refused in turn.
        """
        for _ in range(2):
            answer = yield self.get(b"rate.example")
            self.assertEqual(answer, (200, None, b"ok"))
        code, retryAfter, body = yield self.get(b"rate.example")
        self.assertEqual(code, 429)
        (seconds,) = retryAfter
        self.assertTrue(1 <= int(seconds) <= 60, seconds)
        self.assertIn(b"<h1>429 Too Many Requests</h1>", body)

        for _ in range(2):
            answer = yield self.get(b"rate.example", "127.0.0.2")
            self.assertEqual(answer, (200, None, b"ok"))
        code, _, _ = yield self.get(b"rate.example", "127.0.0.2")
        self.assertEqual(code, 429)

    @inlineCallbacks
    def test_headerKey(self):
        """
        With C{limit_key = header:X-API-Key}, two keys from one address
        are limited apart, and requests without the header are not
        limited.
        """
        one = {b"x-api-key": b"one"}
        self.assertEqual((yield self.get(b"keyed.example", headers=one))[0], 200)
        self.assertEqual((yield self.get(b"keyed.example", headers=one))[0], 429)
        two = {b"x-api-key": b"two"}
        self.assertEqual((yield self.get(b"keyed.example", headers=two))[0], 200)
        for _ in range(3):
            self.assertEqual((yield self.get(b"keyed.example"))[0], 200)

    @inlineCallbacks
    def test_requestsInFlight(self):
        """
        With C{limit_conn = 1}, a client with a request in flight gets 429
        for another, while another client is served; once the first
        request is answered, or its client has gone, the client is served
        again.
        """
        arrived = self.backend.arrived
        slow = self.request(b"conn.example", path=b"/slow").addTimeout(WAIT, reactor)
        yield arrived.addTimeout(WAIT, reactor)
        code, retryAfter, _ = yield self.get(b"conn.example")
        self.assertEqual((code, retryAfter), (429, None))
        self.assertEqual((yield self.get(b"conn.example", "127.0.0.2"))[0], 200)

        (held,) = self.backend.held
        held.write(b"slow")
        held.finish()
        response = yield slow
        self.assertEqual((yield readBody(response).addTimeout(WAIT, reactor)), b"slow")
        self.assertEqual((yield self.get(b"conn.example"))[0], 200)

        # The client goes away with its request in flight: its place is
        # given back as the proxy learns it (before the backend learns
        # that the proxy gave up its request).
        arrived = self.backend.arrived
        gone = self.request(b"conn.example", path=b"/slow")
        # (Twisted before 25 wraps the cancellation in ResponseNeverReceived.)
        gone.addErrback(lambda f: f.trap(CancelledError, ResponseNeverReceived))
        yield arrived.addTimeout(WAIT, reactor)
        self.assertEqual((yield self.get(b"conn.example"))[0], 429)
        gone.cancel()
        yield self.backend.lost.addTimeout(WAIT, reactor)
        self.assertEqual((yield self.get(b"conn.example"))[0], 200)
