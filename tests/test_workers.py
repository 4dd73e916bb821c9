"""
Tests for L{lbproxy._workers}: the configuration of C{workers}, the
parent's sockets, and how a worker finds its own.  The processes
themselves are exercised in L{tests.integration.test_workers}.
"""

from __future__ import annotations

import os
import signal
import socket

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._workers import (
    STOP_GRACE,
    WORKER_FDS,
    AdoptedPortService,
    WorkerParentService,
    listeningSocket,
    workerFDs,
    workerService,
)
from lbproxy.config import ConfigError, parseConfig, parseConfigText

_SITE = """
[lbproxy]
listen = {listen}
workers = {workers}

[upstream:app]
servers = 127.0.0.1:9001

[vhost:app]
default = yes
upstream = app
"""


class ConfigTests(SynchronousTestCase):
    def test_severalWorkers(self):
        """
        C{workers} may be more than 1 with TCP listeners.
        """
        config = parseConfigText(
            _SITE.format(listen="tcp:8080\n    tcp6:8081", workers=4)
        )
        self.assertEqual(config.proxy.workers, 4)

    def test_onlyTCP(self):
        """
        Several workers cannot share a listener that is not TCP.
        """
        with self.assertRaises(ConfigError) as caught:
            parseConfigText(_SITE.format(listen="unix:/tmp/lb.sock", workers=2))
        self.assertIn("tcp: and tcp6: listeners only", "\n".join(caught.exception.errors))

    def test_oneWorkerAnyListener(self):
        """
        With one worker, any endpoint will do.
        """
        config = parseConfigText(_SITE.format(listen="unix:/tmp/lb.sock", workers=1))
        self.assertEqual(config.proxy.workers, 1)


class SocketTests(SynchronousTestCase):
    def test_listeningSocket(self):
        """
        The parent's socket listens on the endpoint's interface and port,
        and does not block.
        """
        sock = listeningSocket("tcp:0:interface=127.0.0.1:backlog=10")
        self.addCleanup(sock.close)
        host, port = sock.getsockname()
        self.assertEqual(host, "127.0.0.1")
        self.assertNotEqual(port, 0)
        self.assertEqual(sock.family, socket.AF_INET)
        self.assertFalse(sock.getblocking())
        client = socket.create_connection((host, port), timeout=5)
        client.close()

    def test_notTCP(self):
        """
        Only TCP endpoints can be opened by the parent.
        """
        self.assertRaises(ValueError, listeningSocket, "unix:/tmp/x.sock")

    def test_workerFDs(self):
        """
        A worker learns its sockets from the environment; a process without
        that variable is not a worker.
        """
        self.patch(os, "environ", {})
        self.assertIsNone(workerFDs())
        self.patch(os, "environ", {WORKER_FDS: "5:2,7:10"})
        self.assertEqual(workerFDs(), [(5, 2), (7, 10)])


