# -*- test-case-name: tests.test_headers -*-
"""
Header rewriting between client and backend: the forwarding headers
lbproxy always sets (pure functions of L{twisted.web.http_headers.Headers}),
and a vhost's own rules (C{request_headers}, C{response_headers},
C{request_id}), compiled once into L{HeaderRules} when the configuration
is built, so that a request pays only for the variables its rules use.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Optional, Sequence, Union

from twisted.logger import Logger
from twisted.web.http_headers import Headers

from lbproxy._client import parseConnectionTokens
from lbproxy._http import CTL
from lbproxy._values import HeaderRule
from lbproxy._vhost import hostName

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
    removed: frozenset[bytes] = frozenset(),
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
    @param removed: lower-cased names of headers not to send, whether the
        client's or lbproxy's own (a vhost's C{request_headers} rules).
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
    if removed:
        lines = [
            line for line in lines if line[: line.index(b":")].lower() not in removed
        ]
    return b"".join(lines), clientHost


#: A client's C{X-Request-ID} that is kept rather than replaced: 1 to 128
#: letters, digits, C{.}, C{_}, C{:} and C{-} (a UUID, a hex id, a
#: dotted trace id).
_REQUEST_ID = re.compile(rb"\A[A-Za-z0-9._:-]{1,128}\Z")

#: A compiled C{set} rule: the header's name, and its value as bytes (no
#: variable) or as parts, each bytes (literal) or str (a variable's name).
_SetRule = tuple[bytes, Union[bytes, tuple[Union[bytes, str], ...]]]


def makeRequestId() -> str:
    """
    A new request id: 128 random bits, as 32 lower-case hex digits.
    """
    return secrets.token_hex(16)


def requestIdFor(request: Any) -> str:
    """
    The id of C{request}: the client's C{X-Request-ID} when it sent exactly
    one valid one (see L{_REQUEST_ID}), else a new one (L{makeRequestId}).
    """
    values = request.requestHeaders.getRawHeaders(b"x-request-id")
    if values and len(values) == 1 and _REQUEST_ID.match(values[0]):
        return str(values[0].decode("ascii"))
    return makeRequestId()


def _hostName(request: Any) -> bytes:
    """
    C{$host}: the request's C{Host} lower-cased, without its port or a
    trailing dot; the address the client connected to when it sent none.
    """
    host = request.getHeader(b"host")
    if not host:
        return str(getattr(request.getHost(), "host", "")).encode("ascii", "replace")
    return hostName(host)


def _compile(rules: Sequence[HeaderRule]) -> tuple[_SetRule, ...]:
    """
    The C{set} rules of C{rules}, ready to render.
    """
    compiled: list[_SetRule] = []
    for verb, name, parts in rules:
        if verb != "set":
            continue
        value = tuple(text if variable else text.encode("ascii") for variable, text in parts)
        if all(isinstance(part, bytes) for part in value):
            compiled.append((name.encode("ascii"), b"".join(value)))  # type: ignore[arg-type]
        else:
            compiled.append((name.encode("ascii"), value))
    return tuple(compiled)


class HeaderRules:
    """
    The header rules of one vhost, compiled: C{set NAME VALUE} replaces
    every C{NAME} header with one (or, for several rules of one name,
    several) of the value, C{remove NAME} drops them; for requests to the
    backend (the client's headers and lbproxy's forwarding ones alike) and
    for responses to the client.  C{request_id} adds C{set X-Request-ID
    $request_id} both ways.

    Values were checked when the configuration was read; a value with
    variables is checked again once they are substituted, and a header
    whose value would then hold a control character (CR, LF, NUL...) is
    not sent, with a log line: never a split header.

    @ivar requestRemoved: the lower-cased names of the request headers not
        passed on (those set or removed).
    @ivar responseRemoved: the same for the backend's response headers.
    @ivar requestId: whether C{request_id} is on.
    """

    _log = Logger()

    def __init__(
        self,
        request: Sequence[HeaderRule] = (),
        response: Sequence[HeaderRule] = (),
        requestId: bool = False,
    ) -> None:
        """
        @param request: the C{request_headers} rules, as
            L{lbproxy._values.parseRequestHeaderRules} returns them.
        @param response: the C{response_headers} rules.
        @param requestId: see L{requestId}.
        """
        if requestId:
            idRule: HeaderRule = ("set", "X-Request-ID", ((True, "request_id"),))
            request = (*request, idRule)
            response = (*response, idRule)
        self.requestId = requestId
        self.requestRemoved = frozenset(n.lower().encode("ascii") for _, n, _ in request)
        self.responseRemoved = frozenset(n.lower().encode("ascii") for _, n, _ in response)
        self._requestSet = _compile(request)
        self._responseSet = _compile(response)
        self._uses = frozenset(
            part
            for _, value in self._requestSet + self._responseSet
            if not isinstance(value, bytes)
            for part in value
            if isinstance(part, str)
        )

    def bind(self, request: Any) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """
        Apply the rules to C{request}: substitute the variables of the
        values, and make its request id (kept as C{request.requestId}, a
        L{str}) when one is needed.

        @return: the header lines to add to the request sent to the backend
            (the headers of L{requestRemoved} being left out of it), and
            the C{(name, value)} pairs to add to the response.
        """
        values = self._values(request) if self._uses else {}
        lines = b"".join(
            b"%s: %s\r\n" % field for field in self._render(self._requestSet, values)
        )
        return lines, self._render(self._responseSet, values)

    def _values(self, request: Any) -> dict[str, bytes]:
        """
        The values of the variables the rules use, for C{request}.
        """
        uses = self._uses
        values = {}
        if "request_id" in uses:
            requestId = requestIdFor(request) if self.requestId else makeRequestId()
            request.requestId = requestId
            values["request_id"] = requestId.encode("ascii")
        if "remote_addr" in uses:
            address = getattr(request.getClientAddress(), "host", None)
            values["remote_addr"] = str(address or "").encode("ascii", "replace")
        if "host" in uses:
            values["host"] = _hostName(request)
        if "scheme" in uses:
            values["scheme"] = b"https" if request.isSecure() else b"http"
        if "server_port" in uses:
            port = getattr(request.getHost(), "port", None)
            values["server_port"] = b"" if port is None else b"%d" % port
        return values

    def _render(
        self, rules: tuple[_SetRule, ...], values: dict[str, bytes]
    ) -> list[tuple[bytes, bytes]]:
        """
        The C{(name, value)} pairs of C{rules} with C{values} substituted;
        an empty value is left out (as nginx does), and so is an unsafe one.
        """
        fields = []
        for name, value in rules:
            if not isinstance(value, bytes):
                value = b"".join(
                    part if isinstance(part, bytes) else values[part] for part in value
                ).strip(b" \t")
                if value.translate(None, CTL) != value:
                    self._log.warn(
                        "header {name} not sent: its value would hold a control "
                        "character once its variables are substituted: {value!r}",
                        name=name.decode("ascii"),
                        value=value,
                    )
                    continue
            if value:
                fields.append((name, value))
        return fields
