"""
Tests for L{lbproxy.tap} and the twistd dropin.
"""

from __future__ import annotations

import io
import os
import socket
import sys

from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import getPlugins
from twisted.python.filepath import FilePath
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import LoadBalancerService
from lbproxy.tap import Options, makeService
from tests.certificates import writeSelfSigned

_SITE = b"""
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = off

[upstream:app]
servers = 127.0.0.1:9001 weight=2
    127.0.0.1:9002

[vhost:app]
default = yes
upstream = app
"""


class OptionsTests(SynchronousTestCase):
    def config(self, content=_SITE):
        path = FilePath(self.mktemp())
        path.setContent(content)
        return path.path

    def capture(self, name):
        stream = io.StringIO()
        self.patch(sys, name, stream)
        return stream

    def test_configRequired(self):
        self.assertRaises(UsageError, Options().parseOptions, [])

    def test_validConfig(self):
        options = Options()
        options.parseOptions(["--config", self.config()])
        self.assertEqual(list(options.siteConfig.upstreams), ["app"])

    def test_invalidConfigIsAUsageError(self):
        """
        A bad file stops option parsing with every error, so twistd never
        starts anything.
        """
        path = self.config(_SITE.replace(b"weight=2", b"weight=heavy"))
        with self.assertRaises(UsageError) as caught:
            Options().parseOptions(["-c", path])
        self.assertIn("weight=heavy", str(caught.exception))

    def test_invalidConfigUnderTwistdExits1(self):
        """
        As twistd's subcommand, a bad file is reported on standard error and
        ends the process with status 1, whatever twistd does with a
        L{UsageError} (Twisted 25.5 and older exit 0 after one).
        """
        from twisted.scripts.twistd import ServerOptions

        err = self.capture("stderr")
        path = self.config(_SITE.replace(b"weight=2", b"weight=heavy"))
        with self.assertRaises(SystemExit) as caught:
            ServerOptions().parseOptions(["lbproxy", "--config", path])
        self.assertEqual(caught.exception.code, 1)
        self.assertIn("weight=heavy", err.getvalue())

    def test_checkValid(self):
        out = self.capture("stdout")
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--config", self.config(), "--check"])
        self.assertEqual(caught.exception.code, 0)
        self.assertIn("OK", out.getvalue())

    def test_checkInvalid(self):
        err = self.capture("stderr")
        path = self.config(_SITE + b"[bogus]\n")
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--config", path, "--check"])
        self.assertEqual(caught.exception.code, 1)
        self.assertIn("[bogus]: unknown section", err.getvalue())

    def test_checkCertificates(self):
        """
        C{--check} reads the certificates too: one that cannot be read is
        an error naming its file, and the exit status is 1.
        """
        err = self.capture("stderr")
        missing = os.path.abspath(self.mktemp())
        path = self.config(
            _SITE.replace(b"[lbproxy]\n", b"[lbproxy]\nlisten_tls = tcp:8443\ntls_certificate = " + missing.encode() + b"\n", 1)
        )
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--config", path, "--check"])
        self.assertEqual(caught.exception.code, 1)
        self.assertIn(f"cannot read the certificate file {missing}: No such file", err.getvalue())

    def test_checkWarnings(self):
        """
        C{--check} writes the warnings of a valid configuration (here, a
        key file every user can read) on standard error, and still says
        OK with status 0.
        """
        out, err = self.capture("stdout"), self.capture("stderr")
        directory = os.path.abspath(self.mktemp())
        keyPath, certificatePath, _ = writeSelfSigned(directory, ["example.com"])
        os.chmod(keyPath, 0o644)
        path = self.config(
            _SITE.replace(
                b"[lbproxy]\n",
                b"[lbproxy]\nlisten_tls = tcp:8443\n"
                b"tls_certificate = " + certificatePath.encode() + b"\n"
                b"tls_key = " + keyPath.encode() + b"\n",
                1,
            )
        )
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--config", path, "--check"])
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(out.getvalue(), f"{path}: OK\n")
        self.assertEqual(
            err.getvalue(),
            f"{path}: warning: [lbproxy] the key file {keyPath} can be read by every "
            "user of this machine (mode 0644); make it unreadable to others (chmod o-r)\n",
        )

    def test_makeService(self):
        """
        The service is a L{LoadBalancerService} with one pool per upstream.
        """
        options = Options()
        options.parseOptions(["--config", self.config()])
        service = makeService(options)
        self.assertIsInstance(service, LoadBalancerService)
        self.assertIsInstance(service, MultiService)
        self.assertEqual([b.weight for b in service.pools["app"].backends], [2, 1])

    def test_settlesTheHeap(self):
        """
        C{twistd lbproxy} owns its process: the heap is settled once the
        reactor runs (L{lbproxy._heap}).
        """
        import gc

        from twisted.internet.testing import MemoryReactorClock

        if not hasattr(gc, "freeze"):
            raise self.skipTest("PyPy's collector has no permanent generation")
        self.addCleanup(gc.unfreeze)
        options = Options()
        options.parseOptions(["--config", self.config()])
        reactor = MemoryReactorClock()
        service = makeService(options, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(gc.get_freeze_count(), 0)
        reactor.run()
        self.assertGreater(gc.get_freeze_count(), 0)

    def busyPort(self):
        """
        A port on 127.0.0.1 that a listening socket of the test holds.
        """
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        return sock.getsockname()[1]

    def assertRefusedBeforeFork(self, content, port):
        """
        As twistd's subcommand without C{-n}, L{makeService} tries every
        port before twistd forks: the configuration C{content}, one of
        whose listeners is on the busy C{port}, stops it with lbproxy's one
        line and status 1.
        """
        options = Options()
        options.parseOptions(["--config", self.config(content)])
        options.parent = {"nodaemon": False}
        err = self.capture("stderr")
        with self.assertRaises(SystemExit) as caught:
            makeService(options)
        self.assertEqual(caught.exception.code, 1)
        self.assertEqual(
            err.getvalue(),
            f"twistd lbproxy: cannot listen on 127.0.0.1:{port}: "
            "Address already in use\n",
        )

    def test_adminPortInUseBeforeFork(self):
        """
        The C{[admin]} listener's port is among those tried before the fork.
        """
        port = self.busyPort()
        self.assertRefusedBeforeFork(
            _SITE + b"[admin]\nlisten = tcp:%d:interface=127.0.0.1\n" % (port,), port
        )

    def test_tlsPortInUseBeforeFork(self):
        """
        So are the C{listen_tls} listeners' ports.
        """
        port = self.busyPort()
        key, certificate, _ = writeSelfSigned(os.path.abspath(self.mktemp()), ["localhost"])
        self.assertRefusedBeforeFork(
            _SITE.replace(
                b"[lbproxy]\n",
                b"[lbproxy]\nlisten_tls = tcp:%d:interface=127.0.0.1\n"
                b"tls_certificate = %s\ntls_key = %s\n"
                % (port, certificate.encode(), key.encode()),
                1,
            ),
            port,
        )


class DropinTests(SynchronousTestCase):
    def test_serviceMakerFound(self):
        """
        twistd finds the C{lbproxy} service maker among its plugins.
        """
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("lbproxy", makers)
        self.assertEqual(makers["lbproxy"].options, Options)


class PyPyAdviceTests(SynchronousTestCase):
    def test_advice(self):
        """
        On PyPy without C{PYPY_GC_NURSERY}, lbproxy says how to set it;
        with it set, or on CPython, it says nothing.
        """
        from twisted.logger import capturedLogs

        from lbproxy.tap import adviseOnPyPy

        with capturedLogs() as events:
            adviseOnPyPy("PyPy", {})
            adviseOnPyPy("PyPy", {"PYPY_GC_NURSERY": "16MB"})
            adviseOnPyPy("CPython", {})
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["size"], "64MB")
        self.assertIn("PYPY_GC_NURSERY", events[0]["log_format"])


