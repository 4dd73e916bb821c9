"""
Tests for the real client address behind trusted proxies
(C{trusted_proxies}, L{lbproxy._realip}): how the client is found in
C{X-Forwarded-For}, and that everything that reads the client (the access
log, C{X-Forwarded-For} and C{X-Real-IP} to the backend, C{$remote_addr},
C{ip_hash}, C{consistent_hash} on C{remote_addr}) sees that one, and that
an untrusted client cannot choose it.
"""

from __future__ import annotations

import io
import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyChannel

from lbproxy import Backend, Pool, ProxySite, UpstreamResource
from lbproxy._config import ConfigError, parseConfigText
from lbproxy._headers import HeaderRules
from lbproxy._proxy import _proxyRequest
from lbproxy._realip import TrustedProxies, parseForwardedAddress
from lbproxy._site import ProxyRequest
from lbproxy._values import parseRequestHeaderRules
from lbproxy.balancers import buildBalancer
from lbproxy.service import LoadBalancerService
from lbproxy.testing import ProxyHarness, _Holding, makeRequest
from tests.test_header_rules import _headerValues

_PROXY = IPv4Address("TCP", "10.0.0.5", 40000)
_STRANGER = IPv4Address("TCP", "192.0.2.50", 40000)


def _client(trusted, peer, *values):
    """
    What L{TrustedProxies.realClient} finds for C{peer} and the
    C{X-Forwarded-For} C{values}: C{(host, rest)}, or L{None}.
    """
    found = TrustedProxies(trusted).realClient(peer, list(values) or None)
    if found is None:
        return None
    address, rest = found
    return address.host, rest


class ParseTests(SynchronousTestCase):
    """
    The entries of C{X-Forwarded-For}, and C{trusted_proxies} in site.ini.
    """

    def test_entries(self):
        """
        IPv4 and IPv6 addresses are read, with a port when one is given
        (an IPv6 address with a port is bracketed); anything else is not
        an address.
        """
        v4, v6 = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1")
        for entry, expected in [
            (b"192.0.2.1", (v4, 0)),
            (b"192.0.2.1:5000", (v4, 5000)),
            (b"2001:db8::1", (v6, 0)),
            (b"[2001:db8::1]", (v6, 0)),
            (b"[2001:db8::1]:443", (v6, 443)),
            (b"unknown", None),
            (b"app.example", None),
            (b"_hidden", None),
            (b"192.0.2.1:99999", None),
            (b"192.0.2.1:", None),
            (b"[2001:db8::1", None),
            (b"[2001:db8::1]x", None),
            (b"192.0.2.256", None),
            (b"\xff", None),
            (b"", None),
        ]:
            self.assertEqual(parseForwardedAddress(entry), expected, entry)

    def test_config(self):
        """
        C{trusted_proxies} takes IPv4 and IPv6 addresses and networks and
        C{unix:}; the site gets them, and a reload changes them.
        """
        text = (
            "[lbproxy]\nlisten = tcp:0\ntrusted_proxies = 10.0.0.0/8\n"
            "  192.168.1.10 fd00::/8 unix:\n"
        )
        config = parseConfigText(text)
        self.assertEqual(
            config.proxy.trustedProxies,
            (
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("192.168.1.10/32"),
                ipaddress.ip_network("fd00::/8"),
                "unix:",
            ),
        )
        service = LoadBalancerService(config, MemoryReactorClock())
        trusted = service.site.trustedProxies
        self.assertTrue(trusted.unix)
        self.assertTrue(trusted.trustsPeer(_PROXY))
        self.assertFalse(trusted.trustsPeer(_STRANGER))
        service.reload(parseConfigText("[lbproxy]\nlisten = tcp:0\n"))
        self.assertIsNone(service.site.trustedProxies)
        self.assertIsNone(ProxySite(_Holding()).trustedProxies)

    def test_configErrors(self):
        """
        Each bad entry is one error naming the key, the entry and what was
        expected; a network with host bits set is refused.
        """
        with self.assertRaises(ConfigError) as caught:
            parseConfigText(
                "[lbproxy]\nlisten = tcp:0\n"
                "trusted_proxies = 10.0.0.0/8 10.1.2.3/8 proxy.example 10.0.0.0/33\n",
                "site.ini",
            )
        self.assertEqual(
            caught.exception.errors,
            [
                "site.ini: [lbproxy] trusted_proxies = '10.1.2.3/8': bad value; "
                "expected a network without host bits: 10.0.0.0/8 rather than 10.1.2.3/8",
                "site.ini: [lbproxy] trusted_proxies = 'proxy.example': bad value; "
                "expected an IPv4 or IPv6 address or network, such as 10.0.0.0/8, "
                "192.168.1.10 or fd00::/8, or unix:",
                "site.ini: [lbproxy] trusted_proxies = '10.0.0.0/33': bad value; "
                "expected an IPv4 or IPv6 address or network, such as 10.0.0.0/8, "
                "192.168.1.10 or fd00::/8, or unix:",
            ],
        )
        self.assertRaises(ValueError, TrustedProxies, ["bogus"])


