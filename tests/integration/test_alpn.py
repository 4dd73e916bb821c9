"""
With C{http2 = no}, a TLS listener of lbproxy offers only C{http/1.1}
through ALPN, so a client that would rather speak C{h2} falls back to
HTTP/1.1 and gets its answer, with lbproxy's limits.  A plain
L{twisted.web.server.Site} in the same place negotiates C{h2} whenever the
C{h2} package is installed (the contrast that shows the test can fail).
HTTP/2 itself (the default) is tested in L{tests.integration.test_h2}.

Real sockets on 127.0.0.1, port 0, a certificate made in the test, bounded
waits, every port and connection closed by the cleanups.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    serverFromString,
)
from twisted.internet.interfaces import IHandshakeListener, IProtocolNegotiationFactory
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from lbproxy import (
    Backend,
    LoadBalancerService,
    Pool,
    ProxySite,
    UpstreamResource,
    parseConfigText,
)
from tests.certificates import writeSelfSigned

#: Seconds any one step may take before the test fails.
WAIT = 10

#: What an HTTP/2-capable client offers through ALPN, best first.
H2_FIRST = [b"h2", b"http/1.1"]

try:
    import h2  # noqa: F401
except ImportError:
    _h2Missing: Optional[str] = "the h2 package is not installed"
else:
    _h2Missing = None


def tlsDescription(keyPath: str, certPath: str) -> str:
    """
    The C{ssl:} endpoint description of a TLS listener on a free port of
    127.0.0.1 with this key and certificate, as a C{listen} line has it.
    """
    for path in (keyPath, certPath):
        # serverFromString would read a colon or backslash as syntax.
        assert ":" not in path and "\\" not in path, path
    return f"ssl:0:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}"


class _Hello(Resource):
    """
    A backend answering with the target it was asked for and the version
    its request came in.
    """

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return b"hello " + request.uri


@implementer(IProtocolNegotiationFactory)
class _Tracking(WrappingFactory):
    """
    A server factory that knows its open connections, so that a cleanup can
    wait until every one is closed; it offers through ALPN exactly what the
    factory it wraps offers.
    """

    noisy = False

    def __init__(self, wrapped: Any) -> None:
        WrappingFactory.__init__(self, wrapped)
        self.waiting: list[Deferred[None]] = []

    def acceptableProtocols(self) -> list[bytes]:
        return list(IProtocolNegotiationFactory(self.wrappedFactory).acceptableProtocols())

    def unregisterProtocol(self, p: Any) -> None:
        WrappingFactory.unregisterProtocol(self, p)
        if not self.protocols:
            waiting, self.waiting = self.waiting, []
            for d in waiting:
                d.callback(None)

    def closed(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once no connection is open.
        """
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        return d.addTimeout(WAIT, reactor)


@implementer(IHandshakeListener)
class _Client(Protocol):
    """
    A TLS client that notes the protocol ALPN chose once the handshake is
    done, sends C{request} (if any) and collects everything until the
    connection closes.

    @ivar negotiated: what C{transport.negotiatedProtocol} said after the
        handshake.
    """

    negotiated: Optional[bytes] = None

    def __init__(self, request: Optional[bytes]) -> None:
        self.request = request
        self.received: list[bytes] = []
        self.handshake: Deferred[Optional[bytes]] = Deferred()
        self.closed: Deferred[bytes] = Deferred()
        self.isClosed = False

    def handshakeCompleted(self) -> None:
        self.negotiated = self.transport.negotiatedProtocol  # type: ignore[attr-defined]
        if self.request is not None:
            self.transport.write(self.request)  # type: ignore[union-attr]
        self.handshake.callback(self.negotiated)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.isClosed = True
        self.closed.callback(b"".join(self.received))


class _ALPNMixin:
    """
    Listening, connecting and asking over TLS, for the tests below.
    """

    timeout = 60

    def setUpCertificate(self) -> None:
        self.keyPath, self.certPath, certPEM = writeSelfSigned(
            self.mktemp(), ["127.0.0.1", "localhost"]  # type: ignore[attr-defined]
        )
        self.trustRoot = Certificate.loadPEM(certPEM)

    @inlineCallbacks
    def listenTLS(self, factory: Any) -> Any:
        """
        Listen with C{factory} (not wrapped: ALPN asks it what to offer)
        through the C{ssl:} endpoint a C{listen} line would name.
        """
        endpoint = serverFromString(reactor, tlsDescription(self.keyPath, self.certPath))
        port = yield endpoint.listen(factory)
        self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
        return port

    @inlineCallbacks
    def startBackend(self) -> Any:
        """
        A plain HTTP backend on 127.0.0.1 and a pool for it.
        """
        tracking = _Tracking(Site(_Hello()))
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(tracking)
        self.addCleanup(tracking.closed)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
        pool = Pool("app", [Backend("127.0.0.1", port.getHost().port)], reactor=reactor)
        self.addCleanup(pool.close)  # type: ignore[attr-defined]
        return pool

    @inlineCallbacks
    def connectTLS(self, port: int, request: Optional[bytes]) -> Any:
        """
        Connect to C{port} offering C{h2} then C{http/1.1}; send C{request}
        once the handshake is done.

        @return: the L{_Client}, once its handshake is done.
        """
        client = _Client(request)
        options = optionsForClientTLS(
            "127.0.0.1", trustRoot=self.trustRoot, acceptableProtocols=H2_FIRST
        )
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
        yield connectProtocol(endpoint, client).addTimeout(WAIT, reactor)
        self.addCleanup(  # type: ignore[attr-defined]
            lambda: None if client.isClosed else client.transport.abortConnection()
        )
        yield client.handshake.addTimeout(WAIT, reactor)
        return client


