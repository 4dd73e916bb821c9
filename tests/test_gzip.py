"""
Tests for L{lbproxy._gzip}: which responses a vhost with C{gzip = yes}
compresses, and how, driven byte by byte on
L{lbproxy.testing.ProxyHarness}; the C{gzip*} keys of site.ini.
"""

from __future__ import annotations

import gzip
import weakref
import zlib

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from lbproxy import Backend, Pool, UpstreamResource
from lbproxy._config import ConfigError, parseConfigText
from lbproxy._gzip import (
    DEFAULT_TYPES,
    GzipEncoder,
    GzipPolicy,
    GzipResponse,
    acceptsGzip,
    weakETag,
)
from lbproxy._headers import HeaderRules
from lbproxy._interfaces import IProxyRequest
from lbproxy._proxy import _GzipExchange
from lbproxy._values import parseResponseHeaderRules
from lbproxy.service import LoadBalancerService
from lbproxy.testing import ProxyHarness
from tests.refcounting import liveOne, withoutCollector

#: A text body well above the default gzip_min_length, and compressible.
_TEXT = b"".join(b"line %d of a text body that compresses well\n" % i for i in range(200))


def _parse(response):
    """
    Split a response into its status line, its headers (lower-cased names
    to lists of values) and its body, de-chunked when it is chunked.
    """
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if headers.get(b"transfer-encoding") == [b"chunked"]:
        body = _dechunk(body)
    return status, headers, body


def _dechunk(data):
    """
    The payload of a chunked body, up to its last chunk or as far as it
    goes.
    """
    out = []
    while data:
        size, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        length = int(size, 16)
        if length == 0:
            break
        out.append(rest[:length])
        data = rest[length + 2 :]
    return b"".join(out)


class _Proxy:
    """
    One proxy in front of one backend, whose vhost has C{gzip = yes} (with
    C{policy}), and one client connection to it.
    """

    def __init__(self, testCase, policy=None, headerRules=None, gzip=True):
        self.reactor = MemoryReactorClock()
        self.pool = Pool("app", [Backend("127.0.0.1", 9000)], reactor=self.reactor)
        if gzip and policy is None:
            policy = GzipPolicy()
        self.resource = UpstreamResource(self.pool, gzip=policy, headerRules=headerRules)
        self.proxy = ProxyHarness(self.resource, reactor=self.reactor)
        testCase.addCleanup(self.proxy.close)
        self.client = self.proxy.connect(IPv4Address("TCP", "192.0.2.1", 4321))
        self.backend = None

    def request(self, head=b"GET / HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n"):
        """
        Send C{head} from the client; the backend connection is accepted
        the first time.
        """
        self.client.send(head)
        if self.backend is None:
            self.backend = self.proxy.acceptBackend()
        return self.backend

    def respond(self, data):
        self.backend.protocol.dataReceived(data)

    def response(self):
        return self.client.received()


def _ok(body=_TEXT, *headers, length=True):
    """
    A backend's 200 response with C{body}, a text type and C{headers}.
    """
    lines = [b"HTTP/1.1 200 OK", b"Content-Type: text/html; charset=utf-8"]
    lines.extend(headers)
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class AcceptEncodingTests(SynchronousTestCase):
    """
    L{acceptsGzip} reads C{Accept-Encoding} as RFC 9110 12.5.3 says.
    """

    def test_accepted(self):
        """
        C{gzip} or C{x-gzip} listed, in any case, with no weight or one
        above 0, or C{*} with gzip not named, accept gzip.
        """
        for values in (
            [b"gzip"],
            [b"GZip"],
            [b"deflate, gzip, br"],
            [b"br;q=1.0, gzip;q=0.8, *;q=0.1"],
            [b"x-gzip"],
            [b"*"],
            [b"identity;q=0.5, *;q=0.001"],
            [b"br", b"gzip ; q=1"],
            [b"gzip;q=1.000"],
            [b"gzip;Q=0.5"],
        ):
            self.assertTrue(acceptsGzip(values), values)

    def test_refused(self):
        """
        No header, an empty one, other codings only, C{gzip;q=0} (whatever
        C{*} says), C{*;q=0}, and a weight that is not a qvalue, refuse it.
        """
        for values in (
            None,
            [],
            [b""],
            [b"br, deflate"],
            [b"identity"],
            [b"gzip;q=0"],
            [b"gzip;q=0.000, *"],
            [b"*;q=0"],
            [b"*, gzip;q=0"],
            [b"gzip;q=2"],
            [b"gzip;q=0.0001"],
            [b"gzip;q=high"],
            [b"gzipx, xgzip"],
        ):
            self.assertFalse(acceptsGzip(values), values)


