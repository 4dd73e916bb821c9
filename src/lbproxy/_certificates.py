# -*- test-case-name: tests.test_certificates -*-
"""
Certificate files for HTTPS listeners: reading a PEM chain and its key,
and checking them as an operator would want before anything listens.

A chain file holds the server's certificate first, then the intermediate
certificates that lead to a trusted root (certbot's C{fullchain.pem}); the
key may be in its own file (certbot's C{privkey.pem}) or in the chain file.
L{loadChain} reads both and raises L{CertificateError}, one line naming the
file, for a file that is missing or unreadable, holds no certificate or no
key, or a key that does not belong to the certificate.  L{namesCovered}
tells whether a certificate is valid for a server name, L{expiryWarning}
whether it has expired or expires soon.

Parsing is done with C{cryptography} (the names and dates are read there);
pyOpenSSL gets its own objects through C{X509.from_cryptography} and
C{load_privatekey}.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from typing import Any, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

__all__ = [
    "CertificateChain",
    "CertificateError",
    "EXPIRY_WARNING_DAYS",
    "expiryWarning",
    "loadChain",
    "nameCovered",
]

#: A certificate that expires within this many days is logged as a warning.
EXPIRY_WARNING_DAYS = 14

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"


class CertificateError(ValueError):
    """
    A certificate or key file cannot be used; the message is one line that
    names the file and says why.
    """


class CertificateChain:
    """
    A certificate chain and its private key, read from PEM files.

    @ivar certificate: the server's certificate (C{cryptography}).
    @ivar intermediates: the certificates after it in the chain file, in
        order.
    @ivar key: the private key (C{cryptography}): RSA or ECDSA.
    @ivar certificatePath: the chain file, as configured.
    @ivar keyPath: the key file (the chain file when the key is in it).
    @ivar dnsNames: the DNS names the certificate is for, lower-cased:
        its subjectAltName DNS entries, or its common name when it has
        none.
    @ivar fingerprint: the SHA-256 digest of the chain file and key file
        contents, which tells whether a reload changed them.
    """

    def __init__(
        self,
        certificate: x509.Certificate,
        intermediates: Sequence[x509.Certificate],
        key: Any,
        certificatePath: str,
        keyPath: str,
        fingerprint: bytes,
    ) -> None:
        self.certificate = certificate
        self.intermediates = list(intermediates)
        self.key = key
        self.certificatePath = certificatePath
        self.keyPath = keyPath
        self.fingerprint = fingerprint
        self.dnsNames = _dnsNames(certificate)

    def __repr__(self) -> str:
        return f"<CertificateChain {self.certificatePath!r} for {self.dnsNames!r}>"

    @property
    def notAfter(self) -> datetime.datetime:
        """
        The end of the certificate's validity, an aware UTC datetime.
        """
        return _notAfter(self.certificate)

    def openSSLObjects(self) -> tuple[Any, Any, list[Any]]:
        """
        The key, certificate and intermediates as pyOpenSSL objects, for
        L{twisted.internet.ssl.CertificateOptions}.
        """
        from OpenSSL.crypto import FILETYPE_PEM, X509, load_privatekey

        # Through PEM: pyOpenSSL before 22 converts only RSA and DSA keys
        # with PKey.from_cryptography_key.
        keyPEM = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return (
            load_privatekey(FILETYPE_PEM, keyPEM),
            X509.from_cryptography(self.certificate),
            [X509.from_cryptography(c) for c in self.intermediates],
        )


def _notAfter(certificate: x509.Certificate) -> datetime.datetime:
    aware = getattr(certificate, "not_valid_after_utc", None)
    if aware is not None:
        return aware  # type: ignore[no-any-return]
    # cryptography before 42: a naive datetime in UTC.
    return certificate.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _dnsNames(certificate: x509.Certificate) -> tuple[str, ...]:
    names: Sequence[Any]
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        names = [
            attribute.value
            for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    else:
        names = san.value.get_values_for_type(x509.DNSName)
    return tuple(str(name).lower().rstrip(".") for name in names)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateError(f"cannot read the {what} {path}: {e.strerror or e}") from None


def _splitCertificates(pem: bytes, path: str) -> list[x509.Certificate]:
    certificates = []
    start = pem.find(_BEGIN)
    while start >= 0:
        end = pem.find(_END, start)
        if end < 0:
            break
        block = pem[start : end + len(_END)]
        try:
            certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError as e:
            raise CertificateError(
                f"the certificate file {path} holds a certificate that cannot be read: {e}"
            ) from None
        start = pem.find(_BEGIN, end)
    return certificates


def _loadKey(pem: bytes, path: str) -> Any:
    marker = pem.find(b"PRIVATE KEY-----")
    if marker < 0:
        raise CertificateError(f"the key file {path} holds no PEM private key")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise CertificateError(
            f"the key file {path} holds an encrypted key; lbproxy needs it unencrypted"
        ) from None
    except ValueError as e:
        raise CertificateError(f"the key file {path} holds a key that cannot be read: {e}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise CertificateError(
            f"the key file {path} holds a {type(key).__name__}; lbproxy serves RSA and ECDSA keys"
        )
    return key


def _publicBytes(publicKey: Any) -> bytes:
    return publicKey.public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def loadChain(
    certificatePath: str, keyPath: Optional[str] = None, base: Optional[str] = None
) -> CertificateChain:
    """
    Read a certificate chain and its private key.

    @param certificatePath: the PEM chain file: the server's certificate
        first, then its intermediates.
    @param keyPath: the PEM key file; the chain file itself when L{None}.
    @param base: the directory relative paths are read from (the
        configuration file's); the current directory when L{None}.
    @raise CertificateError: naming the file, when a file cannot be read,
        holds no certificate or no usable key, or the key is not the
        certificate's.
    """
    if base is not None:
        certificatePath = os.path.join(base, certificatePath)
        if keyPath is not None:
            keyPath = os.path.join(base, keyPath)
    chainPEM = _read(certificatePath, "certificate file")
    certificates = _splitCertificates(chainPEM, certificatePath)
    if not certificates:
        raise CertificateError(f"the certificate file {certificatePath} holds no PEM certificate")
    if keyPath is None:
        keyPath, keyPEM = certificatePath, chainPEM
    else:
        keyPEM = _read(keyPath, "key file")
    key = _loadKey(keyPEM, keyPath)
    if _publicBytes(key.public_key()) != _publicBytes(certificates[0].public_key()):
        raise CertificateError(
            f"the key in {keyPath} does not match the certificate in {certificatePath}"
        )
    fingerprint = hashlib.sha256(chainPEM + b"\0" + keyPEM).digest()
    return CertificateChain(
        certificates[0], certificates[1:], key, certificatePath, keyPath, fingerprint
    )


def nameCovered(certificateNames: Sequence[str], serverName: str) -> bool:
    """
    Whether a certificate for C{certificateNames} is valid for the server
    name C{serverName} (a vhost's exact name, or a C{*.domain} wildcard,
    which only the same wildcard covers).  A certificate's wildcard covers
    one label, as browsers read it (RFC 6125).
    """
    serverName = serverName.lower()
    for name in certificateNames:
        if name == serverName:
            return True
        if name.startswith("*.") and not serverName.startswith("*."):
            label, dot, rest = serverName.partition(".")
            if dot and label and rest == name[2:]:
                return True
    return False


def expiryWarning(chain: CertificateChain, now: datetime.datetime) -> Optional[str]:
    """
    What to warn about the validity of C{chain}'s certificate at C{now}
    (an aware datetime): that it has expired, or expires within
    L{EXPIRY_WARNING_DAYS} days; L{None} when neither.
    """
    notAfter = chain.notAfter
    path = chain.certificatePath
    when = notAfter.strftime("%Y-%m-%d %H:%M:%S UTC")
    if notAfter <= now:
        return f"the certificate in {path} has expired (on {when}); clients will refuse it"
    left = notAfter - now
    if left <= datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        days = left.days
        return f"the certificate in {path} expires in {days} day(s), on {when}"
    return None
