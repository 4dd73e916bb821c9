"""
Hypothesis-driven robustness tests: random and mutated site.ini files and
request bytes.  Whatever goes in, the result is a clean error or a correct
response: never an unexpected exception, a traceback sent to a client, or
a connection left hanging.

Every test is bounded (C{max_examples}, C{deadline}) and derandomized, so
the suite stays fast and a failure is reproducible.
"""

from __future__ import annotations

from typing import Any, AnyStr

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import Backend, LoadBalancerService, Pool, ProxySite, UpstreamResource
from lbproxy._vhost import VirtualHost, VirtualHostResource
from lbproxy.config import ConfigError, SiteConfig, parseConfigText
from tests.test_site import Recorder

_SETTINGS = settings(
    max_examples=150,
    # Bounded by the number of examples; no per-example deadline, which a
    # loaded machine (or PyPy warming up) turns into a flaky failure.
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_GOOD_INI = """\
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = off
client_header_timeout = 10s
client_body_timeout = 1m
keepalive_timeout = 75s
max_body_size = 1m
max_header_size = 16k
max_connections = 100

[upstream:app]
balancer = round_robin
servers =
    127.0.0.1:9001 weight=2
    127.0.0.1:9002 max_fails=3 fail_timeout=30s
    127.0.0.1:9003 backup
max_fails = 1
fail_timeout = 10s
connect_timeout = 5s
read_timeout = 60s
next_upstream_tries = 0
keepalive = 32
health_check = /healthz
health_interval = 5s
health_rise = 2
health_fall = 3
health_status = 200-399

[vhost:app]
server_names = app.example.com *.app.example.com
default = yes
upstream = app
routes =
    /api/ app
preserve_host = yes

[demo:blue]
listen = tcp:0:interface=127.0.0.1
"""

_KEYS = [
    "listen", "access_log", "workers", "client_header_timeout", "client_body_timeout",
    "keepalive_timeout", "max_body_size", "max_header_size", "max_connections",
    "servers", "balancer", "max_fails", "fail_timeout", "connect_timeout",
    "read_timeout", "next_upstream_tries", "keepalive", "health_check",
    "health_interval", "health_timeout", "health_rise", "health_fall",
    "health_status", "slow_start", "tls_verify", "server_names", "default",
    "upstream", "routes", "preserve_host", "balancer.key", "token", "bogus",
    "limit_rate", "limit_burst", "limit_key", "limit_delay", "limit_conn",
    "limit_per_worker", "limit_keys",
]
_VALUES = [
    "", "0", "1", "-1", "10", "1.5", "99999999999999999999", "1s", "500ms", "2m",
    "1h", "3d", "10x", "1k", "16m", "2g", "yes", "no", "maybe", "tcp:0",
    "tcp:8080:interface=127.0.0.1", "unix:/nonexistent/x", "tcp:", "ssl:443",
    "127.0.0.1:9001", "127.0.0.1:9001 weight=0", "[::1]:9002 backup down",
    "https://h:1 max_fails=x", "h:99999", "round_robin", "nope", "least_conn",
    "header:X-A", "/healthz", "200-399", "399-200", "app", "ghost", "*.a.b",
    "/api/ app", "/x", "%(x)s", "\u00e9", "a\tb", "off", "-",
    "20/s", "30r/m", "0/s", "cookie:sid", "remote_addr", "divide", "each",
]
_SECTIONS = ["lbproxy", "upstream:app", "upstream:", "vhost:app", "vhost:x y",
             "demo:blue", "admin", "server", "upstream:a:b"]

_ini = st.lists(
    st.tuples(
        st.sampled_from(_SECTIONS),
        st.lists(st.tuples(st.sampled_from(_KEYS), st.sampled_from(_VALUES)), max_size=6),
    ),
    max_size=5,
).map(
    lambda sections: "".join(
        f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in items) for name, items in sections
    )
)

_JUNK = st.sampled_from(
    ["", " ", "\t", "\n", "\n ", "[", "]", "=", ":", ";", "#", "%", "\x00", "\r",
     "0", "-", "\u00e9", "[lbproxy]\n", "[upstream:app]\n", "servers = \n",
     "listen = tcp:0\n"]
)


def _mutate(text: AnyStr, edits: list[tuple[int, int, int, AnyStr]]) -> AnyStr:
    """
    C{text} (L{str} or L{bytes}) with C{junk} inserted (op 0), C{length}
    characters deleted (1) or replaced by C{junk} (2) at each C{position}.
    """
    for op, position, length, junk in edits:
        position %= len(text) + 1
        if op == 0:
            text = text[:position] + junk + text[position:]
        elif op == 1:
            text = text[:position] + text[position + length :]
        else:
            text = text[:position] + junk + text[position + length :]
    return text