class RealClientTests(SynchronousTestCase):
    """
    L{TrustedProxies.realClient}: nginx's C{real_ip_recursive on}.
    """

    def test_untrustedPeer(self):
        """
        From a peer that is not trusted, the peer is the client, whatever
        C{X-Forwarded-For} says.
        """
        self.assertIsNone(_client(["10.0.0.0/8"], _STRANGER, b"10.0.0.1, 203.0.113.9"))
        self.assertIsNone(_client([], _PROXY, b"203.0.113.9"))

    def test_trustedPeer(self):
        """
        From a trusted peer, the client is the rightmost entry that is not
        trusted; the entries before it are what is left of the header.
        """
        trusted = ["10.0.0.0/8"]
        self.assertEqual(_client(trusted, _PROXY, b"203.0.113.9"), ("203.0.113.9", None))
        self.assertEqual(
            _client(trusted, _PROXY, b"198.51.100.7, 203.0.113.9, 10.0.0.9"),
            ("203.0.113.9", b"198.51.100.7"),
        )
        # Several headers are one list; empty entries are skipped.
        self.assertEqual(
            _client(trusted, _PROXY, b"1.2.3.4,, 198.51.100.7", b"203.0.113.9 ,10.1.1.1,"),
            ("203.0.113.9", b"1.2.3.4, 198.51.100.7"),
        )

    def test_allTrusted(self):
        """
        When every entry is trusted, the leftmost is the client.
        """
        self.assertEqual(
            _client(["10.0.0.0/8"], _PROXY, b"10.0.0.1, 10.0.0.2"), ("10.0.0.1", None)
        )

    def test_notAnAddress(self):
        """
        An entry that is not an address stops the search: the last address
        read is the client, or the peer when it is the rightmost entry.
        """
        trusted = ["10.0.0.0/8"]
        self.assertIsNone(_client(trusted, _PROXY, b"203.0.113.9, unknown"))
        self.assertEqual(
            _client(trusted, _PROXY, b"203.0.113.9, unknown, 10.0.0.9"),
            ("10.0.0.9", b"203.0.113.9, unknown"),
        )
        self.assertIsNone(_client(trusted, _PROXY))
        self.assertIsNone(_client(trusted, _PROXY, b" , "))

    def test_ports(self):
        """
        A port in the entry is the client's port; without one it is 0.
        """
        trusted = TrustedProxies(["10.0.0.0/8"])
        address, _ = trusted.realClient(_PROXY, [b"203.0.113.9:5000"])
        self.assertEqual(address, IPv4Address("TCP", "203.0.113.9", 5000))
        address, _ = trusted.realClient(_PROXY, [b"[2001:db8::9]"])
        self.assertEqual(address, IPv6Address("TCP", "2001:db8::9", 0))

    def test_ipv6(self):
        """
        IPv6 networks and peers are trusted as IPv4 ones; an IPv4-mapped
        IPv6 address (a dual-stack socket's IPv4 peer) is its IPv4
        address.
        """
        trusted = ["fd00::/8", "10.0.0.0/8"]
        peer6 = IPv6Address("TCP", "fd00::5", 40000)
        self.assertEqual(
            _client(trusted, peer6, b"2001:db8::9, fd00::7"), ("2001:db8::9", None)
        )
        mapped = IPv6Address("TCP", "::ffff:10.0.0.5", 40000)
        self.assertEqual(
            _client(trusted, mapped, b"203.0.113.9, ::ffff:10.0.0.6"), ("203.0.113.9", None)
        )
        self.assertIsNone(_client(trusted, IPv6Address("TCP", "2001:db8::1", 1), b"fd00::1"))
        # A client a proxy names IPv4-mapped keeps the mixed form.
        self.assertEqual(
            _client(trusted, peer6, b"::FFFF:C000:201"), ("::ffff:192.0.2.1", None)
        )

    def test_unix(self):
        """
        C{unix:} trusts the peers of UNIX-socket listeners, and only it.
        """
        peer = UNIXAddress(b"/run/lbproxy.sock")
        self.assertEqual(_client(["unix:"], peer, b"203.0.113.9"), ("203.0.113.9", None))
        self.assertIsNone(_client(["10.0.0.0/8"], peer, b"203.0.113.9"))
        self.assertIsNone(_client(["unix:"], _PROXY, b"203.0.113.9"))

    def test_peerAnswersBounded(self):
        """
        The answers for peers and for X-Forwarded-For entries are
        remembered, up to a bound: a flood of distinct peers or entries
        does not grow memory, and the answers stay right.
        """
        trusted = TrustedProxies(["10.0.0.0/8"])
        for n in range(3000):
            trusted.trustsPeer(IPv4Address("TCP", f"192.0.{n // 256}.{n % 256}", 1))
        self.assertLessEqual(len(trusted._peers), 1024)
        self.assertTrue(trusted.trustsPeer(_PROXY))
        for n in range(10000):
            client = f"198.{n // 65536}.{n // 256 % 256}.{n % 256}"
            found = trusted.realClient(_PROXY, [client.encode("ascii")])
            self.assertEqual(found, (IPv4Address("TCP", client, 0), None))
        self.assertLessEqual(len(trusted._entries), 4096)


