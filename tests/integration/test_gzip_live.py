"""
gzip on real sockets: a backend on 127.0.0.1 streams a text body through a
L{ProxySite} whose vhost compresses it, to a real HTTP client that decodes
what arrives.
"""

from __future__ import annotations

import zlib

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from lbproxy import Backend, Pool, ProxySite, UpstreamResource
from lbproxy._gzip import GzipPolicy

#: Seconds any one step may take before the test fails.
WAIT = 10

_FIRST = b"".join(b"event %d: the first part of a streamed report\n" % i for i in range(100))
_REST = b"".join(b"event %d: the rest, sent once the client has the first\n" % i for i in range(5000))


class _Streaming(Resource):
    """
    A backend that answers C{/stream} with L{_FIRST} at once (chunked,
    text) and keeps the request open for the test to finish, and any other
    path with the whole text and its Content-Length.
    """

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.held = []

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if request.path == b"/stream":
            request.write(_FIRST)
            self.held.append(request)
            return NOT_DONE_YET
        return _FIRST + _REST


class _Decoding(Protocol):
    """
    Reads a response body as it arrives, decompressing it, and fires the
    L{Deferred}s waiting for given text in what it decoded so far.
    """

    def __init__(self):
        self.decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.decoded = b""
        self.waiting = []
        self.done = Deferred()

    def dataReceived(self, data):
        self.decoded += self.decoder.decompress(data)
        for text, d in list(self.waiting):
            if text in self.decoded:
                self.waiting.remove((text, d))
                d.callback(None)

    def waitFor(self, text):
        """
        A L{Deferred} that fires once the decoded body holds C{text}.
        """
        d = Deferred()
        if text in self.decoded:
            d.callback(None)
        else:
            self.waiting.append((text, d))
        return d.addTimeout(WAIT, reactor)

    def connectionLost(self, reason):
        if reason.check(ResponseDone):
            self.decoded += self.decoder.flush()
            self.done.callback(self.decoder.eof)
        else:
            self.done.errback(reason)


class GzipLiveTests(TestCase):
    """
    A vhost with gzip on, between a real backend and a real client.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.backend = _Streaming()
        backendPort = yield self.listen(Site(self.backend))
        pool = Pool("app", [Backend("127.0.0.1", backendPort.getHost().port)], reactor=reactor)
        self.addCleanup(pool.close)
        site = ProxySite(UpstreamResource(pool, gzip=GzipPolicy()), reactor=reactor)
        proxyPort = yield self.listen(site)
        self.base = b"http://127.0.0.1:%d" % (proxyPort.getHost().port,)
        clientPool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(clientPool.closeCachedConnections)
        self.agent = Agent(reactor, pool=clientPool)

    @inlineCallbacks
    def listen(self, factory):
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port

    def get(self, path):
        return self.agent.request(
            b"GET", self.base + path, Headers({b"accept-encoding": [b"gzip"]})
        ).addTimeout(WAIT, reactor)

    @inlineCallbacks
    def test_streamedBeforeTheBackendFinished(self):
        """
        The first part of a streamed body reaches the client compressed
        and decodable while the backend still holds the response open; the
        rest follows once the backend sends it, and the whole gzip stream
        ends with the response.
        """
        response = yield self.get(b"/stream")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertEqual(response.headers.getRawHeaders(b"vary"), [b"Accept-Encoding"])
        body = _Decoding()
        response.deliverBody(body)
        yield body.waitFor(_FIRST)
        # The backend has not finished: the client has all it sent so far.
        [held] = self.backend.held
        self.assertFalse(held.finished)
        self.assertEqual(body.decoded, _FIRST)
        held.write(_REST)
        held.finish()
        complete = yield body.done.addTimeout(WAIT, reactor)
        self.assertTrue(complete, "the gzip stream did not end")
        self.assertTrue(body.decoded == _FIRST + _REST, "the body came back changed")

    @inlineCallbacks
    def test_knownLength(self):
        """
        A body with a Content-Length arrives compressed, without the
        length, and decodes to what the backend sent.
        """
        response = yield self.get(b"/whole")
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertIsNone(response.headers.getRawHeaders(b"content-length"))
        body = _Decoding()
        response.deliverBody(body)
        complete = yield body.done.addTimeout(WAIT, reactor)
        self.assertTrue(complete)
        self.assertTrue(body.decoded == _FIRST + _REST, "the body came back changed")
