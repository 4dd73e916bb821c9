"""
Tests for L{lbproxy._tlsserver}: the certificates of a configuration
checked, the SNI table, and handshakes in memory (L{StringTransport}s,
a L{Clock}) through L{TLSServerFactory} as a listener would use it.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy._config import ConfigError, parseConfigText
from lbproxy._h2 import H2Channel
from lbproxy._site import ProxySite
from lbproxy._startup import startupFailure
from lbproxy._tls import UnverifiedClientCreator
from lbproxy._tlsserver import (
    SNIConnectionCreator,
    TLSServerFactory,
    TLSUnavailable,
    loadServerCertificates,
    probeHandshake,
)
from tests.certificates import Authority, keyPEM, newKey

_AUTHORITY = Authority()


class _Secure(Resource):
    """
    Answers whether the request came over TLS.
    """

    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"secure" if request.isSecure() else b"plain"


@implementer(IHandshakeListener)
class _Client(Protocol):
    done = False

    def __init__(self) -> None:
        self.received = b""

    def handshakeCompleted(self) -> None:
        self.done = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class _Handshake:
    """
    A client connected in memory to a server protocol of C{factory}.
    """

    def __init__(
        self,
        factory: Any,
        serverName: Optional[str],
        protocols: Sequence[bytes] = (),
        clock: Optional[Clock] = None,
    ) -> None:
        self.clock = clock or Clock()
        creator = UnverifiedClientCreator(serverName or "127.0.0.1")
        if protocols:
            context = SSL.Context(SSL.TLS_METHOD)
            context.set_alpn_protos(list(protocols))
            creator._context = context  # a client offering these
        self.app = _Client()
        clientFactory = TLSMemoryBIOFactory(
            creator, True, Factory.forProtocol(lambda: self.app), self.clock
        )
        self.client = clientFactory.buildProtocol(None)
        self.server = factory.buildProtocol(None)
        self.serverTransport = _TCPTransport()
        self.clientTransport = _TCPTransport()
        self.server.makeConnection(self.serverTransport)
        self.client.makeConnection(self.clientTransport)
        self.pump()

    def pump(self) -> None:
        for _ in range(50):
            self.clock.advance(0)
            moved = False
            for source, target in [
                (self.clientTransport, self.server),
                (self.serverTransport, self.client),
            ]:
                data = source.value()
                if data:
                    source.clear()
                    target.dataReceived(data)
                    moved = True
            if not moved:
                return

    def peerNames(self) -> list[str]:
        from cryptography import x509

        certificate = self.client.getPeerCertificate().to_cryptography()
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return san.value.get_values_for_type(x509.DNSName)  # type: ignore[no-any-return]


class _TCPTransport(StringTransport):
    """
    A L{StringTransport} with the TCP options the channel sets.
    """

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpNoDelay(self) -> bool:
        return True


class _Files:
    """
    A directory of certificates and a configuration naming them.
    """

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.directory = os.path.abspath(testCase.mktemp())
        os.makedirs(self.directory)

    def write(self, name: str, names: Sequence[str], kind: str = "ec", days: float = 90) -> tuple[str, str]:
        return _AUTHORITY.write(os.path.join(self.directory, name), names, kind, days)

    def config(self, text: str) -> Any:
        path = os.path.join(self.directory, "site.ini")
        with open(path, "w") as f:
            f.write(text)
        return parseConfigText(text, path)


_SITE = """\
[lbproxy]
listen_tls = tcp:8443
tls_certificate = default/fullchain.pem
tls_key = default/privkey.pem
[upstream:app]
servers = 127.0.0.1:9001
[vhost:a]
server_names = a.test
upstream = app
tls_certificate = a/fullchain.pem
tls_key = a/privkey.pem
[vhost:b]
server_names = b.test *.b.test
upstream = app
tls_certificate = b/fullchain.pem
tls_key = b/privkey.pem
[vhost:c]
server_names = c.test
upstream = app
"""


class LoadServerCertificatesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.files = _Files(self)

    def writeAll(self) -> None:
        self.files.write("default", ["default.test"])
        self.files.write("a", ["a.test"])
        self.files.write("b", ["b.test", "*.b.test"], "rsa")

    def errors(self, text: str) -> list[str]:
        with self.assertRaises(ConfigError) as caught:
            loadServerCertificates(self.files.config(text))
        return caught.exception.errors

    def test_loaded(self) -> None:
        """
        The default chain and, by name, each vhost's; a vhost without a
        certificate has no entry (SNI for it gets the default).
        """
        self.writeAll()
        certificates = loadServerCertificates(self.files.config(_SITE))
        assert certificates.default is not None
        self.assertEqual(certificates.default.dnsNames, ("default.test",))
        self.assertEqual(sorted(certificates.byName), ["*.b.test", "a.test", "b.test"])
        self.assertEqual(certificates.byName["*.b.test"].dnsNames, ("b.test", "*.b.test"))
        self.assertEqual(len(certificates.chains()), 3)
        self.assertEqual(certificates.warnings, [])

    def test_everyProblemAtOnce(self) -> None:
        """
        A missing file, a key of another certificate, and a certificate for
        none of its vhost's names: one error each, naming the section, the
        key and the file.
        """
        self.files.write("default", ["default.test"])
        chain, _ = self.files.write("a", ["a.test"])
        with open(os.path.join(self.files.directory, "a", "privkey.pem"), "wb") as f:
            f.write(keyPEM(newKey()))
        self.files.write("b", ["elsewhere.test"])
        path = os.path.join(self.files.directory, "site.ini")
        errors = self.errors(_SITE.replace("default/fullchain", "gone/fullchain"))
        directory = self.files.directory
        self.assertEqual(
            errors,
            [
                f"{path}: [lbproxy] tls_certificate = 'gone/fullchain.pem': cannot read "
                f"the certificate file {directory}/gone/fullchain.pem: No such file or directory",
                f"{path}: [vhost:a] tls_certificate = 'a/fullchain.pem': the key in "
                f"{directory}/a/privkey.pem does not match the certificate in {chain}",
                f"{path}: [vhost:b] tls_certificate = 'b/fullchain.pem': the certificate in "
                f"{directory}/b/fullchain.pem is for elsewhere.test, none of this vhost's "
                "server_names (b.test, *.b.test)",
            ],
        )

    def test_noDefault(self) -> None:
        """
        C{listen_tls} needs a certificate for clients without SNI: the
        C{[lbproxy]} one or the default vhost's.
        """
        self.writeAll()
        text = _SITE.replace("tls_certificate = default/fullchain.pem\ntls_key = default/privkey.pem\n", "")
        (error,) = self.errors(text)
        self.assertIn("[lbproxy] tls_certificate = '': missing key", error)
        text = text.replace("[vhost:a]\n", "[vhost:a]\ndefault = yes\n")
        certificates = loadServerCertificates(self.files.config(text))
        self.assertIs(certificates.default, certificates.byName["a.test"])

    def test_redirectNeedsTLS(self) -> None:
        """
        C{redirect_https} with no C{tcp:} C{listen_tls} has nowhere to
        send clients.
        """
        text = (
            "[lbproxy]\nlisten = tcp:8080\n[upstream:app]\nservers = 127.0.0.1:9001\n"
            "[vhost:a]\nserver_names = a.test\nupstream = app\nredirect_https = yes\n"
        )
        (error,) = self.errors(text)
        self.assertIn("[vhost:a] redirect_https = 'yes': bad value", error)

    def test_keyWithoutCertificate(self) -> None:
        self.writeAll()
        (error,) = self.errors(_SITE.replace("[vhost:c]\n", "[vhost:c]\ntls_key = c.key\n"))
        self.assertIn("[vhost:c] tls_certificate = '': missing key", error)

    def test_warnings(self) -> None:
        """
        A certificate that expires within 14 days, a vhost name its
        certificate does not cover and an unverified upstream are
        warnings, not errors.
        """
        self.writeAll()
        self.files.write("a", ["a.test"], days=3)
        text = _SITE.replace("server_names = a.test", "server_names = a.test www.a.test")
        text = text.replace("servers = 127.0.0.1:9001", "servers = https://127.0.0.1:9001\ntls_verify = no")
        certificates = loadServerCertificates(self.files.config(text))
        self.assertEqual(len(certificates.warnings), 3, certificates.warnings)
        self.assertIn("[vhost:a] the certificate in ", certificates.warnings[0])
        self.assertIn("expires in 2 day(s)", certificates.warnings[0])
        self.assertIn("is not valid for www.a.test", certificates.warnings[1])
        self.assertIn("[upstream:app] tls_verify = no", certificates.warnings[2])

    def test_badCA(self) -> None:
        """
        A C{tls_ca} file that cannot be read is an error.
        """
        self.writeAll()
        text = _SITE.replace("servers = 127.0.0.1:9001", "servers = https://127.0.0.1:9001\ntls_ca = nope.pem")
        (error,) = self.errors(text)
        self.assertIn("[upstream:app] tls_ca = 'nope.pem': cannot use ", error)


    def test_keyOthersCanRead(self) -> None:
        """
        A key file every user can read is a warning naming the file and
        its mode, for a key in its own file and for one in the chain
        file; a key its group can read is not.
        """
        self.writeAll()
        directory = self.files.directory
        os.chmod(os.path.join(directory, "a", "privkey.pem"), 0o644)
        os.chmod(os.path.join(directory, "b", "privkey.pem"), 0o640)
        chain, key = self.files.write("default", ["default.test"])
        with open(chain, "ab") as f, open(key, "rb") as k:
            f.write(k.read())
        os.chmod(chain, 0o604)
        text = _SITE.replace("tls_key = default/privkey.pem\n", "")
        certificates = loadServerCertificates(self.files.config(text))
        self.assertEqual(
            certificates.warnings,
            [
                f"[lbproxy] the key file {chain} can be read by every user of this "
                "machine (mode 0604); make it unreadable to others (chmod o-r)",
                f"[vhost:a] the key file {directory}/a/privkey.pem can be read by "
                "every user of this machine (mode 0644); make it unreadable to "
                "others (chmod o-r)",
            ],
        )

    def test_etcdSecretsOthersCanRead(self) -> None:
        """
        The key of C{etcd_certificate} and the C{etcd_password_file} are
        warned about as the listeners' keys are; a password file that
        cannot be used is an error, and not warned about.
        """
        chain, key = self.files.write("etcd", ["lbproxy"])
        password = os.path.join(self.files.directory, "password")
        with open(password, "w") as f:
            f.write("secret\n")
        os.chmod(password, 0o644)
        os.chmod(key, 0o604)
        text = (
            "[lbproxy]\nlisten = tcp:8080\n"
            "[upstream:app]\nservers_from = etcd\n"
            "etcd_endpoints = https://127.0.0.1:2379\n"
            "etcd_certificate = etcd/fullchain.pem\netcd_key = etcd/privkey.pem\n"
            "etcd_username = lbproxy\netcd_password_file = password\n"
            "[vhost:a]\ndefault = yes\nupstream = app\n"
        )
        certificates = loadServerCertificates(self.files.config(text))
        self.assertEqual(
            certificates.warnings,
            [
                f"[upstream:app] the key file {key} can be read by every user of "
                "this machine (mode 0604); make it unreadable to others (chmod o-r)",
                f"[upstream:app] the password file {password} can be read by every "
                "user of this machine (mode 0644); make it unreadable to others "
                "(chmod o-r)",
            ],
        )
        os.chmod(key, 0o600)
        os.chmod(password, 0o600)
        self.assertEqual(loadServerCertificates(self.files.config(text)).warnings, [])
        with open(password, "w") as f:
            f.write("\n")
        os.chmod(password, 0o644)
        (error,) = self.errors(text)
        self.assertIn("[upstream:app] etcd_password_file = 'password': cannot use ", error)

class _Table:
    """
    The contexts of L{_SITE} behind a L{TLSServerFactory}.
    """

    def setUp(self) -> None:
        files = _Files(self)
        files.write("default", ["default.test"])
        files.write("a", ["a.test"])
        files.write("b", ["b.test", "*.b.test"], "rsa")
        self.files = files
        self.certificates = loadServerCertificates(files.config(_SITE))
        self.creator = SNIConnectionCreator()
        self.site = ProxySite(_Secure(), reactor=Clock())
        self.creator.table = self.certificates.buildTable(
            self.creator, self.site.acceptableProtocols()
        )
        self.clock = Clock()
        self.factory = TLSServerFactory(self.creator, self.site, self.clock)


class HandshakeTests(_Table, SynchronousTestCase):
    """
    Handshakes in memory with the contexts of L{_SITE}.
    """

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, self.creator))

    def test_sni(self) -> None:
        """
        Each SNI name gets its certificate; none, an unknown name and a
        name of a vhost without a certificate get the default.
        """
        for serverName, names in [
            ("a.test", ["a.test"]),
            ("A.Test.", ["a.test"]),
            ("b.test", ["b.test", "*.b.test"]),
            ("x.y.b.test", ["b.test", "*.b.test"]),
            ("c.test", ["default.test"]),
            ("unknown.test", ["default.test"]),
            (None, ["default.test"]),
        ]:
            handshake = _Handshake(self.factory, serverName)
            self.assertTrue(handshake.app.done, serverName)
            self.assertEqual(handshake.peerNames(), names, serverName)

    def test_alpnAndSecure(self) -> None:
        """
        ALPN offers the site's protocols (a client asking for h2 and
        http/1.1 gets h2, and lbproxy's HTTP/2 connection; one asking for
        http/1.1 gets that), and the request on the connection is secure.
        """
        handshake = _Handshake(self.factory, "a.test", [b"h2", b"http/1.1"], self.clock)
        self.assertEqual(handshake.client.negotiatedProtocol, b"h2")
        self.assertEqual([type(c) for c in self.site.channels], [H2Channel])
        handshake = _Handshake(self.factory, "a.test", [b"http/1.1"], self.clock)
        self.assertEqual(handshake.client.negotiatedProtocol, b"http/1.1")
        handshake.client.write(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        handshake.pump()
        self.assertTrue(handshake.app.received.endswith(b"\r\n\r\nsecure"), handshake.app.received)

    def test_refusedBeforeTLS(self) -> None:
        """
        A connection beyond C{max_connections} gets no TLS protocol at all.
        """
        self.site.maxConnections = 1
        self.site.channels.add(object())  # type: ignore[arg-type]
        self.assertIsNone(self.factory.buildProtocol(None))

    def test_reloadKeepsUnchanged(self) -> None:
        """
        A new table reuses the contexts whose chain did not change, and
        builds one for a changed chain; a connection made before the swap
        keeps its context.
        """
        old = self.creator.table
        assert old is not None
        before = self.creator.serverConnectionForTLS(None)
        self.files.write("a", ["a.test"])
        certificates = loadServerCertificates(self.files.config(_SITE))
        self.creator.table = certificates.buildTable(self.creator, self.site.acceptableProtocols())
        new = self.creator.table
        self.assertIs(new.default, old.default)
        self.assertIs(new.contextFor(b"b.test"), old.contextFor(b"b.test"))
        self.assertIsNot(new.contextFor(b"a.test"), old.contextFor(b"a.test"))
        self.assertIs(before.get_context(), old.default)
        handshake = _Handshake(self.factory, "a.test")
        self.assertTrue(handshake.app.done)


class ProbeTests(_Table, SynchronousTestCase):
    """
    L{probeHandshake}: the handshake made before listening.
    """

    def test_works(self) -> None:
        """
        With the installed Twisted and pyOpenSSL, the probe completes, with
        SNI and without.
        """
        probeHandshake(self.factory, "a.test")
        probeHandshake(self.factory)

    def test_fails(self) -> None:
        """
        A probe that cannot complete as expected (here the contexts offer
        what the site no longer does) refuses, naming Twisted's and
        pyOpenSSL's versions, in the one line a failed start prints.
        """
        import OpenSSL

        from twisted import version

        self.patch(self.site, "acceptableProtocols", lambda: [b"spdy/3.1"])
        with self.assertRaises(TLSUnavailable) as caught:
            probeHandshake(self.factory, "a.test")
        message = str(caught.exception)
        self.assertIn(f"Twisted {version.short()} and pyOpenSSL {OpenSSL.__version__}", message)
        self.assertEqual(startupFailure(caught.exception), message)


class ServiceReloadTests(SynchronousTestCase):
    """
    L{LoadBalancerService.reload} and the certificates, without sockets.
    """

    def test_reloadWithoutTLS(self) -> None:
        """
        A reload to a configuration without C{listen_tls} and certificates
        keeps the HTTPS listeners (until the restart) on the certificates
        they had, rather than fail.
        """
        from twisted.internet.testing import MemoryReactorClock

        from lbproxy.service import LoadBalancerService

        files = _Files(self)
        files.write("default", ["default.test"])
        files.write("a", ["a.test"])
        files.write("b", ["b.test", "*.b.test"], "rsa")
        service = LoadBalancerService(files.config(_SITE), MemoryReactorClock())
        table = service.tlsCreator.table
        self.assertIsNotNone(table)
        plain = (
            "[lbproxy]\nlisten = tcp:8080\n[upstream:app]\nservers = 127.0.0.1:9001\n"
            "[vhost:a]\nserver_names = a.test\nupstream = app\n"
        )
        service.reload(files.config(plain))
        self.assertIs(service.tlsCreator.table, table)
        service.reload(files.config(_SITE))
        self.assertIsNot(service.tlsCreator.table, table)
        self.assertIs(service.tlsCreator.table.default, table.default)
