"""
Tests for L{lbproxy._logbuffer}: the access log written in batches.
"""

from __future__ import annotations

import os
import sys

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._logbuffer import DEFAULT_INTERVAL, DEFAULT_SIZE, BufferedLog

_SITE = (
    "[lbproxy]\nlisten = tcp:8080:interface=127.0.0.1\naccess_log = {log}\n"
    "[upstream:app]\nservers = 127.0.0.1:9001\n"
    "[vhost:app]\ndefault = yes\nupstream = app\n"
)


class BufferedLogTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.path = FilePath(self.mktemp())
        self.log = BufferedLog.open(self.path.path, self.clock)
        self.addCleanup(self.log.close)

    def content(self):
        return self.path.getContent()

    def test_defaults(self):
        """
        A file is written in batches of nginx's C{buffer=64k flush=1s}.
        """
        self.assertEqual((self.log.size, self.log.interval), (DEFAULT_SIZE, DEFAULT_INTERVAL))
        self.assertEqual((DEFAULT_SIZE, DEFAULT_INTERVAL), (64 * 1024, 1.0))

    def test_afterTheInterval(self):
        """
        Lines are kept until the interval after the first of them has
        passed, then written together; one delayed call serves them all.
        """
        self.log.write("one\n")
        self.clock.advance(0.5)
        self.log.write("two\n")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.499)
        self.assertEqual(self.content(), b"")
        self.clock.advance(0.001)
        self.assertEqual(self.content(), b"one\ntwo\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.log.write("three\n")
        self.clock.advance(1)
        self.assertEqual(self.content(), b"one\ntwo\nthree\n")

    def test_atTheSize(self):
        """
        Once the lines kept reach the size, they are written at once,
        without waiting for the clock, and the pending flush is cancelled.
        """
        self.log.size = 10
        self.log.write("1234\n")
        self.assertEqual(self.content(), b"")
        self.log.write("5678\n")
        self.assertEqual(self.content(), b"1234\n5678\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closeWritesTheRest(self):
        """
        L{BufferedLog.close} writes the lines kept and closes the file; a
        line written after it is counted lost, not written.
        """
        self.log.write("kept\n")
        self.log.close()
        self.assertEqual(self.content(), b"kept\n")
        self.assertTrue(self.log.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.log.write("late\n")
        self.assertEqual(self.log.lost, 1)
        self.assertEqual(self.content(), b"kept\n")

    def test_noLineLostOrDuplicated(self):
        """
        Lines written through size flushes, interval flushes and a close
        are in the file once each, in order.
        """
        self.log.size = 300
        expected = []
        for n in range(1000):
            line = "line %d %s\n" % (n, "x" * (n % 17))
            expected.append(line)
            self.log.write(line)
            if n % 97 == 0:
                self.clock.advance(0.4)
        self.log.close()
        self.assertEqual(self.content().decode(), "".join(expected))

    def test_utf8(self):
        """
        Text is written as UTF-8.
        """
        self.log.write("caf\u00e9\n")
        self.log.flush()
        self.assertEqual(self.content(), "caf\u00e9\n".encode())

    def test_standardOutput(self):
        """
        C{-} writes each line as it comes to standard output, which close
        does not close; L{None} is no log.
        """
        log = BufferedLog.open("-", self.clock)
        self.assertEqual(log.size, 0)
        log.close()
        self.assertFalse(sys.__stdout__.closed)
        self.assertIsNone(BufferedLog.open(None, self.clock))


class WriteErrorTests(SynchronousTestCase):
    """
    A write that fails (a full disk: C{/dev/full}) drops its lines, is
    logged once until a write succeeds, and is never raised.
    """

    def setUp(self):
        if not os.path.exists("/dev/full"):
            raise self.skipTest("no /dev/full")

    def test_diskFull(self):
        clock = Clock()
        log = BufferedLog(open("/dev/full", "wb", buffering=0), clock, "/dev/full")
        self.addCleanup(log.close)
        with capturedLogs() as events:
            log.write("a\nb\n")
            clock.advance(1)
            log.write("c\n")
            log.flush()
            log.write("d\n")
            clock.advance(1)
        self.assertEqual(log.lost, 4)
        (event,) = events
        self.assertEqual(event["log_level"].name, "error")
        self.assertIn("cannot write the access log", event["log_format"])
        self.assertEqual(event["log"], "/dev/full")
        self.assertEqual(event["reason"], "No space left on device")

        # The descriptor now names a file that can be written.
        target = FilePath(self.mktemp())
        with open(target.path, "wb") as good:
            os.dup2(good.fileno(), log._fd)
        with capturedLogs() as events:
            log.write("e\n")
            log.flush()
        self.assertEqual(target.getContent(), b"e\n")
        (event,) = events
        self.assertIn("is written again", event["log_format"])
        self.assertEqual(event["lost"], 4)


class ServiceTests(SynchronousTestCase):
    """
    L{lbproxy.LoadBalancerService} writes the lines kept when it stops and
    when a reload changes the log's path.
    """

    def setUp(self):
        from lbproxy import LoadBalancerService, parseConfigText

        self.first = FilePath(self.mktemp())
        self.reactor = MemoryReactorClock()
        self.service = LoadBalancerService(
            parseConfigText(_SITE.format(log=self.first.path), "site.ini"), self.reactor
        )
        self.service.startService()
        self.addCleanup(lambda: self.service.running and self.service.stopService())

    def logLines(self, count):
        from tests.test_accesslog import _request

        for _ in range(count):
            self.service.site.log(_request())

    def test_stop(self):
        """
        Lines not yet written when the service stops are written then.
        """
        self.logLines(3)
        self.assertEqual(self.first.getContent(), b"")
        self.service.stopService()
        self.assertEqual(self.first.getContent().count(b"\n"), 3)

    def test_reloadToAnotherPath(self):
        """
        A reload that moves the log writes the lines kept to the old file,
        and the next ones go to the new file.
        """
        from lbproxy import parseConfigText

        second = FilePath(self.mktemp())
        self.logLines(2)
        self.service.reload(parseConfigText(_SITE.format(log=second.path), "site.ini"))
        self.assertEqual(self.first.getContent().count(b"\n"), 2)
        self.logLines(1)
        self.reactor.advance(1)
        self.assertEqual(second.getContent().count(b"\n"), 1)
        self.assertEqual(self.first.getContent().count(b"\n"), 2)
