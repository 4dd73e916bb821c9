"""
Tests for L{lbproxy._headers}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from lbproxy._headers import connectionTokens, endToEnd, requestHeaders


class RequestHeadersTests(SynchronousTestCase):
    def incoming(self):
        return Headers(
            {
                b"Host": [b"app.example.com:8080"],
                b"Connection": [b"keep-alive, X-Secret"],
                b"Keep-Alive": [b"timeout=5"],
                b"Proxy-Connection": [b"keep-alive"],
                b"TE": [b"trailers"],
                b"Trailer": [b"X-Checksum"],
                b"Transfer-Encoding": [b"chunked"],
                b"Upgrade": [b"websocket"],
                b"X-Secret": [b"hop"],
                b"Content-Length": [b"12"],
                b"Accept": [b"text/html", b"application/json"],
                b"X-Forwarded-For": [b"10.0.0.1, 10.0.0.2", b"10.0.0.3"],
            }
        )

    def test_hopByHopRemoved(self):
        """
        Hop-by-hop headers, and every header named in Connection, are not
        forwarded; the client's Content-Length is replaced by re-framing.
        """
        out = requestHeaders(self.incoming(), "192.0.2.7", False, b"backend:80")
        names = {name.lower() for name, _ in out.getAllRawHeaders()}
        for name in (
            b"connection",
            b"keep-alive",
            b"proxy-connection",
            b"te",
            b"trailer",
            b"transfer-encoding",
            b"upgrade",
            b"x-secret",
            b"content-length",
        ):
            self.assertNotIn(name, names)

    def test_multiValuedKept(self):
        out = requestHeaders(self.incoming(), "192.0.2.7", False, b"h")
        self.assertEqual(out.getRawHeaders(b"accept"), [b"text/html", b"application/json"])

    def test_forwardedHeaders(self):
        """
        X-Forwarded-For gets the client appended; X-Real-IP,
        X-Forwarded-Proto and X-Forwarded-Host are set; Host is replaced.
        """
        out = requestHeaders(self.incoming(), "192.0.2.7", True, b"backend:9000")
        self.assertEqual(
            out.getRawHeaders(b"x-forwarded-for"),
            [b"10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7"],
        )
        self.assertEqual(out.getRawHeaders(b"x-real-ip"), [b"192.0.2.7"])
        self.assertEqual(out.getRawHeaders(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(out.getRawHeaders(b"x-forwarded-host"), [b"app.example.com:8080"])
        self.assertEqual(out.getRawHeaders(b"host"), [b"backend:9000"])

    def test_spoofedRealIPReplaced(self):
        incoming = Headers({b"X-Real-IP": [b"1.1.1.1"], b"X-Forwarded-Proto": [b"https"]})
        out = requestHeaders(incoming, "192.0.2.7", False, b"h")
        self.assertEqual(out.getRawHeaders(b"x-real-ip"), [b"192.0.2.7"])
        self.assertEqual(out.getRawHeaders(b"x-forwarded-proto"), [b"http"])

    def test_noClientAddress(self):
        out = requestHeaders(Headers(), None, False, b"h")
        self.assertIsNone(out.getRawHeaders(b"x-forwarded-for"))
        self.assertIsNone(out.getRawHeaders(b"x-real-ip"))


class ResponseHeadersTests(SynchronousTestCase):
    def test_endToEnd(self):
        """
        Response headers keep every value in order, Set-Cookie above all,
        minus the hop-by-hop ones.
        """
        headers = Headers(
            {
                b"Set-Cookie": [b"a=1", b"b=2", b"c=3"],
                b"Connection": [b"close, X-Internal"],
                b"X-Internal": [b"1"],
                b"Content-Type": [b"text/plain"],
            }
        )
        result = dict(endToEnd(headers))
        self.assertEqual(result[b"Set-Cookie"], [b"a=1", b"b=2", b"c=3"])
        self.assertEqual(set(result), {b"Set-Cookie", b"Content-Type"})

    def test_connectionTokens(self):
        headers = Headers({b"Connection": [b" Foo ,bar", b"baz"]})
        tokens = connectionTokens(headers)
        self.assertTrue({b"foo", b"bar", b"baz", b"upgrade"} <= tokens)


class RequestHeaderBlockTests(SynchronousTestCase):
    def test_sameRulesAsRequestHeaders(self):
        """
        L{requestHeaderBlock} writes, as header lines, what L{requestHeaders}
        builds, less C{Host}: hop-by-hop headers and those named in
        Connection dropped, every value of a repeated header kept in order,
        the forwarding headers set.
        """
        from lbproxy._headers import requestHeaderBlock

        incoming = Headers(
            {
                b"Host": [b"app.example"],
                b"Connection": [b"keep-alive, X-Private"],
                b"X-Private": [b"secret"],
                b"Keep-Alive": [b"5"],
                b"Accept": [b"a", b"b"],
                b"X-Forwarded-For": [b"198.51.100.7"],
                b"Content-Length": [b"3"],
                b"X-Real-Ip": [b"spoofed"],
            }
        )
        block = requestHeaderBlock(incoming, "192.0.2.1", True)
        expected = requestHeaders(incoming, "192.0.2.1", True, b"x")
        expected.removeHeader(b"host")
        lines = sorted(block.split(b"\r\n")[:-1])
        self.assertEqual(
            lines,
            sorted(
                b"%s: %s" % (name, value)
                for name, values in expected.getAllRawHeaders()
                for value in values
            ),
        )
        self.assertIn(b"X-Forwarded-For: 198.51.100.7, 192.0.2.1\r\n", block)
        self.assertIn(b"Accept: a\r\nAccept: b\r\n", block)

    def test_noAddress(self):
        """
        Without an IP address there is no X-Real-IP and no address added to
        X-Forwarded-For; plain HTTP says so in X-Forwarded-Proto.
        """
        from lbproxy._headers import requestHeaderBlock

        block = requestHeaderBlock(Headers(), None, False)
        self.assertEqual(block, b"X-Forwarded-Proto: http\r\n")
