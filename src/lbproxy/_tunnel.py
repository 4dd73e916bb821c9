# -*- test-case-name: tests.test_tunnel -*-
"""
The bytes of an upgraded connection (a WebSocket, after C{101 Switching
Protocols}), relayed both ways between the client's connection and the
backend's.

Once the backend has switched protocols, lbproxy no longer reads HTTP on
either connection: what one side sends is written to the other as it
comes.  Each transport is registered as the other's producer, so a side
that cannot keep up pauses the reading of the other (Twisted's own flow
control between a consumer and its push producer), and a transport that
is lost stops (closes) its producer, the other connection.  Nothing is
buffered here.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger

from lbproxy._client import TunnelHandler, writeNow
from lbproxy._timer import Deadline


class Tunnel(TunnelHandler):
    """
    One tunnel between a client connection and a backend connection.

    It is the backend connection's L{TunnelHandler}, and takes the client's
    bytes through L{fromClient} (the callable given to
    L{lbproxy.interfaces.ITunnelChannel.startTunnel}).

    @ivar fromClientBytes: how many bytes the client sent through it.
    @ivar toClientBytes: how many bytes the backend sent through it.
    @ivar started: when it started, in the reactor's seconds.
    @ivar closed: whether it is closed (either side closed, or it was idle
        for too long).
    """

    _log = Logger()

    fromClientBytes = 0
    toClientBytes = 0
    closed = False
    _client: Any = None

    def __init__(
        self,
        reactor: Any,
        backend: Any,
        idleTimeout: Optional[float],
        onClosed: Callable[[Tunnel], object],
        name: str = "",
    ) -> None:
        """
        @param reactor: an L{IReactorTime}.
        @param backend: the backend connection's transport.
        @param idleTimeout: seconds the tunnel may carry no byte either way
            before both connections are closed, or L{None} for no limit.
        @param onClosed: called with the tunnel once, when it closes.
        @param name: what the log calls the tunnel.
        """
        self._reactor = reactor
        self._backend = backend
        self._idleTimeout = idleTimeout
        self._onClosed = onClosed
        self._name = name
        self.started = reactor.seconds()
        self._idle: Optional[Deadline] = None
        if idleTimeout is not None:
            self._idle = Deadline(reactor, self._timedOut)
            self._idle.set(idleTimeout)

    def attach(self, client: Any) -> None:
        """
        Join the client connection's transport to the backend's: each
        becomes the other's producer.
        """
        if self.closed:
            client.loseConnection()
            return
        self._client = client
        backend = self._backend
        client.registerProducer(backend, True)
        backend.registerProducer(client, True)

    def fromClient(self, data: bytes) -> None:
        """
        The client sent C{data}: to the backend.
        """
        if self.closed:
            return
        self.fromClientBytes += len(data)
        idle = self._idle
        if idle is not None:
            idle.set(self._idleTimeout)  # type: ignore[arg-type]
        writeNow(self._backend, data)

    def tunnelReceived(self, data: bytes) -> None:
        """
        The backend sent C{data}: to the client.
        """
        client = self._client
        if self.closed or client is None:
            return
        self.toClientBytes += len(data)
        idle = self._idle
        if idle is not None:
            idle.set(self._idleTimeout)  # type: ignore[arg-type]
        writeNow(client, data)

    def tunnelClosed(self) -> None:
        """
        The backend connection is closed: close the client's, once what is
        written to it is sent.
        """
        self.close()

    def clientClosed(self) -> None:
        """
        The client connection is closed: close the backend's, once what is
        written to it is sent.
        """
        self.close()

    def close(self, abort: bool = False) -> None:
        """
        Close both connections (at once when C{abort}, else once what is
        written to each is sent), and tell C{onClosed}.
        """
        if self.closed:
            return
        self.closed = True
        idle, self._idle = self._idle, None
        if idle is not None:
            idle.cancel()
        for transport in (self._client, self._backend):
            if transport is not None:
                if abort:
                    transport.abortConnection()
                else:
                    transport.loseConnection()
        self._onClosed(self)

    def _timedOut(self) -> None:
        self._log.info(
            "closing the idle tunnel {name} after tunnel_timeout ({timeout:g}s)",
            name=self._name,
            timeout=self._idleTimeout,
        )
        self.close(abort=True)
