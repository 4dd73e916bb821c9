# -*- test-case-name: tests.test_tap -*-
"""
C{twistd lbproxy}: command-line options and the service maker.
"""

from __future__ import annotations

import errno
import os
import platform
import signal
import sys
from typing import IO, Any, Callable, Mapping, Optional

from twisted.application.service import IService
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from lbproxy._config import ConfigError, SiteConfig, parseConfig
from lbproxy._version import __version__
from twisted import version as _twistedVersion


class Options(usage.Options):
    """
    Options of C{twistd lbproxy}.

    The configuration is read and checked completely while the options are
    parsed, so a bad file stops twistd before anything starts.
    """

    synopsis = "[options]"
    longdesc = (
        "Run a reverse proxy and load balancer configured by an INI file "
        "(see the configuration reference). With --check, only validate the "
        "file: exit 0 when it is valid, 1 with the errors when it is not."
    )
    optParameters = [
        ["config", "c", None, "Path of the site.ini configuration file."],
    ]
    optFlags = [
        ["check", None, "Validate the configuration and exit (0 valid, 1 invalid)."],
    ]

    siteConfig: Optional[SiteConfig] = None

    def opt_version(self) -> None:
        """
        Print lbproxy's version, Twisted's and Python's, and exit.
        """
        sys.stdout.write(versionLine() + "\n")
        raise SystemExit(0)

    def fail(self, line: str) -> None:
        """
        Stop on an operator's mistake found while the options are read:
        one line on standard error and status 1 under twistd (whose
        handling of a L{usage.UsageError} varies between releases), a
        L{usage.UsageError} otherwise.
        """
        if self["check"] or getattr(self, "parent", None) is not None:
            sys.stderr.write(f"twistd lbproxy: {line}\n")
            raise SystemExit(1)
        raise usage.UsageError(line)

    def postOptions(self) -> None:
        path = self["config"]
        if not path:
            raise usage.UsageError("--config is required, e.g. --config site.ini")
        unreadable = unreadableFile(path)
        if unreadable is not None:
            self.fail(f"cannot read the configuration {path}: {unreadable}")
        try:
            self.siteConfig = parseConfig(path)
        except ConfigError as e:
            if self["check"]:
                sys.stderr.write(f"{path}: invalid, {len(e.errors)} error(s):\n")
                for error in e.errors:
                    sys.stderr.write(f"  {error}\n")
                raise SystemExit(1) from None
            if getattr(self, "parent", None) is not None:
                # Run as twistd's subcommand.  Twisted 25.5 and older print a
                # UsageError and then exit 0 (Debian's PyPy 3.9 gets such
                # a release), so say it here and exit 1 on every version.
                sys.stderr.write(f"twistd lbproxy: {path} is invalid:\n")
                for error in e.errors:
                    sys.stderr.write(f"  {error}\n")
                raise SystemExit(1) from None
            raise usage.UsageError(
                f"{path} is invalid:\n  " + "\n  ".join(e.errors)
            ) from None
        accessLog = self.siteConfig.proxy.accessLog
        unwritable = unwritableFile(accessLog) if accessLog not in (None, "-") else None
        if unwritable is not None:
            self.fail(f"cannot write the access log {accessLog}: {unwritable}")
        if self["check"]:
            sys.stdout.write(f"{path}: OK\n")
            raise SystemExit(0)


def versionLine() -> str:
    """
    What C{twistd lbproxy --version} prints: lbproxy's version, and those
    of Twisted and Python it runs on.
    """
    return (
        f"lbproxy {__version__} (Twisted {_twistedVersion.short()}, "
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
    if isinstance(error, OSError) and error.filename is not None:
        return f"cannot open {error.filename}: {error.strerror}"
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


_log = Logger()

#: The PyPy nursery that docs/performance.rst recommends.
PYPY_NURSERY_ADVICE = "64MB"


def adviseOnPyPy(implementation: str, environ: Mapping[str, str]) -> None:
    """
    On PyPy with its default nursery (a few MB), log how to get the
    faster setting: PyPy reads C{PYPY_GC_NURSERY} only when it starts.
    """
    if implementation == "PyPy" and "PYPY_GC_NURSERY" not in environ:
        _log.info(
            "PyPy with its default GC nursery: start lbproxy with "
            "PYPY_GC_NURSERY={size} for a higher rate and a much lower p99 "
            "latency (see the performance page of the documentation)",
            size=PYPY_NURSERY_ADVICE,
        )


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the L{lbproxy.LoadBalancerService} for parsed C{options}.
    """
    adviseOnPyPy(platform.python_implementation(), os.environ)
    twistd = getattr(options, "parent", None)
    if twistd is not None:
        # sys.stderr is redirected into twistd's log by now.
        stderr = sys.__stderr__ or sys.stderr
        reportStartupFailures(stderr, logToo=not twistd.get("nodaemon"))
    from lbproxy._workers import WorkerParentService, workerFDs, workerService
    from lbproxy.service import LoadBalancerService, StopSignals

    config = options.siteConfig
    assert config is not None
    fds = workerFDs()
    if fds is not None:
        worker = workerService(config, fds, reactor)
        worker.reloadOnHangup(options["config"])
        if twistd is not None:
            # A worker gets a stop signal from its parent, and often the
            # same one from the terminal or systemd: it stops gracefully on
            # the first and leaves stopping at once to the parent.
            StopSignals(lambda: None, reactor).installWhenRunning()
        return worker  # type: ignore[no-any-return]
    if config.proxy.workers > 1:
        parent = WorkerParentService(config, options["config"], reactor)
        if twistd is not None:
            StopSignals(
                lambda: parent.signalWorkers(signal.SIGKILL), reactor
            ).installWhenRunning()
        return parent
    service = LoadBalancerService(config, reactor)
    service.reloadOnHangup(options["config"])
    service.abortOnSecondSignal()
    return service