_REQUEST = b"GET /alpn?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


class ProxySiteALPNTests(_ALPNMixin, TestCase):
    """
    A L{ProxySite} with HTTP/2 off behind an C{ssl:} endpoint: an
    h2-capable client gets HTTP/1.1, and its answer.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.setUpCertificate()
        pool = yield self.startBackend()
        self.site = ProxySite(UpstreamResource(pool), reactor=reactor, http2=False)
        # Runs before the port stops (cleanups run last in, first out) and
        # after it: every client connection of the site is closed.
        self.addCleanup(lambda: self.site.closeConnections(WAIT))
        self.port = yield self.listenTLS(self.site)

    @inlineCallbacks
    def test_h2ClientGetsHTTP11(self) -> Any:
        """
        A client offering C{h2} and C{http/1.1} negotiates C{http/1.1}, and
        its HTTP/1.1 request on that connection is proxied and answered.
        """
        client = yield self.connectTLS(self.port.getHost().port, _REQUEST)
        self.assertEqual(client.negotiated, b"http/1.1")
        response = yield client.closed.addTimeout(WAIT, reactor)
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"), response)
        self.assertTrue(response.endswith(b"\r\n\r\nhello /alpn?x=1"), response)

    @inlineCallbacks
    def test_limitsHold(self) -> Any:
        """
        The connection after the fallback is lbproxy's own HTTP/1.1 channel:
        its refusals apply (here a second C{Host} gets 400).
        """
        client = yield self.connectTLS(
            self.port.getHost().port,
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        )
        self.assertEqual(client.negotiated, b"http/1.1")
        response = yield client.closed.addTimeout(WAIT, reactor)
        self.assertTrue(response.startswith(b"HTTP/1.1 400 "), response)

    @inlineCallbacks
    def test_curlHTTP2(self) -> Any:
        """
        C{curl --http2} (when there is a curl built with HTTP/2) gets the
        answer over HTTP/1.1.
        """
        curl = shutil.which("curl")
        if curl is None:
            self.skipTest("no curl on PATH")  # type: ignore[attr-defined]
        version = subprocess.run(
            [curl, "--version"], capture_output=True, timeout=WAIT, check=False
        ).stdout
        if b"HTTP2" not in version:
            self.skipTest("this curl is built without HTTP/2")  # type: ignore[attr-defined]
        url = "https://127.0.0.1:%d/curl?y=2" % (self.port.getHost().port,)
        out, err, code = yield getProcessOutputAndValue(
            curl,
            [
                "--http2", "-k", "-s", "-S", "--noproxy", "*",
                "--max-time", str(WAIT), "-w", "\n%{http_version} %{http_code}", url,
            ],
            env={},
            reactor=reactor,
        ).addTimeout(2 * WAIT, reactor)
        self.assertEqual(code, 0, err)
        self.assertEqual(out, b"hello /curl?y=2\n1.1 200", err)


class ServiceALPNTests(_ALPNMixin, TestCase):
    """
    What a new user writes: a C{listen = ssl:...} line in C{site.ini}.
    """

    @inlineCallbacks
    def test_listenLine(self) -> Any:
        """
        A C{LoadBalancerService} with C{http2 = no} listening on an
        C{ssl:} endpoint offers only C{http/1.1}, and answers an
        h2-capable client.
        """
        self.setUpCertificate()
        pool = yield self.startBackend()
        backendPort = pool.backends[0].port
        text = (
            "[lbproxy]\nlisten = %s\naccess_log = off\nhttp2 = no\n"
            "[upstream:app]\nservers = 127.0.0.1:%d\n"
            "[vhost:app]\nserver_names = 127.0.0.1\ndefault = yes\nupstream = app\n"
            % (tlsDescription(self.keyPath, self.certPath), backendPort)
        )
        service = LoadBalancerService(parseConfigText(text, "alpn.ini"), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        [port] = yield service.whenListening().addTimeout(WAIT, reactor)
        client = yield self.connectTLS(port.getHost().port, _REQUEST)
        self.assertEqual(client.negotiated, b"http/1.1")
        response = yield client.closed.addTimeout(WAIT, reactor)
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"), response)
        self.assertTrue(response.endswith(b"\r\n\r\nhello /alpn?x=1"), response)


class PlainSiteContrastTests(_ALPNMixin, TestCase):
    """
    The contrast: in the same place, Twisted's own L{Site} negotiates
    C{h2} with the same client, which is what L{ProxySite} must not do.
    """

    skip = _h2Missing

    @inlineCallbacks
    def test_plainSiteOffersH2(self) -> Any:
        self.setUpCertificate()
        tracking = _Tracking(Site(_Hello()))
        self.addCleanup(tracking.closed)
        port = yield self.listenTLS(tracking)
        client = yield self.connectTLS(port.getHost().port, None)
        self.assertEqual(client.negotiated, b"h2")
        client.transport.loseConnection()
        yield client.closed.addTimeout(WAIT, reactor)


class AcceptableProtocolsTests(SynchronousTestCase):
    """
    What L{ProxySite} offers through ALPN, without sockets.
    """

    def test_http11Only(self) -> None:
        """
        L{ProxySite} with HTTP/2 off provides L{IProtocolNegotiationFactory}
        and offers C{http/1.1} alone, whether or not C{h2} is installed;
        Twisted's L{Site} offers C{h2} first when it is.
        """
        site = ProxySite(Resource(), http2=False)
        self.assertTrue(IProtocolNegotiationFactory.providedBy(site))
        self.assertEqual(site.acceptableProtocols(), [b"http/1.1"])
        if _h2Missing is None:
            self.assertEqual(Site(Resource()).acceptableProtocols()[0], b"h2")

