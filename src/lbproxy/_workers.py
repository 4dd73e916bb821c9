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

The C{[admin]} listener is the parent's too: each worker serves its own
admin API on a private UNIX socket, and the parent's asks them all and
merges their answers (L{lbproxy._workeradmin}).

Everything else is per worker: each worker has its own pools, so its own
balancer state (round-robin position, least-connections counts, EWMA),
its own passive failure accounting, its own active health checks (N
workers probe each backend N times per interval) and its own idle
connections to the backends (up to C{keepalive} each).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import replace
from typing import Any, Optional, Sequence

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from lbproxy._config import AdminConfig, ConfigError, SiteConfig, parseConfig
from lbproxy._listeners import EndpointListener, ListenerService, parseTCPDescription
from lbproxy._metrics import renderMetrics
from lbproxy._proxyprotocol import listenerParts, withoutPrefix
from lbproxy._statuspage import StatusPage
from lbproxy._workeradmin import (
    WORKER_ADMIN,
    WorkerAdminClient,
    WorkersAdminResource,
    singleValues,
    unixDescription,
)

#: The environment variable that tells a worker which inherited file
#: descriptors are its listening sockets, in C{listen} order, as
#: C{FD:FAMILY} items separated by commas.
WORKER_FDS = "LBPROXY_WORKER_FDS"

#: Seconds a worker must have lived for its death to restart it at once;
#: one that dies sooner is restarted after a delay that doubles up to
#: L{MAX_RESTART_DELAY}.
STABLE_AFTER = 10.0
MAX_RESTART_DELAY = 30.0

#: The signals a worker gets from its parent to act on (reload, reopen
#: the access log).  A worker starts with them blocked (they wait, pending)
#: and unblocks them once its handlers are in place: until then, their
#: default action would end it.
WORKER_SIGNALS = frozenset({signal.SIGHUP, signal.SIGUSR1})

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
    @ivar admin: the resource of the C{[admin]} listener, or L{None}
        without one.
    @ivar adminDirectory: the private directory (mode 0700) of the
        workers' admin sockets while the service runs with an
        C{[admin]} section, else L{None}.
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
        self.adminDirectory: Optional[str] = None
        self.admin: Optional[WorkersAdminResource] = None
        if config.admin is not None:
            self.admin = WorkersAdminResource(
                self.workerPIDs,
                WorkerAdminClient(reactor, self.adminSocket).request,
                reactor,
                config.admin.token,
                pages={
                    b"/metrics": lambda request, merged: renderMetrics(
                        request, singleValues(merged)
                    ),
                    # Shows what differs between workers per worker.
                    b"/": StatusPage(reactor).render,
                },
            )
            EndpointListener(
                config.admin.listen, Site(self.admin), reactor
            ).setServiceParent(self)

    def workerPIDs(self) -> dict[int, Optional[int]]:
        """
        Each worker's number, with its process id while it runs, else
        L{None}.
        """
        return {
            number: getattr(self.workers.get(number), "pid", None)
            for number in range(self.count)
        }

    def adminSocket(self, number: int) -> str:
        """
        The path of the UNIX socket on which worker C{number} serves its
        admin API.
        """
        assert self.adminDirectory is not None
        return os.path.join(self.adminDirectory, f"worker-{number}.sock")

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
        if self.admin is not None:
            # Only this user may enter it (mkdtemp makes it 0700).
            self.adminDirectory = tempfile.mkdtemp(prefix="lbproxy-admin-")
        MultiService.startService(self)
        # Before the first worker starts: once its "worker N started" line
        # is out, a SIGHUP or SIGUSR1 meant for the workers may come, and
        # without these handlers its default action would end the parent.
        # One that comes before a worker is spawned is passed on once the
        # reactor runs (callFromThread), to every worker by then.
        self._previousHup = signal.signal(signal.SIGHUP, self._onHup)
        self._previousUsr1 = signal.signal(signal.SIGUSR1, self._onUsr1)
        for number in range(self.count):
            self._spawn(number)

    def _onUsr1(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.signalWorkers, signal.SIGUSR1)
        # twistd's own: it rotates the --logfile on SIGUSR1.
        if callable(self._previousUsr1):
            self._previousUsr1(signum, frame)

    def _onHup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.reloadParentSettings)
        self._reactor.callFromThread(self.signalWorkers, signal.SIGHUP)

    def reloadParentSettings(self) -> None:
        """
        Read what the parent itself uses of the configuration file again,
        as the workers reload on SIGHUP: C{shutdown_timeout} (the parent
        must wait for the workers as long as they wait) and the C{[admin]}
        token (the parent checks it).  A file with errors leaves them as
        they were (the workers refuse it too).
        """
        try:
            config = parseConfig(self._configPath)
        except (ConfigError, OSError):
            return
        self.shutdownTimeout = config.proxy.shutdownTimeout
        if self.admin is not None and config.admin is not None:
            self.admin.token = config.admin.token

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
        if self.adminDirectory is not None:
            # That of a worker that died is in the way of the new one's.
            path = env[WORKER_ADMIN] = self.adminSocket(number)
            if os.path.lexists(path):
                os.remove(path)
        protocol = _Worker(self, number)
        protocol.started = self._reactor.seconds()
        # The new process inherits the signal mask (see WORKER_SIGNALS).
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        try:
            process = self._reactor.spawnProcess(
                protocol, self._argv[0], self._argv, env=env, childFDs=childFDs
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
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
            if self.adminDirectory is not None:
                shutil.rmtree(self.adminDirectory, ignore_errors=True)
                self.adminDirectory = None
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
    config: SiteConfig,
    fds: Sequence[tuple[int, int]],
    reactor: Any = None,
    adminSocket: Optional[str] = None,
) -> Any:
    """
    The service of one worker: a L{lbproxy.LoadBalancerService} whose
    C{listen} then C{listen_tls} listeners adopt the sockets C{fds} (in
    that order), which runs no demo backend (the parent runs those), and
    whose admin API, with an C{[admin]} section, listens on the UNIX socket
    C{adminSocket} without a token (the parent checks it), or not at all
    when C{adminSocket} is L{None}.
    """
    from lbproxy._tlsserver import TLSServerFactory
    from lbproxy.service import LoadBalancerService

    def private(config: SiteConfig) -> SiteConfig:
        if config.admin is None:
            return config
        if adminSocket is None:
            return replace(config, admin=None)
        return replace(
            config, admin=AdminConfig(unixDescription(adminSocket), None, behindParent=True)
        )

    class WorkerService(LoadBalancerService):
        def __init__(self) -> None:
            self._fds = list(fds)
            LoadBalancerService.__init__(self, private(config), reactor)

        def reload(self, config: SiteConfig) -> Deferred[Any]:
            return LoadBalancerService.reload(self, private(config))

        def startService(self) -> None:
            LoadBalancerService.startService(self)
            # Its handlers are in place: the SIGHUP or SIGUSR1 that came
            # while it started, if any, is handled now.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)

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
