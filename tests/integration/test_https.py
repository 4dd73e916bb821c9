"""
HTTPS listeners on real sockets: one C{listen_tls} port on 127.0.0.1
serving a certificate per vhost by SNI, the default one otherwise, whole
chains, the refusal of old TLS versions, certificate reloads under open
connections, C{redirect_https} and C{hsts}.

The client is Python's own C{ssl} module (run in a thread, with socket
timeouts), trusting only the test's root authority: a handshake that
verifies proves the intermediate was sent.  Certificates are made by
L{tests.certificates}.  The backend is a plain L{Site} on port 0.
"""

from __future__ import annotations

import gc
import os
import platform
import socket
import ssl
import weakref
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from lbproxy import LoadBalancerService, parseConfig
from tests.certificates import Authority, pem

#: Seconds any one step may take before the test fails.
WAIT = 10


class _Echo(Resource):
    """
    A backend telling what the proxy told it about the client's scheme.
    """

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        proto = request.getHeader(b"x-forwarded-proto") or b"-"
        return b"proto=" + proto + b" host=" + (request.getHeader(b"host") or b"-")


def readResponse(sock: Any) -> bytes:
    """
    Read one HTTP/1.1 response with a C{Content-Length} from C{sock}.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class TLSClient:
    """
    One TLS connection made with Python's C{ssl} module (blocking calls,
    run in a thread by the tests).
    """

    def __init__(
        self,
        port: int,
        serverName: Optional[str],
        cafile: str,
        version: Optional[ssl.TLSVersion] = None,
        context: Optional[ssl.SSLContext] = None,
        session: Optional[ssl.SSLSession] = None,
    ) -> None:
        if context is None:
            context = clientContext(cafile, serverName is not None)
        if version is not None:
            context.minimum_version = context.maximum_version = version
            # Let this client offer what the server must refuse.
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        try:
            self.sock = context.wrap_socket(raw, server_hostname=serverName, session=session)
        except BaseException:
            raw.close()
            raise
        self.leaf = self.sock.getpeercert(binary_form=True)
        self.version = self.sock.version()

    def get(self, path: str, host: str) -> bytes:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return readResponse(self.sock)

    def close(self) -> None:
        self.sock.close()


def clientContext(cafile: str, checkHostname: bool = True) -> ssl.SSLContext:
    """
    A client context trusting C{cafile} only.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile)
    context.check_hostname = checkHostname
    return context


def derOf(chainPath: str) -> bytes:
    """
    The DER form of the first certificate of a PEM chain file.
    """
    with open(chainPath, "rb") as f:
        text = f.read()
    end = text.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[:end].decode("ascii"))


