"""
WebSockets through lbproxy on real sockets: a wsproto echo backend on
127.0.0.1 behind a L{ProxySite}, and a wsproto client talking to it
through the proxy (see L{tests.websocket} for why wsproto).
"""

from __future__ import annotations

from io import StringIO

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from lbproxy import Backend, Pool, ProxySite, UpstreamResource
from tests.websocket import Client, echoFactory, maskedTextFrame

#: Seconds any one step may take before the test fails.
WAIT = 20


class WebSocketTests(TestCase):
    """
    A WebSocket session through the proxy behaves as it does straight to
    the backend.
    """

    def startProxy(self, **poolArgs):
        self.backendPort = reactor.listenTCP(0, echoFactory(), interface="127.0.0.1")
        self.addCleanup(self.backendPort.stopListening)
        self.backend = Backend("127.0.0.1", self.backendPort.getHost().port)
        self.pool = Pool("ws", [self.backend], reactor=reactor, **poolArgs)
        self.addCleanup(self.pool.close)
        self.log = StringIO()
        self.site = ProxySite(UpstreamResource(self.pool), accessLog=self.log, reactor=reactor)
        self.proxyPort = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.proxyPort.stopListening)
        self.addCleanup(self.site.closeConnections, 0)

    def connect(self, early=b""):
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.proxyPort.getHost().port, timeout=WAIT
        )
        client = Client("app.example", early)
        return connectProtocol(endpoint, client).addCallback(lambda _: client)

    def wait(self, d):
        return d.addTimeout(WAIT, reactor)

    @inlineCallbacks
    def test_echoSession(self):
        """
        1,000 messages each way, a 10 MB message, a ping and the close
        handshake pass; the tunnel counts as an active request while it is
        open and not after, and is logged when it closes.
        """
        self.startProxy()
        client = yield self.connect()
        yield self.wait(client.opened)
        self.assertEqual(self.backend.active, 1)
        texts = ["message %d" % i for i in range(1000)]
        for text in texts:
            client.send(TextMessage(data=text))
        yield self.wait(client.waitForMessages(1000))
        self.assertEqual(client.messages, texts)

        big = bytes(range(256)) * (10 * 1024 * 1024 // 256)
        client.send(BytesMessage(data=big))
        yield self.wait(client.waitForMessages(1001))
        self.assertEqual(len(client.messages[-1]), len(big))
        self.assertTrue(client.messages[-1] == big)

        client.send(Ping(payload=b"are you there"))
        client.send(TextMessage(data="after the ping"))
        yield self.wait(client.waitForMessages(1002))
        self.assertEqual(client.pongs, [b"are you there"])

        client.send(CloseConnection(code=1000, reason="done"))
        code = yield self.wait(client.closed)
        self.assertEqual(code, 1000)
        # The backend closed first (after its close frame): the proxy
        # closed the tunnel then, before the client saw its end.
        self.assertEqual(self.backend.active, 0)
        self.assertIn('"GET /echo HTTP/1.1" 101 ', self.log.getvalue())
        self.assertIn(" tunnel=", self.log.getvalue())

    @inlineCallbacks
    def test_bytesWithTheHandshake(self):
        """
        A message the client sends in the same write as its handshake
        reaches the backend, and its echo comes back.
        """
        self.startProxy()
        client = yield self.connect(early=maskedTextFrame(b"right away"))
        yield self.wait(client.opened)
        yield self.wait(client.waitForMessages(1))
        self.assertEqual(client.messages, ["right away"])

    @inlineCallbacks
    def test_idleTunnelClosed(self):
        """
        A tunnel idle for tunnel_timeout is closed, both sides.
        """
        self.startProxy(tunnelTimeout=0.3)
        client = yield self.connect()
        yield self.wait(client.opened)
        client.send(TextMessage(data="one"))
        yield self.wait(client.waitForMessages(1))
        code = yield self.wait(client.closed)
        self.assertIsNone(code)
        self.assertEqual(self.backend.active, 0)