class _Proxy:
    """
    A proxy trusting C{10.0.0.0/8}, with header rules showing
    C{$remote_addr}, a recording access log, and one or two backends.
    """

    def __init__(self, testCase, balancer="round_robin", options=None, backends=1):
        self.reactor = MemoryReactorClock()
        self.pool = Pool(
            "app",
            [Backend("127.0.0.1", 9001 + n) for n in range(backends)],
            buildBalancer(balancer, options or {}),
            reactor=self.reactor,
            keepalive=0,
        )
        rules = HeaderRules(parseRequestHeaderRules("set X-Remote $remote_addr"))
        self.log = io.StringIO()
        self.proxy = ProxyHarness(
            UpstreamResource(self.pool, headerRules=rules),
            reactor=self.reactor,
            accessLog=self.log,
            trustedProxies=["10.0.0.0/8"],
        )
        testCase.addCleanup(self.proxy.close)

    def forward(self, peer, forwardedFor=None):
        """
        One request from C{peer}; return the backend's port and what it
        received, once it answered.
        """
        client = self.proxy.connect(peer)
        extra = b"X-Forwarded-For: %s\r\n" % forwardedFor if forwardedFor else b""
        client.send(b"GET / HTTP/1.1\r\nHost: app\r\n%s\r\n" % extra)
        pending = self.proxy.pending()[0]
        port = self.reactor.tcpClients[-1][1]
        backend = pending.accept()
        received = backend.received()
        backend.respond(b"HTTP/1.1 204 No Content\r\n\r\n")
        client.disconnect()
        return port, received


class ForwardingTests(SynchronousTestCase):
    """
    Behind a L{ProxySite} with C{trustedProxies}, every reader of the
    client sees the same one.
    """

    def assertSeen(self, peer, forwardedFor, forwarded, client):
        """
        A request from C{peer} with C{X-Forwarded-For: forwardedFor}
        reaches the backend with C{X-Forwarded-For: forwarded}, and
        C{client} as X-Real-IP and C{$remote_addr}, and is logged with it.
        """
        proxy = _Proxy(self)
        _, sent = proxy.forward(peer, forwardedFor)
        self.assertEqual(_headerValues(sent, b"x-forwarded-for"), [forwarded])
        self.assertEqual(_headerValues(sent, b"x-real-ip"), [client])
        self.assertEqual(_headerValues(sent, b"x-remote"), [client])
        logged = proxy.log.getvalue()
        self.assertTrue(logged.startswith(client.decode() + " - - ["), logged)

    def test_spoofIgnored(self):
        """
        A client that is not a trusted proxy cannot choose its address:
        its X-Forwarded-For is passed on with its own address appended,
        which is X-Real-IP, C{$remote_addr} and the address logged.
        """
        self.assertSeen(
            _STRANGER,
            b"10.0.0.1, 203.0.113.9",
            b"10.0.0.1, 203.0.113.9, 192.0.2.50",
            b"192.0.2.50",
        )

    def test_trustedUsed(self):
        """
        From a trusted proxy, the client it names is X-Real-IP,
        C{$remote_addr} and the address logged; X-Forwarded-For holds the
        entries before the client and then the client, as if the client
        had connected itself.
        """
        self.assertSeen(
            _PROXY,
            b"198.51.100.7, 203.0.113.9, 10.0.0.9",
            b"198.51.100.7, 203.0.113.9",
            b"203.0.113.9",
        )

    def test_trustedWithoutHeader(self):
        """
        A trusted proxy's request without X-Forwarded-For has the proxy as
        its client.
        """
        self.assertSeen(_PROXY, None, b"10.0.0.5", b"10.0.0.5")

    def test_ipHashByRealClient(self):
        """
        C{ip_hash} picks by the real client: a request through a trusted
        proxy lands where the client's own request would, and a spoofed
        header from an untrusted client changes nothing.
        """
        proxy = _Proxy(self, "ip_hash", backends=4)
        landed = set()
        for n in range(12):
            real = f"198.51.{n}.7"
            direct, _ = proxy.forward(IPv4Address("TCP", real, 1))
            through, _ = proxy.forward(_PROXY, real.encode("ascii"))
            spoofed, _ = proxy.forward(IPv4Address("TCP", real, 1), b"203.0.113.1")
            self.assertEqual((through, spoofed), (direct, direct), real)
            landed.add(direct)
        self.assertGreater(len(landed), 1)

    def test_consistentHashByRealClient(self):
        """
        C{consistent_hash} with C{balancer.key = remote_addr} hashes the
        real client too.
        """
        proxy = _Proxy(self, "consistent_hash", {"key": "remote_addr"}, backends=4)
        landed = set()
        for n in range(12):
            real = f"198.51.100.{n}"
            direct, _ = proxy.forward(IPv4Address("TCP", real, 1))
            through, _ = proxy.forward(_PROXY, b"%s, 10.0.0.9" % real.encode("ascii"))
            self.assertEqual(through, direct, real)
            landed.add(direct)
        self.assertGreater(len(landed), 1)


