# -*- test-case-name: tests.test_headers -*-
"""
Header rewriting between client and backend.  Pure functions over
L{twisted.web.http_headers.Headers}.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from twisted.web.http_headers import Headers

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
    names = set(HOP_BY_HOP)
    for value in headers.getRawHeaders(b"connection", ()):
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                names.add(token)
    return frozenset(names)


def endToEnd(headers: Headers) -> Iterable[tuple[bytes, Sequence[bytes]]]:
    """
    Every header of C{headers} that is not hop-by-hop, with all its values
    in order.
    """
    drop = connectionTokens(headers)
    for name, values in headers.getAllRawHeaders():
        if name.lower() not in drop:
            yield name, values


def requestHeaders(
    incoming: Headers,
    clientAddress: Optional[str],
    secure: bool,
    host: bytes,
) -> Headers:
    """
    Build the headers of the request sent to the backend.

    Hop-by-hop headers are dropped; C{X-Forwarded-For} gets the client
    address appended; C{X-Forwarded-Proto}, C{X-Forwarded-Host} and
    C{X-Real-IP} are set; C{Host} becomes C{host}.  C{Content-Length} is
    dropped: the body is re-framed for the backend.

    @param incoming: the client's request headers.
    @param clientAddress: the client's IP address, or L{None} when it is
        not an IP connection.
    @param secure: whether the client connected over TLS.
    @param host: the C{Host} value to send.
    """
    outgoing = Headers()
    for name, values in endToEnd(incoming):
        lowered = name.lower()
        if lowered in _REQUEST_OWN:
            continue
        if lowered == b"x-forwarded-for":
            continue
        outgoing.setRawHeaders(name, values)
    address = (clientAddress or "").encode("ascii", "replace")
    forwarded = list(incoming.getRawHeaders(b"x-forwarded-for", []))
    if address:
        forwarded = forwarded + [address]
    if forwarded:
        outgoing.setRawHeaders(b"X-Forwarded-For", [b", ".join(forwarded)])
    if address:
        outgoing.setRawHeaders(b"X-Real-IP", [address])
    outgoing.setRawHeaders(b"X-Forwarded-Proto", [b"https" if secure else b"http"])
    clientHost = incoming.getRawHeaders(b"host")
    if clientHost:
        outgoing.setRawHeaders(b"X-Forwarded-Host", clientHost[:1])
    outgoing.setRawHeaders(b"Host", [host])
    return outgoing


def requestHeaderBlock(
    incoming: Headers,
    clientAddress: Optional[str],
    secure: bool,
) -> bytes:
    """
    The headers of the request sent to a backend, as header lines ready to
    be written, by the rules of L{requestHeaders} but without C{Host},
    which depends on the backend and is added by the caller.

    The client's headers were validated when they were parsed, so they are
    copied once, as bytes, without another pass through L{Headers}.
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
    return b"".join(lines)
