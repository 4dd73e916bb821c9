"""
Tests for the access log of L{lbproxy._site.ProxySite}: nginx's combined
format, byte for byte (tests/integration/test_first_hour.py compares it
with what nginx itself writes).
"""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel

from lbproxy._site import ProxyRequest, ProxySite, TimedProxyRequest, logEscape

#: 2026-12-02 02:10:44 UTC.
_NOW = 1796177444


def _request(peer=None, headers=(), method=b"GET", uri=b"/a?b=1", code=200, sent=6):
    channel = DummyChannel()
    if peer is not None:
        channel.transport = DummyChannel.TCP(peer=peer)
    request = ProxyRequest(channel, False)
    request.method = method
    request.uri = uri
    request.clientproto = b"HTTP/1.1"
    request.code = code
    request.sentLength = sent
    for name, value in headers:
        request.requestHeaders.addRawHeader(name, value)
    return request


class CombinedFormatTests(SynchronousTestCase):
    def logged(self, request):
        clock = Clock()
        clock.advance(_NOW)
        stream = io.StringIO()
        site = ProxySite(Resource(), accessLog=stream, reactor=clock)
        site.log(request)
        return stream.getvalue()

    def test_line(self):
        """
        nginx's combined format: the address unquoted, C{-} for no user,
        the time bracketed, the request line, the status, the body bytes,
        the referrer and the agent quoted.
        """
        request = _request(
            IPv4Address("TCP", "192.0.2.7", 51000),
            [(b"Referer", b"http://example.com/from"), (b"User-Agent", b"curl/8.5.0")],
        )
        self.assertEqual(
            self.logged(request),
            '192.0.2.7 - - [02/Dec/2026:02:10:44 +0000] "GET /a?b=1 HTTP/1.1" '
            '200 6 "http://example.com/from" "curl/8.5.0"\n',
        )

    def test_nothingSent(self):
        """
        No referrer and no agent are C{"-"}; no body is C{0} bytes (not
        C{-}, as Twisted's own format writes).
        """
        request = _request(
            IPv6Address("TCP", "2001:db8::1", 51000), method=b"HEAD", code=304, sent=0
        )
        self.assertEqual(
            self.logged(request),
            '2001:db8::1 - - [02/Dec/2026:02:10:44 +0000] "HEAD /a?b=1 HTTP/1.1" '
            '304 0 "-" "-"\n',
        )

    def test_user(self):
        """
        The user of a Basic C{Authorization} header is logged, as nginx's
        C{$remote_user}.
        """
        credentials = base64.b64encode(b"alice:secret")
        request = _request(
            IPv4Address("TCP", "192.0.2.7", 51000),
            [(b"Authorization", b"Basic " + credentials)],
        )
        self.assertEqual(
            self.logged(request),
            '192.0.2.7 - alice [02/Dec/2026:02:10:44 +0000] "GET /a?b=1 HTTP/1.1" '
            '200 6 "-" "-"\n',
        )

    def test_escaped(self):
        """
        Quotes, backslashes, control characters and non-ASCII bytes are
        written C{\\xHH}, as nginx does.
        """
        request = _request(
            IPv4Address("TCP", "192.0.2.7", 51000),
            [(b"User-Agent", 'a "b" \\c\t\u00e9'.encode("utf-8"))],
            uri=b'/q"\\',
        )
        self.assertEqual(
            self.logged(request),
            '192.0.2.7 - - [02/Dec/2026:02:10:44 +0000] "GET /q\\x22\\x5C HTTP/1.1" '
            '200 6 "-" "a \\x22b\\x22 \\x5Cc\\x09\\xC3\\xA9"\n',
        )

    def test_notAnIPAddress(self):
        """
        A client on a UNIX socket is logged as C{-}.
        """
        request = _request(UNIXAddress(None))
        self.assertTrue(self.logged(request).startswith("- - - ["))

    def test_logEscape(self):
        self.assertEqual(logEscape(b"plain/ASCII ~!"), "plain/ASCII ~!")
        self.assertEqual(
            logEscape(bytes([0, 0x1F, 0x20, 0x22, 0x5C, 0x7E, 0x7F, 0x80, 0xFF])),
            "\\x00\\x1F \\x22\\x5C~\\x7F\\x80\\xFF",
        )

    def test_off(self):
        """
        With no access log, nothing is formatted (a request that has
        nothing to format a line from is only counted).
        """
        site = ProxySite(Resource(), accessLog=None, reactor=Clock())
        site.log(SimpleNamespace(code=200, received=None, requestCounts=None))
        self.assertEqual(site.unroutedCounts.classes[2], 1)


