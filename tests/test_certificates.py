"""
Tests for L{lbproxy._certificates}: reading certificate chains and keys,
and the checks an operator gets before anything listens.
"""

from __future__ import annotations

import datetime
import os

from twisted.trial.unittest import SynchronousTestCase

from lbproxy._certificates import (
    CertificateError,
    expiryWarning,
    loadChain,
    nameCovered,
)
from tests.certificates import Authority, keyPEM, newKey, pem

_AUTHORITY = Authority()


class LoadChainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def write(self, name: str, content: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(content)
        return path

    def test_certbotLayout(self) -> None:
        """
        C{fullchain.pem} and C{privkey.pem}: the server's certificate, the
        intermediate after it, the key; ECDSA and RSA alike.
        """
        for kind in ("ec", "rsa"):
            chain, key = _AUTHORITY.write(os.path.join(self.directory, kind), ["a.test"], kind)
            loaded = loadChain(chain, key)
            self.assertEqual(loaded.dnsNames, ("a.test",))
            self.assertEqual(loaded.intermediates, [_AUTHORITY.intermediate])
            self.assertEqual((loaded.certificatePath, loaded.keyPath), (chain, key))

    def test_keyInTheChainFile(self) -> None:
        """
        Without a key file, the key is read from the chain file.
        """
        certificate, key = _AUTHORITY.issue(["a.test"])
        path = self.write("both.pem", pem(certificate) + keyPEM(key))
        self.assertEqual(loadChain(path).keyPath, path)

    def test_relativeToBase(self) -> None:
        """
        Relative paths are read from C{base}.
        """
        _AUTHORITY.write(os.path.join(self.directory, "live"), ["a.test"])
        loaded = loadChain("live/fullchain.pem", "live/privkey.pem", self.directory)
        self.assertEqual(loaded.certificatePath, os.path.join(self.directory, "live/fullchain.pem"))

    def test_missingFile(self) -> None:
        """
        A missing file is one line naming it and why.
        """
        path = os.path.join(self.directory, "nothere.pem")
        with self.assertRaises(CertificateError) as caught:
            loadChain(path)
        self.assertEqual(
            str(caught.exception),
            f"cannot read the certificate file {path}: No such file or directory",
        )
        chain, _ = _AUTHORITY.write(self.directory, ["a.test"])
        with self.assertRaises(CertificateError) as caught:
            loadChain(chain, path)
        self.assertIn(f"cannot read the key file {path}", str(caught.exception))

    def test_keyOfAnother(self) -> None:
        """
        A key that is not the certificate's is refused, naming both files.
        """
        chain, _ = _AUTHORITY.write(self.directory, ["a.test"])
        other = self.write("other.pem", keyPEM(newKey()))
        with self.assertRaises(CertificateError) as caught:
            loadChain(chain, other)
        self.assertEqual(
            str(caught.exception),
            f"the key in {other} does not match the certificate in {chain}",
        )

    def test_notPEM(self) -> None:
        """
        A file with no certificate, or no key, says so.
        """
        empty = self.write("empty.pem", b"nothing here\n")
        with self.assertRaises(CertificateError) as caught:
            loadChain(empty)
        self.assertIn(f"{empty} holds no PEM certificate", str(caught.exception))
        certificate, _ = _AUTHORITY.issue(["a.test"])
        alone = self.write("alone.pem", pem(certificate))
        with self.assertRaises(CertificateError) as caught:
            loadChain(alone)
        self.assertIn(f"{alone} holds no PEM private key", str(caught.exception))

    def test_encryptedKey(self) -> None:
        """
        An encrypted key is refused: lbproxy has no passphrase to give.
        """
        from cryptography.hazmat.primitives import serialization

        certificate, key = _AUTHORITY.issue(["a.test"])
        chain = self.write("chain.pem", pem(certificate))
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        keyPath = self.write("key.pem", encrypted)
        with self.assertRaises(CertificateError) as caught:
            loadChain(chain, keyPath)
        self.assertIn("encrypted key", str(caught.exception))


class NameCoveredTests(SynchronousTestCase):
    def test_names(self) -> None:
        """
        Exact names, one-label wildcards, and a vhost wildcard only by the
        same wildcard.
        """
        names = ("a.test", "*.b.test")
        self.assertTrue(nameCovered(names, "a.test"))
        self.assertTrue(nameCovered(names, "A.TEST"))
        self.assertTrue(nameCovered(names, "x.b.test"))
        self.assertTrue(nameCovered(names, "*.b.test"))
        self.assertFalse(nameCovered(names, "b.test"))
        self.assertFalse(nameCovered(names, "y.x.b.test"))
        self.assertFalse(nameCovered(names, "*.a.test"))
        self.assertFalse(nameCovered(names, "c.test"))


class ExpiryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())

    def warningFor(self, days: float) -> object:
        chain, key = _AUTHORITY.write(os.path.join(self.directory, str(days)), ["a.test"], days=days)
        now = datetime.datetime.now(datetime.timezone.utc)
        return expiryWarning(loadChain(chain, key), now), chain

    def test_expired(self) -> None:
        warning, chain = self.warningFor(-2)
        self.assertIn(f"the certificate in {chain} has expired", str(warning))

    def test_soon(self) -> None:
        """
        Within 14 days: a warning with the days left and the date.
        """
        warning, chain = self.warningFor(10.5)
        self.assertIn(f"the certificate in {chain} expires in 10 day(s), on ", str(warning))

    def test_fine(self) -> None:
        warning, _ = self.warningFor(15)
        self.assertIsNone(warning)
