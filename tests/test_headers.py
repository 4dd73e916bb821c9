"""
Tests for L{lbproxy._headers}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from lbproxy._headers import connectionTokens, forwardedHeaders


def sentHeaders(incoming, clientAddress, secure):
    """
    The header lines L{forwardedHeaders} writes, read back into
    L{Headers} (in order, repeated names kept).
    """
    block, _ = forwardedHeaders(incoming, clientAddress, secure)
    lines = block.split(b"\r\n")
    assert lines[-1] == b"", block
    out = Headers()
    for line in lines[:-1]:
        name, sep, value = line.partition(b": ")
        assert sep, line
        out.addRawHeader(name, value)
    return out


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
        out = sentHeaders(self.incoming(), "192.0.2.7", False)
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
        out = sentHeaders(self.incoming(), "192.0.2.7", False)
        self.assertEqual(out.getRawHeaders(b"accept"), [b"text/html", b"application/json"])

    def test_forwardedHeaders(self):
        """
        X-Forwarded-For gets the client appended; X-Real-IP,
        X-Forwarded-Proto and X-Forwarded-Host are set; the client's Host is
        not copied (the caller sends the Host the backend is to see).
        """
        out = sentHeaders(self.incoming(), "192.0.2.7", True)
        self.assertEqual(
            out.getRawHeaders(b"x-forwarded-for"),
            [b"10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7"],
        )
        self.assertEqual(out.getRawHeaders(b"x-real-ip"), [b"192.0.2.7"])
        self.assertEqual(out.getRawHeaders(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(out.getRawHeaders(b"x-forwarded-host"), [b"app.example.com:8080"])
        self.assertIsNone(out.getRawHeaders(b"host"))

    def test_clientHostReturned(self):
        """
        L{forwardedHeaders} also returns the client's Host, for the caller
        to send on; L{None} when there is none.
        """
        _, host = forwardedHeaders(self.incoming(), "192.0.2.7", False)
        self.assertEqual(host, b"app.example.com:8080")
        _, host = forwardedHeaders(Headers(), "192.0.2.7", False)
        self.assertIsNone(host)

    def test_spoofedRealIPReplaced(self):
        incoming = Headers({b"X-Real-IP": [b"1.1.1.1"], b"X-Forwarded-Proto": [b"https"]})
        out = sentHeaders(incoming, "192.0.2.7", False)
        self.assertEqual(out.getRawHeaders(b"x-real-ip"), [b"192.0.2.7"])
        self.assertEqual(out.getRawHeaders(b"x-forwarded-proto"), [b"http"])

    def test_noClientAddress(self):
        out = sentHeaders(Headers(), None, False)
        self.assertIsNone(out.getRawHeaders(b"x-forwarded-for"))
        self.assertIsNone(out.getRawHeaders(b"x-real-ip"))


class ConnectionTokensTests(SynchronousTestCase):
    def test_connectionTokens(self):
        headers = Headers({b"Connection": [b" Foo ,bar", b"baz"]})
        tokens = connectionTokens(headers)
        self.assertTrue({b"foo", b"bar", b"baz", b"upgrade"} <= tokens)