class ReloadTests(SynchronousTestCase):
    """
    An access log that cannot be opened on a reload (SIGHUP) refuses the
    reload: nothing changes, and one error says why.
    """

    def test_unwritableRefused(self):
        from twisted.internet.testing import MemoryReactorClock
        from twisted.logger import capturedLogs
        from twisted.python.filepath import FilePath

        from lbproxy import LoadBalancerService, parseConfig

        site = (
            "[lbproxy]\nlisten = tcp:8080:interface=127.0.0.1\naccess_log = {log}\n"
            "[upstream:app]\nservers = 127.0.0.1:{port}\n"
            "[vhost:app]\ndefault = yes\nupstream = app\n"
        )
        log = FilePath(self.mktemp())
        path = FilePath(self.mktemp())
        path.setContent(site.format(log=log.path, port=9001).encode())
        service = LoadBalancerService(parseConfig(path.path), MemoryReactorClock())
        service.startService()
        self.addCleanup(service.stopService)
        running, accessLog = service.config, service.site.accessLog
        missing = FilePath(self.mktemp()).child("access.log").path
        path.setContent(site.format(log=missing, port=9002).encode())
        with capturedLogs() as events:
            self.assertFalse(service.reloadFromFile(path.path))
        self.assertIs(service.config, running)
        self.assertIs(service.site.accessLog, accessLog)
        self.assertFalse(accessLog.closed)
        self.assertEqual([b.port for b in service.pools["app"].backends], [9001])
        (event,) = [e for e in events if e.get("log_level").name == "error"]
        self.assertIn("cannot open the access log", event["log_format"])
        self.assertEqual(event["log"], missing)
        self.assertEqual(event["reason"], "No such file or directory")

        path.setContent(site.format(log=log.path, port=9002).encode())
        self.assertTrue(service.reloadFromFile(path.path))
        self.assertTrue(accessLog.closed)
        self.assertEqual([b.port for b in service.pools["app"].backends], [9002])


def _timedRequest(site, tried=(), received=None):
    request = _request(
        IPv4Address("TCP", "192.0.2.7", 51000), [(b"User-Agent", b"curl/8.5.0")]
    )
    request.upstreamTried = tried
    request.received = received
    return request


class UpstreamFormatTests(SynchronousTestCase):
    """
    C{access_log_format = upstream}: the combined line, then nginx's
    C{$upstream_addr $upstream_status $upstream_response_time
    $request_time}.
    """

    def site(self, logFormat="upstream", **kwargs):
        self.clock = Clock()
        self.clock.advance(_NOW + 0.5)
        self.stream = io.StringIO()
        return ProxySite(
            Resource(),
            accessLog=self.stream,
            reactor=self.clock,
            accessLogFormat=logFormat,
            **kwargs,
        )

    def test_retried(self):
        """
        Every backend tried is named, in order, with its status and time,
        separated by C{", "} as nginx does.
        """
        site = self.site()
        tried = (("127.0.0.1:9001", 502, 0.001), ("127.0.0.1:9002", 200, 0.012))
        site.log(_timedRequest(site, tried, _NOW + 0.48))
        self.assertEqual(
            self.stream.getvalue(),
            '192.0.2.7 - - [02/Dec/2026:02:10:44 +0000] "GET /a?b=1 HTTP/1.1" '
            '200 6 "-" "curl/8.5.0" 127.0.0.1:9001, 127.0.0.1:9002 502, 200 '
            "0.001, 0.012 0.020\n",
        )

    def test_noUpstream(self):
        """
        A request that went to no backend (a file, a redirect, no backend
        available) has C{-} for the upstream fields; a request made
        without the time (not by the site) has C{-} as its time.  A status
        not received is C{-}.
        """
        site = self.site()
        site.log(_timedRequest(site, (), _NOW))
        site.log(_timedRequest(site, (("127.0.0.1:9001", None, 2.0),)))
        first, second = self.stream.getvalue().splitlines()
        self.assertTrue(first.endswith('"curl/8.5.0" - - - 0.500'), first)
        self.assertTrue(second.endswith('"curl/8.5.0" 127.0.0.1:9001 - 2.000 -'), second)

    def test_tunnelAndRequestId(self):
        """
        The tunnel fields and the request id follow the upstream fields.
        """
        site = self.site(logRequestId=True)
        request = _timedRequest(site, (("127.0.0.1:9001", 101, 3.0),), _NOW - 2.5)
        request.requestId = "abc"
        site.logTunnel(request, 10, 20, 2.9)
        self.assertTrue(
            self.stream.getvalue().endswith(
                '"curl/8.5.0" 127.0.0.1:9001 101 3.000 3.000 '
                'tunnel=10/20 duration=2.900 "abc"\n'
            ),
            self.stream.getvalue(),
        )

    def test_json(self):
        """
        C{json}: one object per line, with nginx's variable names.
        """
        site = self.site("json", logRequestId=True)
        tried = (("127.0.0.1:9001", 502, 0.001), ("127.0.0.1:9002", 200, 0.012))
        request = _timedRequest(site, tried, _NOW + 0.48)
        request.requestHeaders.addRawHeader(b"Referer", b'http://x/"\xff')
        site.log(request)
        self.assertEqual(
            json.loads(self.stream.getvalue()),
            {
                "time": "2026-12-02T02:10:44+00:00",
                "remote_addr": "192.0.2.7",
                "remote_user": None,
                "request": "GET /a?b=1 HTTP/1.1",
                "status": 200,
                "body_bytes_sent": 6,
                "http_referer": 'http://x/"\\xff',
                "http_user_agent": "curl/8.5.0",
                "upstream_addr": ["127.0.0.1:9001", "127.0.0.1:9002"],
                "upstream_status": [502, 200],
                "upstream_response_time": [0.001, 0.012],
                "request_time": 0.02,
                "request_id": None,
            },
        )
        self.assertEqual(self.stream.getvalue().count("\n"), 1)

    def test_timedRequests(self):
        """
        Whatever the format, the site's requests note when they were made,
        for C{$request_time} and the request duration histograms.
        """
        for logFormat in ("combined", "upstream", "json"):
            site = self.site(logFormat)
            self.assertIs(site.requestFactory, TimedProxyRequest)
            channel = DummyChannel()
            channel.site = site
            self.assertEqual(site.requestFactory(channel, False).received, _NOW + 0.5)