_edits = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 5000), st.integers(0, 40), _JUNK),
    min_size=1,
    max_size=6,
)


class ConfigFuzzTests(SynchronousTestCase):
    """
    parseConfigText returns a L{SiteConfig} or raises L{ConfigError} with
    messages, and a configuration it accepts builds a service.
    """

    def check(self, text: str) -> None:
        try:
            config = parseConfigText(text, "fuzz.ini")
        except ConfigError as e:
            self.assertTrue(e.errors)
            for message in e.errors:
                self.assertIsInstance(message, str)
                self.assertTrue(message.startswith("fuzz.ini"), message)
                self.assertNotIn("Traceback", message)
            return
        self.assertIsInstance(config, SiteConfig)
        LoadBalancerService(config, MemoryReactorClock())

    def test_goodConfigBuilds(self) -> None:
        """
        The unmutated file parses and builds (so the fuzzing starts from a
        valid file and the tests below can tell the two outcomes apart).
        """
        config = parseConfigText(_GOOD_INI, "fuzz.ini")
        self.assertEqual(config.proxy.maxConnections, 100)
        LoadBalancerService(config, MemoryReactorClock())

    @_SETTINGS
    @given(_ini)
    def test_randomFiles(self, text: str) -> None:
        """
        Files assembled from known and unknown sections, keys and values.
        """
        self.check(text)

    @_SETTINGS
    @given(_edits)
    def test_mutatedFiles(self, edits: list[tuple[int, int, int, str]]) -> None:
        """
        The good file with characters inserted, deleted and replaced.
        """
        self.check(_mutate(_GOOD_INI, edits))

    @settings(max_examples=100, deadline=None, derandomize=True, database=None)
    @given(st.text(max_size=300))
    def test_arbitraryText(self, text: str) -> None:
        """
        Any text at all.
        """
        self.check(text)


_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n",
    b"GET http://elsewhere/x?y=1 HTTP/1.1\r\nHost: app.example:80\r\n\r\n",
    b"POST /api/x HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /api/ HTTP/1.1\r\nHost: b.example\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: app.example\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD / HTTP/1.0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: app.example\r\nExpect: 100-continue\r\n\r\n",
]
_BYTES = st.sampled_from(
    [b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x00", b":", b",", b"0", b"f", b"-", b"+",
     b";", b"\xff", b"/", b"?", b"Transfer-Encoding: chunked\r\n",
     b"Content-Length: 3\r\n", b"Host: h\r\n", b"\r\n\r\n", b"CONNECT", b"http://"]
)
_requestEdits = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 500), st.integers(0, 10), _BYTES),
    max_size=5,
)


def _mutateBytes(data: bytes, edits: list[tuple[int, int, int, bytes]]) -> bytes:
    for op, position, length, junk in edits:
        position %= len(data) + 1
        if op == 0:
            data = data[:position] + junk + data[position:]
        elif op == 1:
            data = data[:position] + data[position + length :]
        else:
            data = data[:position] + junk + data[position + length :]
    return data


