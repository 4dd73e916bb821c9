# -*- test-case-name: tests.test_pool -*-
"""
TLS for connections to C{https://} backends.

Contexts are never built by hand: verified connections use
L{optionsForClientTLS} (hostname checks by C{service_identity}), and
unverified ones L{CertificateOptions}, both from L{twisted.internet.ssl}.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)


def _trustRoot(caFile: Optional[str]) -> Any:
    if caFile is None:
        return platformTrust()
    with open(caFile, "rb") as f:
        pem = f.read()
    certificates = []
    marker = b"-----END CERTIFICATE-----"
    for chunk in pem.split(marker)[:-1]:
        certificates.append(Certificate.loadPEM(chunk + marker))
    return trustRootFromCertificates(certificates)


def clientCreator(host: str, verify: bool = True, caFile: Optional[str] = None) -> Any:
    """
    The client TLS connection creator for a backend called C{host}.

    @param verify: check the certificate chain and the host name.
    @param caFile: PEM file of trusted CA certificates; the platform's
        trust store when L{None}.
    """
    if not verify:
        return CertificateOptions()
    return optionsForClientTLS(host, trustRoot=_trustRoot(caFile))
