"""
Tests for L{lbproxy._tls} (TLS to C{https://} backends) and for the
handshake wait of L{lbproxy._client.UpstreamConnection}.
"""

from __future__ import annotations

import os

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lbproxy._client import TLSHandshakeFailed, UpstreamConnection
from lbproxy._tls import UnverifiedClientCreator, clientCreator, trustRootFor
from tests.certificates import Authority

_AUTHORITY = Authority()


class TrustRootTests(SynchronousTestCase):
    def test_parsedOncePerVersion(self) -> None:
        """
        A C{tls_ca} file is parsed once, and again once it changes.
        """
        path = _AUTHORITY.writeRoot(os.path.abspath(self.mktemp()))
        first = trustRootFor(path)
        self.assertIs(trustRootFor(path), first)
        Authority("other").writeRoot(path)
        os.utime(path, ns=(1, 1))
        self.assertIsNot(trustRootFor(path), first)

    def test_empty(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"no certificates\n")
        self.assertRaises(ValueError, trustRootFor, path)


class ClientCreatorTests(SynchronousTestCase):
    def test_unverifiedSendsSNI(self) -> None:
        """
        With C{verify} off, the connection still carries the name in SNI,
        but not an IP address, which SNI cannot carry.
        """
        creator = clientCreator("10.0.0.1", verify=False, serverName="api.test")
        self.assertIsInstance(creator, UnverifiedClientCreator)
        self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, creator))
        connection = creator.clientConnectionForTLS(None)
        self.assertEqual(connection.get_servername(), b"api.test")
        connection = clientCreator("10.0.0.1", verify=False).clientConnectionForTLS(None)
        self.assertIsNone(connection.get_servername())

    def test_verified(self) -> None:
        """
        With C{verify} on, Twisted's verifying creator, for the server name.
        """
        path = _AUTHORITY.writeRoot(os.path.abspath(self.mktemp()))
        creator = clientCreator("10.0.0.1", caFile=path, serverName="api.test")
        self.assertTrue(IOpenSSLClientConnectionCreator.providedBy(creator))
        self.assertNotIsInstance(creator, UnverifiedClientCreator)


class HandshakeWaitTests(SynchronousTestCase):
    def connection(self) -> UpstreamConnection:
        connection = UpstreamConnection()
        connection.makeConnection(StringTransport())
        return connection

    def test_done(self) -> None:
        connection = self.connection()
        waiting = connection.whenHandshakeDone()
        self.assertNoResult(waiting)
        connection.handshakeCompleted()
        self.assertIs(self.successResultOf(waiting), connection)
        self.assertIs(self.successResultOf(connection.whenHandshakeDone()), connection)

    def test_lostBefore(self) -> None:
        """
        A connection lost before its handshake fails the wait, saying why.
        """
        connection = self.connection()
        waiting = connection.whenHandshakeDone()
        connection.connectionLost(Failure(SSL.Error([("SSL routines", "", "certificate verify failed")])))
        failure = self.failureResultOf(waiting, TLSHandshakeFailed)
        self.assertIn("TLS handshake failed: ", str(failure.value))
        self.assertIn("certificate verify failed", str(failure.value))
        self.failureResultOf(connection.whenHandshakeDone(), TLSHandshakeFailed)

    def test_verificationFailed(self) -> None:
        """
        Twisted says the handshake completed when the name did not verify,
        as it aborts the connection: the wait goes on to the loss, whose
        reason names the mismatch.
        """
        from service_identity import VerificationError

        connection = self.connection()
        waiting = connection.whenHandshakeDone()
        connection.transport.disconnecting = True  # type: ignore[union-attr]
        connection.handshakeCompleted()
        self.assertNoResult(waiting)
        # (What service_identity's DNSMismatch says, written out: its
        # module moved between the releases lbproxy supports.)
        error = VerificationError(errors=["DNSMismatch(mismatched_id=DNS_ID(hostname='api.test'))"])
        connection.connectionLost(Failure(error))
        failure = self.failureResultOf(waiting, TLSHandshakeFailed)
        self.assertIn("not valid for the name", str(failure.value))
        self.assertIn("api.test", str(failure.value))
