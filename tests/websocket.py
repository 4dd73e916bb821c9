"""
WebSocket peers for the tests, on Twisted: a wsproto connection (sans-I/O)
driven by a L{Protocol}, as a server that echoes every message and as a
client that records what it receives.

wsproto rather than autobahn: being sans-I/O it plugs into a Twisted
protocol in a few lines, for both ends, without a second framework
(autobahn brings txaio and its own factories), it is pure Python with one
dependency (h11), so it installs on PyPy 3.9 and with the oldest pins,
and it checks the protocol strictly (masking, close codes, UTF-8), which
is what a test through a proxy needs.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)


class EchoServer(Protocol):
    """
    A WebSocket server that accepts every handshake and sends each
    message back whole (text as text, bytes as bytes).
    """

    def connectionMade(self) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)
        self.text: list[str] = []
        self.binary: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        out = []
        for event in ws.events():
            if isinstance(event, Request):
                out.append(ws.send(AcceptConnection()))
            elif isinstance(event, TextMessage):
                self.text.append(event.data)
                if event.message_finished:
                    out.append(ws.send(TextMessage(data="".join(self.text))))
                    self.text = []
            elif isinstance(event, BytesMessage):
                self.binary.append(bytes(event.data))
                if event.message_finished:
                    out.append(ws.send(BytesMessage(data=b"".join(self.binary))))
                    self.binary = []
            elif isinstance(event, Ping):
                out.append(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                out.append(ws.send(event.response()))
                self.transport.write(b"".join(out))
                self.transport.loseConnection()
                return
        if out:
            self.transport.write(b"".join(out))

    def connectionLost(self, reason: Any = None) -> None:
        pass


def echoFactory() -> Factory:
    return Factory.forProtocol(EchoServer)


def maskedTextFrame(text: bytes) -> bytes:
    """
    One client-to-server text frame holding C{text} (under 126 bytes), as
    a client would send it, masked.
    """
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(text))
    return struct.pack("!BB", 0x81, 0x80 | len(text)) + key + masked


class Client(Protocol):
    """
    A WebSocket client: sends its handshake (and C{early} bytes in the same
    write) on connection, then records every message, pong and the close.

    @ivar opened: fires once the handshake is accepted.
    @ivar closed: fires with the close code once the connection is lost.
    """

    def __init__(self, host: str, early: bytes = b"") -> None:
        self.host = host
        self.early = early
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.opened: Deferred[None] = Deferred()
        self.closed: Deferred[Optional[int]] = Deferred()
        self.messages: list[Any] = []
        self.pongs: list[bytes] = []
        self.closeCode: Optional[int] = None
        self._parts: list[Any] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def connectionMade(self) -> None:
        self.transport.write(
            self.ws.send(Request(host=self.host, target="/echo")) + self.early
        )

    def send(self, event: Any) -> None:
        self.transport.write(self.ws.send(event))

    def waitForMessages(self, count: int) -> Deferred[None]:
        """
        A L{Deferred} that fires once C{count} messages have come.
        """
        d: Deferred[None] = Deferred()
        self._waiting.append((count, d))
        self._check()
        return d

    def _check(self) -> None:
        for count, d in list(self._waiting):
            if len(self.messages) >= count:
                self._waiting.remove((count, d))
                d.callback(None)

    def dataReceived(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                self.opened.callback(None)
            elif isinstance(event, RejectConnection):
                self.opened.errback(Exception(f"rejected: {event.status_code}"))
            elif isinstance(event, (TextMessage, BytesMessage)):
                self._parts.append(event.data)
                if event.message_finished:
                    parts, self._parts = self._parts, []
                    joined: Any = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                    self.messages.append(joined)
            elif isinstance(event, Pong):
                self.pongs.append(bytes(event.payload))
            elif isinstance(event, CloseConnection):
                self.closeCode = event.code
        self._check()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.closeCode)