class RequestFuzzTests(SynchronousTestCase):
    """
    Mutated and random request bytes, fed in random pieces to a
    L{ProxySite} over a virtual-host tree: no exception, only well-formed
    responses, no traceback, and every connection closed once the clock
    has passed every client timeout.
    """

    def feed(self, data: bytes, cuts: list[int]) -> None:
        reactor = MemoryReactorClock()
        app = Recorder()
        root = VirtualHostResource(
            [VirtualHost("app", ["app.example", "*.example"], {b"/": app, b"/api/": app})]
        )
        site = ProxySite(
            root,
            reactor=reactor,
            maxHeaderSize=1024,
            maxBodySize=64,
            clientHeaderTimeout=10,
            clientBodyTimeout=20,
            keepaliveTimeout=30,
        )
        site.startFactory()
        try:
            peer = IPv4Address("TCP", "192.0.2.1", 1234)
            channel: Any = site.buildProtocol(peer)
            transport = StringTransport(peerAddress=peer)
            channel.makeConnection(transport)
            start = 0
            for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
                channel.dataReceived(data[start:cut])
                start = max(start, cut)
            for _ in range(4):
                reactor.advance(31)
            output = transport.value()
            self.assertTrue(transport.disconnecting, (data, output))
            if output:
                self.assertRegex(output[:13], rb"\AHTTP/1\.[01] [1-5]\d\d ")
            for status in (b" 500 ", b"Traceback", b"Processing Failed"):
                self.assertNotIn(status, output)
            channel.connectionLost(None)
        finally:
            site.stopFactory()
        self.assertEqual(self.flushLoggedErrors(), [])

    @_SETTINGS
    @given(st.sampled_from(_REQUESTS), _requestEdits, st.lists(st.integers(0, 500), max_size=4))
    def test_mutatedRequests(
        self, request: bytes, edits: list[tuple[int, int, int, bytes]], cuts: list[int]
    ) -> None:
        """
        Valid requests with bytes inserted, deleted and replaced.
        """
        self.feed(_mutateBytes(request, edits), cuts)

    @_SETTINGS
    @given(
        st.lists(st.sampled_from(_REQUESTS), min_size=1, max_size=4),
        st.lists(st.integers(0, 1000), max_size=6),
    )
    def test_pipelines(self, requests: list[bytes], cuts: list[int]) -> None:
        """
        Several valid requests in one stream, cut anywhere, are all
        answered.
        """
        data = b"".join(requests)
        self.feed(data, cuts)

    @settings(max_examples=100, deadline=None, derandomize=True, database=None)
    @given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=4))
    def test_randomBytes(self, data: bytes, cuts: list[int]) -> None:
        """
        Arbitrary bytes.
        """
        self.feed(data, cuts)