class HTTPSListenerTests(TestCase):
    """
    A L{LoadBalancerService} built from a site.ini with C{listen} and
    C{listen_tls}, three certificates (the default, an ECDSA one for
    a.test, an RSA one for b.test) in certbot's layout.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.authority = Authority()
        self.cafile = self.authority.writeRoot(os.path.join(self.directory, "root.pem"))
        live = os.path.join(self.directory, "live")
        self.default = self.authority.write(os.path.join(live, "default"), ["default.test"])
        self.a = self.authority.write(os.path.join(live, "a.test"), ["a.test"], "ec")
        self.b = self.authority.write(os.path.join(live, "b.test"), ["b.test", "*.b.test"], "rsa")
        backend = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(_Echo())
        )
        self.addCleanup(backend.stopListening)
        self.configPath = os.path.join(self.directory, "site.ini")
        self.writeConfig(backend.getHost().port)
        self.service = LoadBalancerService(parseConfig(self.configPath), reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        plain, tls = yield self.service.whenListening().addTimeout(WAIT, reactor)
        self.plainPort = plain.getHost().port
        self.tlsPort = tls.getHost().port

    def writeConfig(self, backendPort: int, extra: str = "") -> None:
        with open(self.configPath, "w") as f:
            f.write(
                "[lbproxy]\n"
                "listen = tcp:0:interface=127.0.0.1\n"
                "listen_tls = tcp:0:interface=127.0.0.1\n"
                "access_log = off\n"
                # Relative paths: read from the configuration's directory.
                "tls_certificate = live/default/fullchain.pem\n"
                "tls_key = live/default/privkey.pem\n"
                f"[upstream:app]\nservers = 127.0.0.1:{backendPort}\n"
                "[vhost:a]\nserver_names = a.test\nupstream = app\n"
                "tls_certificate = live/a.test/fullchain.pem\n"
                "tls_key = live/a.test/privkey.pem\n"
                "redirect_https = yes\nhsts = max-age=63072000; includeSubDomains\n"
                "[vhost:b]\nserver_names = b.test *.b.test\nupstream = app\n"
                "tls_certificate = live/b.test/fullchain.pem\n"
                "tls_key = live/b.test/privkey.pem\n"
                "[vhost:other]\nserver_names = other.test\ndefault = yes\nupstream = app\n"
                + extra
            )

    def connect(
        self,
        serverName: Optional[str],
        version: Any = None,
        context: Optional[ssl.SSLContext] = None,
        session: Optional[ssl.SSLSession] = None,
    ) -> Any:
        d = deferToThread(
            TLSClient, self.tlsPort, serverName, self.cafile, version, context, session
        )

        def track(client: TLSClient) -> TLSClient:
            self.addCleanup(client.close)
            return client

        return d.addCallback(track).addTimeout(2 * WAIT, reactor)

    @inlineCallbacks
    def test_sniPicksTheChain(self) -> Any:
        """
        SNI a.test gets a.test's ECDSA chain, b.test and x.b.test the RSA
        one of b.test, no SNI and an unknown name the default; each
        verifies against the root alone (so the intermediate was sent),
        and the request is proxied with X-Forwarded-Proto https.
        """
        for serverName, chain in [
            ("a.test", self.a[0]),
            ("b.test", self.b[0]),
            ("x.b.test", self.b[0]),
            (None, self.default[0]),
        ]:
            client = yield self.connect(serverName)
            self.assertEqual(client.leaf, derOf(chain), serverName)
            response = yield deferToThread(client.get, "/x", serverName or "other.test")
            self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)
            self.assertIn(b"proto=https host=" + (serverName or "other.test").encode(), response)
        # A name that no vhost has: the default certificate, which is not
        # valid for it.
        failure = yield self.assertFailure(self.connect("unknown.test"), ssl.SSLCertVerificationError)
        self.assertIn("unknown.test", str(failure))

    @inlineCallbacks
    def test_tls13AndTls12(self) -> Any:
        """
        TLS 1.3 is negotiated by a modern client, and a TLS 1.2-only client
        is served too.
        """
        client = yield self.connect("a.test")
        self.assertEqual(client.version, "TLSv1.3")
        client = yield self.connect("a.test", ssl.TLSVersion.TLSv1_2)
        self.assertEqual(client.version, "TLSv1.2")

    @inlineCallbacks
    def test_sessionResumption(self) -> Any:
        """
        A client that comes back with its session resumes it (a ticket in
        TLS 1.3, a ticket or session id in TLS 1.2), on the certificate SNI
        picks.  (A session of a.test offered for b.test would be resumed
        too, as sessions are looked up before SNI picks a certificate: see
        L{lbproxy._tlsserver}.)
        """
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            context = clientContext(self.cafile)
            context.minimum_version = context.maximum_version = version
            first = yield self.connect("a.test", context=context)
            # TLS 1.3 tickets come after the handshake: read a response.
            yield deferToThread(first.get, "/", "a.test")
            session = first.sock.session
            self.assertFalse(first.sock.session_reused)
            again = yield self.connect("a.test", context=context, session=session)
            self.assertTrue(again.sock.session_reused, version)
            self.assertEqual(again.leaf, first.leaf)
            response = yield deferToThread(again.get, "/", "a.test")
            self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)
            fresh = yield self.connect("b.test", context=context)
            self.assertFalse(fresh.sock.session_reused, version)
            self.assertEqual(fresh.leaf, derOf(self.b[0]))

    def waitForNoConnection(self) -> Any:
        """
        A L{Deferred} that fires once the proxy has no client connection
        open (it closes idle ones; 10 s at most).
        """
        return self.service.site.closeConnections().addTimeout(WAIT, reactor)

    @inlineCallbacks
    def test_sessionIdAfterAbruptClose(self) -> Any:
        """
        A TLS 1.2 client without session tickets resumes by session id,
        even after it closed its first connection without a close_notify.
        (This flow keeps the session in the cache with or without
        L{lbproxy._tlsserver.TLSServerProtocol}'s shutdown mark; sslyze's
        resumption check is the one that showed it was needed.)
        """
        if platform.python_implementation() == "PyPy":
            self.skipTest(  # type: ignore[attr-defined]
                "on PyPy (pyOpenSSL 25.1, OpenSSL 3.3) this session is not "
                "resumed once the server's SSL object is collected, for a "
                "reason not found yet; tickets resume (test_sessionResumption)"
            )
        context = clientContext(self.cafile)
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_TICKET
        first = yield self.connect("a.test", context=context)
        session = first.sock.session
        [channel] = self.service.site.channels
        serverSide = weakref.ref(channel.transport.lbproxyConnection)
        first.sock.close()  # no close_notify: Python sends one only in unwrap()
        yield self.waitForNoConnection()
        # OpenSSL drops the session from its cache (or not) when the
        # connection's SSL object is freed: wait for that (10 s at most).
        for _ in range(200):
            gc.collect()
            if serverSide() is None:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertIsNone(serverSide())
        again = yield self.connect("a.test", context=context, session=session)
        self.assertTrue(again.sock.session_reused)

    @inlineCallbacks
    def test_tls11Refused(self) -> Any:
        """
        A client that speaks only TLS 1.1 is refused by the server (a
        protocol version alert, not a refusal of the client's own).
        """
        failure = yield self.assertFailure(
            self.connect("a.test", ssl.TLSVersion.TLSv1_1), ssl.SSLError
        )
        reason = failure.reason or ""
        self.assertIn("PROTOCOL_VERSION", reason, str(failure))

    @inlineCallbacks
    def test_redirectAndHSTS(self) -> Any:
        """
        Plain HTTP to a vhost with C{redirect_https} gets a 308 to the same
        path and query over HTTPS on the listen_tls port, without HSTS; the
        HTTPS response carries HSTS; a vhost without either is served over
        plain HTTP as usual.
        """

        def plainGet(host: str, path: str) -> bytes:
            with socket.create_connection(("127.0.0.1", self.plainPort), timeout=WAIT) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                return readResponse(s)

        response = yield deferToThread(plainGet, "A.test:80", "/p/q?x=1&y=2")
        self.assertTrue(response.startswith(b"HTTP/1.1 308 "), response)
        self.assertIn(
            b"\r\nLocation: https://a.test:%d/p/q?x=1&y=2\r\n" % (self.tlsPort,), response
        )
        self.assertNotIn(b"strict-transport-security", response.lower())
        response = yield deferToThread(plainGet, "b.test", "/")
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)
        self.assertIn(b"proto=http host=b.test", response)
        client = yield self.connect("a.test")
        response = yield deferToThread(client.get, "/p", "a.test")
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)
        self.assertIn(
            b"\r\nStrict-Transport-Security: max-age=63072000; includeSubDomains\r\n",
            response,
        )

    @inlineCallbacks
    def test_reloadUnderOpenConnections(self) -> Any:
        """
        A reload that finds a new certificate for a.test serves it to new
        handshakes; a connection opened before keeps working on the old
        one.  A reload whose new certificate does not match its key is
        refused: the last good certificate stays.
        """
        before = yield self.connect("a.test")
        response = yield deferToThread(before.get, "/1", "a.test")
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)
        oldLeaf = before.leaf
        renewed = self.authority.write(
            os.path.join(self.directory, "live", "a.test"), ["a.test"], "rsa"
        )
        self.assertTrue(self.service.reloadFromFile(self.configPath))
        after = yield self.connect("a.test")
        self.assertEqual(after.leaf, derOf(renewed[0]))
        self.assertNotEqual(after.leaf, oldLeaf)
        response = yield deferToThread(before.get, "/2", "a.test")
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)
        # A certificate whose key is another's: refused, the last one stays.
        certificate, _ = self.authority.issue(["a.test"])
        with open(renewed[0], "wb") as f:
            f.write(pem(certificate) + pem(self.authority.intermediate))
        self.assertFalse(self.service.reloadFromFile(self.configPath))
        again = yield self.connect("a.test")
        self.assertEqual(again.leaf, after.leaf)
        response = yield deferToThread(after.get, "/3", "a.test")
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)
