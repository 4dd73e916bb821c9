"""
Tests for L{lbproxy.tap} and the twistd dropin.
"""

from __future__ import annotations

import io
import sys

from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import getPlugins
from twisted.python.filepath import FilePath
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import LoadBalancerService
from lbproxy.tap import Options, makeService

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