class PolicyTests(SynchronousTestCase):
    """
    L{GzipPolicy} says which responses qualify.
    """

    def test_types(self):
        """
        Exact types, C{type/*} families and C{*} match the media type of a
        C{Content-Type}, whatever its case and parameters.
        """
        policy = GzipPolicy(["text/html", "application/*"])
        self.assertTrue(policy.compressesType(b"text/html"))
        self.assertTrue(policy.compressesType(b"Text/HTML; charset=utf-8"))
        self.assertTrue(policy.compressesType(b"application/json"))
        self.assertFalse(policy.compressesType(b"text/plain"))
        self.assertFalse(policy.compressesType(b"image/png"))
        self.assertFalse(policy.compressesType(None))
        self.assertTrue(GzipPolicy(["*"]).compressesType(None))
        self.assertTrue(GzipPolicy(["*"]).compressesType(b"image/png"))

    def test_defaultTypes(self):
        """
        By default the text-like types are compressed, and images, video
        and archives are not.
        """
        policy = GzipPolicy()
        self.assertEqual(policy.types, DEFAULT_TYPES)
        for media in (b"text/html", b"text/css", b"text/plain", b"application/json",
                      b"application/javascript", b"application/xml", b"image/svg+xml"):
            self.assertTrue(policy.compressesType(media), media)
        for media in (b"image/png", b"video/mp4", b"application/zip",
                      b"application/octet-stream", b"application/gzip"):
            self.assertFalse(policy.compressesType(media), media)

    def test_qualifies(self):
        """
        A response with a body, a listed type, no coding, no range, no
        C{no-transform} and a length unknown or at least C{minLength}
        qualifies; each of those missing, it does not.
        """
        policy = GzipPolicy(minLength=100)
        html = [(b"Content-Type", b"text/html")]
        self.assertTrue(policy.qualifies(200, html, None))
        self.assertTrue(policy.qualifies(200, html, 100))
        self.assertTrue(policy.qualifies(404, html, 100))
        self.assertFalse(policy.qualifies(200, html, 99))
        for code in (101, 204, 206, 304):
            self.assertFalse(policy.qualifies(code, html, None), code)
        for extra in (
            (b"Content-Encoding", b"br"),
            (b"content-encoding", b"identity"),
            (b"Content-Range", b"bytes 0-9/100"),
            (b"Cache-Control", b"public, No-Transform"),
        ):
            self.assertFalse(policy.qualifies(200, html + [extra], None), extra)
        self.assertTrue(
            policy.qualifies(200, html + [(b"Cache-Control", b"no-cache, max-age=0")], None)
        )
        self.assertFalse(policy.qualifies(200, [(b"Content-Type", b"image/png")], None))

    def test_level(self):
        """
        A level outside 1 to 9 is refused.
        """
        self.assertRaises(ValueError, GzipPolicy, level=0)
        self.assertRaises(ValueError, GzipPolicy, level=10)

    def test_weakETag(self):
        """
        A strong entity tag is made weak, a weak one is kept, an invalid
        one dropped.
        """
        self.assertEqual(weakETag(b'"abc"'), b'W/"abc"')
        self.assertEqual(weakETag(b'W/"abc"'), b'W/"abc"')
        self.assertIsNone(weakETag(b"abc"))


