"""
Ports of 127.0.0.1 for the integration tests' servers that must be told
their port before they start.

Whatever can listen on port 0 does: lbproxy itself (C{tcp:0}, the port
read from the C{... starting on PORT} line it logs), and the backends a
test runs in its own reactor.  A few cannot: etcd 3.4 listens on port 0
but its JSON gateway then dials C{127.0.0.1:0}, the address it was given,
instead of the port it got; nginx and HAProxy refuse port 0.  And some
must listen on the same port again after a restart.  Those are given a
L{ReservedPort}.
"""

from __future__ import annotations

import socket


class ReservedPort:
    """
    A TCP port of 127.0.0.1 kept for one server for as long as this is
    held: a socket bound to it with C{SO_REUSEADDR} that never listens.

    While it is held, Linux gives the port to no one else: not to a bind
    to port 0, nor as the local port of an outgoing connection, nor to a
    bind without C{SO_REUSEADDR}.  A server that sets C{SO_REUSEADDR}
    itself, as etcd (Go), nginx, HAProxy and Twisted all do, still binds
    it and listens on it, since Linux lets a socket listen on a port that
    other C{SO_REUSEADDR} sockets are bound to as long as none of them
    listens; and while no server listens on it, connections to it are
    refused, as to a port nothing is bound to.  So a server can also stop
    and listen on the same port again, which no other process has been
    given meanwhile.  (Another program that binds this very number with
    C{SO_REUSEADDR} could still take it while no one listens: nothing of
    the tests does.)

    A port that was merely free a moment ago (bound to port 0, read, and
    closed) does not do: the next bind to port 0, or the next outgoing
    connection, may be given it before the server binds it.

    @ivar port: the port number.
    """

    def __init__(self, interface: str = "127.0.0.1") -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((interface, 0))
        except BaseException:
            self._socket.close()
            raise
        self.port: int = self._socket.getsockname()[1]

    def close(self) -> None:
        """
        Give the port back.  Idempotent.
        """
        self._socket.close()


__all__ = ["ReservedPort"]
