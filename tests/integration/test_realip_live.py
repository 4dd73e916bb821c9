"""
C{trusted_proxies} on real sockets: a proxy built from a configuration
that trusts 127.0.0.1, with an C{ip_hash} upstream of two real backends,
and clients connecting from other loopback addresses (127.0.N.5, which
Linux routes to the loopback interface), so that a trusted proxy and
untrusted clients are real peers.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from lbproxy.config import parseConfigText
from lbproxy.service import LoadBalancerService
from lbproxy.testing import startServer

#: Seconds any one step may take before the test fails.
WAIT = 10

_CONFIG = """
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = {log}
trusted_proxies = 127.0.0.1

[upstream:app]
balancer = ip_hash
servers =
    127.0.0.1:{one}
    127.0.0.1:{two}

[vhost:app]
default = yes
upstream = app
request_id = yes
request_headers =
    set X-Remote $remote_addr
"""


class _Reporting(Resource):
    """
    A backend answering with its name and the client headers it received
    (those of L{headers}).
    """

    isLeaf = True
    headers = (b"x-forwarded-for", b"x-real-ip", b"x-remote")

    def __init__(self, name: bytes) -> None:
        Resource.__init__(self)
        self.name = name

    def render(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"|".join(
            [self.name]
            + [
                (request.getHeader(name) or b"-")
                for name in self.headers
            ]
        )


class TrustedProxiesLiveTests(TestCase):
    """
    The client address that the access log, the backend's headers and
    C{ip_hash} see, from a trusted and from untrusted peers.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        servers = []
        for name in (b"one", b"two"):
            server = yield startServer(_Reporting(name), reactor)
            self.addCleanup(server.stop)
            servers.append(server)
        self.log = FilePath(self.mktemp())
        config = parseConfigText(
            _CONFIG.format(log=self.log.path, one=servers[0].port, two=servers[1].port),
            "realip.ini",
        )
        self.service = LoadBalancerService(config, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        (port,) = yield self.service.whenListening().addTimeout(WAIT, reactor)
        self.url = b"http://127.0.0.1:%d/" % (port.getHost().port,)

    @inlineCallbacks
    def get(self, source, forwardedFor=None):
        """
        GET through the proxy from the address C{source}, with
        C{X-Forwarded-For: forwardedFor} if given.

        @return: a L{Deferred} firing with the backend's name, the
            X-Forwarded-For, X-Real-IP and C{$remote_addr} it received,
            and the X-Request-ID of the response.
        """
        connections = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, pool=connections, bindAddress=(source, 0))
        headers = Headers({b"host": [b"app.example"]})
        if forwardedFor is not None:
            headers.setRawHeaders(b"x-forwarded-for", [forwardedFor])
        response = yield agent.request(b"GET", self.url, headers).addTimeout(WAIT, reactor)
        body = yield readBody(response).addTimeout(WAIT, reactor)
        (requestId,) = response.headers.getRawHeaders(b"x-request-id")
        return body.split(b"|") + [requestId]

    @inlineCallbacks
    def test_realClient(self):
        """
        A client connecting itself lands on its ip_hash backend, and its
        spoofed X-Forwarded-For changes nothing; the same address named
        by the trusted proxy lands on the same backend and is the
        client everywhere: X-Real-IP, C{$remote_addr}, the last entry of
        X-Forwarded-For and the access log, which ends with the request
        id the client got.
        """
        expected = []
        landed = set()
        for n in range(1, 9):
            client = f"127.0.{n}.5"
            spoof = f"127.0.{n + 1}.5"
            name, forwarded, realIP, remote, requestId = yield self.get(client)
            landed.add(name)
            self.assertEqual(
                (forwarded, realIP, remote), (client.encode(),) * 3, client
            )
            expected.append((client, requestId))

            answer = yield self.get(client, spoof.encode())
            self.assertEqual(
                answer[:4],
                [name, f"{spoof}, {client}".encode(), client.encode(), client.encode()],
            )
            expected.append((client, answer[4]))

            answer = yield self.get("127.0.0.1", f"198.51.100.1, {client}".encode())
            self.assertEqual(
                answer[:4],
                [name, f"198.51.100.1, {client}".encode(), client.encode(), client.encode()],
            )
            expected.append((client, answer[4]))
        self.assertEqual(landed, {b"one", b"two"})

        # The lines are written in batches; flush the one kept so far.
        self.service.site.accessLog.flush()
        lines = self.log.getContent().decode("ascii").splitlines()
        self.assertEqual(len(lines), len(expected))
        for line, (client, requestId) in zip(lines, expected):
            self.assertTrue(line.startswith(client + " - - ["), line)
            self.assertTrue(line.endswith(' "%s"' % requestId.decode()), line)
