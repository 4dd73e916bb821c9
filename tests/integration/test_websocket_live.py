"""
WebSockets through lbproxy on real sockets: a wsproto echo backend on
127.0.0.1 behind a L{ProxySite}, and a wsproto client talking to it
through the proxy (see L{tests.websocket} for why wsproto).
"""

from __future__ import annotations

import os
from io import StringIO

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from lbproxy import (
    Backend,
    LoadBalancerService,
    Pool,
    ProxySite,
    UpstreamResource,
    parseConfig,
)
from tests.certificates import Authority
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

    @inlineCallbacks
    def test_overTLS(self):
        """
        A WebSocket over a listen_tls listener (wss://) is tunnelled the
        same way: the client's TLS connection and the backend's plain one
        produce for each other.
        """
        backendPort = reactor.listenTCP(0, echoFactory(), interface="127.0.0.1")
        self.addCleanup(backendPort.stopListening)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        authority = Authority()
        cafile = authority.writeRoot(os.path.join(directory, "root.pem"))
        chain, key = authority.write(os.path.join(directory, "ws"), ["ws.test"])
        path = os.path.join(directory, "site.ini")
        with open(path, "w") as f:
            f.write(
                "[lbproxy]\nlisten_tls = tcp:0:interface=127.0.0.1\naccess_log = off\n"
                f"tls_certificate = {chain}\ntls_key = {key}\n"
                f"[upstream:ws]\nservers = 127.0.0.1:{backendPort.getHost().port}\n"
                "[vhost:ws]\ndefault = yes\nupstream = ws\n"
            )
        service = LoadBalancerService(parseConfig(path), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        (tls,) = yield self.wait(service.whenListening())
        with open(cafile, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        endpoint = wrapClientTLS(
            optionsForClientTLS("ws.test", trustRoot=trust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", tls.getHost().port, timeout=WAIT),
        )
        client = Client("ws.test")
        yield self.wait(connectProtocol(endpoint, client))
        yield self.wait(client.opened)
        for i in range(100):
            client.send(TextMessage(data="secure %d" % i))
        big = os.urandom(2 * 1024 * 1024)
        client.send(BytesMessage(data=big))
        yield self.wait(client.waitForMessages(101))
        self.assertEqual(client.messages[:100], ["secure %d" % i for i in range(100)])
        self.assertTrue(client.messages[100] == big)
        client.send(CloseConnection(code=1000))
        self.assertEqual((yield self.wait(client.closed)), 1000)