class FirstHourTests(SynchronousTestCase):
    """
    The operator's mistakes that L{Options} and L{makeService} turn into one
    line, and C{--version}.
    """

    def capture(self, name):
        stream = io.StringIO()
        self.patch(sys, name, stream)
        return stream

    def test_version(self):
        """
        C{--version} prints lbproxy's version, Twisted's and Python's, and
        exits 0.
        """
        import platform

        import twisted
        from lbproxy import __version__
        from lbproxy._startup import versionLine

        out = self.capture("stdout")
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--version"])
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(out.getvalue(), versionLine() + "\n")
        self.assertEqual(
            versionLine(),
            f"lbproxy {__version__} (Twisted {twisted.__version__}, "
            f"{platform.python_implementation()} {platform.python_version()})",
        )

    def test_missingConfig(self):
        """
        A configuration that cannot be read is one line: a L{UsageError}
        alone, and under twistd one line on standard error and status 1.
        """
        from twisted.scripts.twistd import ServerOptions

        path = self.mktemp()
        with self.assertRaises(UsageError) as caught:
            Options().parseOptions(["-c", path])
        expected = f"cannot read the configuration {path}: No such file or directory"
        self.assertEqual(str(caught.exception), expected)
        err = self.capture("stderr")
        with self.assertRaises(SystemExit) as exited:
            ServerOptions().parseOptions(["lbproxy", "--config", path])
        self.assertEqual(exited.exception.code, 1)
        self.assertEqual(err.getvalue(), f"twistd lbproxy: {expected}\n")

    def test_configIsADirectory(self):
        err = self.capture("stderr")
        path = FilePath(self.mktemp())
        path.makedirs()
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["-c", path.path, "--check"])
        self.assertEqual(caught.exception.code, 1)
        self.assertEqual(
            err.getvalue(),
            f"twistd lbproxy: cannot read the configuration {path.path}: Is a directory\n",
        )

    def test_accessLogUnwritable(self):
        """
        An access log that cannot be opened for writing (its directory is
        missing) stops option parsing with one line, before anything starts.
        """
        log = FilePath(self.mktemp()).child("access.log").path
        config = FilePath(self.mktemp())
        config.setContent(_SITE.replace(b"access_log = off", b"access_log = " + log.encode()))
        with self.assertRaises(UsageError) as caught:
            Options().parseOptions(["-c", config.path])
        self.assertEqual(
            str(caught.exception),
            f"cannot write the access log {log}: No such file or directory",
        )

    def test_unwritableFile(self):
        from lbproxy._startup import unwritableFile

        directory = FilePath(self.mktemp())
        directory.makedirs()
        existing = directory.child("a.log")
        existing.setContent(b"")
        self.assertIsNone(unwritableFile(existing.path))
        self.assertIsNone(unwritableFile(directory.child("new.log").path))
        self.assertFalse(directory.child("new.log").exists())
        self.assertEqual(unwritableFile(directory.path), "Is a directory")
        self.assertEqual(
            unwritableFile(directory.child("no").child("x.log").path),
            "No such file or directory",
        )

    def test_startupFailure(self):
        """
        Ports that cannot be opened and files that cannot be opened are
        described in one line; a port below 1024 refused says what to do;
        anything else is not described (it keeps its traceback).
        """
        import errno

        from twisted.internet.error import CannotListenError

        from lbproxy._startup import startupFailure

        inUse = OSError(errno.EADDRINUSE, "Address already in use")
        denied = OSError(errno.EACCES, "Permission denied")
        self.assertEqual(
            startupFailure(CannotListenError("127.0.0.1", 8080, inUse)),
            "cannot listen on 127.0.0.1:8080: Address already in use",
        )
        self.assertEqual(
            startupFailure(CannotListenError("", 80, denied)),
            "cannot listen on 0.0.0.0:80: Permission denied (a port below 1024 "
            "needs root, with --uid and --gid to run as another user once "
            "listening, or CAP_NET_BIND_SERVICE)",
        )
        self.assertEqual(
            startupFailure(CannotListenError("", 8080, denied)),
            "cannot listen on 0.0.0.0:8080: Permission denied",
        )
        self.assertEqual(
            startupFailure(CannotListenError(None, "/run/x.sock", denied)),
            "cannot listen on /run/x.sock: Permission denied",
        )
        self.assertEqual(
            startupFailure(PermissionError(errno.EACCES, "Permission denied", "/x.log")),
            "cannot open /x.log: Permission denied",
        )
        self.assertIsNone(startupFailure(ValueError("a bug")))
        self.assertIsNone(startupFailure(OSError(errno.EBADF, "Bad file descriptor")))

    def test_reportStartupFailures(self):
        """
        Once L{reportStartupFailures} is called, an operator's mistake that
        ends the process prints one line on the stream given; other errors
        go to the hook that was in place.
        """
        from twisted.internet.error import CannotListenError

        from lbproxy._startup import reportStartupFailures

        previous = []
        self.patch(sys, "excepthook", lambda *args: previous.append(args))
        stream = io.StringIO()
        reportStartupFailures(stream)
        error = CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use"))
        sys.excepthook(CannotListenError, error, None)
        self.assertEqual(
            stream.getvalue(),
            "twistd lbproxy: cannot listen on 127.0.0.1:8080: Address already in use\n",
        )
        self.assertEqual(previous, [])
        bug = ValueError("a bug")
        sys.excepthook(ValueError, bug, None)
        self.assertEqual(previous, [(ValueError, bug, None)])
        self.assertEqual(stream.getvalue().count("\n"), 1)
