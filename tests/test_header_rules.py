"""
Tests for a vhost's header rules: C{request_headers}, C{response_headers}
and C{request_id} read from site.ini (L{lbproxy._values},
L{lbproxy._config}), compiled into L{lbproxy._headers.HeaderRules} and
applied by L{lbproxy.UpstreamResource}, driven on
L{lbproxy.testing.ProxyHarness}.
"""

from __future__ import annotations

import io
import re

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import Backend, Pool, UpstreamResource
from lbproxy._config import ConfigError, parseConfigText
from lbproxy._headers import HeaderRules, forwardedHeaders
from lbproxy._proxy import _Exchange, _RuledExchange
from lbproxy._values import parseRequestHeaderRules, parseResponseHeaderRules
from lbproxy.service import LoadBalancerService
from lbproxy.testing import ProxyHarness

_BASE = """\
[lbproxy]
listen = tcp:0
[upstream:app]
servers = 127.0.0.1:9001
[vhost:app]
default = yes
upstream = app
"""

_HEX32 = re.compile(rb"\A[0-9a-f]{32}\Z")


def _errors(text: str) -> list[str]:
    try:
        parseConfigText(_BASE + text)
    except ConfigError as e:
        return e.errors
    raise AssertionError("no ConfigError")


class ConfigTests(SynchronousTestCase):
    """
    The rules as site.ini gives them, and the errors of bad ones.
    """

    def test_parsed(self):
        """
        C{set NAME VALUE} and C{remove NAME}, one per line, become rules;
        variables (C{$name}, C{${name}}) are parts of their own and C{$$} is
        a literal C{$}.
        """
        config = parseConfigText(
            _BASE
            + "request_headers =\n"
            "    set X-Env prod\n"
            "    remove X-Debug\n"
            "    SET X-Client ${remote_addr}:$server_port $$5\n"
            "response_headers = set X-Frame-Options DENY\n"
            "request_id = yes\n"
        )
        (vhost,) = config.vhosts
        self.assertEqual(
            vhost.requestHeaders,
            (
                ("set", "X-Env", ((False, "prod"),)),
                ("remove", "X-Debug", ()),
                (
                    "set",
                    "X-Client",
                    ((True, "remote_addr"), (False, ":"), (True, "server_port"), (False, " $5")),
                ),
            ),
        )
        self.assertEqual(vhost.responseHeaders, (("set", "X-Frame-Options", ((False, "DENY"),)),))
        self.assertTrue(vhost.requestId)

    def test_defaults(self):
        """
        Without the keys, a vhost has no rules and no request ids.
        """
        (vhost,) = parseConfigText(_BASE).vhosts
        self.assertEqual((vhost.requestHeaders, vhost.responseHeaders, vhost.requestId), ((), (), False))

    def test_badLines(self):
        """
        Each bad line is reported on its own, with the line and what was
        expected: an unknown verb, a missing or invalid name, a missing
        value, something after C{remove NAME}, an unknown variable.
        """
        errors = _errors(
            "request_headers =\n"
            "    add X-A 1\n"
            "    set\n"
            "    set X:A 1\n"
            "    set X-A\n"
            "    remove X-A now\n"
            "    set X-A $hots\n"
            "    set X-A ${host\n"
            "    set X-A 100$\n"
        )
        self.assertEqual(len(errors), 8, errors)
        variables = (
            "a known variable ($remote_addr, $host, $scheme, $request_id, "
            "$server_port; $$ for a literal $)"
        )
        expected = [
            ("add X-A 1", "set NAME VALUE or remove NAME, got 'add'"),
            ("set", "a header name after 'set' in set NAME VALUE or remove NAME"),
            ("set X:A 1", "a header name (letters, digits and !#$%&'*+-.^_`|~), got 'X:A'"),
            ("set X-A", "a value after the name in set NAME VALUE ('remove X-A' removes it)"),
            ("remove X-A now", "nothing after the name in remove NAME, got 'now'"),
            ("set X-A $hots", f"{variables}, got '$hots'; did you mean '$host'?"),
            ("set X-A ${host", f"{variables}, got '${{'"),
            ("set X-A 100$", f"{variables}, got '$'"),
        ]
        for error, (line, what) in zip(errors, expected):
            self.assertEqual(
                f"<string>: [vhost:app] request_headers = {line!r}: bad value; expected {what}",
                error,
            )

    def test_misspeltVerb(self):
        """
        A verb one or two letters from C{set} or C{remove} is named in a
        "did you mean"; another is not.
        """
        for line, end in [
            ("sett X-A 1", "got 'sett'; did you mean 'set'?"),
            ("remvoe X-A", "got 'remvoe'; did you mean 'remove'?"),
            ("delete X-A", "got 'delete'"),
        ]:
            (error,) = _errors(f"request_headers = {line}\n")
            self.assertTrue(error.endswith(f"expected set NAME VALUE or remove NAME, {end}"), error)

    def test_controlCharacters(self):
        """
        A value with CR, LF (within a line), NUL, another control
        character or a character outside ASCII is refused, naming it.
        """
        for value, named in [
            ("a\rb", "CR"),
            ("a\x00b", "NUL"),
            ("a\x0bb", "control character 0x0b"),
            ("a\x7f", "DEL"),
            ("caf\u00e9", "U+00E9"),
        ]:
            with self.assertRaises(ValueError) as caught:
                parseResponseHeaderRules(f"set X-A {value}")
            self.assertIn(f"without {named}", str(caught.exception))
        # A LF ends the line: what follows is a line of its own, refused.
        with self.assertRaises(ValueError):
            parseRequestHeaderRules("set X-A a\nb")
        errors = _errors("response_headers = set X-A a\rb\n")
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("without CR", errors[0])

    def test_framingHeadersRefused(self):
        """
        The framing and hop-by-hop headers are lbproxy's, both ways; the
        request's C{Host} is C{preserve_host}'s.
        """
        for name in ["Content-Length", "transfer-encoding", "Connection", "Upgrade", "TE"]:
            for parse in (parseRequestHeaderRules, parseResponseHeaderRules):
                with self.assertRaises(ValueError):
                    parse(f"set {name} 1")
                with self.assertRaises(ValueError):
                    parse(f"remove {name}")
        with self.assertRaises(ValueError) as caught:
            parseRequestHeaderRules("set Host example.com")
        self.assertIn("preserve_host", str(caught.exception))
        self.assertEqual(
            parseResponseHeaderRules("set Host example.com"),
            (("set", "Host", ((False, "example.com"),)),),
        )

    def test_requestIdHeaderIsTheKeys(self):
        """
        With C{request_id = yes}, a rule naming X-Request-ID is an error.
        """
        errors = _errors(
            "request_id = yes\nrequest_headers = remove X-Request-ID\n"
            "response_headers = set x-request-id 1\n"
        )
        self.assertEqual(len(errors), 2, errors)
        self.assertIn("request_headers = 'remove X-Request-ID'", errors[0])
        self.assertIn("response_headers = 'set x-request-id'", errors[1])
        parseConfigText(_BASE + "request_headers = remove X-Request-ID\n")

    def test_service(self):
        """
        The service gives a vhost with rules an L{UpstreamResource} of its
        own with the compiled rules; a vhost without them shares the
        upstream's, which has none.
        """
        config = parseConfigText(
            _BASE
            + "server_names = a.example\n"
            "response_headers = remove Server\n"
            "[vhost:b]\n"
            "server_names = b.example\n"
            "upstream = app\n"
        )
        service = LoadBalancerService(config, MemoryReactorClock())
        ruled = service.resource.vhostFor(b"a.example").resourceFor(b"/")
        plain = service.resource.vhostFor(b"b.example").resourceFor(b"/")
        self.assertEqual(ruled.headerRules.responseRemoved, frozenset([b"server"]))
        self.assertIsNone(plain.headerRules)
        self.assertIs(ruled._exchange, _RuledExchange)
        self.assertIs(plain._exchange, _Exchange)