_TOKEN = set(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _splitRequests(raw: bytes) -> tuple[list[tuple[bytes, dict[bytes, bytes], bytes]], bytes]:
    """
    Split what a backend received into complete requests and the rest,
    asserting that each is well framed: a token method, an origin-form
    target, token header names, one Host, no Transfer-Encoding, at most one
    Content-Length and a body of exactly that length.
    """
    requests: list[tuple[bytes, dict[bytes, bytes], bytes]] = []
    while True:
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            return requests, raw
        lines = raw[:end].split(b"\r\n")
        method, target, version = lines[0].split(b" ")
        assert method and set(method) <= _TOKEN, lines[0]
        assert target.startswith(b"/") and version == b"HTTP/1.1", lines[0]
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            assert name and set(name) <= _TOKEN, line
            lowered = name.lower()
            assert lowered not in (b"host", b"content-length") or lowered not in fields, lines
            assert all(c >= 32 or c == 9 for c in value), line
            fields[lowered] = value.strip()
        assert b"transfer-encoding" not in fields, lines
        assert b"host" in fields, lines
        length = int(fields.get(b"content-length", b"0"))
        start = end + 4
        if len(raw) < start + length:
            return requests, raw
        requests.append((lines[0], fields, raw[start : start + length]))
        raw = raw[start + length :]


class ProxyFuzzTests(SynchronousTestCase):
    """
    Mutated requests through the whole proxy (virtual hosts, upstream
    resource, pool) to an in-memory backend: whatever the client sends,
    the backend receives only well-framed requests, each body exactly as
    long as its Content-Length, and the client connection ends.
    """

    def feed(self, data: bytes, cuts: list[int]) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
        """
        Send C{data} in pieces cut at C{cuts}, answering every request the
        backend receives; return those requests.
        """
        reactor = MemoryReactorClock()
        received: list[tuple[bytes, dict[bytes, bytes], bytes]] = []
        pool = Pool("app", [Backend("127.0.0.1", 9000)], reactor=reactor, readTimeout=5.0)
        upstream = UpstreamResource(pool, True)
        root = VirtualHostResource(
            [VirtualHost("app", ["app.example", "*.example"], {b"/": upstream})]
        )
        site = ProxySite(
            root,
            reactor=reactor,
            maxHeaderSize=1024,
            maxBodySize=64,
            clientHeaderTimeout=10,
            clientBodyTimeout=20,
            keepaliveTimeout=30,
        )
        site.startFactory()
        backends: list[tuple[Any, StringTransport, list[int]]] = []

        def serveBackends() -> None:
            for _ in range(20):
                progress = False
                while len(backends) < len(reactor.tcpClients):
                    _, port, factory, _, _ = reactor.tcpClients[len(backends)]
                    protocol: Any = factory.buildProtocol(
                        IPv4Address("TCP", "127.0.0.1", port)
                    )
                    transport = StringTransport()
                    protocol.makeConnection(transport)
                    backends.append((protocol, transport, [0]))
                    progress = True
                for protocol, transport, answered in backends:
                    if transport.disconnecting:
                        continue
                    requests, _ = _splitRequests(transport.value())
                    while answered[0] < len(requests):
                        received.append(requests[answered[0]])
                        answered[0] += 1
                        progress = True
                        protocol.dataReceived(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                        )
                if not progress:
                    return

        try:
            peer = IPv4Address("TCP", "192.0.2.1", 1234)
            channel: Any = site.buildProtocol(peer)
            transport = StringTransport(peerAddress=peer)
            channel.makeConnection(transport)
            start = 0
            for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
                channel.dataReceived(data[start:cut])
                start = max(start, cut)
                serveBackends()
            for _ in range(4):
                reactor.advance(31)
                serveBackends()
            output = transport.value()
            self.assertTrue(transport.disconnecting, (data, output))
            if output:
                self.assertRegex(output[:13], rb"\AHTTP/1\.[01] [1-5]\d\d ")
            for status in (b" 500 ", b"Traceback", b"Processing Failed"):
                self.assertNotIn(status, output)
            channel.connectionLost(None)
        finally:
            site.stopFactory()
        self.assertEqual(self.flushLoggedErrors(), [])
        return received

    def test_forwarded(self) -> None:
        """
        Unmutated, the requests do reach the backend, re-framed (so the
        fuzzing below checks something).
        """
        [(line, fields, body)] = self.feed(_REQUESTS[3], [7, 70])
        self.assertEqual((line, body), (b"POST /api/ HTTP/1.1", b"hello"))
        self.assertEqual(fields[b"content-length"], b"5")
        [(line, fields, body)] = self.feed(_REQUESTS[1], [])
        self.assertEqual(line, b"GET /x?y=1 HTTP/1.1")
        # The last of the five holds two requests, one for an unknown host (404).
        self.assertEqual(len(self.feed(b"".join(_REQUESTS[:5]), [100])), 5)

    @_SETTINGS
    @given(st.sampled_from(_REQUESTS), _requestEdits, st.lists(st.integers(0, 500), max_size=4))
    def test_mutatedRequests(
        self, request: bytes, edits: list[tuple[int, int, int, bytes]], cuts: list[int]
    ) -> None:
        """
        Valid requests with bytes inserted, deleted and replaced.
        """
        self.feed(_mutateBytes(request, edits), cuts)

    @_SETTINGS
    @given(
        st.lists(st.sampled_from(_REQUESTS), min_size=1, max_size=4),
        _requestEdits,
        st.lists(st.integers(0, 1000), max_size=6),
    )
    def test_mutatedPipelines(
        self, requests: list[bytes], edits: list[tuple[int, int, int, bytes]], cuts: list[int]
    ) -> None:
        """
        Several requests in one stream, mutated, cut anywhere.
        """
        self.feed(_mutateBytes(b"".join(requests), edits), cuts)


_HEADER_NAMES = st.sampled_from(
    [b"a", b"X-A", b"Connection", b"Content-Length", b"Transfer-Encoding",
     b"Set-Cookie", b"bad name", b"", b" folded"]
)
_VALUE_PIECES = st.sampled_from(
    [b"a", b" ", b"\t", b"\r", b"\x00", b"\x7f", b"\xe9", b",", b"5",
     b"close", b"chunked", b"keep-alive", b":"]
)
_HEADER_LINES = st.lists(
    st.tuples(_HEADER_NAMES, st.lists(_VALUE_PIECES, max_size=6)), max_size=6
)


class ResponseHeadFuzzTests(SynchronousTestCase):
    @settings(max_examples=500, deadline=None, derandomize=True, database=None)
    @given(_HEADER_LINES)
    def test_oneMatchAgreesWithLineByLine(self, lines):
        """
        A header block with CR LF line ends (read by one match and a split
        when it is valid as a whole) parses as the same block with bare LF
        line ends (read by the line-by-line expression) does: the same
        headers, framing and tokens, or the same refusal.
        """
        from lbproxy._client import InvalidResponse, parseHead

        fields = [name + b":" + b"".join(value) for name, value in lines]

        def parse(head):
            try:
                h, length, chunked, bodyless = parseHead(head, b"GET")
            except InvalidResponse:
                return "invalid"
            return (h.code, h.headers, h.connection, h.length, length, chunked, bodyless)

        crlf = parse(b"HTTP/1.1 200 OK\r\n" + b"\r\n".join(fields))
        lf = parse(b"HTTP/1.1 200 OK\n" + b"\n".join(fields))
        self.assertEqual(crlf, lf)
