"""
Certificates made by the tests, with C{cryptography}: a root authority, an
intermediate one, and server certificates it issues, written as certbot
lays them out (C{fullchain.pem}: the server's certificate then the
intermediate; C{privkey.pem}: the key).  No private key is checked in.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Any, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

_NOW = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def newKey(kind: str = "ec") -> Any:
    """
    A new private key: C{"ec"} (P-256) or C{"rsa"} (2048 bits).
    """
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def writeSecret(path: str, content: bytes) -> str:
    """
    Write C{content} to C{path} readable and writable by its owner only,
    as certbot writes a private key (a key others can read is a warning).

    @return: C{path}.
    """
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(content)
    return path


def keyPEM(key: Any) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


class Authority:
    """
    A root certificate authority and an intermediate one under it.

    @ivar root: the root's certificate (what a client trusts).
    @ivar intermediate: the intermediate's certificate (what a server
        sends after its own).
    """

    def __init__(self, name: str = "lbproxy test") -> None:
        self.rootKey = newKey()
        self.root = self._build(
            _name(f"{name} root"), _name(f"{name} root"), self.rootKey.public_key(),
            self.rootKey, ca=True,
        )
        self.intermediateKey = newKey()
        self.intermediate = self._build(
            _name(f"{name} intermediate"), self.root.subject,
            self.intermediateKey.public_key(), self.rootKey, ca=True,
        )

    @staticmethod
    def _build(
        subject: x509.Name,
        issuer: x509.Name,
        publicKey: Any,
        signer: Any,
        ca: bool,
        names: Sequence[str] = (),
        notAfter: Optional[datetime.datetime] = None,
        client: bool = False,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(publicKey)
            .serial_number(x509.random_serial_number())
            .not_valid_before(
                min(_NOW, notAfter or _NOW) - datetime.timedelta(days=1)
            )
            .not_valid_after(notAfter or _NOW + datetime.timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(publicKey), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=not ca,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=ca,
                    crl_sign=ca,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        if not ca:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(
                    [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
                    + ([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
                ),
                critical=False,
            )
        if names:
            entries: list[x509.GeneralName] = []
            for n in names:
                try:
                    entries.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    entries.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def issue(
        self,
        names: Sequence[str],
        kind: str = "ec",
        days: float = 90,
        key: Any = None,
        client: bool = False,
        commonName: bool = True,
    ) -> tuple[x509.Certificate, Any]:
        """
        A server certificate for C{names} (DNS names or IP addresses),
        signed by the intermediate, valid for C{days} more days (negative:
        expired that long ago); good for a client too when C{client}; its
        subject the first name, or empty unless C{commonName}.

        @return: the certificate and its key.
        """
        key = key or newKey(kind)
        certificate = self._build(
            _name(names[0]) if commonName else x509.Name([]),
            self.intermediate.subject, key.public_key(),
            self.intermediateKey, ca=False, names=names,
            notAfter=_NOW + datetime.timedelta(days=days), client=client,
        )
        return certificate, key

    def write(
        self, directory: str, names: Sequence[str], kind: str = "ec", days: float = 90
    ) -> tuple[str, str]:
        """
        Issue a certificate for C{names} and write it as certbot does, in
        C{directory}: C{fullchain.pem} (the certificate, then the
        intermediate) and C{privkey.pem}.

        @return: the paths of the chain and of the key.
        """
        certificate, key = self.issue(names, kind, days)
        os.makedirs(directory, exist_ok=True)
        chain = os.path.join(directory, "fullchain.pem")
        with open(chain, "wb") as f:
            f.write(pem(certificate) + pem(self.intermediate))
        keyPath = writeSecret(os.path.join(directory, "privkey.pem"), keyPEM(key))
        return chain, keyPath

    def writeRoot(self, path: str) -> str:
        """
        Write the root certificate (a client's trust store) to C{path}.
        """
        with open(path, "wb") as f:
            f.write(pem(self.root))
        return path


def writeSelfSigned(directory: str, names: Sequence[str]) -> tuple[str, str, bytes]:
    """
    Make a self-signed certificate for C{names} (its own root: what a
    client trusts is the certificate itself), valid from a day ago for 90
    days, and write it in C{directory} as C{cert.pem} and C{key.pem}.

    @return: the paths of the key and of the certificate, and the
        certificate as PEM.
    """
    key = newKey()
    subject = _name(names[0])
    certificate = Authority._build(
        subject, subject, key.public_key(), key, ca=True, names=names
    )
    os.makedirs(directory, exist_ok=True)
    keyPath = writeSecret(os.path.join(directory, "key.pem"), keyPEM(key))
    certPath = os.path.join(directory, "cert.pem")
    with open(certPath, "wb") as f:
        f.write(pem(certificate))
    return keyPath, certPath, pem(certificate)