class _Harness:
    """
    One proxy with one backend and header rules, one client connection.
    """

    def __init__(self, testCase, request="", response="", requestId=False, secure=False):
        self.reactor = MemoryReactorClock()
        self.pool = Pool("app", [Backend("127.0.0.1", 9001)], reactor=self.reactor)
        rules = HeaderRules(
            parseRequestHeaderRules(request), parseResponseHeaderRules(response), requestId
        )
        self.resource = UpstreamResource(self.pool, True, headerRules=rules)
        self.proxy = ProxyHarness(self.resource, reactor=self.reactor)
        testCase.addCleanup(self.proxy.close)
        self.client = self.proxy.connect(IPv4Address("TCP", "192.0.2.7", 4321), secure=secure)

    def forward(self, head=b"GET / HTTP/1.1\r\nHost: App.Example:8080\r\n\r\n"):
        """
        Send C{head}; return the backend connection and what it received.
        """
        self.client.send(head)
        backend = self.proxy.acceptBackend()
        return backend, backend.received()

    def exchange(self, head=b"GET / HTTP/1.1\r\nHost: App.Example:8080\r\n\r\n", response=None):
        """
        One whole exchange: what the backend received and what the client
        received.
        """
        backend, sent = self.forward(head)
        backend.respond(response or b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        received = self.client.received()
        self.client.clear()
        return sent, received


def _headerValues(message: bytes, name: bytes) -> list[bytes]:
    """
    The values of header C{name} in the head of C{message}.
    """
    head = message.split(b"\r\n\r\n", 1)[0]
    values = []
    for line in head.split(b"\r\n")[1:]:
        field, _, value = line.partition(b":")
        if field.lower() == name.lower():
            values.append(value.strip())
    return values


class RequestRuleTests(SynchronousTestCase):
    """
    C{request_headers} on the way to the backend.
    """

    def test_setAndRemove(self):
        """
        C{set} replaces every header of its name, the client's and
        lbproxy's own forwarding headers alike; C{remove} drops them; the
        other headers pass.
        """
        h = _Harness(
            self,
            request="set X-Env prod\nremove X-Debug\nremove X-Forwarded-For\nset X-Real-IP 10.9.9.9",
        )
        _, sent = h.forward(
            b"GET / HTTP/1.1\r\nHost: app\r\nX-Env: dev\r\nx-env: test\r\n"
            b"X-Debug: 1\r\nX-Forwarded-For: 203.0.113.9\r\nX-Other: kept\r\n\r\n"
        )
        self.assertEqual(_headerValues(sent, b"x-env"), [b"prod"])
        self.assertEqual(_headerValues(sent, b"x-debug"), [])
        self.assertEqual(_headerValues(sent, b"x-forwarded-for"), [])
        self.assertEqual(_headerValues(sent, b"x-real-ip"), [b"10.9.9.9"])
        self.assertEqual(_headerValues(sent, b"x-other"), [b"kept"])
        self.assertEqual(_headerValues(sent, b"host"), [b"app"])
        self.assertTrue(sent.endswith(b"\r\n\r\n"), sent)

    def test_variables(self):
        """
        The variables are substituted: the client's address, the host
        lower-cased without its port, the scheme, the port the client
        connected to.
        """
        h = _Harness(
            self,
            request="set X-Seen $remote_addr|${host}|$scheme|$server_port|$$",
            secure=True,
        )
        _, sent = h.forward()
        self.assertEqual(
            _headerValues(sent, b"x-seen"), [b"192.0.2.7|app.example|https|12345|$"]
        )

    def test_plainScheme(self):
        """
        C{$scheme} is C{http} on a plain connection.
        """
        h = _Harness(self, request="set X-Scheme $scheme")
        _, sent = h.forward()
        self.assertEqual(_headerValues(sent, b"x-scheme"), [b"http"])

    def test_severalSetLines(self):
        """
        Several C{set} lines of one name send several headers, in order.
        """
        h = _Harness(self, request="set X-A 1\nset X-A 2")
        _, sent = h.forward()
        self.assertEqual(_headerValues(sent, b"x-a"), [b"1", b"2"])

    def test_forwardedHeadersRemoved(self):
        """
        L{forwardedHeaders} leaves out the names it is told to, its own
        forwarding headers included, and keeps the rest as it would.
        """
        from twisted.web.http_headers import Headers

        incoming = Headers({b"X-A": [b"1"], b"X-B": [b"2"], b"Host": [b"h"]})
        plain, host = forwardedHeaders(incoming, "192.0.2.1", False)
        removed, sameHost = forwardedHeaders(
            incoming, "192.0.2.1", False, frozenset([b"x-a", b"x-forwarded-proto"])
        )
        self.assertEqual(host, sameHost)
        self.assertEqual(
            removed,
            b"".join(
                line + b"\r\n"
                for line in plain.split(b"\r\n")[:-1]
                if not line.lower().startswith((b"x-a:", b"x-forwarded-proto:"))
            ),
        )
        self.assertIn(b"X-B: 2\r\n", removed)


class ResponseRuleTests(SynchronousTestCase):
    """
    C{response_headers} on the way to the client.
    """

    def test_setAndRemove(self):
        """
        C{set} replaces the backend's headers of its name, C{remove} drops
        them; the others, every Set-Cookie among them, pass in order.
        """
        h = _Harness(self, response="set X-Frame-Options DENY\nremove Server\nset X-Via $scheme")
        _, received = h.exchange(
            response=b"HTTP/1.1 200 OK\r\nServer: backend/1.0\r\n"
            b"X-Frame-Options: SAMEORIGIN\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
            b"Content-Length: 2\r\n\r\nok"
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 200 OK\r\n"), received)
        self.assertEqual(_headerValues(received, b"x-frame-options"), [b"DENY"])
        self.assertEqual(_headerValues(received, b"server"), [])
        self.assertEqual(_headerValues(received, b"x-via"), [b"http"])
        self.assertEqual(_headerValues(received, b"set-cookie"), [b"a=1", b"b=2"])
        self.assertTrue(received.endswith(b"\r\n\r\nok"), received)

    def test_slowPathHead(self):
        """
        A head with a folded header (parsed line by line, not forwarded as
        it came) gets the rules too.
        """
        h = _Harness(self, response="remove X-Drop\nset X-Add 1")
        _, received = h.exchange(
            response=b"HTTP/1.1 200 OK\r\nX-Drop: 1\r\nX-Keep: a\r\n b\r\n"
            b"Content-Length: 2\r\n\r\nok"
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 200 OK\r\n"), received)
        self.assertEqual(_headerValues(received, b"x-drop"), [])
        self.assertEqual(_headerValues(received, b"x-keep"), [b"a b"])
        self.assertEqual(_headerValues(received, b"x-add"), [b"1"])

    def test_onErrorPage(self):
        """
        lbproxy's own 502 page for the vhost carries the C{set} headers.
        """
        h = _Harness(self, response="set X-Frame-Options DENY", requestId=True)
        h.client.send(b"GET / HTTP/1.1\r\nHost: app\r\nX-Request-ID: abc-1\r\n\r\n")
        h.proxy.refuseBackend()
        received = h.client.received()
        self.assertTrue(received.startswith(b"HTTP/1.1 502 "), received)
        self.assertEqual(_headerValues(received, b"x-frame-options"), [b"DENY"])
        self.assertEqual(_headerValues(received, b"x-request-id"), [b"abc-1"])

    def test_noRulesNoChange(self):
        """
        A resource without rules forwards the backend's lines as they came.
        """
        reactor = MemoryReactorClock()
        pool = Pool("app", [Backend("127.0.0.1", 9001)], reactor=reactor)
        proxy = ProxyHarness(UpstreamResource(pool), reactor=reactor)
        self.addCleanup(proxy.close)
        client = proxy.connect()
        client.send(b"GET / HTTP/1.1\r\nHost: app\r\nX-Request-ID: abc\r\n\r\n")
        backend = proxy.acceptBackend()
        self.assertEqual(_headerValues(backend.received(), b"x-request-id"), [b"abc"])
        backend.respond(b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(_headerValues(client.received(), b"server"), [b"s"])
        self.assertEqual(_headerValues(client.received(), b"x-request-id"), [])


class _Request:
    """
    Just what L{HeaderRules} asks of a request, with a C{Host} that no
    lbproxy listener would let through.
    """

    def __init__(self, host):
        self.host = host
        from twisted.web.http_headers import Headers

        self.requestHeaders = Headers()

    def getHeader(self, name):
        return self.host if name == b"host" else None

    def getClientAddress(self):
        return IPv4Address("TCP", "192.0.2.1", 1)

    def getHost(self):
        return IPv4Address("TCP", "10.0.0.1", 80)

    def isSecure(self):
        return False


class SubstitutionCheckTests(SynchronousTestCase):
    """
    A value is checked again once its variables are substituted.

    Behind a L{lbproxy.ProxySite} no variable can hold a control
    character: the channel refuses a C{Host} that is not a host name, and
    the others are addresses, ports, the scheme and checked or made ids.
    An embedder's plain L{twisted.web.server.Site} on an older Twisted may
    let more through in C{Host}, so the check itself is tested here.
    """

    def test_unsafeDropped(self):
        """
        A header whose value would hold CR LF (or NUL, or another control
        character) is not sent, with a log line; the other rules apply.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        rules = HeaderRules(
            parseRequestHeaderRules("set X-Host $host\nset X-Fixed 1"),
            parseResponseHeaderRules("set X-Host h=$host"),
        )
        for host in [b"a\r\nX-Injected: 1", b"a\x00b", b"a\nb", b"a\x1bb"]:
            del events[:]
            lines, fields = rules.bind(_Request(host))
            self.assertEqual(lines, b"X-Fixed: 1\r\n")
            self.assertEqual(fields, [])
            self.assertEqual(len(events), 2, events)
            self.assertIn("X-Host", events[0]["name"])
            self.assertEqual(events[0]["log_level"].name, "warn")

    def test_safeKept(self):
        """
        A tab and the visible characters are safe; an empty value is left
        out, as nginx does.
        """
        rules = HeaderRules(parseRequestHeaderRules("set X-Host $host\nset X-Empty ${host}"))
        self.assertEqual(rules.bind(_Request(b"a\tb"))[0], b"X-Host: a\tb\r\nX-Empty: a\tb\r\n")
        self.assertEqual(rules.bind(_Request(b""))[0], b"X-Host: 10.0.0.1\r\nX-Empty: 10.0.0.1\r\n")


class RequestIdTests(SynchronousTestCase):
    """
    C{request_id = yes}.
    """

    def test_validKept(self):
        """
        A client's valid X-Request-ID goes to the backend and back to the
        client, and is the request's C{requestId}.
        """
        for given in [b"abc", b"0f8fad5b-d9cb-469f-a165-70867728950e", b"a.b_c:d-" * 16]:
            h = _Harness(self, requestId=True)
            head = b"GET / HTTP/1.1\r\nHost: app\r\nX-Request-ID: %s\r\n\r\n" % given
            h.client.send(head)
            (request,) = h.client.requests
            self.assertEqual(request.requestId, given.decode("ascii"))
            backend = h.proxy.acceptBackend()
            self.assertEqual(_headerValues(backend.received(), b"x-request-id"), [given])
            backend.respond(
                b"HTTP/1.1 200 OK\r\nX-Request-ID: backend-own\r\nContent-Length: 0\r\n\r\n"
            )
            self.assertEqual(_headerValues(h.client.received(), b"x-request-id"), [given])

    def test_madeWhenMissingOrInvalid(self):
        """
        Without a valid client id (none, empty, too long, a character
        outside the set, two of them), one is made: 128 random bits in hex,
        the same to the backend and to the client, and on the request.
        """
        for extra in [
            b"",
            b"X-Request-ID: \r\n",
            b"X-Request-ID: %s\r\n" % (b"a" * 129),
            b"X-Request-ID: a b\r\n",
            b"X-Request-ID: a/b\r\n",
            b"X-Request-ID: a\r\nX-Request-ID: b\r\n",
        ]:
            h = _Harness(self, requestId=True)
            h.client.send(b"GET / HTTP/1.1\r\nHost: app\r\n%s\r\n" % extra)
            (request,) = h.client.requests
            backend = h.proxy.acceptBackend()
            (sent,) = _headerValues(backend.received(), b"x-request-id")
            self.assertTrue(_HEX32.match(sent), (extra, sent))
            self.assertEqual(request.requestId, sent.decode("ascii"))
            backend.respond(b"HTTP/1.1 204 No Content\r\n\r\n")
            self.assertEqual(_headerValues(h.client.received(), b"x-request-id"), [sent])

    def test_unique(self):
        """
        Made ids differ from request to request.
        """
        h = _Harness(self, requestId=True)
        seen = set()
        backend = None
        for _ in range(200):
            h.client.send(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            if backend is None:
                backend = h.proxy.acceptBackend()
            (sent,) = _headerValues(backend.received(), b"x-request-id")
            backend.clear()
            backend.respond(b"HTTP/1.1 204 No Content\r\n\r\n")
            seen.add(sent)
        self.assertEqual(len(seen), 200)

    def test_variable(self):
        """
        C{$request_id} is the request's id in other headers too; without
        C{request_id} it is a new id for each request, not the client's,
        and no X-Request-ID is added.
        """
        h = _Harness(self, request="set X-Trace t=$request_id", requestId=True)
        _, sent = h.forward(b"GET / HTTP/1.1\r\nHost: app\r\nX-Request-ID: abc\r\n\r\n")
        self.assertEqual(_headerValues(sent, b"x-trace"), [b"t=abc"])
        h = _Harness(self, request="set X-Trace $request_id")
        _, sent = h.forward(b"GET / HTTP/1.1\r\nHost: app\r\nX-Request-ID: abc\r\n\r\n")
        (trace,) = _headerValues(sent, b"x-trace")
        self.assertTrue(_HEX32.match(trace), trace)
        self.assertEqual(_headerValues(sent, b"x-request-id"), [b"abc"])


_ROUTES = """\
[lbproxy]
listen = tcp:0
[upstream:app]
servers = 127.0.0.1:9001
keepalive = 0
[upstream:api]
servers = 127.0.0.1:9002
keepalive = 0
[vhost:app]
default = yes
upstream = app
routes =
    /api/ api strip_prefix
    /bare/ app
    /other/ app
    /ping return:204
request_headers =
    set X-Env prod
    remove X-Debug
response_headers =
    set X-Frame-Options DENY
    remove Server
"""


class RouteConfigTests(SynchronousTestCase):
    """
    A route's own rules: C{[route:VHOST:PREFIX]} sections.
    """

    def test_parsed(self):
        """
        A route section's keys go to its vhost's C{routeOverrides}, by
        prefix; a key left out is L{None} (the vhost's), an empty one no
        rules at all.
        """
        config = parseConfigText(
            _ROUTES
            + "[route:app:/api/]\nrequest_headers =\n    set X-Client $remote_addr\n"
            "[route: app : /bare/ ]\nrequest_headers =\nresponse_headers =\n"
        )
        (vhost,) = config.vhosts
        api, bare = vhost.routeOverrides["/api/"], vhost.routeOverrides["/bare/"]
        self.assertEqual((api.vhost, api.prefix), ("app", "/api/"))
        self.assertEqual(
            api.requestHeaders, (("set", "X-Client", ((True, "remote_addr"),)),)
        )
        self.assertIsNone(api.responseHeaders)
        self.assertEqual((bare.requestHeaders, bare.responseHeaders), ((), ()))
        self.assertEqual(sorted(vhost.routeOverrides), ["/api/", "/bare/"])
        self.assertEqual(vhost.requestHeaders[0][1], "X-Env")

    def test_vhostUpstream(self):
        """
        C{/} names the vhost's C{upstream} when no route has that prefix.
        """
        config = parseConfigText(_ROUTES + "[route:app:/]\nrequest_headers = set X-A 1\n")
        self.assertEqual(
            config.vhosts[0].routeOverrides["/"].requestHeaders,
            (("set", "X-A", ((False, "1"),)),),
        )

    def test_errors(self):
        """
        A route section of a vhost that does not exist, of a prefix that
        is not one of its routes, or with header rules on a route that is
        not an upstream's, is an error naming the section; so is a bad
        rule (a CR in a value among them), an unknown key, and a rule for
        X-Request-ID with C{request_id = yes}.
        """
        errors = _errorsOf(
            _ROUTES.replace("default = yes\n", "default = yes\nrequest_id = yes\n")
            + "[route:nowhere:/api/]\n"
            "[route:ap:/api/]\n"
            "[route:app:/nothing/]\n"
            "[route:app:/bar/]\n"
            "[route:app:/bare/]\nrequest_headers = set X-A a\rb\n"
            "[route:app:/ping]\nresponse_headers = set X-A 1\n"
            "[route:app:/other/]\nrequest_headers = set X-A\ncolour = blue\n"
            "response_headers = remove X-Request-ID\n"
            "[route:app]\n"
        )
        self.assertEqual(
            errors,
            [
                "routes.ini: [route:app]: unknown section; expected [lbproxy], [admin], "
                "[upstream:NAME], [vhost:NAME], [route:VHOST:PREFIX] or [demo:NAME] "
                "with NAME and VHOST made of letters, digits, '_', '.' and '-' and "
                "PREFIX a path prefix starting with /",
                "routes.ini: [route:nowhere:/api/]: undefined vhost; expected "
                "[route:VHOST:PREFIX] with VHOST the name of a [vhost:NAME] section, "
                "but there is no [vhost:nowhere]",
                "routes.ini: [route:ap:/api/]: undefined vhost; expected "
                "[route:VHOST:PREFIX] with VHOST the name of a [vhost:NAME] section, "
                "but there is no [vhost:ap]; did you mean [route:app:/api/]?",
                "routes.ini: [route:app:/nothing/]: undefined route; expected "
                "[route:VHOST:PREFIX] with PREFIX one of the routes of [vhost:app]: "
                "/, /api/, /bare/, /other/, /ping",
                "routes.ini: [route:app:/bar/]: undefined route; expected "
                "[route:VHOST:PREFIX] with PREFIX one of the routes of [vhost:app]: "
                "/, /api/, /bare/, /other/, /ping; did you mean [route:app:/bare/]?",
                "routes.ini: [route:app:/bare/] request_headers = 'set X-A a\\rb': "
                "bad value; expected a value of visible ASCII characters, spaces and "
                "tabs, without CR",
                "routes.ini: [route:app:/ping] response_headers = 'set X-A 1': bad "
                "value; expected no header rules on /ping, a return: route (header "
                "rules apply to routes to an upstream)",
                "routes.ini: [route:app:/other/] colour = 'blue': unknown key; "
                "expected one of the keys of [route:VHOST:PREFIX]: request_headers, "
                "response_headers",
                "routes.ini: [route:app:/other/] request_headers = 'set X-A': bad "
                "value; expected a value after the name in set NAME VALUE ('remove "
                "X-A' removes it)",
                "routes.ini: [route:app:/other/] response_headers = 'remove "
                "X-Request-ID': bad value; expected no rule for X-Request-ID: "
                "request_id = yes sets it",
            ],
        )

    def test_service(self):
        """
        Each route to an upstream gets the vhost's rules less those its
        section replaces, compiled once for the routes that share them; a
        route with no rules left shares the upstream's plain resource.
        """
        config = parseConfigText(
            _ROUTES
            + "[route:app:/api/]\nrequest_headers = set X-Client $remote_addr\n"
            "[route:app:/bare/]\nrequest_headers =\nresponse_headers =\n"
        )
        service = LoadBalancerService(config, MemoryReactorClock())
        vhost = service.resource.vhostFor(b"app")
        api, bare, other, root = (
            vhost.resourceFor(path) for path in (b"/api/x", b"/bare/x", b"/other/x", b"/x")
        )
        self.assertEqual(api.headerRules.requestRemoved, frozenset([b"x-client"]))
        self.assertEqual(api.headerRules.responseRemoved, frozenset([b"x-frame-options", b"server"]))
        self.assertIsNone(bare.headerRules)
        self.assertIs(bare, service.resource.vhostFor(b"app").resourceFor(b"/bare/"))
        self.assertIs(other.headerRules, root.headerRules)
        self.assertEqual(root.headerRules.requestRemoved, frozenset([b"x-env", b"x-debug"]))


def _errorsOf(text: str) -> list[str]:
    try:
        parseConfigText(text, "routes.ini")
    except ConfigError as e:
        return e.errors
    raise AssertionError("no ConfigError")


class _Service:
    """
    A L{LoadBalancerService} built from site.ini text, served by a
    L{ProxyHarness} that keeps an access log.
    """

    def __init__(self, testCase, text):
        self.reactor = MemoryReactorClock()
        self.service = LoadBalancerService(parseConfigText(text), self.reactor)
        self.log = io.StringIO()
        self.proxy = ProxyHarness(
            self.service.resource,
            reactor=self.reactor,
            accessLog=self.log,
            logRequestId=self.service.site.logRequestId,
        )
        testCase.addCleanup(self.proxy.close)

    def exchange(self, path, extra=b"", response=None):
        """
        One request for C{path} on a new connection: what the backend and
        the client received, and the access log line.
        """
        client = self.proxy.connect(IPv4Address("TCP", "192.0.2.7", 4321))
        client.send(b"GET %s HTTP/1.1\r\nHost: app.example\r\n%s\r\n" % (path, extra))
        backend = self.proxy.acceptBackend()
        sent = backend.received()
        backend.respond(
            response
            or b"HTTP/1.1 200 OK\r\nServer: backend\r\nX-Frame-Options: SAMEORIGIN\r\n"
            b"Content-Length: 2\r\n\r\nok"
        )
        received = client.received()
        client.disconnect()
        lines = self.log.getvalue().splitlines()
        return sent, received, lines[-1]


class RouteRuleTests(SynchronousTestCase):
    """
    A route's rules, on the wire.
    """

    def test_routeReplacesVhost(self):
        """
        A route's C{request_headers} replace the vhost's entirely (the
        vhost's C{set} and C{remove} no longer apply there), with
        variables; its vhost's C{response_headers} still apply; the
        vhost's other routes keep the vhost's rules.
        """
        h = _Service(
            self,
            _ROUTES
            + "[route:app:/api/]\nrequest_headers =\n"
            "    set X-Client $remote_addr\n    set X-Host $host\n    remove X-Secret\n",
        )
        head = b"X-Env: dev\r\nX-Debug: 1\r\nX-Secret: s\r\n"
        sent, received, _ = h.exchange(b"/api/users", head)
        self.assertTrue(sent.startswith(b"GET /users HTTP/1.1\r\n"), sent)
        self.assertEqual(_headerValues(sent, b"x-client"), [b"192.0.2.7"])
        self.assertEqual(_headerValues(sent, b"x-host"), [b"app.example"])
        self.assertEqual(_headerValues(sent, b"x-secret"), [])
        self.assertEqual(_headerValues(sent, b"x-env"), [b"dev"])
        self.assertEqual(_headerValues(sent, b"x-debug"), [b"1"])
        self.assertEqual(_headerValues(received, b"x-frame-options"), [b"DENY"])
        self.assertEqual(_headerValues(received, b"server"), [])

        sent, received, _ = h.exchange(b"/other/", head)
        self.assertEqual(_headerValues(sent, b"x-env"), [b"prod"])
        self.assertEqual(_headerValues(sent, b"x-debug"), [])
        self.assertEqual(_headerValues(sent, b"x-secret"), [b"s"])
        self.assertEqual(_headerValues(sent, b"x-client"), [])

    def test_routeResponseRules(self):
        """
        A route's C{response_headers} replace the vhost's, with
        variables; an empty key leaves the route with none.
        """
        h = _Service(
            self,
            _ROUTES
            + "[route:app:/api/]\nresponse_headers =\n    set X-Served $scheme:$server_port\n"
            "[route:app:/bare/]\nrequest_headers =\nresponse_headers =\n",
        )
        _, received, _ = h.exchange(b"/api/")
        self.assertEqual(_headerValues(received, b"x-served"), [b"http:12345"])
        self.assertEqual(_headerValues(received, b"x-frame-options"), [b"SAMEORIGIN"])
        self.assertEqual(_headerValues(received, b"server"), [b"backend"])
        sent, received, _ = h.exchange(b"/bare/", b"X-Debug: 1\r\n")
        self.assertEqual(_headerValues(sent, b"x-debug"), [b"1"])
        self.assertEqual(_headerValues(sent, b"x-env"), [])
        self.assertEqual(_headerValues(received, b"x-frame-options"), [b"SAMEORIGIN"])
        self.assertEqual(_headerValues(received, b"x-served"), [])


class RequestIdLogTests(SynchronousTestCase):
    """
    Request ids in the access log.
    """

    _TEXT = (
        _BASE.replace("default = yes\n", "server_names = app.example\nrequest_id = yes\n")
        .replace("9001\n", "9001\nkeepalive = 0\n")
        + "[vhost:other]\ndefault = yes\nupstream = app\n"
    )

    def test_keptAndMadeLogged(self):
        """
        With a vhost of C{request_id = yes}, each line ends with the id
        quoted: the client's when kept, the one made and sent to the
        backend otherwise; C{"-"} for a request of a vhost without ids.
        The line before it is the combined format, unchanged.
        """
        h = _Service(self, self._TEXT)
        self.assertTrue(h.service.site.logRequestId)
        _, _, line = h.exchange(b"/a", b"X-Request-ID: abc-1\r\n")
        self.assertRegex(
            line,
            r'^192\.0\.2\.7 - - \[[^]]+\] "GET /a HTTP/1\.1" 200 2 "-" "-" "abc-1"$',
        )
        sent, received, line = h.exchange(b"/b")
        (made,) = _headerValues(sent, b"x-request-id")
        self.assertTrue(_HEX32.match(made), made)
        self.assertEqual(_headerValues(received, b"x-request-id"), [made])
        self.assertTrue(line.endswith(' 200 2 "-" "-" "%s"' % made.decode()), line)

        client = h.proxy.connect()
        client.send(b"GET /c HTTP/1.1\r\nHost: elsewhere\r\n\r\n")
        backend = h.proxy.acceptBackend()
        self.assertEqual(_headerValues(backend.received(), b"x-request-id"), [])
        backend.respond(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertTrue(h.log.getvalue().splitlines()[-1].endswith(' 204 0 "-" "-" "-"'))

    def test_offKeepsCombined(self):
        """
        Without a vhost of C{request_id = yes}, the lines are nginx's
        combined format, with no field after the agent; a reload turns
        the field on and off.
        """
        h = _Service(self, _BASE.replace("9001\n", "9001\nkeepalive = 0\n"))
        self.assertFalse(h.service.site.logRequestId)
        _, _, line = h.exchange(b"/a", b"X-Request-ID: abc-1\r\n")
        self.assertRegex(line, r'^192\.0\.2\.7 - - \[[^]]+\] "GET /a HTTP/1\.1" 200 2 "-" "-"$')
        h.service.reload(parseConfigText(self._TEXT))
        self.assertTrue(h.service.site.logRequestId)
        h.service.reload(parseConfigText(_BASE))
        self.assertFalse(h.service.site.logRequestId)
