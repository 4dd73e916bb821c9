"""
Tests for the access log of L{lbproxy._site.ProxySite}: nginx's combined
format, byte for byte (tests/integration/test_first_hour.py compares it
with what nginx itself writes).
"""

from __future__ import annotations

import base64
import io

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel

from lbproxy._site import ProxyRequest, ProxySite, logEscape

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
        With no access log, nothing is formatted.
        """
        site = ProxySite(Resource(), accessLog=None, reactor=Clock())
        site.log(object())


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
