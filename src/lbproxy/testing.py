# -*- test-case-name: tests.integration.test_walkthrough -*-
"""
Helpers for testing code that embeds lbproxy or extends it: real backends
on 127.0.0.1 that can be killed (connections and all), and a proxy serving
a resource on a loopback port.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import IResource
from twisted.web.server import Site

__all__ = ["LoopbackServer", "startServer"]


class _QuietSite(Site):
    """
    A L{Site} that writes no access log.
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


class _TrackingFactory(WrappingFactory):
    """
    Remembers the open connections of the wrapped factory, so that stopping
    the server can cut them like a crashed process would, and counts them.
    """

    noisy = False
    connectionsMade = 0

    def registerProtocol(self, p: Any) -> None:
        self.connectionsMade += 1
        WrappingFactory.registerProtocol(self, p)  # type: ignore[arg-type]


class LoopbackServer:
    """
    A web server on 127.0.0.1, started by L{startServer}.

    @ivar port: the TCP port it listens on.
    @ivar site: its L{Site}.
    """

    def __init__(self, factory: _TrackingFactory, listeningPort: Any) -> None:
        self._factory = factory
        self.site = factory.wrappedFactory
        self._listeningPort: Optional[Any] = listeningPort
        self.port: int = listeningPort.getHost().port

    @property
    def connectionsMade(self) -> int:
        """
        Connections accepted so far.
        """
        return self._factory.connectionsMade

    def stop(self) -> Deferred[Any]:
        """
        Stop listening and abort every open connection, as if the server
        process had died.  Idempotent.
        """
        results = []
        if self._listeningPort is not None:
            port, self._listeningPort = self._listeningPort, None
            results.append(port.stopListening())
        for protocol in list(self._factory.protocols):
            protocol.transport.abortConnection()
        return DeferredList(results)


@inlineCallbacks
def startServer(resource: IResource, reactor: Any = None, port: int = 0) -> Any:
    """
    Serve C{resource} on 127.0.0.1 (port 0: any free port).

    @return: a L{Deferred} firing with a L{LoopbackServer}.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    factory = _TrackingFactory(_QuietSite(resource))
    endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
    listening = yield endpoint.listen(factory)
    return LoopbackServer(factory, listening)
