# -*- test-case-name: tests.test_workers -*-
"""
C{workers = N}: several processes serving the same listening sockets.

The parent opens every C{listen} socket itself and never accepts on them.
It starts N worker processes (each a C{twistd -n lbproxy} on the same
configuration file) that inherit the sockets and adopt them with
L{IReactorSocket.adoptStreamPort}; the kernel hands each new connection
to one of the workers.  The parent restarts a worker that dies, passes
SIGHUP and SIGTERM on to the workers, and on its own stop waits for them
to finish their requests.  The C{[demo:NAME]} backends run in the parent.

Everything else is per worker: each worker has its own pools, so its own
balancer state (round-robin position, least-connections counts, EWMA),
its own passive failure accounting, its own active health checks (N
workers probe each backend N times per interval) and its own idle
connections to the backends (up to C{keepalive} each).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Optional, Sequence

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy._config import ConfigError, SiteConfig, parseConfig
from lbproxy._listeners import EndpointListener, ListenerService, parseTCPDescription
from lbproxy._proxyprotocol import listenerParts, withoutPrefix

#: The environment variable that tells a worker which inherited file
#: descriptors are its listening sockets, in C{listen} order, as
#: C{FD:FAMILY} items separated by commas.
WORKER_FDS = "LBPROXY_WORKER_FDS"

#: Seconds a worker must have lived for its death to restart it at once;
#: one that dies sooner is restarted after a delay that doubles up to
#: L{MAX_RESTART_DELAY}.
STABLE_AFTER = 10.0
MAX_RESTART_DELAY = 30.0

#: Seconds the parent waits for its workers after SIGTERM beyond their own
#: C{shutdown_timeout} (by when they have aborted what was left) before it
#: kills them.
STOP_GRACE = 5.0


def workerFDs() -> Optional[list[tuple[int, int]]]:
    """
    The listening sockets this process was given as a worker, as
    C{(file descriptor, address family)}, or L{None} when it is not a
    worker.
    """
    value = os.environ.get(WORKER_FDS)
    if value is None:
        return None
    sockets = []
    for item in value.split(","):
        if item:
            fd, _, family = item.partition(":")
            sockets.append((int(fd), int(family or socket.AF_INET)))
    return sockets


def listeningSocket(description: str) -> socket.socket:
    """
    Open the listening TCP socket that C{description} (a Twisted server
    endpoint string, C{tcp:PORT[:interface=HOST][:backlog=N]} or C{tcp6:},
    or either behind C{haproxy:}), describes.

    @raise ValueError: for any other kind of endpoint.
    @raise CannotListenError: when the socket cannot be opened.
    """
    try:
        listen = parseTCPDescription(withoutPrefix(description))
    except ValueError as e:
        raise ValueError(
            f"workers > 1 needs tcp: or tcp6: listeners, not {description!r} ({e})"
        ) from None
    interface, port = listen.interface, listen.port
    family = socket.AF_INET6 if listen.kind == "tcp6" or ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((interface, port))
        sock.listen(listen.backlog)
        sock.setblocking(False)
    except OSError as e:
        # As Twisted's listenTCP says it, naming the address.
        sock.close()
        raise CannotListenError(interface, port, e) from None
    except BaseException:
        sock.close()
        raise
    return sock


class _Worker(ProcessProtocol):
    def __init__(self, parent: WorkerParentService, number: int) -> None:
        self.parent = parent
        self.number = number
        self.started = 0.0
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.parent._workerEnded(self, reason)
        self.ended.callback(None)


class WorkerParentService(MultiService):
    """
    The parent of C{workers = N}: holds the listening sockets, runs the
    workers, and passes signals on to them.

    @ivar workers: the running workers' process transports, by number.
    @ivar sockets: the listening sockets, in C{listen} order.
    """

    _log = Logger()

    def __init__(
        self,
        config: SiteConfig,
        configPath: str,
        reactor: Any = None,
        argv: Optional[Sequence[str]] = None,
    ) -> None:
        """
        @param config: the checked configuration.
        @param configPath: the file the workers read it from.
        @param argv: the command that runs one worker (its environment
            tells it which sockets are its); C{twistd -n lbproxy --config
            configPath} by default.
        """
        MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self.config = config
        self.count = config.proxy.workers
        self._configPath = configPath
        #: Seconds the workers give their requests in flight on SIGTERM:
        #: the parent kills those still running L{STOP_GRACE} seconds later.
        self.shutdownTimeout = config.proxy.shutdownTimeout
        self._argv = list(
            argv
            or [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "-n",
                "--pidfile=",
                "lbproxy",
                "--config",
                os.path.abspath(configPath),
            ]
        )
        self.sockets: list[socket.socket] = []
        self.workers: dict[int, Any] = {}
        self._protocols: dict[int, _Worker] = {}
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, Any] = {}
        self._shuttingDown = False
        self._previousHup: Any = None
        self._previousUsr1: Any = None
        for demo in config.demos:
            self._addDemo(demo)

    def _addDemo(self, demo: Any) -> None:
        from lbproxy._demo import DemoSite

        site = DemoSite(demo.name)
        for description in demo.listen:
            EndpointListener(description, site, self._reactor).setServiceParent(self)

    def startService(self) -> None:
        self._shuttingDown = False
        proxy = self.config.proxy
        for description in proxy.listen + proxy.listenTLS:
            self.sockets.append(listeningSocket(description))
        MultiService.startService(self)
        for number in range(self.count):
            self._spawn(number)
        self._previousHup = signal.signal(signal.SIGHUP, self._onHup)
        self._previousUsr1 = signal.signal(signal.SIGUSR1, self._onUsr1)

    def _onUsr1(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.signalWorkers, signal.SIGUSR1)
        # twistd's own: it rotates the --logfile on SIGUSR1.
        if callable(self._previousUsr1):
            self._previousUsr1(signum, frame)

    def _onHup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.reloadShutdownTimeout)
        self._reactor.callFromThread(self.signalWorkers, signal.SIGHUP)

    def reloadShutdownTimeout(self) -> None:
        """
        Read C{shutdown_timeout} from the configuration file again (the
        workers reload it on SIGHUP, and the parent must wait for them as
        long as they wait); a file with errors leaves it as it was (the
        workers refuse it too).
        """
        try:
            config = parseConfig(self._configPath)
        except (ConfigError, OSError):
            return
        self.shutdownTimeout = config.proxy.shutdownTimeout

    def signalWorkers(self, signum: int) -> None:
        """
        Send C{signum} to every running worker.
        """
        self._log.info(
            "passing signal {signal} on to {count} worker(s)",
            signal=signum,
            count=len(self.workers),
        )
        for process in list(self.workers.values()):
            try:
                process.signalProcess(signum)
            except Exception:
                pass

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        if self._shuttingDown:
            return
        childFDs: dict[int, Any] = {0: "w", 1: 1, 2: 2}
        for sock in self.sockets:
            childFDs[sock.fileno()] = sock.fileno()
        env = dict(os.environ)
        env[WORKER_FDS] = ",".join(
            f"{sock.fileno()}:{int(sock.family)}" for sock in self.sockets
        )
        env["LBPROXY_WORKER"] = str(number)
        protocol = _Worker(self, number)
        protocol.started = self._reactor.seconds()
        process = self._reactor.spawnProcess(
            protocol, self._argv[0], self._argv, env=env, childFDs=childFDs
        )
        self.workers[number] = process
        self._protocols[number] = protocol
        self._log.info(
            "worker {number} started, pid {pid}", number=number, pid=process.pid
        )

    def _workerEnded(self, protocol: _Worker, reason: Failure) -> None:
        number = protocol.number
        self.workers.pop(number, None)
        self._protocols.pop(number, None)
        if self._shuttingDown:
            return
        lived = self._reactor.seconds() - protocol.started
        if lived >= STABLE_AFTER:
            delay = 0.0
        else:
            delay = min(MAX_RESTART_DELAY, max(0.5, self._delays.get(number, 0.25) * 2))
        self._delays[number] = delay
        self._log.warn(
            "worker {number} ended ({why}) after {lived:.1f}s; restarting "
            "it in {delay:g}s",
            number=number,
            why=reason.getErrorMessage(),
            lived=lived,
            delay=delay,
        )
        self._restarts[number] = self._reactor.callLater(delay, self._spawn, number)

    def stopService(self) -> Deferred[Any]:
        self._shuttingDown = True
        if self._previousHup is not None:
            signal.signal(signal.SIGHUP, self._previousHup)
            signal.signal(signal.SIGUSR1, self._previousUsr1)
            self._previousHup = None
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        ended = [p.ended for p in self._protocols.values()]
        self.signalWorkers(signal.SIGTERM)
        killer = self._reactor.callLater(
            self.shutdownTimeout + STOP_GRACE, self.signalWorkers, signal.SIGKILL
        )

        def done(result: Any) -> Any:
            if killer.active():
                killer.cancel()
            for sock in self.sockets:
                sock.close()
            self.sockets = []
            return MultiService.stopService(self)

        waiting = DeferredList(ended) if ended else succeed(None)
        return waiting.addCallback(done)


class AdoptedPortService(ListenerService):
    """
    A listener on a socket inherited from the parent, adopted with
    L{IReactorSocket.adoptStreamPort}.
    """

    def __init__(self, fd: int, family: int, factory: Any, reactor: Any) -> None:
        ListenerService.__init__(self)
        self._inheritedFD = fd
        self._family = family
        self._factory = factory
        self._reactor = reactor

    def __repr__(self) -> str:
        return f"<AdoptedPortService fd {self._inheritedFD}>"

    def openPort(self) -> Deferred[IListeningPort]:
        # (No socket object around the descriptor to learn its family: on
        # PyPy, detaching one leaves the descriptor unusable.)
        port = self._reactor.adoptStreamPort(
            self._inheritedFD, self._family, self._factory
        )
        # adoptStreamPort duplicated the descriptor: the inherited one is
        # not needed any more.
        os.close(self._inheritedFD)
        return succeed(port)


def workerService(
    config: SiteConfig, fds: Sequence[tuple[int, int]], reactor: Any = None
) -> Any:
    """
    The service of one worker: a L{lbproxy.LoadBalancerService} whose
    C{listen} then C{listen_tls} listeners adopt the sockets C{fds} (in
    that order) and
    which runs no demo backend (the parent runs those).
    """
    from lbproxy._tlsserver import TLSServerFactory
    from lbproxy.service import LoadBalancerService

    class WorkerService(LoadBalancerService):
        def __init__(self) -> None:
            self._fds = list(fds)
            LoadBalancerService.__init__(self, config, reactor)

        def _listen(self, description: str, factory: Any) -> Any:
            site = getattr(self, "site", None)
            proxyListener = factory is site or (
                isinstance(factory, TLSServerFactory) and factory.site is site
            )
            if not proxyListener or not self._fds:
                return LoadBalancerService._listen(self, description, factory)
            if reactor is None:
                from twisted.internet import reactor as _reactor
            else:
                _reactor = reactor
            fd, family = self._fds.pop(0)
            # The socket of a haproxy: listener: its connections start
            # with a PROXY header.
            _, factory = listenerParts(description, factory, _reactor)
            service = AdoptedPortService(fd, family, factory, _reactor)
            service.setServiceParent(self)
            return service

        def _addDemo(self, demo: Any) -> None:
            pass

    return WorkerService()
