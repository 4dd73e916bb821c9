# -*- test-case-name: tests.test_site -*-
"""
The client side: a L{twisted.web.server.Site} with lbproxy's limits and
access log.
"""

from __future__ import annotations

import sys
from typing import IO, Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.http import HTTPChannel, combinedLogFormatter
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from lbproxy._pages import PHRASES, errorBody

_RESPONSE = (
    b"HTTP/1.1 %d %s\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n"
    b"\r\n"
)


class ProxyRequest(Request):
    """
    A request that refuses a body larger than the site's C{maxBodySize}
    with 413, whether the size is announced by C{Content-Length} or reached
    by a chunked body, before any of it is forwarded.  Twisted already
    spools a large body to a temporary file, so nothing big stays in memory.

    Responses get no default C{Content-Type}: a proxy passes on what the
    backend said, and says nothing where the backend said nothing.
    """

    defaultContentType = None
    _bodyReceived = 0
    channel: ProxyChannel

    def gotLength(self, length: Optional[int]) -> None:
        limit = self.channel.maxBodySize
        if length is not None and length > limit:
            self.channel.refuse(413)
            length = 0
        Request.gotLength(self, length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.channel.refused:
            return
        self._bodyReceived += len(data)
        if self._bodyReceived > self.channel.maxBodySize:
            self.channel.refuse(413)
            return
        Request.handleContentChunk(self, data)


class ProxyChannel(HTTPChannel):
    """
    An L{HTTPChannel} that answers an oversized request head with 431 and
    an oversized body with 413, then closes, reading nothing more.

    @ivar maxBodySize: the largest request body accepted, in bytes.
    @ivar refused: whether the connection was refused and is closing.
    """

    _log = Logger()
    maxBodySize = 100 * 1024 * 1024
    refused = False
    site: ProxySite
    transport: Any

    def refuse(self, code: int) -> None:
        """
        Answer C{code} with a short page and close the connection.
        """
        if self.refused:
            return
        self.refused = True
        body = errorBody(code)
        self._log.info(
            "refused a request from {client}: {code}",
            client=getattr(self.transport.getPeer(), "host", "?"),
            code=code,
        )
        self.transport.write(_RESPONSE % (code, PHRASES[code].encode("ascii"), len(body)) + body)
        self.loseConnection()

    def connectionMade(self) -> None:
        HTTPChannel.connectionMade(self)
        self.site.channels.add(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.site.channels.discard(self)
        HTTPChannel.connectionLost(self, reason)
        if not self.site.channels and self.site._drained is not None:
            drained, self.site._drained = self.site._drained, None
            drained.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if not self.refused:
            HTTPChannel.dataReceived(self, data)

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse(431)
            return
        HTTPChannel.lineReceived(self, line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(431)

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse(400)


class ProxySite(Site):
    """
    The L{Site} of lbproxy's listeners.

    @ivar accessLog: where the access log goes: an open text file, or
        L{None} for no access log.
    @ivar channels: the open client connections.
    """

    _drained: Optional[Deferred[None]] = None

    requestFactory = ProxyRequest
    # Plain HTTP/1.1 channels: the limits above live in ProxyChannel.
    protocol = ProxyChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: IResource,
        accessLog: Optional[IO[str]] = None,
        keepaliveTimeout: float = 75.0,
        maxBodySize: int = 100 * 1024 * 1024,
        maxHeaderSize: int = 16 * 1024,
        reactor: Any = None,
    ) -> None:
        """
        @param resource: the root resource, usually a
            L{lbproxy.VirtualHostResource}.
        @param accessLog: see L{accessLog}.
        @param keepaliveTimeout: seconds an idle client connection is kept.
        @param maxBodySize: the largest request body, in bytes (else 413).
        @param maxHeaderSize: the largest request head, in bytes (else 431).
        """
        if reactor is None:
            Site.__init__(self, resource, timeout=keepaliveTimeout)
        else:
            Site.__init__(self, resource, timeout=keepaliveTimeout, reactor=reactor)
        self.accessLog = accessLog
        self.channels: set[ProxyChannel] = set()
        self.maxBodySize = maxBodySize
        self.maxHeaderSize = maxHeaderSize

    def buildProtocol(self, addr: Any) -> Any:
        channel = Site.buildProtocol(self, addr)
        channel.maxBodySize = self.maxBodySize
        channel.totalHeadersSize = self.maxHeaderSize
        channel.MAX_LENGTH = self.maxHeaderSize
        return channel

    def closeConnections(self) -> Deferred[None]:
        """
        Close the idle client connections now, and every other one as soon
        as its response is complete (as nginx does on a graceful stop).

        @return: a L{Deferred} that fires once every connection is closed.
        """
        if not self.channels:
            return succeed(None)
        if self._drained is None:
            self._drained = Deferred()
        drained = self._drained
        for channel in list(self.channels):
            channel.persistent = False
            if not channel.requests:
                channel.loseConnection()
        return drained

    def log(self, request: Any) -> None:
        """
        Write one line of the combined log format, unless the access log is
        off.
        """
        if self.accessLog is None:
            return
        line = combinedLogFormatter(self._logDateTime, request)
        self.accessLog.write(line + "\n")

    @staticmethod
    def openAccessLog(path: Optional[str]) -> Optional[IO[str]]:
        """
        Open the access log named in the configuration: a path, C{"-"} for
        standard output, or L{None} for none.
        """
        if path is None:
            return None
        if path == "-":
            # The real standard output: under twistd, sys.stdout is
            # redirected into the log, which would wrap every line.
            return sys.__stdout__
        return open(path, "a", buffering=1, encoding="utf-8")
