# -*- test-case-name: tests.test_streaming -*-
"""
A request body that goes to the backend as it arrives (C{request_buffering
= no}), instead of being read whole before the request is forwarded.

The client connection (L{lbproxy._server.ProxyChannel}) hands the request
to the resources as soon as its head is read, with a L{StreamingBody} as
its C{content}; it writes the body into it as it comes.  The exchange
that forwards the request attaches the backend connection's writer once
the request head is sent: what arrived meanwhile goes first, then every
piece as it comes.  The body is the backend transport's producer: a
backend that reads slowly pauses the reading of the client, so the
proxy's memory stays bounded whatever the body's size.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

#: How much of a body is held, before a backend connection takes it,
#: before the client's connection stops being read.
HELD = 64 * 1024


@implementer(IPushProducer)
class StreamingBody:
    """
    The C{content} of a request whose body streams to the backend.

    It is file-like only as far as L{twisted.web.http.Request} needs
    (C{write}, C{seek}, C{read}, C{close}); reading it gives nothing, since
    its bytes are not kept.

    @ivar length: the body's C{Content-Length}, or L{None} for a chunked
        body.
    @ivar finished: whether the whole body has arrived.
    @ivar received: how many bytes of it have arrived.
    """

    def __init__(
        self,
        length: Optional[int],
        pauseReading: Callable[[], None],
        resumeReading: Callable[[], None],
    ) -> None:
        """
        @param length: see L{length}.
        @param pauseReading: stops reading the client's connection.
        @param resumeReading: reads it again.
        """
        self.length = length
        self.finished = False
        self.received = 0
        self._pauseReading = pauseReading
        self._resumeReading = resumeReading
        self._held: list[bytes] = []
        self._heldSize = 0
        self._sink: Optional[Callable[[bytes], None]] = None
        self._end: Optional[Callable[[], None]] = None

    # What the client side calls.

    def write(self, data: bytes) -> None:
        """
        A piece of the body arrived.
        """
        self.received += len(data)
        sink = self._sink
        if sink is not None:
            sink(data)
            return
        self._held.append(data)
        self._heldSize += len(data)
        if self._heldSize > HELD:
            self._pauseReading()

    def finish(self) -> None:
        """
        The whole body arrived.
        """
        self.finished = True
        end, self._end = self._end, None
        if end is not None:
            self._sink = None
            end()

    def seek(self, offset: int, whence: int = 0) -> None:
        pass

    def tell(self) -> int:
        return 0

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        """
        The request is over: nothing more goes anywhere.
        """
        self._sink = self._end = None
        self._held = []

    # What the exchange calls.

    def attach(self, sink: Callable[[bytes], None], end: Callable[[], None]) -> None:
        """
        Send the body to C{sink}: what arrived so far at once, then each
        piece as it comes; C{end} is called once the whole body went.
        """
        held, self._held = self._held, []
        size, self._heldSize = self._heldSize, 0
        for data in held:
            sink(data)
        if self.finished:
            end()
            return
        self._sink = sink
        self._end = end
        if size > HELD:
            self._resumeReading()

    # IPushProducer: the backend connection's flow control.

    def pauseProducing(self) -> None:
        self._pauseReading()

    def resumeProducing(self) -> None:
        self._resumeReading()

    def stopProducing(self) -> None:
        self._sink = self._end = None