class EncoderTests(SynchronousTestCase):
    """
    L{GzipEncoder} makes one gzip stream, decodable at each flush.
    """

    def test_stream(self):
        """
        The pieces, each flushed, decode one by one to what was given so
        far; the finished stream is a gzip file.
        """
        for length in (None, len(_TEXT), 10):
            encoder = GzipEncoder(6, length)
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = []
            for i in range(0, len(_TEXT), 1000):
                piece = _TEXT[i : i + 1000]
                data = encoder.compress(piece) + encoder.flush()
                self.assertEqual(decoder.decompress(data), piece)
                out.append(data)
            self.assertEqual(encoder.flush(), b"")
            out.append(encoder.finish())
            self.assertEqual(gzip.decompress(b"".join(out)), _TEXT)

    def test_empty(self):
        """
        A stream given nothing is a valid gzip file of nothing.
        """
        encoder = GzipEncoder()
        self.assertEqual(encoder.flush(), b"")
        self.assertEqual(gzip.decompress(encoder.finish()), b"")


class ResponseTests(SynchronousTestCase):
    """
    A vhost with C{gzip = yes} compresses the responses that qualify, for
    the clients that accept gzip, and passes on every other as it was.
    """

    def test_interface(self):
        """
        L{GzipResponse} provides L{IProxyRequest}.
        """
        p = _Proxy(self)
        p.request()
        verifyObject(IProxyRequest, GzipResponse(p.client.requests[0], GzipPolicy(), None))

    def test_compressed(self):
        """
        A text response above C{gzip_min_length} with a Content-Length
        goes to a client that accepts gzip compressed and chunked, with
        C{Content-Encoding: gzip} and C{Vary: Accept-Encoding} and without
        C{Content-Length}; the client connection stays usable.
        """
        p = _Proxy(self)
        p.request()
        p.respond(_ok(_TEXT, b"X-Other: 1"))
        status, headers, body = _parse(p.response())
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(headers[b"content-encoding"], [b"gzip"])
        self.assertEqual(headers[b"vary"], [b"Accept-Encoding"])
        self.assertEqual(headers[b"transfer-encoding"], [b"chunked"])
        self.assertEqual(headers[b"x-other"], [b"1"])
        self.assertEqual(headers[b"content-type"], [b"text/html; charset=utf-8"])
        self.assertNotIn(b"content-length", headers)
        self.assertLess(len(body), len(_TEXT) // 4)
        self.assertEqual(gzip.decompress(body), _TEXT)
        self.assertTrue(p.response().endswith(b"\r\n0\r\n\r\n"))
        self.assertFalse(p.client.closing)
        # The next exchange on the same connections.
        p.client.clear()
        p.request(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        p.respond(_ok())
        status, headers, body = _parse(p.response())
        self.assertEqual(body, _TEXT)
        self.assertEqual(headers[b"vary"], [b"Accept-Encoding"])

    def test_noCycles(self):
        """
        A compressed response, its request and its exchange are freed as
        soon as the response is done, without the cyclic garbage
        collector.
        """
        p = _Proxy(self)
        p.request()
        p.respond(_ok())
        withoutCollector(self)
        p.client.clear()
        p.request()
        request = weakref.ref(p.client.requests[0])
        exchange = weakref.ref(liveOne(_GzipExchange))
        gzipped = weakref.ref(exchange()._proxied)
        self.assertIsInstance(gzipped(), GzipResponse)
        p.respond(_ok())
        self.assertEqual(gzip.decompress(_parse(p.response())[2]), _TEXT)
        self.assertIsNone(request())
        self.assertIsNone(exchange())
        self.assertIsNone(gzipped())

    def test_off(self):
        """
        Without a gzip policy (C{gzip = no}, the default), nothing is
        compressed and no C{Vary} is added.
        """
        p = _Proxy(self, gzip=False)
        p.request()
        p.respond(_ok())
        status, headers, body = _parse(p.response())
        self.assertNotIn(b"content-encoding", headers)
        self.assertNotIn(b"vary", headers)
        self.assertEqual(headers[b"content-length"], [b"%d" % len(_TEXT)])
        self.assertEqual(body, _TEXT)

    def test_clientDoesNotAccept(self):
        """
        A client that does not accept gzip (no C{Accept-Encoding}, other
        codings, or C{gzip;q=0}) gets the response as it is, with its
        Content-Length, and with C{Vary: Accept-Encoding}.
        """
        for accept in (b"", b"Accept-Encoding: br\r\n", b"Accept-Encoding: gzip;q=0, *\r\n"):
            p = _Proxy(self)
            p.request(b"GET / HTTP/1.1\r\nHost: a\r\n" + accept + b"\r\n")
            p.respond(_ok())
            status, headers, body = _parse(p.response())
            self.assertNotIn(b"content-encoding", headers, accept)
            self.assertEqual(headers[b"content-length"], [b"%d" % len(_TEXT)])
            self.assertEqual(headers[b"vary"], [b"Accept-Encoding"])
            self.assertEqual(body, _TEXT)

    def _untouched(self, response, request=None, policy=None):
        """
        Assert that the backend's C{response} reaches a client that accepts
        gzip as it was: same headers (no C{Vary} added), same body.
        """
        p = _Proxy(self, policy)
        if request is None:
            p.request()
        else:
            p.request(request)
        p.respond(response)
        received = p.response()
        status, headers, body = _parse(received)
        self.assertNotIn(b"vary", headers, response)
        self.assertEqual(
            headers.get(b"content-encoding"),
            _parse(response)[1].get(b"content-encoding"),
            response,
        )
        return status, headers, body

    def test_smallBodyUntouched(self):
        """
        A body whose Content-Length is below C{gzip_min_length} (1 KiB by
        default) goes as it is; one of exactly the minimum is compressed.
        """
        status, headers, body = self._untouched(_ok(b"x" * 1023))
        self.assertEqual(body, b"x" * 1023)
        self.assertEqual(headers[b"content-length"], [b"1023"])
        p = _Proxy(self)
        p.request()
        p.respond(_ok(b"x" * 1024))
        status, headers, body = _parse(p.response())
        self.assertEqual(gzip.decompress(body), b"x" * 1024)
        self._untouched(_ok(b"x" * 1024), policy=GzipPolicy(minLength=2048))

    def test_otherTypeUntouched(self):
        """
        A type not in C{gzip_types}, or no type at all, goes as it is.
        """
        body = b"\x89PNG" + b"\0" * 5000
        status, headers, received = self._untouched(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        self.assertEqual(received, body)
        status, headers, received = self._untouched(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(_TEXT), _TEXT)
        )
        self.assertEqual(received, _TEXT)

    def test_alreadyEncodedUntouched(self):
        """
        A response the backend coded itself (C{Content-Encoding}) goes as it
        is, its body not compressed twice.
        """
        coded = gzip.compress(_TEXT)
        status, headers, body = self._untouched(_ok(coded, b"Content-Encoding: gzip"))
        self.assertEqual(headers[b"content-encoding"], [b"gzip"])
        self.assertEqual(body, coded)
        status, headers, body = self._untouched(_ok(_TEXT, b"Content-Encoding: br"))
        self.assertEqual(headers[b"content-encoding"], [b"br"])
        self.assertEqual(body, _TEXT)

    def test_noTransformUntouched(self):
        """
        C{Cache-Control: no-transform} keeps the response as it is.
        """
        status, headers, body = self._untouched(
            _ok(_TEXT, b"Cache-Control: public", b"Cache-Control: max-age=60, no-transform")
        )
        self.assertEqual(body, _TEXT)

    def test_rangeUntouched(self):
        """
        The 206 answer to a Range request, and any response with a
        C{Content-Range}, go as they are.
        """
        part = _TEXT[:2000]
        status, headers, body = self._untouched(
            b"HTTP/1.1 206 Partial Content\r\nContent-Type: text/html\r\n"
            b"Content-Range: bytes 0-1999/%d\r\nContent-Length: 2000\r\n\r\n%s"
            % (len(_TEXT), part),
            b"GET / HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1999\r\nAccept-Encoding: gzip\r\n\r\n",
        )
        self.assertEqual(status, b"HTTP/1.1 206 Partial Content")
        self.assertEqual(body, part)
        status, headers, body = self._untouched(
            _ok(_TEXT, b"Content-Range: bytes */%d" % len(_TEXT)).replace(b"200 OK", b"416 x")
        )
        self.assertEqual(body, _TEXT)

    def test_headUntouched(self):
        """
        The response to HEAD keeps the backend's Content-Length, and gets
        no C{Content-Encoding} nor C{Vary} (as nginx).
        """
        status, headers, body = self._untouched(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5000\r\n\r\n",
            b"HEAD / HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n",
        )
        self.assertEqual(headers[b"content-length"], [b"5000"])
        self.assertEqual(body, b"")

    def test_bodylessUntouched(self):
        """
        204 and 304 responses go as they are.
        """
        for code in (b"204 No Content", b"304 Not Modified"):
            status, headers, body = self._untouched(
                b"HTTP/1.1 %s\r\nContent-Type: text/html\r\nETag: \"x\"\r\n\r\n" % code
            )
            self.assertEqual(status, b"HTTP/1.1 " + code)
            self.assertEqual(headers[b"etag"], [b'"x"'])
            self.assertEqual(body, b"")

    def test_vary(self):
        """
        C{Accept-Encoding} is added to the backend's first C{Vary}, unless
        it is named there already, in any case, or C{Vary} is C{*}.
        """
        for given, expected in [
            ([b"Vary: Cookie"], [b"Cookie, Accept-Encoding"]),
            ([b"Vary: Cookie", b"Vary: Origin"], [b"Cookie, Accept-Encoding", b"Origin"]),
            ([b"Vary: Origin, accept-encoding"], [b"Origin, accept-encoding"]),
            ([b"Vary: Cookie", b"Vary: ACCEPT-ENCODING"], [b"Cookie", b"ACCEPT-ENCODING"]),
            ([b"Vary: *"], [b"*"]),
        ]:
            p = _Proxy(self)
            p.request()
            p.respond(_ok(_TEXT, *given))
            status, headers, body = _parse(p.response())
            self.assertEqual(headers[b"vary"], expected, given)
            self.assertEqual(gzip.decompress(body), _TEXT)

    def test_etagAndRanges(self):
        """
        A compressed response's strong ETag becomes weak (a weak one is
        kept), and its C{Accept-Ranges} is dropped: ranges of the
        compressed body are not served.
        """
        for etag, expected in [(b'"v1"', [b'W/"v1"']), (b'W/"v1"', [b'W/"v1"'])]:
            p = _Proxy(self)
            p.request()
            p.respond(_ok(_TEXT, b"ETag: " + etag, b"Accept-Ranges: bytes"))
            status, headers, body = _parse(p.response())
            self.assertEqual(headers[b"etag"], expected)
            self.assertNotIn(b"accept-ranges", headers)
        # Uncompressed, both stay.
        p = _Proxy(self)
        p.request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        p.respond(_ok(_TEXT, b'ETag: "v1"', b"Accept-Ranges: bytes"))
        status, headers, body = _parse(p.response())
        self.assertEqual(headers[b"etag"], [b'"v1"'])
        self.assertEqual(headers[b"accept-ranges"], [b"bytes"])

    def test_chunkedBackend(self):
        """
        A chunked body from the backend, coming in several reads, reaches
        the client compressed as it comes: at the end of each read, what
        came so far decodes; the backend's end ends the gzip stream.
        """
        p = _Proxy(self)
        p.request()
        p.respond(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        status, headers, body = _parse(p.response())
        self.assertEqual(headers[b"content-encoding"], [b"gzip"])
        seen = 0
        decoded = b""
        pieces = [_TEXT[i : i + 700] for i in range(0, len(_TEXT), 700)]
        for piece in pieces:
            # Two chunks in one read.
            half = len(piece) // 2
            p.respond(b"%x\r\n%s\r\n%x\r\n%s\r\n" % (half, piece[:half], len(piece) - half, piece[half:]))
            body = _dechunk(p.response().partition(b"\r\n\r\n")[2])
            decoded += decoder.decompress(body[seen:])
            seen = len(body)
            self.assertEqual(decoded, b"".join(pieces)[: len(decoded)])
            self.assertTrue(decoded.endswith(piece))
        self.assertNotIn(b"\r\n0\r\n\r\n", p.response())
        p.respond(b"0\r\n\r\n")
        status, headers, body = _parse(p.response())
        self.assertEqual(gzip.decompress(body), _TEXT)
        self.assertTrue(p.response().endswith(b"\r\n0\r\n\r\n"))

    def test_unknownLengthForHTTP10(self):
        """
        An HTTP/1.0 client gets a compressed body as it is, ended by the
        connection's close.
        """
        p = _Proxy(self)
        p.request(b"GET / HTTP/1.0\r\nAccept-Encoding: gzip\r\n\r\n")
        p.respond(_ok())
        received = p.response()
        self.assertTrue(received.startswith(b"HTTP/1.0 200 OK\r\n"))
        status, headers, body = _parse(received)
        self.assertNotIn(b"transfer-encoding", headers)
        self.assertNotIn(b"content-length", headers)
        self.assertEqual(gzip.decompress(body), _TEXT)
        self.assertTrue(p.client.closing)

    def test_closeDelimitedBackend(self):
        """
        A body the backend ends by closing the connection is compressed,
        and its end ends the gzip stream.
        """
        p = _Proxy(self)
        p.request()
        p.respond(_ok(_TEXT[:3000], b"Connection: close", length=False))
        p.respond(_TEXT[3000:])
        p.backend.protocol.connectionLost(Failure(ConnectionDone()))
        status, headers, body = _parse(p.response())
        self.assertEqual(gzip.decompress(body), _TEXT)

    def test_brokenBody(self):
        """
        A body the backend breaks off closes the client connection without
        ending the chunked gzip stream: the client sees it incomplete.
        """
        p = _Proxy(self)
        p.request()
        p.respond(_ok()[:-100])
        p.backend.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(p.client.closing)
        self.assertNotIn(b"\r\n0\r\n\r\n", p.response())

    def test_backpressure(self):
        """
        A client that cannot keep up pauses the backend while compressed
        bodies stream, as it does without gzip.
        """
        p = _Proxy(self)
        p.request()
        p.respond(_ok()[:-3000])
        transport = p.client.transport
        self.assertIsNotNone(transport.producer)
        transport.producer.pauseProducing()
        self.assertEqual(p.backend.transport.producerState, "paused")
        transport.producer.resumeProducing()
        self.assertEqual(p.backend.transport.producerState, "producing")
        p.respond(_TEXT[-3000:])
        status, headers, body = _parse(p.response())
        self.assertEqual(gzip.decompress(body), _TEXT)

    def test_headerRules(self):
        """
        With C{response_headers} too, the rules apply to the backend's head
        before gzip looks at it: a C{Content-Encoding} they remove lets the
        response be compressed, a C{Cache-Control: no-transform} they set
        keeps it as it is.
        """
        rules = HeaderRules((), parseResponseHeaderRules("set X-Set 1"), False)
        p = _Proxy(self, headerRules=rules)
        p.request()
        p.respond(_ok())
        status, headers, body = _parse(p.response())
        self.assertEqual(headers[b"x-set"], [b"1"])
        self.assertEqual(gzip.decompress(body), _TEXT)
        rules = HeaderRules((), parseResponseHeaderRules("set Cache-Control no-transform"), False)
        p = _Proxy(self, headerRules=rules)
        p.request()
        p.respond(_ok())
        status, headers, body = _parse(p.response())
        self.assertNotIn(b"content-encoding", headers)
        self.assertEqual(body, _TEXT)


class PlainSiteTests(SynchronousTestCase):
    """
    gzip through the adapter of a request that is not lbproxy's own (an
    embedder's plain L{twisted.web.server.Site}).
    """

    def test_compressed(self):
        """
        Behind a plain L{Site}, a qualifying response is compressed,
        chunked, with C{Vary} and a weak C{ETag}, and decodes to the
        backend's body; the next one, to a client that does not accept
        gzip, is not.
        """
        reactor = MemoryReactorClock()
        pool = Pool("app", [Backend("127.0.0.1", 9000)], reactor=reactor)
        site = Site(UpstreamResource(pool, gzip=GzipPolicy()), reactor=reactor)
        site.startFactory()
        self.addCleanup(site.stopFactory)
        peer = IPv4Address("TCP", "192.0.2.1", 4321)
        channel = site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        channel.makeConnection(transport)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n")
        _, port, factory, _, _ = reactor.tcpClients[0]
        backend = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        backend.makeConnection(StringTransport())
        backend.dataReceived(_ok(_TEXT, b'ETag: "v"'))
        status, headers, body = _parse(transport.value())
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(headers[b"content-encoding"], [b"gzip"])
        self.assertEqual(headers[b"vary"], [b"Accept-Encoding"])
        self.assertEqual(headers[b"etag"], [b'W/"v"'])
        self.assertNotIn(b"content-length", headers)
        self.assertEqual(gzip.decompress(body), _TEXT)
        transport.clear()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        backend.dataReceived(_ok())
        status, headers, body = _parse(transport.value())
        self.assertNotIn(b"content-encoding", headers)
        self.assertEqual(headers[b"content-length"], [b"%d" % len(_TEXT)])
        self.assertEqual(body, _TEXT)


class ConfigTests(SynchronousTestCase):
    """
    The C{gzip} keys of a vhost, read from site.ini and built into its
    resources.
    """

    _BASE = (
        "[lbproxy]\nlisten = tcp:0\n[upstream:app]\nservers = 127.0.0.1:9001\n"
        "[vhost:app]\ndefault = yes\nupstream = app\n"
        "routes =\n    /api/ app strip_prefix\n"
    )

    def test_defaults(self):
        """
        gzip is off by default; its defaults are the text types, 1 KiB and
        level 1.
        """
        vhost = parseConfigText(self._BASE).vhosts[0]
        self.assertFalse(vhost.gzip)
        self.assertEqual(vhost.gzipTypes, DEFAULT_TYPES)
        self.assertEqual(vhost.gzipMinLength, 1024)
        self.assertEqual(vhost.gzipCompLevel, 1)

    def test_errors(self):
        """
        A bad type, size or level is a configuration error naming the key.
        """
        try:
            parseConfigText(
                self._BASE
                + "gzip = maybe\ngzip_types = text/html image\ngzip_min_length = 1x\n"
                "gzip_comp_level = 0\n"
            )
        except ConfigError as e:
            errors = e.errors
        else:
            self.fail("no ConfigError")
        self.assertEqual(len(errors), 4, errors)
        for key in ("gzip", "gzip_types", "gzip_min_length", "gzip_comp_level"):
            self.assertTrue(any(f" {key} = " in error for error in errors), key)
        self.assertIn(
            "gzip_types = 'image': bad value; expected a media type such as text/html",
            "\n".join(errors),
        )

    def test_built(self):
        """
        C{gzip = yes} gives every upstream route of the vhost one
        L{GzipPolicy} with the vhost's settings.
        """
        config = parseConfigText(
            self._BASE + "gzip = yes\ngzip_types = text/html\ngzip_min_length = 0\n"
            "gzip_comp_level = 9\n"
        )
        service = LoadBalancerService(config, MemoryReactorClock())
        vhost = service.resource.vhostFor(b"a.example")
        resources = [vhost.resourceFor(b"/"), vhost.resourceFor(b"/api/x")]
        self.assertIsNot(resources[0], resources[1])
        self.assertIs(resources[0].gzip, resources[1].gzip)
        policy = resources[0].gzip
        self.assertEqual((policy.types, policy.minLength, policy.level), (("text/html",), 0, 9))
        off = LoadBalancerService(parseConfigText(self._BASE), MemoryReactorClock())
        self.assertIsNone(off.resource.vhostFor(b"a.example").resourceFor(b"/").gzip)
