# -*- test-case-name: tests.test_listeners -*-
"""
Listening sockets as services, on Twisted's public API.

L{twisted.application.strports.service} gives a service that listens on
an endpoint, but it logs a port that cannot be opened (a port in use)
instead of failing the start, unless a private attribute is set, and it
tells when it listens only through another private attribute.
L{ListenerService} is the small service lbproxy needs instead: it opens
its port when started (in C{privilegedStartService}, so that C{twistd}
binds ports below 1024 before it drops its privileges), raises at once
when the port cannot be opened, tells L{ListenerService.whenListening},
and stops listening when stopped.  L{EndpointListener} listens on an
endpoint description; the workers of C{workers = N} adopt inherited
sockets with the same shape (L{lbproxy._workers.AdoptedPortService}).

The parent of C{workers = N} opens its TCP sockets itself, so it reads
C{tcp:} and C{tcp6:} descriptions with L{parseTCPDescription}, built on
L{splitDescription}: Twisted's grammar of endpoint strings, which Twisted
offers only as a private function.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy._proxyprotocol import listenerParts

__all__ = [
    "EndpointListener",
    "ListenerService",
    "TCPListen",
    "parseTCPDescription",
    "splitDescription",
]


def splitDescription(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split an endpoint description the way Twisted's
    L{twisted.internet.endpoints.serverFromString} does: fields are
    separated by colons; a field with an equals sign is a keyword (the
    value runs to the next colon, and may hold more equals signs), the
    others are positional; a backslash makes the next character plain
    (C{tcp6:8080:interface=\\:\\:1}).

    @return: C{(positional fields, keywords)}, the kind (C{tcp}) being the
        first positional field.
    """
    args: list[str] = []
    keywords: dict[str, str] = {}
    fields: list[str] = []
    current: list[str] = []
    separators = ":="
    characters = iter(description)
    for character in characters:
        if character == "\\":
            current.append(next(characters, ""))
        elif character in separators:
            fields.append("".join(current))
            current = []
            if character == ":":
                _addField(fields, args, keywords)
                fields = []
                separators = ":="
            else:
                separators = ":"
        else:
            current.append(character)
    fields.append("".join(current))
    _addField(fields, args, keywords)
    return args, keywords


def _addField(fields: list[str], args: list[str], keywords: dict[str, str]) -> None:
    if len(fields) == 1:
        args.append(fields[0])
    else:
        keywords[fields[0]] = fields[1]


class TCPListen:
    """
    What a C{tcp:} or C{tcp6:} endpoint description asks for.

    @ivar kind: C{"tcp"} or C{"tcp6"}.
    @ivar port: the port number.
    @ivar interface: the address to listen on (C{""} for every IPv4
        address, C{"::"} by default for C{tcp6}).
    @ivar backlog: the listen queue's length.
    """

    def __init__(self, kind: str, port: int, interface: str, backlog: int) -> None:
        self.kind = kind
        self.port = port
        self.interface = interface
        self.backlog = backlog

    def __repr__(self) -> str:
        return (
            f"TCPListen({self.kind!r}, {self.port!r}, {self.interface!r}, "
            f"{self.backlog!r})"
        )


def parseTCPDescription(description: str) -> TCPListen:
    """
    Read a C{tcp:PORT[:interface=HOST][:backlog=N]} or C{tcp6:...}
    endpoint description (the port may also be given as C{port=PORT}, and
    a description that starts with the port is a C{tcp:} one, as for
    Twisted).

    @raise ValueError: for any other kind of endpoint, or a port or
        backlog that is not a number.
    """
    args, keywords = splitDescription(description)
    kind = "tcp"
    if args and not args[0].isdigit():
        kind = args[0].lower()
        args = args[1:]
    if kind not in ("tcp", "tcp6"):
        raise ValueError(f"not a tcp: or tcp6: endpoint: {description!r}")
    port = args[0] if args else keywords.get("port")
    if port is None:
        raise ValueError(f"no port in {description!r}")
    default = "::" if kind == "tcp6" else ""
    return TCPListen(
        kind,
        int(port),
        keywords.get("interface", default),
        int(keywords.get("backlog", 50)),
    )


