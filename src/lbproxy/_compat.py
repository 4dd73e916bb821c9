# -*- test-case-name: tests.test_compat -*-
"""
The one module of lbproxy that touches names Twisted keeps private.

pip installs whichever Twisted it resolves (24.7 to 26.x across the
Pythons lbproxy supports), and a private name may change or go in any
release.  So every private name lbproxy uses is here, with why no public
API serves, and is tried when this module is imported: a Twisted without
it (or where it no longer means what lbproxy reads it for) fails at once,
with an L{ImportError} naming the installed Twisted version and the name,
rather than with a wrong answer in the middle of serving.

Private names used (keep this list short: at most five in the project):

  - C{FileDescriptor._tempDataLen}, in L{nothingBuffered}: how many
    written bytes a TCP transport holds that have not yet been moved to
    its C{dataBuffer}.  C{write} puts bytes there and only the reactor's
    next write turn moves them, so C{dataBuffer} alone does not say that
    nothing is waiting, and no public attribute or method of a transport
    tells how much it buffers (C{IConsumer} only pauses a registered
    producer once the buffer is full).
"""

from __future__ import annotations

from typing import Any

from twisted.copyright import version as twistedVersion
from twisted.internet.abstract import FileDescriptor


class _ProbeReactor:
    """
    Just enough of a reactor for a L{FileDescriptor} that is written to
    but never connected to anything.
    """

    def addWriter(self, writer: object) -> None:
        pass

    def removeWriter(self, writer: object) -> None:
        pass


class _Probe(FileDescriptor):
    """
    A L{FileDescriptor} whose "socket" takes C{take} bytes a write.
    """

    take = 0

    def writeSomeData(self, data: bytes) -> int:
        return min(self.take, len(data))


def _missing(name: str, what: str) -> ImportError:
    """
    The error for a private name that is missing or means something else,
    naming it and Twisted's version (C{twisted.__version__}).
    """
    return ImportError(
        f"lbproxy needs {name} ({what}), which Twisted {twistedVersion} "
        f"does not have, or does not use so any more; install a Twisted "
        f"that lbproxy supports (24.7.0 to 26.10)"
    )


def checkPrivateNames() -> None:
    """
    Try every private Twisted name that this module uses, on a probe
    transport: that it is there, and means what lbproxy reads it for.

    @raise ImportError: when one is missing, or no longer means that.
    """
    name = "twisted.internet.abstract.FileDescriptor._tempDataLen"
    what = "how many written bytes a transport holds before its dataBuffer"
    probe = _Probe(_ProbeReactor())  # type: ignore[arg-type]
    probe.connected = True
    seen: list[object] = []
    try:
        seen.append(nothingBuffered(probe))
        probe.write(b"abc")
        seen.append(probe._tempDataLen)
        probe.take = 1
        probe.doWrite()
        seen.append(nothingBuffered(probe))
        probe.take = 2
        probe.doWrite()
        seen.append(nothingBuffered(probe))
    except AttributeError:
        raise _missing(name, what) from None
    if seen != [True, 3, False, True]:
        raise _missing(name, what)


def nothingBuffered(transport: Any) -> bool:
    """
    Whether a TCP transport (a L{FileDescriptor}: C{tcp.Client} or
    C{tcp.Server}) holds no written byte that it has yet to send.

    C{dataBuffer} is emptied (set to C{b""}) whenever everything in it has
    been sent, so an empty one and nothing in the list buffer mean that a
    write now comes before nothing else.
    """
    return not transport._tempDataLen and not transport.dataBuffer


checkPrivateNames()
