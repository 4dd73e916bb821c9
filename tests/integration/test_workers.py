"""
C{workers = 2} as real processes: the parent holds the socket, two
workers serve it, a dead worker is replaced, SIGTERM stops them all.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource

from lbproxy.testing import startServer

_TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class _Parent(ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.ended: Deferred[Any] = Deferred()

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason)

    def workers(self):
        """
        The latest pid of each worker number, from the parent's log.
        """
        found = {}
        for number, pid in re.findall(rb"worker (\d+) started, pid (\d+)", self.output):
            found[int(number)] = int(pid)
        return found

    def everyWorker(self):
        """
        The pid of every worker the parent's log named.
        """
        return {int(pid) for pid in re.findall(rb"worker \d+ started, pid (\d+)", self.output)}


def startWorkers(testCase, listen, backendPort, workers=2):
    """
    Run C{twistd -n lbproxy} with C{workers} workers listening on
    C{listen} (an endpoint description) and one upstream, C{backendPort}
    on 127.0.0.1, until C{testCase} ends: then SIGTERM to the parent, and
    SIGKILL to every worker its log named that is still running.

    @return: the parent's L{_Parent} and its process transport.
    """
    path = FilePath(testCase.mktemp())
    path.setContent(
        (
            f"[lbproxy]\nlisten = {listen}\n"
            f"access_log = off\nworkers = {workers}\n"
            f"[upstream:app]\nservers = 127.0.0.1:{backendPort}\n"
            "[vhost:app]\ndefault = yes\nupstream = app\n"
        ).encode()
    )
    parent = _Parent()
    process = reactor.spawnProcess(
        parent,
        _TWISTD[0],
        _TWISTD + ["-n", "--pidfile=", "lbproxy", "--config", path.path],
        env=_ENV,
    )

    def stop():
        if process.pid is not None:
            process.signalProcess("TERM")
        for pid in parent.everyWorker():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        return parent.ended.addErrback(lambda f: f.trap(ProcessDone, ProcessTerminated))

    testCase.addCleanup(stop)
    return parent, process


def _freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class WorkersTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def waitFor(self, condition, what, seconds=30.0):
        for _ in range(int(seconds / 0.1)):
            if condition():
                return
            yield deferLater(reactor, 0.1, lambda: None)
        self.fail(f"timed out waiting for {what}")

    @inlineCallbacks
    def test_workers(self):
        """
        Two workers serve the parent's socket; one that is killed is
        started again; SIGTERM to the parent ends every process.
        """
        backend = yield startServer(_Hello(), reactor)
        self.addCleanup(backend.stop)
        port = _freePort()
        parent, process = startWorkers(self, f"tcp:{port}:interface=127.0.0.1", backend.port)
        yield self.waitFor(lambda: len(parent.workers()) == 2, "two workers")
        yield self.waitFor(
            lambda: parent.output.count(b"Starting factory <lbproxy._site.ProxySite") >= 2,
            "two workers listening",
        )
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        for _ in range(4):
            response = yield agent.request(b"GET", b"http://127.0.0.1:%d/" % port)
            body = yield readBody(response)
            self.assertEqual((response.code, body), (200, b"hello"))

        first = parent.workers()[0]
        os.kill(first, signal.SIGKILL)
        yield self.waitFor(
            lambda: parent.workers().get(0, first) != first, "worker 0 restarted"
        )
        self.assertIn(b"worker 0 ended", parent.output)
        for _ in range(4):
            response = yield agent.request(b"GET", b"http://127.0.0.1:%d/" % port)
            body = yield readBody(response)
            self.assertEqual((response.code, body), (200, b"hello"))

        process.signalProcess("TERM")
        yield parent.ended.addErrback(lambda f: f.trap(ProcessDone, ProcessTerminated))
        for pid in parent.workers().values():
            yield self.waitFor(lambda pid=pid: not _alive(pid), f"worker {pid} to end", 10)