class ListenerService(Service):
    """
    A service that listens on one port while it runs.

    Subclasses say how the port is opened with L{openPort}.  The port is
    opened by C{privilegedStartService} (or by C{startService}, when the
    service is started without it); when it cannot be opened right away,
    the start raises the reason.  An endpoint that opens its port later
    and fails then has the failure logged.

    @ivar port: the L{IListeningPort} while listening, else L{None}.
    """

    _log = Logger()

    port: Optional[IListeningPort] = None

    def __init__(self) -> None:
        self._opening: Optional[Deferred[IListeningPort]] = None
        self._openFailure: Optional[Failure] = None
        self._portWaiters: list[Deferred[IListeningPort]] = []

    def openPort(self) -> Deferred[IListeningPort]:
        """
        Open the port.

        @return: a L{Deferred} that fires with the L{IListeningPort}.
        """
        raise NotImplementedError(f"{type(self).__name__}.openPort")

    def whenListening(self) -> Deferred[IListeningPort]:
        """
        @return: a L{Deferred} that fires with the L{IListeningPort} once
            the service listens, or fails with the reason it could not
            (at the latest attempt to start it).
        """
        if self.port is not None:
            return succeed(self.port)
        if self._openFailure is not None:
            return fail(self._openFailure)
        waiter: Deferred[IListeningPort] = Deferred()
        self._portWaiters.append(waiter)
        return waiter

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self._open()

    def startService(self) -> None:
        Service.startService(self)
        if self._opening is None and self.port is None:
            self._open()

    def _open(self) -> None:
        self._openFailure = None
        opening = self._opening = maybeDeferred(self.openPort)
        outcome: list[Union[IListeningPort, Failure]] = []
        opening.addBoth(outcome.append)
        if outcome:
            self._opened(opening, outcome[0])
            if isinstance(outcome[0], Failure):
                outcome[0].raiseException()
        else:
            opening.addCallback(lambda _: self._opened(opening, outcome[0], late=True))

    def _opened(
        self,
        opening: Deferred[IListeningPort],
        result: Union[IListeningPort, Failure],
        late: bool = False,
    ) -> None:
        if opening is not self._opening:
            # Stopped (and maybe started again) since.
            return
        self._opening = None
        waiters, self._portWaiters = self._portWaiters, []
        if isinstance(result, Failure):
            self._openFailure = result
            if late:
                self._log.failure("cannot listen on {listener}", result, listener=self)
            for waiter in waiters:
                waiter.errback(result)
            return
        self.port = result
        for waiter in waiters:
            waiter.callback(result)

    def stopService(self) -> Deferred[None]:
        """
        Stop listening (or stop trying to).

        @return: a L{Deferred} that fires once the port is closed.
        """
        Service.stopService(self)
        port, self.port = self.port, None
        opening, self._opening = self._opening, None
        self._openFailure = None
        if opening is not None:
            opening.cancel()
        if port is not None:
            stopped = port.stopListening()
            if isinstance(stopped, Deferred):
                return stopped
        return succeed(None)


class EndpointListener(ListenerService):
    """
    Listen with C{factory} on the server endpoint that C{description}
    describes (see L{serverFromString}); a C{haproxy:} description reads
    a PROXY header on each connection (L{listenerParts}).

    @ivar description: the endpoint description.
    @ivar endpoint: the endpoint.
    """

    def __init__(self, description: str, factory: Any, reactor: Any = None) -> None:
        """
        @param reactor: the reactor; the global one when L{None}.
        @raise ValueError: when C{description} is not a valid endpoint.
        """
        ListenerService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor as _globalReactor

            reactor = _globalReactor
        self.description = description
        # haproxy: listeners read the PROXY header with lbproxy's own
        # wrapper (see lbproxy._proxyprotocol), not Twisted's.
        description, factory = listenerParts(description, factory, reactor)
        self.endpoint = serverFromString(reactor, description)
        self._factory = factory

    def __repr__(self) -> str:
        return f"<EndpointListener {self.description!r}>"

    def openPort(self) -> Deferred[IListeningPort]:
        listening: Deferred[IListeningPort] = self.endpoint.listen(self._factory)
        return listening
