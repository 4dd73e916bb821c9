"""
C{https://} backends on real sockets: TLS with SNI, the certificate
checked against C{tls_ca} for the server's name or C{tls_server_name},
keep-alive connections reused over TLS, a certificate that does not pass
being a failed connection (next backend, else 502, and a log line that
says why), C{tls_verify = no}.

Backends are Twisted L{Site}s behind L{SSL4ServerEndpoint}s on 127.0.0.1
port 0 with certificates made by L{tests.certificates}, each noting the
SNI names it was sent; the client is a plain socket in a thread.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.ssl import CertificateOptions
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from lbproxy import LoadBalancerService, parseConfig
from tests.certificates import Authority
from tests.integration.test_https import readResponse

#: Seconds any one step may take before the test fails.
WAIT = 10


class _Named(Resource):
    isLeaf = True

    def __init__(self, name: bytes) -> None:
        Resource.__init__(self)
        self.name = name

    def render(self, request: Any) -> bytes:
        return b"backend " + self.name


class _CountingSite(Site):
    """
    A site that counts the connections it was given.
    """

    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return Site.buildProtocol(self, addr)


class HTTPSBackendTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.authority = Authority()
        self.cafile = self.authority.writeRoot(os.path.join(self.directory, "ca.pem"))
        self.logged: list[str] = []

        def observe(event: Any) -> None:
            self.logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    @inlineCallbacks
    def startBackend(self, name: bytes, certificateNames: list[str]) -> Any:
        """
        A TLS backend answering C{backend NAME}, with a certificate for
        C{certificateNames} and the intermediate after it.

        @return: its port, its site and the list of SNI names it was sent.
        """
        from OpenSSL.crypto import X509, PKey

        certificate, key = self.authority.issue(certificateNames, "rsa")
        options = CertificateOptions(
            privateKey=PKey.from_cryptography_key(key),
            certificate=X509.from_cryptography(certificate),
            extraCertChain=[X509.from_cryptography(self.authority.intermediate)],
        )
        context = options.getContext()
        names: list[Any] = []
        context.set_tlsext_servername_callback(
            lambda connection: names.append(connection.get_servername())
        )
        site = _CountingSite(_Named(name))
        port = yield SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        return port.getHost().port, site, names

    @inlineCallbacks
    def startProxy(self, upstream: str) -> Any:
        path = os.path.join(self.directory, "site.ini")
        with open(path, "w") as f:
            f.write(
                "[lbproxy]\nlisten = tcp:0:interface=127.0.0.1\naccess_log = off\n"
                f"[upstream:app]\n{upstream}\n"
                "[vhost:app]\nserver_names = app.test\ndefault = yes\nupstream = app\n"
            )
        service = LoadBalancerService(parseConfig(path), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        [port] = yield service.whenListening().addTimeout(WAIT, reactor)
        self.proxyPort = port.getHost().port
        return service

    def get(self, count: int = 1, method: str = "GET") -> Any:
        """
        C{count} requests on one client connection to the proxy.
        """

        def run() -> list[bytes]:
            responses = []
            with socket.create_connection(("127.0.0.1", self.proxyPort), timeout=WAIT) as s:
                for _ in range(count):
                    s.sendall(
                        f"{method} / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\n\r\n".encode()
                    )
                    responses.append(readResponse(s))
            return responses

        return deferToThread(run).addTimeout(2 * WAIT, reactor)

    def logLines(self, text: str) -> list[str]:
        return [line for line in self.logged if text in line]

    @inlineCallbacks
    def test_verifiedByServerName(self) -> Any:
        """
        A backend written as an IP address, with C{tls_server_name}: the
        name is sent in SNI, the certificate is checked for it against
        C{tls_ca} (which holds the root only: the backend sent the
        intermediate), and requests share one kept-alive TLS connection.
        """
        port, site, names = yield self.startBackend(b"one", ["api.test"])
        yield self.startProxy(
            f"servers = https://127.0.0.1:{port}\ntls_ca = {self.cafile}\n"
            "tls_server_name = api.test"
        )
        responses = yield self.get(3)
        for response in responses:
            self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)
            self.assertTrue(response.endswith(b"backend one"), response)
        self.assertEqual(names, [b"api.test"])
        self.assertEqual(site.connections, 1)

    @inlineCallbacks
    def test_wrongNameNextBackend(self) -> Any:
        """
        A backend whose certificate is for another name is a failed
        connection, logged with the reason: the request goes to the next
        backend; with no other, a non-idempotent request gets 502 too.
        """
        wrongPort, _, _ = yield self.startBackend(b"wrong", ["wrong.test"])
        rightPort, _, _ = yield self.startBackend(b"right", ["api.test"])
        yield self.startProxy(
            f"servers =\n  https://127.0.0.1:{wrongPort}\n  https://127.0.0.1:{rightPort}\n"
            f"tls_ca = {self.cafile}\ntls_server_name = api.test\nmax_fails = 0"
        )
        responses = yield self.get(2)
        for response in responses:
            self.assertTrue(response.endswith(b"backend right"), response)
        [line, *_] = self.logLines(f"cannot connect to 127.0.0.1:{wrongPort}")
        self.assertIn("TLS handshake failed: the certificate is not valid for the name", line)
        self.assertIn("api.test", line)

    @inlineCallbacks
    def test_wrongName502(self) -> Any:
        """
        The only backend has a certificate for another name: 502, for GET
        and POST alike.
        """
        port, _, _ = yield self.startBackend(b"wrong", ["wrong.test"])
        yield self.startProxy(
            f"servers = https://127.0.0.1:{port}\ntls_ca = {self.cafile}\n"
            "tls_server_name = api.test"
        )
        for method in ("GET", "POST"):
            [response] = yield self.get(1, method)
            self.assertTrue(response.startswith(b"HTTP/1.1 502 "), response)
        self.assertTrue(self.logLines("not valid for the name"))

    @inlineCallbacks
    def test_unknownAuthority(self) -> Any:
        """
        A certificate from an authority C{tls_ca} does not hold: 502, and
        the log says the verification failed.
        """
        port, _, _ = yield self.startBackend(b"one", ["api.test"])
        other = Authority("other").writeRoot(os.path.join(self.directory, "other.pem"))
        yield self.startProxy(
            f"servers = https://127.0.0.1:{port}\ntls_ca = {other}\ntls_server_name = api.test"
        )
        [response] = yield self.get()
        self.assertTrue(response.startswith(b"HTTP/1.1 502 "), response)
        [line] = self.logLines(f"cannot connect to 127.0.0.1:{port}")
        self.assertIn("certificate verify failed", line)

    @inlineCallbacks
    def test_verifyOff(self) -> Any:
        """
        C{tls_verify = no}: a certificate for another name is accepted, the
        name is still sent in SNI, and a warning was logged at start-up.
        """
        port, _, names = yield self.startBackend(b"lax", ["wrong.test"])
        yield self.startProxy(
            f"servers = https://127.0.0.1:{port}\ntls_verify = no\ntls_server_name = api.test"
        )
        self.assertTrue(self.logLines("[upstream:app] tls_verify = no"))
        [response] = yield self.get()
        self.assertTrue(response.endswith(b"backend lax"), response)
        self.assertEqual(names, [b"api.test"])
