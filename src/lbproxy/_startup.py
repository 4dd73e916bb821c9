# -*- test-case-name: tests.test_tap -*-
"""
The operator's mistakes that stop C{twistd lbproxy} from starting, each
told in one line rather than a traceback (as nginx does): a configuration
file that cannot be read, an access log that cannot be written (both found
while the options are read), a port that cannot be opened and a file that
cannot be opened once the service starts (found by the start itself, and
reported by L{reportStartupFailures} as the error ends the process; for
C{twistd} without C{-n}, the ports are also tried before it goes into the
background, by L{unopenablePort}).  Also
the line C{twistd lbproxy --version} prints.
"""

from __future__ import annotations

import errno
import os
import platform
import sys
from typing import IO, Any, Callable, Iterable, Optional

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from lbproxy._config import SiteConfig
from lbproxy._version import __version__
from twisted import version as twistedVersion

_log = Logger()


def versionLine() -> str:
    """
    What C{twistd lbproxy --version} prints: lbproxy's version, and those
    of Twisted and Python it runs on.
    """
    return (
        f"lbproxy {__version__} (Twisted {twistedVersion.short()}, "
        f"{platform.python_implementation()} {platform.python_version()})"
    )


def unreadableFile(path: str) -> Optional[str]:
    """
    Why the file C{path} cannot be read, or L{None} when it can.
    """
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return None


def unwritableFile(path: str) -> Optional[str]:
    """
    Why the file C{path} could not be opened for appending (by this
    process, as it is now), or L{None} when it could; nothing is created.
    """
    if os.path.isdir(path):
        return os.strerror(errno.EISDIR)
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else os.strerror(errno.EACCES)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return os.strerror(errno.ENOENT)
    return None if os.access(directory, os.W_OK | os.X_OK) else os.strerror(errno.EACCES)


def startupFailure(error: BaseException) -> Optional[str]:
    """
    The one line saying what an operator has to fix, for an error that
    stopped lbproxy while it started: a port that cannot be opened, a file
    that cannot be opened.  L{None} for anything else, which keeps its
    traceback.
    """
    if isinstance(error, CannotListenError):
        reason = error.socketError
        if error.interface is None:
            where = str(error.port)
        else:
            where = f"{error.interface or '0.0.0.0'}:{error.port}"
        line = f"cannot listen on {where}: {getattr(reason, 'strerror', None) or reason}"
        if (
            getattr(reason, "errno", None) == errno.EACCES
            and isinstance(error.port, int)
            and 0 < error.port < 1024
        ):
            line += (
                " (a port below 1024 needs root, with --uid and --gid to run "
                "as another user once listening, or CAP_NET_BIND_SERVICE)"
            )
        return line
    from lbproxy._tlsserver import TLSUnavailable

    if isinstance(error, TLSUnavailable):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None:
        return f"cannot open {error.filename}: {error.strerror}"
    return None


def _tcpPart(description: str) -> str:
    """
    The TCP listener that an endpoint description binds, as a C{tcp:}
    description: C{ssl:} listens on TCP too, and C{haproxy:} wraps another
    description.
    """
    kind, _, rest = description.partition(":")
    if kind.lower() == "haproxy":
        return _tcpPart(rest)
    if kind.lower() == "ssl":
        return "tcp:" + rest
    return description


def configuredListeners(config: SiteConfig) -> list[str]:
    """
    Every endpoint that the service of C{config} listens on, as
    descriptions: C{listen}, C{listen_tls}, the demo backends' and the
    C{[admin]} listener's (what L{unopenablePort} is to try before twistd
    goes into the background).
    """
    proxy = config.proxy
    return [
        *proxy.listen,
        *proxy.listenTLS,
        *(d for demo in config.demos for d in demo.listen),
        *([config.admin.listen] if config.admin is not None else []),
    ]


def unopenablePort(descriptions: Iterable[str]) -> Optional[str]:
    """
    Open each TCP port that C{descriptions} (endpoint descriptions) listen
    on, as the start will, and close it at once: the L{startupFailure}
    line of the first that cannot be opened, or L{None}.

    C{twistd} without C{-n} starts the service only once it has forked
    into the background, and a failure then reaches the terminal as its
    own two lines ("An error has occurred: b'...' Please look at log file
    for more information."), cut to 100 characters, from the parent it
    left waiting.  Trying the ports before that, while the options are
    turned into a service, lets the operator see lbproxy's one line
    instead.  It cannot rule out a port taken between this check and the
    start: that rare failure is reported the first way, and in the log.
    Descriptions of other kinds (C{unix:}) are not tried.
    """
    from lbproxy._workers import listeningSocket

    for description in descriptions:
        try:
            sock = listeningSocket(_tcpPart(description))
        except ValueError:
            continue
        except CannotListenError as e:
            return startupFailure(e)
        sock.close()
    return None


def reportStartupFailures(stream: IO[str], logToo: bool = False) -> None:
    """
    Make the errors that L{startupFailure} describes, when they end the
    process (raised by the service's start, as twistd lets them), print
    one line on C{stream} instead of a traceback; the process still exits
    with status 1, after twistd's own clean-up (its PID file, the status
    of a daemon's start).  Other errors are left to the hook in place.

    @param logToo: also log the line (for a daemon, whose standard error
        goes nowhere).
    """
    previous: Callable[..., Any] = sys.excepthook

    def hook(kind: Any, value: Any, tb: Any) -> None:
        line = startupFailure(value)
        if line is None:
            previous(kind, value, tb)
            return
        if logToo:
            _log.critical("{line}", line=line)
        stream.write(f"twistd lbproxy: {line}\n")
        stream.flush()

    sys.excepthook = hook
