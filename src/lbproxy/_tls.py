# -*- test-case-name: tests.test_tls -*-
"""
TLS for connections to C{https://} backends.

Verified connections use L{optionsForClientTLS} (the name sent in SNI and
checked by C{service_identity}: the server's host, or the upstream's
C{tls_server_name}), against the authorities of C{tls_ca} or the
platform's trust store.  A C{tls_ca} file is parsed once for all the
backends that name it (again only when the file changes).

With C{tls_verify = no}, L{UnverifiedClientCreator} still sends the name
in SNI (a backend serving several names needs it to pick its
certificate): Twisted's L{CertificateOptions} as a client sends none.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from OpenSSL import SSL
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from zope.interface import implementer

__all__ = ["UnverifiedClientCreator", "clientCreator", "trustRootFor"]

#: Parsed C{tls_ca} files: (path, modification time, size) to trust root.
_trustRoots: dict[tuple[str, int, int], Any] = {}


def trustRootFor(caFile: Optional[str]) -> Any:
    """
    The trust root of the authorities in the PEM file C{caFile}, parsed
    once per version of the file; the platform's trust store when
    L{None}.

    @raise OSError: when the file cannot be read.
    @raise ValueError: when it holds no certificate.
    """
    if caFile is None:
        return platformTrust()
    status = os.stat(caFile)
    key = (os.path.abspath(caFile), status.st_mtime_ns, status.st_size)
    root = _trustRoots.get(key)
    if root is not None:
        return root
    with open(caFile, "rb") as f:
        pem = f.read()
    certificates = []
    marker = b"-----END CERTIFICATE-----"
    for chunk in pem.split(marker)[:-1]:
        certificates.append(Certificate.loadPEM(chunk + marker))
    if not certificates:
        raise ValueError(f"{caFile} holds no PEM certificate")
    root = trustRootFromCertificates(certificates)
    for stale in [k for k in _trustRoots if k[0] == key[0]]:
        del _trustRoots[stale]
    _trustRoots[key] = root
    return root


def isAddress(host: str) -> bool:
    """
    Whether C{host} is an IPv4 or IPv6 address (which SNI cannot carry).
    """
    return bool(isIPAddress(host) or isIPv6Address(host))


@implementer(IOpenSSLClientConnectionCreator)
class UnverifiedClientCreator:
    """
    Client TLS connections that check nothing of the server's certificate
    but send C{serverName} in SNI (unless it is an IP address).
    """

    def __init__(self, serverName: str) -> None:
        self.serverName = serverName
        self._sni = None if isAddress(serverName) else serverName.encode("idna")
        self._context = CertificateOptions().getContext()

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        connection.set_app_data(tlsProtocol)
        return connection


def clientCreator(
    host: str,
    verify: bool = True,
    caFile: Optional[str] = None,
    serverName: Optional[str] = None,
) -> Any:
    """
    The client TLS connection creator for a backend called C{host}.

    @param verify: check the certificate chain and the name.
    @param caFile: PEM file of trusted CA certificates; the platform's
        trust store when L{None}.
    @param serverName: the name to send in SNI and check the certificate
        against, instead of C{host}.
    """
    name = serverName or host
    if not verify:
        return UnverifiedClientCreator(name)
    return optionsForClientTLS(name, trustRoot=trustRootFor(caFile))
