# -*- test-case-name: tests.test_tap -*-
"""
C{twistd lbproxy}: command-line options and the service maker.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
from typing import Any, Mapping, Optional

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from lbproxy._config import ConfigError, SiteConfig, parseConfig
from lbproxy._startup import (
    configuredListeners,
    reportStartupFailures,
    unopenablePort,
    unreadableFile,
    unwritableFile,
    versionLine,
)


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
        from lbproxy._tlsserver import loadServerCertificates

        try:
            self.siteConfig = parseConfig(path)
            # The certificates of HTTPS listeners are read and checked too
            # (a warning, such as one for a certificate that expires soon,
            # is logged when the service starts, and written by --check).
            warnings = loadServerCertificates(self.siteConfig).warnings
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
            # Valid all the same, as nginx -t says: its warnings on
            # standard error, before the verdict.
            for warning in warnings:
                sys.stderr.write(f"{path}: warning: {warning}\n")
            sys.stdout.write(f"{path}: OK\n")
            raise SystemExit(0)


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
    from lbproxy._workeradmin import workerAdminSocket
    from lbproxy._workers import WorkerParentService, workerFDs, workerService
    from lbproxy.service import LoadBalancerService, StopSignals

    config = options.siteConfig
    assert config is not None
    fds = workerFDs()
    if twistd is not None:
        if not twistd.get("nodaemon") and fds is None:
            unopenable = unopenablePort(configuredListeners(config))
            if unopenable is not None:
                options.fail(unopenable)
            if config.proxy.accessLog == "-":
                _log.warn(
                    "access_log = - writes to standard output, which twistd "
                    "sends to /dev/null once it runs in the background: give "
                    "access_log a path, or run twistd -n"
                )
        # sys.stderr is redirected into twistd's log by now.
        stderr = sys.__stderr__ or sys.stderr
        reportStartupFailures(stderr, logToo=not twistd.get("nodaemon"))
    if fds is not None:
        worker = workerService(config, fds, reactor, workerAdminSocket())
        worker.reloadOnHangup(options["config"])
        worker.settleHeap()
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
    service.settleHeap()
    service.abortOnSecondSignal()
    return service