class AdoptedPortServiceTests(SynchronousTestCase):
    """
    A worker adopts the sockets it inherited.
    """

    def inherited(self) -> int:
        """
        A descriptor like one a worker inherits: a listening socket's.
        """
        sock = listeningSocket("tcp:0:interface=127.0.0.1")
        self.addCleanup(sock.close)
        return os.dup(sock.fileno())

    def test_adopts(self):
        """
        Started, the service adopts the descriptor with its family, closes
        the inherited descriptor (the reactor has its own copy), and tells
        L{AdoptedPortService.whenListening}; stopped, it stops listening.
        """
        reactor = MemoryReactorClock()
        factory = Factory()
        fd = self.inherited()
        service = AdoptedPortService(fd, socket.AF_INET, factory, reactor)
        waiting = service.whenListening()
        service.privilegedStartService()
        service.startService()
        self.assertEqual(reactor.adoptedPorts, [(fd, socket.AF_INET, factory)])
        self.assertRaises(OSError, os.fstat, fd)
        self.assertIs(self.successResultOf(waiting), service.port)
        self.successResultOf(service.stopService())
        self.assertIsNone(service.port)

    def test_workerService(self):
        """
        A worker's service adopts its sockets for the C{listen} listeners,
        in order, and listens on nothing else (the parent runs the demo
        backends).
        """
        reactor = MemoryReactorClock()
        config = parseConfigText(
            _SITE.format(listen="tcp:8080", workers=2)
            + "\n[demo:blue]\nlisten = tcp:9001\n"
        )
        fd = self.inherited()
        service = workerService(config, [(fd, socket.AF_INET)], reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(reactor.adoptedPorts, [(fd, socket.AF_INET, service.site)])
        self.assertEqual(reactor.tcpServers, [])
        self.assertEqual(len(self.successResultOf(service.whenListening())), 1)

    def test_workerServiceTLS(self):
        """
        With C{listen_tls}, the worker adopts its sockets in the order
        C{listen} then C{listen_tls}: the second serves the site through
        TLS.
        """
        from lbproxy._tlsserver import TLSServerFactory
        from tests.certificates import Authority

        directory = os.path.abspath(self.mktemp())
        chain, key = Authority().write(directory, ["app.test"])
        reactor = MemoryReactorClock()
        config = parseConfigText(
            _SITE.format(listen="tcp:8080", workers=2).replace(
                "workers", f"listen_tls = tcp:8443\ntls_certificate = {chain}\ntls_key = {key}\nworkers"
            )
        )
        plain, tls = self.inherited(), self.inherited()
        service = workerService(config, [(plain, socket.AF_INET), (tls, socket.AF_INET)], reactor)
        service.startService()
        self.addCleanup(service.stopService)
        [first, second] = reactor.adoptedPorts
        self.assertEqual(first, (plain, socket.AF_INET, service.site))
        self.assertEqual(second[:2], (tls, socket.AF_INET))
        self.assertIsInstance(second[2], TLSServerFactory)
        self.assertIs(second[2].site, service.site)
        self.assertEqual(reactor.tcpServers, [])


class _Process:
    """
    The process transport L{_SpawningReactor} hands out: it records the
    signals sent to it.
    """

    def __init__(self, pid):
        self.pid = pid
        self.signals = []

    def signalProcess(self, signum):
        self.signals.append(signum)


class _SpawningReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} that records the processes it is asked to start
    instead of starting them.
    """

    def __init__(self):
        MemoryReactorClock.__init__(self)
        self.processes = []

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None, **kw):
        process = _Process(1000 + len(self.processes))
        self.processes.append((protocol, process))
        return process


class _SignalCheckingReactor(_SpawningReactor):
    """
    A L{_SpawningReactor} that records, as each worker is spawned, the
    handlers of SIGHUP and SIGUSR1 at that moment.
    """

    def __init__(self):
        _SpawningReactor.__init__(self)
        self.handlers = []

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None, **kw):
        self.handlers.append(
            (signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGUSR1))
        )
        return _SpawningReactor.spawnProcess(
            self, protocol, executable, args, env, childFDs, **kw
        )


class SignalTests(SynchronousTestCase):
    """
    The parent passes SIGHUP and SIGUSR1 on to its workers.
    """

    def test_handlersBeforeWorkers(self):
        """
        The parent's SIGHUP and SIGUSR1 handlers are in place before the
        first worker is spawned: a signal sent to the parent as soon as a
        worker is reported started is passed on, rather than ending the
        parent by its default action.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(_SITE.format(listen="tcp:0:interface=127.0.0.1", workers=2))
        reactor = _SignalCheckingReactor()
        parent = WorkerParentService(parseConfig(path), path, reactor)
        parent.startService()
        self.addCleanup(parent.stopService)
        self.assertEqual(
            reactor.handlers, [(parent._onHup, parent._onUsr1)] * 2
        )


class StopTests(SynchronousTestCase):
    """
    The parent's stop: SIGTERM to the workers, SIGKILL to those still
    running C{shutdown_timeout} plus L{STOP_GRACE} seconds later.
    """

    def startParent(self, extra):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                _SITE.format(listen="tcp:0:interface=127.0.0.1", workers=2).replace(
                    "workers = 2", "workers = 2\n" + extra
                )
            )
        reactor = _SpawningReactor()
        parent = WorkerParentService(parseConfig(path), path, reactor)
        parent.startService()
        self.addCleanup(lambda: parent.running and parent.stopService())
        return path, reactor, parent

    def test_killAfterShutdownTimeout(self):
        """
        Workers still running C{shutdown_timeout} + L{STOP_GRACE} seconds
        after the SIGTERM are killed; the stop completes once they end.
        """
        path, reactor, parent = self.startParent("shutdown_timeout = 7s")
        self.assertEqual(len(reactor.processes), 2)
        stopped = parent.stopService()
        for _protocol, process in reactor.processes:
            self.assertEqual(process.signals, [signal.SIGTERM])
        reactor.advance(7 + STOP_GRACE - 0.1)
        self.assertEqual(reactor.processes[0][1].signals, [signal.SIGTERM])
        reactor.advance(0.1)
        for protocol, process in reactor.processes:
            self.assertEqual(process.signals, [signal.SIGTERM, signal.SIGKILL])
            protocol.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        self.successResultOf(stopped)

    def test_cleanStop(self):
        """
        Workers that end on their own cancel the kill.
        """
        path, reactor, parent = self.startParent("")
        stopped = parent.stopService()
        for protocol, _process in reactor.processes:
            protocol.processEnded(Failure(ProcessDone(0)))
        self.successResultOf(stopped)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_reloadedShutdownTimeout(self):
        """
        On SIGHUP the parent reads C{shutdown_timeout} again (the workers
        take it then); a file with errors leaves it as it was.
        """
        path, reactor, parent = self.startParent("shutdown_timeout = 7s")
        self.assertEqual(parent.shutdownTimeout, 7.0)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("shutdown_timeout = 7s", "shutdown_timeout = 90s"))
        parent.reloadParentSettings()
        self.assertEqual(parent.shutdownTimeout, 90.0)
        with open(path, "w") as f:
            f.write(text.replace("shutdown_timeout = 7s", "shutdown_timeout = soon"))
        parent.reloadParentSettings()
        self.assertEqual(parent.shutdownTimeout, 90.0)