class RequestTests(SynchronousTestCase):
    """
    The client is kept in one place on the request, whichever channel
    built it.
    """

    def test_onePlace(self):
        """
        L{ProxyRequest.clientAddress} and C{getClientAddress()} are the
        real client; the peer stays the channel's.
        """
        request = makeRequest("192.0.2.10", {b"X-Forwarded-For": b"203.0.113.9"})
        self.assertEqual(request.clientAddress.host, "192.0.2.10")
        site = ProxySite(_Holding(), trustedProxies=["192.0.2.0/24"])
        channel = DummyChannel()
        channel.site = site
        channel.transport = DummyChannel.TCP(peer=IPv4Address("TCP", "192.0.2.10", 1))
        request = ProxyRequest(channel, False)
        request.requestHeaders.addRawHeader(b"X-Forwarded-For", b"203.0.113.9")
        request.believeForwardedFor(site.trustedProxies)
        self.assertEqual(request.clientAddress, IPv4Address("TCP", "203.0.113.9", 0))
        self.assertIs(request.getClientAddress(), request.clientAddress)
        self.assertIs(_proxyRequest(request).clientAddress, request.clientAddress)
        self.assertEqual(channel.getPeer().host, "192.0.2.10")
        self.assertIsNone(request.requestHeaders.getRawHeaders(b"x-forwarded-for"))

    def test_otherChannel(self):
        """
        A L{ProxyRequest} built by a channel other than lbproxy's HTTP/1.1
        one (as an HTTP/2 stream builds them: any object with the channel
        contract and the site) finds its client as it is received.
        """
        holding = _Holding()
        site = ProxySite(holding, trustedProxies=["10.0.0.0/8"])
        channel = DummyChannel()
        channel.site = site
        channel.transport = DummyChannel.TCP(peer=_PROXY)
        request = ProxyRequest(channel, False)
        request.requestHeaders.addRawHeader(b"X-Forwarded-For", b"203.0.113.9")
        request.content = io.BytesIO()
        request.requestReceived(b"GET", b"/", b"HTTP/2")
        self.assertEqual(holding.requests, [request])
        self.assertEqual(request.getClientAddress().host, "203.0.113.9")

    def test_http2(self):
        """
        An HTTP/2 stream's request (built by L{lbproxy._h2}'s stream
        channel) finds its client from a trusted peer, and passes on a
        spoofed header from any other with the peer appended.
        """
        from tests.test_h2 import _Connection

        for trusted, forwarded, client in [
            (["192.0.2.0/24"], b"198.51.100.7, 203.0.113.9", b"203.0.113.9"),
            (["10.0.0.0/8"], b"198.51.100.7, 203.0.113.9, 192.0.2.1", b"192.0.2.1"),
        ]:
            c = _Connection(self, trustedProxies=trusted)
            c.client.request(headers=[(b"x-forwarded-for", b"198.51.100.7, 203.0.113.9")])
            c.exchange()
            sent = c.backend().received()
            self.assertEqual(_headerValues(sent, b"x-forwarded-for"), [forwarded])
            self.assertEqual(_headerValues(sent, b"x-real-ip"), [client])

    def test_plainSite(self):
        """
        A request of a plain L{Site} (adapted to L{IProxyRequest}) has its
        peer as its client: such a site trusts no proxy.
        """
        holding = _Holding()
        site = Site(holding)
        channel = site.buildProtocol(_PROXY)
        channel.makeConnection(StringTransport(peerAddress=_PROXY))
        channel.dataReceived(
            b"GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n"
        )
        (request,) = holding.requests
        self.assertEqual(_proxyRequest(request).clientAddress, _PROXY)
        channel.connectionLost(None)