class RetriedRequestLogTests(SynchronousTestCase):
    def test_bothBackendsNamed(self):
        """
        The access log line of a GET refused by one backend and answered by
        the next names both, with 502 for the first.
        """
        from twisted.internet.testing import MemoryReactorClock

        from lbproxy import Backend, Pool, UpstreamResource
        from lbproxy.testing import ProxyHarness

        reactor = MemoryReactorClock()
        reactor.advance(_NOW)
        backends = [Backend("127.0.0.1", 9001), Backend("127.0.0.1", 9002)]
        pool = Pool("app", backends, reactor=reactor)
        stream = io.StringIO()
        proxy = ProxyHarness(
            UpstreamResource(pool, True),
            reactor=reactor,
            accessLog=stream,
            accessLogFormat="upstream",
        )
        self.addCleanup(proxy.close)
        connection = proxy.connect(IPv4Address("TCP", "192.0.2.1", 4321))
        connection.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        reactor.advance(0.25)
        first = proxy.refuseBackend().port
        reactor.advance(0.5)
        backend = proxy.acceptBackend()
        reactor.advance(0.125)
        backend.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(connection.received().endswith(b"\r\n\r\nok"))
        second = backend.port
        self.assertEqual(
            stream.getvalue().split('"-" "-" ')[1],
            "127.0.0.1:%d, 127.0.0.1:%d 502, 200 0.250, 0.625 0.875\n" % (first, second),
        )


class ReopenTests(SynchronousTestCase):
    """
    SIGUSR1 reopens the access log (logrotate's C{postrotate}).
    """

    def setUp(self):
        import signal

        from twisted.internet.testing import MemoryReactorClock
        from twisted.python.filepath import FilePath

        from lbproxy import LoadBalancerService, parseConfigText

        self.log = FilePath(self.mktemp())
        text = (
            "[lbproxy]\nlisten = tcp:8080:interface=127.0.0.1\naccess_log = %s\n"
            "[upstream:app]\nservers = 127.0.0.1:9001\n"
            "[vhost:app]\ndefault = yes\nupstream = app\n"
        ) % (self.log.path,)
        original = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, original)
        self.rotations = []
        self.previous = lambda *args: self.rotations.append(args)
        signal.signal(signal.SIGUSR1, self.previous)
        self.reactor = MemoryReactorClock()
        self.reactor.callFromThread = lambda f, *a: f(*a)
        self.service = LoadBalancerService(parseConfigText(text, "site.ini"), self.reactor)
        self.service.reloadOnHangup("site.ini")
        self.service.startService()
        self.addCleanup(lambda: self.service.running and self.service.stopService())

    def test_movedFileReopened(self):
        """
        After the file is moved away, lines go on into it until SIGUSR1,
        which writes the lines kept (lines are written in batches) and
        closes it; then a new file of the same name gets the next lines.  The previous handler (twistd's, which rotates its own log
        file) is called too; stopping puts it back.
        """
        import signal

        site = self.service.site
        site.log(_request())
        moved = self.log.sibling("access.log.1")
        self.log.moveTo(moved)
        site.log(_request())
        old = site.accessLog
        handler = signal.getsignal(signal.SIGUSR1)
        self.assertEqual(handler, self.service._onUserSignal)
        handler(signal.SIGUSR1, None)
        self.assertTrue(old.closed)
        self.assertEqual(self.rotations, [(signal.SIGUSR1, None)])
        self.assertEqual(moved.getContent().count(b"\n"), 2)
        site.log(_request())
        self.assertEqual(self.log.getContent().count(b"\n"), 0)
        self.reactor.advance(1)
        self.assertEqual(self.log.getContent().count(b"\n"), 1)
        self.service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGUSR1), self.previous)

    def test_cannotReopen(self):
        """
        When the file cannot be opened again, the log goes on in the one it
        was in, and one error says why.
        """
        from twisted.logger import capturedLogs

        site = self.service.site
        old = site.accessLog
        self.log.remove()
        self.log.makedirs()  # a directory where the file was
        with capturedLogs() as events:
            self.assertFalse(self.service.reopenAccessLog())
        self.assertIs(site.accessLog, old)
        self.assertFalse(old.closed)
        self.assertIn("cannot reopen the access log", events[0]["log_format"])
