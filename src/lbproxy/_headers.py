# -*- test-case-name: tests.test_headers -*-
"""
Header rewriting between client and backend.  Pure functions of
L{twisted.web.http_headers.Headers}.
"""

from __future__ import annotations

from typing import Optional

from twisted.web.http_headers import Headers

from lbproxy._client import parseConnectionTokens

#: Headers that describe one connection, never forwarded (RFC 9110 7.6.1),
#: plus C{Proxy-Connection}, which old clients still send.
HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ]
)

#: Headers lbproxy sets itself on the request it sends to a backend.
_REQUEST_OWN = frozenset(
    [
        b"host",
        b"content-length",
        b"x-real-ip",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    ]
)


def connectionTokens(headers: Headers) -> frozenset[bytes]:
    """
    The lower-cased header names listed in C{Connection}, plus the fixed
    hop-by-hop set: every header name that must not cross the proxy.
    """
    values = headers.getRawHeaders(b"connection")
    if not values:
        return HOP_BY_HOP
    return HOP_BY_HOP | parseConnectionTokens(values)


def forwardedHeaders(
    incoming: Headers,
    clientAddress: Optional[str],
    secure: bool,
) -> tuple[bytes, Optional[bytes]]:
    """
    The headers of the request sent to a backend, as header lines ready to
    be written.

    Hop-by-hop headers, and those named in C{Connection}, are dropped;
    C{X-Forwarded-For} gets the client address appended; C{X-Forwarded-Proto},
    C{X-Forwarded-Host} and C{X-Real-IP} are set (replacing what the client
    sent).  C{Content-Length} is dropped, since the body is re-framed for the
    backend, and so is C{Host}, which depends on the backend and is added
    by the caller.

    The client's headers were validated when they were parsed, so they are
    copied once, as bytes, without another pass through L{Headers}.

    @param incoming: the client's request headers.
    @param clientAddress: the client's IP address, or L{None} when it is
        not an IP connection.
    @param secure: whether the client connected over TLS.
    @return: the header lines, and the client's C{Host} (or L{None}).
    """
    drop = connectionTokens(incoming)
    lines = []
    forwarded: list[bytes] = []
    clientHost: Optional[bytes] = None
    for name, values in incoming.getAllRawHeaders():
        lowered = name.lower()
        if lowered in _REQUEST_OWN or lowered == b"x-forwarded-for":
            if lowered == b"x-forwarded-for":
                forwarded.extend(values)
            elif lowered == b"host" and values:
                clientHost = values[0]
            continue
        if lowered in drop:
            continue
        for value in values:
            lines.append(b"%s: %s\r\n" % (name, value))
    address = (clientAddress or "").encode("ascii", "replace")
    if address:
        forwarded.append(address)
    if forwarded:
        lines.append(b"X-Forwarded-For: %s\r\n" % b", ".join(forwarded))
    if address:
        lines.append(b"X-Real-Ip: %s\r\n" % address)
    lines.append(
        b"X-Forwarded-Proto: https\r\n" if secure else b"X-Forwarded-Proto: http\r\n"
    )
    if clientHost is not None:
        lines.append(b"X-Forwarded-Host: %s\r\n" % clientHost)
    return b"".join(lines), clientHost
