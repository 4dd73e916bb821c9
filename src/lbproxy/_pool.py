# -*- test-case-name: tests.test_pool -*-
"""
The backend pool of one upstream: its backends and their states, the
balancer, slow start and passive failure accounting.

The connections themselves (the endpoint that reaches a backend, the idle
persistent connections) are L{lbproxy._connections}'s; the pool holds one
L{BackendConnections} per backend and hands out what it gives.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Callable, Collection, Iterable, NamedTuple, Optional, Union

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from lbproxy._backend import DOWN_IN_CONFIGURATION, Backend, BackendState, Outcome
from lbproxy._budget import RetryBudget
from lbproxy._client import UpstreamConnection
from lbproxy._connections import BackendConnections, LeftConnections, backendEndpoint
from lbproxy._interfaces import IBalancer, IMembershipObserver
from lbproxy._proxyprotocol import HeaderWriter
from lbproxy._queue import QueuedRequest, RequestQueue


def _backendId(poolName: str, backend: Backend) -> str:
    digest = hashlib.sha256(f"{poolName}\0{backend.url}".encode()).hexdigest()
    return digest[:16]


#: The share of its weight a slow-starting backend starts from.
SLOW_START_SHARE = 0.1

#: The order in which a backend's conditions decide its state: the first
#: that holds wins, and a backend none of them holds for is up.
STATE_PRECEDENCE = (
    BackendState.DISABLED,
    BackendState.DRAINING,
    BackendState.DOWN,
    BackendState.FAILED,
)


def deriveState(backend: Backend) -> BackendState:
    """
    The state that C{backend}'s conditions give it.

    The administrative state (disabled or draining) wins over the active
    checks, which win over passive accounting: see L{BackendState}.
    """
    if backend.adminState is not None:
        return backend.adminState
    if backend.checkedDown:
        return BackendState.DOWN
    if backend.failedUntil is not None:
        return BackendState.FAILED
    return BackendState.UP


def slowStartWeight(weight: float, elapsed: float, duration: float) -> float:
    """
    The effective weight of a slow-starting backend.

    It grows linearly from L{SLOW_START_SHARE} of C{weight} when the backend
    comes back to all of C{weight} after C{duration} seconds.

    @param weight: the configured weight.
    @param elapsed: seconds since the backend came back.
    @param duration: C{slow_start}, in seconds.
    """
    if duration <= 0 or elapsed >= duration:
        return float(weight)
    growth = (1.0 - SLOW_START_SHARE) * max(elapsed, 0.0) / duration
    return weight * (SLOW_START_SHARE + growth)


def slowStartStep(duration: float) -> float:
    """
    How often a slow-starting backend's effective weight is recomputed: 20
    steps over C{duration}, but no more often than 10 times a second and no
    less often than once a second.
    """
    return min(1.0, max(0.1, duration / 20.0))


#: The longest an ejection (C{eject_on}) lasts, however often the backend
#: was ejected in a row, unless C{fail_timeout} itself is longer (as
#: Envoy's C{max_ejection_time} default).
MAX_EJECTION_TIME = 300.0


def ejectionTime(failTimeout: float, inARow: int) -> float:
    """
    How long a backend ejected by outlier detection (C{eject_on}) stays
    out: C{fail_timeout} the first time, twice as long for each ejection
    in a row before, never longer than L{MAX_EJECTION_TIME} (or
    C{fail_timeout} when that is longer).

    @param failTimeout: the backend's C{fail_timeout}, in seconds.
    @param inARow: how many times it was ejected in a row before this one.
    """
    cap = max(failTimeout, MAX_EJECTION_TIME)
    return min(failTimeout * 2.0 ** min(inARow, 32), cap)


def maxEjected(share: float, backends: int) -> int:
    """
    How many of an upstream's C{backends} outlier detection may keep out
    at once under C{max_ejection = share}: the share rounded down, but at
    least one unless the share is 0.
    """
    if share <= 0:
        return 0
    return max(1, int(share * backends + 1e-9))


def describeFailures(failures: Iterable[tuple[float, Union[int, Outcome]]]) -> str:
    """
    Say what a backend's failures were, most frequent first: C{"5
    responses 500"}, C{"3 responses 502, 1 connect_failed"}.
    """
    counts = Counter(what for _, what in failures)
    parts = []
    for what, count in counts.most_common():
        if isinstance(what, Outcome):
            parts.append(f"{count} {what.value}")
        else:
            parts.append(f"{count} response{'s' if count > 1 else ''} {what}")
    return ", ".join(parts)


StateObserver = Callable[[Backend, BackendState, BackendState, str], None]


def backendIdentity(backend: Backend) -> tuple[str, str, int]:
    """
    What makes two backends the same member of a pool for
    L{Pool.setBackends}: C{(scheme, host, port)}.
    """
    return (backend.scheme, backend.host, backend.port)


def _connectionsKey(backend: Backend) -> tuple[str, str, int, Optional[str]]:
    """
    What makes the connections of two backends interchangeable: their
    L{backendIdentity} and, for TLS, the name their certificate was
    checked against (L{Backend.origin}).
    """
    return (*backendIdentity(backend), backend.origin)


class _Leaving(NamedTuple):
    """
    A backend that left the pool's membership while requests were in
    flight to it: what to restore if it comes back before they finish.

    @ivar adminState: its administrative state before it left.
    @ivar drainReason: the reason of an earlier drain, or L{None}.
    @ivar reason: why it left, for the log line of its removal.
    """

    adminState: Optional[BackendState]
    drainReason: Optional[str]
    reason: str


class Pool:
    """
    The backends of one upstream and everything that decides which of them
    gets a request.

    Membership changes go through L{setBackends} (see there): a backend
    that stays keeps its state, counters and connections, one that leaves
    is drained, then dropped (its idle connections are kept a while in
    case its address comes back: L{LeftConnections}).

    Every state change of a backend goes through L{setState}, which logs it,
    tells the state observers, and tells the balancer the new eligible set:
    the primary backends that are up or, while none is, the backup backends
    that are up.  A backend's state follows from its conditions (see
    L{BackendState} and L{deriveState}), which change only through these
    events:

        - passive accounting: C{max_fails} failures within C{fail_timeout}
          (L{requestFinished}) and the expiry of C{fail_timeout};
        - active checks: L{markDown} and L{markUp}, called by
          L{lbproxy._health.HealthChecker};
        - the operator: L{drain}, L{disable} and L{enable}.

    With a single backend the passive accounting is off, as in nginx: there
    is no other server to send the request to, so taking the only one out
    would only turn slow errors into fast ones.  Slow start is off too, as
    there is no other server to share the load with.  Backends that left
    and are finishing their requests, and those that stand for a name
    with no address yet, take no request, so they do not count
    (L{_serving}).

    With C{eject_on} (L{ejectOn}) passive accounting becomes outlier
    detection, as Envoy's: the responses it names count as failures too
    (the response still goes to the client), a backend taken out again
    stays out twice as long each time (L{ejectionTime}; once it has stayed
    in for as long as it was last out, it starts again from
    C{fail_timeout}), and no more than L{maxEjection} of the backends are
    out at once (L{maxEjected}).  Without it, nginx's rules hold: out for
    C{fail_timeout}, every time, with no cap.

    Caps and the queue: a backend with C{max_conns} takes no more requests
    than that at once.  L{pick} leaves the backends at their cap out of
    the balancer's choice (it hands them to the balancer's C{pick} with
    the excluded ones, so every balancer, a plugin's too, skips them);
    while no backend is at its cap, nothing is added.  A request that
    finds every backend at its cap waits in L{queue} (see
    L{lbproxy._proxy}), and goes, oldest first, to the first backend that
    has room again.

    @ivar queue: the L{RequestQueue} of the requests waiting for a backend
        with room.
    @ivar full: the backends at their C{max_conns}, a L{set} to read, not
        to change.
    @ivar ejectOn: the response statuses that count as failures of the
        backend that sent them, a L{frozenset} of L{int} (empty: none).
    @ivar maxEjection: the largest share of the backends outlier detection
        keeps out at once, 0.0 to 1.0.
    @ivar budget: the L{RetryBudget}, or L{None} when retries are not
        limited by one.
    @ivar name: the upstream's name.
    @ivar backends: every backend, in configuration order (those leaving
        the pool, still finishing their requests, last).
    @ivar balancer: the L{IBalancer} picking among the eligible backends.
    @ivar eligible: the backends the balancer may pick now.
    @ivar slowStart: seconds over which a backend that comes back ramps its
        effective weight up to its weight; 0 for no ramp.
    @ivar upgradeProtocols: the lower-cased names (without C{/version})
        of the C{Upgrade} protocols whose requests are forwarded with
        their C{Upgrade} and, once the backend answers 101, become tunnels.
    @ivar tunnelTimeout: seconds a tunnel may carry no byte either way
        before it is closed, or L{None} for no limit.
    @ivar requestBuffering: whether request bodies are read whole before
        the request is forwarded (the default), or go to the backend as
        they arrive (C{request_buffering = no}).
    @ivar retries: how many times a request was sent to another backend
        after one failed it (nginx's C{proxy_next_upstream}), in total.
    @ivar backendsAdded: how many backends joined the pool while it ran
        (L{setBackends}), in total.
    @ivar backendsRemoved: how many backends left it and were dropped
        (once their requests in flight finished), in total.
    """

    _log = Logger()

    def __init__(
        self,
        name: str,
        backends: Iterable[Backend],
        balancer: Optional[IBalancer] = None,
        reactor: Any = None,
        *,
        maxFails: int = 1,
        failTimeout: float = 10.0,
        connectTimeout: float = 5.0,
        readTimeout: float = 60.0,
        nextUpstreamTries: int = 0,
        keepalive: int = 32,
        keepaliveTimeout: float = 60.0,
        tlsVerify: bool = True,
        tlsCA: Optional[str] = None,
        tlsServerName: Optional[str] = None,
        slowStart: float = 0.0,
        upgradeProtocols: Iterable[str] = ("websocket",),
        tunnelTimeout: Optional[float] = 3600.0,
        requestBuffering: bool = True,
        sendProxyProtocol: int = 0,
        queue: int = 100,
        queueTimeout: float = 5.0,
        ejectOn: Iterable[int] = (),
        maxEjection: float = 0.5,
        retryBudget: Optional[float] = None,
    ) -> None:
        """
        @param name: the upstream's name, for logs.
        @param backends: the L{Backend}s, in configuration order.
        @param balancer: the balancer to use; round robin when L{None}.
        @param reactor: the reactor; the global one when L{None}.
        @param maxFails: failures within C{failTimeout} that take a backend
            out (0 turns passive accounting off).
        @param failTimeout: seconds, the window for C{maxFails} and how long
            a failed backend then stays out.
        @param connectTimeout: seconds to wait for a backend to accept.
        @param readTimeout: seconds between two reads from the backend.
        @param nextUpstreamTries: how many backends one request may try; 0
            means every backend once.
        @param keepalive: idle persistent connections kept per backend.
        @param keepaliveTimeout: seconds an idle connection is kept.
        @param tlsVerify: verify C{https} backends' certificates.
        @param tlsCA: a PEM file of trusted CAs for C{https} backends.
        @param tlsServerName: the name C{https} backends are sent in SNI
            and checked against, instead of their host.
        @param slowStart: seconds over which a backend that comes back (from
            down, failed, draining or disabled) ramps its effective weight
            from L{SLOW_START_SHARE} of its weight to all of it.
        @param sendProxyProtocol: C{send_proxy_protocol}: 0 (no), or the
            PROXY protocol version (1 or 2) of the header that starts
            every connection to a backend.
        @param queue: how many requests may wait while every backend is at
            its C{max_conns}.
        @param queueTimeout: seconds a request may wait; then it gets 503.
        @param ejectOn: see L{ejectOn}.
        @param maxEjection: see L{maxEjection}.
        @param retryBudget: the share of the requests of the last 10 s
            that may be retried on another backend (see L{RetryBudget}), or
            L{None} for no budget.
        """
        if reactor is None:
            from twisted.internet import reactor as _globalReactor

            reactor = _globalReactor
        if balancer is None:
            from lbproxy.balancers._roundrobin import RoundRobin

            balancer = RoundRobin()
        self._reactor = reactor
        self.name = name
        self.backends = tuple(backends)
        self.balancer = balancer
        self.maxFails = maxFails
        self.failTimeout = failTimeout
        self.connectTimeout = connectTimeout
        self.readTimeout = readTimeout
        self.nextUpstreamTries = nextUpstreamTries
        self.keepalive = keepalive
        self.slowStart = slowStart
        self.upgradeProtocols = frozenset(
            name.lower().encode("ascii") for name in upgradeProtocols
        )
        self.tunnelTimeout = tunnelTimeout
        self.requestBuffering = requestBuffering
        self.sendProxyProtocol = sendProxyProtocol
        self._proxyHeaders = HeaderWriter(sendProxyProtocol) if sendProxyProtocol else None
        self.eligible: tuple[Backend, ...] = ()
        self.queue = RequestQueue(reactor, queue, queueTimeout)
        self.full: set[Backend] = set()
        self._dispatching: Optional[IDelayedCall] = None
        self.ejectOn = frozenset(ejectOn)
        self.maxEjection = maxEjection
        self._spared: set[Backend] = set()
        self.budget = None if retryBudget is None else RetryBudget(retryBudget)
        self.retries = 0
        self.backendsAdded = 0
        self.backendsRemoved = 0
        self._recoveries: dict[Backend, IDelayedCall] = {}
        self._ramps: dict[Backend, tuple[float, IDelayedCall]] = {}
        self._drainWaiters: dict[Backend, list[Deferred[bool]]] = {}
        self._observers: list[StateObserver] = []
        self._members: list[IMembershipObserver] = []
        self._leaving: dict[Backend, _Leaving] = {}
        self._closing: list[Deferred[Any]] = []
        self._holding = 0
        self._connections: dict[Backend, BackendConnections] = {}
        self._endpointOptions = (
            connectTimeout, tlsVerify, tlsCA, tlsServerName, sendProxyProtocol
        )
        self._keepaliveTimeout = keepaliveTimeout
        self._left = LeftConnections(keepalive)
        for backend in self.backends:
            self._join(backend)
        self._refresh(initial=True)

    def _join(self, backend: Backend) -> None:
        """
        Give a backend that joins the pool its id, state and connections.
        """
        backend.id = _backendId(self.name, backend)
        backend.state = deriveState(backend)
        self._connections[backend] = self._connectionsFor(backend)

    def _connectionsFor(self, backend: Backend) -> BackendConnections:
        """
        The connections of a backend that joins: those it left with, if
        they are still kept (L{LeftConnections}), else new ones.
        """
        connections = self._left.take(_connectionsKey(backend))
        if connections is None:
            connections = BackendConnections(
                self._reactor,
                backendEndpoint(self._reactor, backend, *self._endpointOptions),
                self.keepalive,
                self._keepaliveTimeout,
                tls=backend.scheme == "https",
            )
        return connections

    def __repr__(self) -> str:
        return f"<Pool {self.name!r} {list(self.backends)!r}>"

    @property
    def reactor(self) -> Any:
        """
        The reactor the pool's timers and connections use.
        """
        return self._reactor

    @property
    def tries(self) -> int:
        """
        How many backends one request may try.
        """
        if self.nextUpstreamTries > 0:
            return self.nextUpstreamTries
        return len(self.backends)

    def backendNamed(self, name: str) -> Backend:
        """
        Find a backend by its C{host:port}.

        @raise KeyError: when there is none.
        """
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)

    # The state machine.

    def addStateObserver(self, observer: StateObserver) -> None:
        """
        Call C{observer(backend, old, new, reason)} after every state change
        of a backend of this pool (for the status page and metrics).
        """
        self._observers.append(observer)

    def removeStateObserver(self, observer: StateObserver) -> None:
        """
        Stop calling an observer added with L{addStateObserver}.
        """
        self._observers.remove(observer)

    def addMembershipObserver(self, observer: IMembershipObserver) -> None:
        """
        Tell C{observer} of every backend that joins or leaves the pool
        through L{setBackends}.
        """
        self._members.append(observer)

    def removeMembershipObserver(self, observer: IMembershipObserver) -> None:
        """
        Stop telling an observer added with L{addMembershipObserver}.
        """
        self._members.remove(observer)

    # Membership.

    def setBackends(self, backends: Iterable[Backend], reason: str) -> None:
        """
        Make C{backends} the pool's members: the one place where backends
        join and leave (a DNS answer, an etcd event).

        Backends are matched by L{backendIdentity}, C{(scheme, host,
        port)}; the first of C{backends} with an identity counts:

            - a backend already a member stays the same L{Backend}: its
              state, counters, passive accounting and pooled connections
              go on.  Its C{weight}, C{backup}, C{max_fails} and
              C{fail_timeout} are taken from the new one, and the C{down}
              of its server line is applied (or lifted) as the
              configuration would;
            - a new backend joins: it gets its id and connections, its
              membership observers (the health checker) are told, and,
              with C{slow_start}, it ramps up as a backend coming back
              does;
            - a member not in C{backends} leaves: it is drained (no new
              requests; those in flight finish), then it is dropped, and
              the membership observers are told.  If it comes back before
              its requests have finished, it stays, as it was before it
              left; if it comes back later, it joins as a new backend,
              with the idle connections it left with, if they are still
              open (L{LeftConnections}).

        The balancer is told the new eligible set once, at the end.

        @param backends: the new members, in order (the order of
            L{backends}).
        @param reason: why the membership changed, for the log lines
            (C{"DNS answer for app.internal"}).
        """
        wanted: dict[tuple[str, str, int], Backend] = {}
        for backend in backends:
            wanted.setdefault(backendIdentity(backend), backend)
        current = {backendIdentity(b): b for b in self.backends}
        members: list[Backend] = []
        added: list[Backend] = []
        self._holding += 1
        try:
            for key, backend in wanted.items():
                member = current.get(key)
                if member is None:
                    self._join(backend)
                    members.append(backend)
                    added.append(backend)
                else:
                    members.append(member)
            gone = [b for key, b in current.items() if key not in wanted]
            self.backends = tuple(members + gone)
            self.backendsAdded += len(added)
            for key, backend in wanted.items():
                member = current.get(key)
                if member is not None:
                    self._keep(member, backend, reason)
            if added:
                self._logMembers([b.name for b in added], "added", reason)
            for backend in added:
                for observer in list(self._members):
                    observer.backendAdded(backend)
                if backend.state is BackendState.UP and self.eligible:
                    # Into a pool that takes requests: it ramps up as a
                    # backend that comes back does.
                    self._startSlowStart(backend)
            dropped = [b.name for b in gone if self._leave(b, reason)]
        finally:
            self._holding -= 1
        if dropped:
            self._logMembers(dropped, "removed", reason)
        self._refresh(weights=True)

    def _logMembers(self, names: list[str], what: str, reason: str) -> None:
        """
        Log that the backends C{names} were C{what} (added, removed) for
        C{reason}, in one line: a log line costs the reactor's turn some
        80 to 150 µs with twistd's file observer, so an answer that brings
        eight new addresses for eight stalled the turn for its sixteen
        lines (1.7 ms against 0.3 to 0.5 ms now, C{benchmarks/setbackends.py}).
        """
        self._log.info(
            "{noun} {backends} of upstream {upstream} {what} ({reason})",
            noun="backend" if len(names) == 1 else "backends",
            backends=", ".join(names),
            upstream=self.name,
            what=what,
            reason=reason,
        )

    def _keep(self, member: Backend, line: Backend, reason: str) -> None:
        """
        C{member} stays in the pool: take the settings of C{line}, the
        backend that names it in the new membership.
        """
        if line.placeholder and member.stateReason != line.stateReason:
            # The same name, still with no address: the newest reason.
            member.stateReason = line.stateReason
            member._reasons[BackendState.DOWN] = line.stateReason
        leaving = self._leaving.pop(member, None)
        if leaving is not None:
            if member.adminState is not BackendState.DISABLED:
                # (Disabled while it was leaving, by the operator: it stays so.)
                member.adminState = leaving.adminState
            if leaving.drainReason is not None:
                member._reasons[BackendState.DRAINING] = leaving.drainReason
            if line.adminState is BackendState.DISABLED and member.adminState is None:
                # Back with C{down}: straight to disabled, not up first.
                member.adminState = BackendState.DISABLED
                member._reasons[BackendState.DISABLED] = DOWN_IN_CONFIGURATION
            self._update(member, f"back in the pool ({reason})")
        if member.origin != line.origin:
            self._rename(member, line.origin)
        member.backup = line.backup
        member.maxFails = line.maxFails
        member.failTimeout = line.failTimeout
        self._setMaxConns(member, line.maxConns)
        if member.weight != line.weight:
            self._applyWeight(member, line.weight)
        configured = member._reasons.get(BackendState.DISABLED)
        if line.adminState is BackendState.DISABLED and member.adminState is None:
            self.disable(member, DOWN_IN_CONFIGURATION)
        elif (
            line.adminState is None
            and member.adminState is BackendState.DISABLED
            and configured == DOWN_IN_CONFIGURATION
        ):
            self.enable(member, f"no longer down in the configuration ({reason})")

    def _rename(self, member: Backend, origin: Optional[str]) -> None:
        """
        C{member} stays through a line of another name (two lines' names
        had its address, and the one it was named after moved away): it
        takes that name (L{Backend.origin}), for the C{Host} of its
        requests and probes and, over TLS, for SNI and the name its
        certificate is checked against.  Its TLS connections were checked
        against the old name, so they are closed (a busy one when its
        exchange ends) and new ones are opened for the new name.
        """
        member.origin = origin
        if member.scheme == "https":
            self._waitFor(self._connections[member].close())
            self._connections[member] = self._connectionsFor(member)

    def _setMaxConns(self, backend: Backend, maxConns: Optional[int]) -> None:
        """
        Give C{backend} a new C{max_conns}.
        """
        backend.maxConns = maxConns
        self._followCap(backend)

    def _followCap(self, backend: Backend) -> None:
        """
        Put C{backend} in L{full} while its requests in flight reach its
        C{max_conns} (also one lowered below them), and take it out once
        they do not, which gives the queue its room.
        """
        maxConns = backend.maxConns
        if maxConns is not None and backend.active >= maxConns:
            self.full.add(backend)
        elif backend in self.full:
            self.full.discard(backend)
            if self.queue.waiting:
                self._dispatchSoon()

    def _leave(self, backend: Backend, reason: str) -> bool:
        """
        C{backend} left the membership: drop it now if nothing is in
        flight to it, else drain it and drop it when its last request
        finishes (L{requestFinished}).

        @return: whether it was dropped now, unlogged: L{setBackends} logs
            all it dropped in one line.
        """
        if backend in self._leaving:
            return False
        self._leaving[backend] = _Leaving(
            backend.adminState, backend._reasons.get(BackendState.DRAINING), reason
        )
        if backend.active == 0:
            self._drop(backend, log=False)
            return True
        why = (
            f"leaving the pool ({reason}): finishing {backend.active} "
            "request(s) in flight"
        )
        if backend.adminState is not BackendState.DISABLED:
            backend.adminState = BackendState.DRAINING
            backend._reasons[BackendState.DRAINING] = why
        self._update(backend, why)
        return False

    def _drop(self, backend: Backend, log: bool = True) -> None:
        """
        Remove C{backend}, which left and has nothing in flight: stop its
        timers, leave its connections to L{LeftConnections}, log it (unless
        C{log} is false) and tell the membership observers.
        """
        leaving = self._leaving.pop(backend)
        self.backends = tuple(b for b in self.backends if b is not backend)
        self.backendsRemoved += 1
        recovery = self._recoveries.pop(backend, None)
        if recovery is not None:
            recovery.cancel()
        self._stopSlowStart(backend)
        for waiter in self._drainWaiters.pop(backend, []):
            waiter.callback(True)
        connections = self._connections.pop(backend)
        for closing in self._left.keep(_connectionsKey(backend), connections):
            self._waitFor(closing)
        if log:
            self._logMembers([backend.name], "removed", leaving.reason)
        for observer in list(self._members):
            observer.backendRemoved(backend)

    def _waitFor(self, closing: Deferred[Any]) -> None:
        """
        Have L{close} wait for C{closing}, connections being closed, until
        it fires.
        """
        if not closing.called:
            self._closing.append(closing)
            closing.addBoth(self._closed, closing)

    def _closed(self, result: object, closing: Deferred[Any]) -> object:
        if closing in self._closing:
            self._closing.remove(closing)
        return result

    def leaving(self, backend: Backend) -> bool:
        """
        Whether C{backend} has left the membership and is finishing its
        requests in flight before it is dropped.
        """
        return backend in self._leaving

    def _serving(self) -> list[Backend]:
        """
        The backends that could take a request: not those that left and
        are finishing their requests in flight, nor those that stand for
        a C{resolve} line with no address yet.  nginx's rules for a
        single server (no passive health, no slow start: there is nowhere
        else to send the request) and C{max_ejection}'s share count these.
        """
        leaving = self._leaving
        return [b for b in self.backends if not (b.placeholder or b in leaving)]

    def unavailableReason(self) -> str:
        """
        Say why no backend can take a request: every backend with its state
        and the reason for it, for the log line of a 502; or that there is
        none (an etcd prefix or DNS name that gave no backend yet).
        """
        if not self.backends:
            return "it has no backends"
        return "; ".join(
            f"{b.name} {b.state.value} ({b.stateReason})" for b in self.backends
        )

    def _refresh(self, initial: bool = False, weights: bool = False) -> None:
        if self._holding:
            # L{setBackends} tells the balancer once, at its end.
            return
        up = [b for b in self.backends if b.state is BackendState.UP]
        eligible = tuple(b for b in up if not b.backup) or tuple(
            b for b in up if b.backup
        )
        if initial or weights or eligible != self.eligible:
            hadSome = bool(self.eligible)
            self.eligible = eligible
            self.balancer.backendsChanged(eligible)
            if self.queue.waiting:
                self._dispatchSoon()
            if not eligible and (hadSome or initial):
                self._log.error(
                    "upstream {upstream} has no backend that can take requests: {why}",
                    upstream=self.name,
                    why=self.unavailableReason(),
                )
            elif eligible and not hadSome and not initial:
                self._log.info(
                    "upstream {upstream} can take requests again: {backends}",
                    upstream=self.name,
                    backends=", ".join(b.name for b in eligible),
                )

    def setState(self, backend: Backend, state: BackendState, reason: str) -> None:
        """
        Move C{backend} to C{state}: the one place where backend states
        change.  The change is logged (with the backend, the upstream, the
        old and new state and the reason), the state observers and the
        balancer are told, and slow start begins for a backend coming up.

        Others change a backend's conditions through the events listed in
        the class docstring, which end here; C{state} must be the state
        those conditions give (L{deriveState}).

        @raise ValueError: when C{state} is not what the conditions say.
        """
        old = backend.state
        if old is state:
            return
        if state is not deriveState(backend):
            raise ValueError(
                f"{backend!r} cannot become {state.value}: its conditions make "
                f"it {deriveState(backend).value}"
            )
        backend.state = state
        backend.stateReason = reason
        backend.stateSince = self._reactor.seconds()
        emit = self._log.info if state is BackendState.UP else self._log.warn
        emit(
            "backend {backend} of upstream {upstream}: {old} -> {new} ({reason})",
            backend=backend.name,
            upstream=self.name,
            old=old.value,
            new=state.value,
            reason=reason,
        )
        if state is BackendState.UP:
            self._startSlowStart(backend)
        else:
            self._stopSlowStart(backend)
        self._refresh()
        for observer in list(self._observers):
            observer(backend, old, state, reason)

    def _update(self, backend: Backend, reason: str) -> None:
        """
        A condition of C{backend} changed for C{reason}: move it to the
        state its conditions now give, or log that it stays where it is.

        When another condition than the one that changed decides the new
        state (the checks pass, but passive accounting still holds the
        backend out), the log line gives that condition's reason too.
        """
        state = deriveState(backend)
        if state is backend.state:
            self._log.info(
                "backend {backend} of upstream {upstream} stays {state} "
                "({stateReason}) after: {reason}",
                backend=backend.name,
                upstream=self.name,
                state=state.value,
                stateReason=backend.stateReason,
                reason=reason,
            )
            return
        cause = backend._reasons.get(state, reason)
        if state is not BackendState.UP and cause != reason:
            reason = f"{reason}; {state.value} because: {cause}"
        self.setState(backend, state, reason)

    def markDown(self, backend: Backend, reason: str) -> None:
        """
        Active health checks found C{backend} down.
        """
        if backend.checkedDown:
            return
        backend.checkedDown = True
        backend._reasons[BackendState.DOWN] = reason
        self._update(backend, reason)

    def markUp(self, backend: Backend, reason: str) -> None:
        """
        Active health checks found C{backend} up again.  It stays out while
        it is failed (passive), draining or disabled.
        """
        if not backend.checkedDown:
            return
        backend.checkedDown = False
        self._update(backend, reason)

    def drain(
        self, backend: Backend, reason: str = "drained by the operator"
    ) -> Deferred[bool]:
        """
        Send no new requests to C{backend}; those in flight finish.

        @return: a L{Deferred <twisted.internet.defer.Deferred>} that fires with L{True} once no request is in
            flight to C{backend}, or with L{False} if L{enable} is called
            first.
        """
        waiter: Deferred[bool] = Deferred()
        backend.adminState = BackendState.DRAINING
        backend._reasons[BackendState.DRAINING] = reason
        self._update(backend, reason)
        if backend.active == 0:
            waiter.callback(True)
        else:
            self._drainWaiters.setdefault(backend, []).append(waiter)
        return waiter

    def disable(
        self, backend: Backend, reason: str = "disabled by the operator"
    ) -> None:
        """
        Take C{backend} out until L{enable}: it takes no new requests (those
        in flight finish) and active checks skip it.
        """
        backend.adminState = BackendState.DISABLED
        backend._reasons[BackendState.DISABLED] = reason
        self._update(backend, reason)

    def enable(self, backend: Backend, reason: str = "enabled by the operator") -> None:
        """
        Undo L{drain} or L{disable} (or C{down} in the configuration):
        C{backend} goes back to the state that its health gives it.
        """
        if backend.adminState is None:
            return
        if backend in self._leaving:
            self._log.warn(
                "backend {backend} of upstream {upstream} is leaving the pool "
                "({leaving}); it is not enabled ({reason})",
                backend=backend.name,
                upstream=self.name,
                leaving=self._leaving[backend].reason,
                reason=reason,
            )
            return
        backend.adminState = None
        for waiter in self._drainWaiters.pop(backend, []):
            waiter.callback(False)
        self._update(backend, reason)

    def setWeight(self, backend: Backend, weight: int) -> None:
        """
        Change C{backend}'s weight at run time.

        @raise ValueError: if C{weight} is not a positive integer.
        """
        if weight < 1:
            raise ValueError(f"weight must be a positive integer, not {weight!r}")
        self._applyWeight(backend, weight)
        self._refresh(weights=backend in self.eligible)

    def _applyWeight(self, backend: Backend, weight: int) -> None:
        backend.weight = weight
        ramp = self._ramps.get(backend)
        if ramp is None:
            backend.effectiveWeight = float(weight)
        else:
            elapsed = self._reactor.seconds() - ramp[0]
            backend.effectiveWeight = slowStartWeight(weight, elapsed, self.slowStart)

    def _startSlowStart(self, backend: Backend) -> None:
        self._stopSlowStart(backend)
        if self.slowStart <= 0 or len(self._serving()) <= 1:
            return
        start = self._reactor.seconds()
        backend.effectiveWeight = slowStartWeight(backend.weight, 0.0, self.slowStart)
        self._ramps[backend] = (
            start,
            self._reactor.callLater(
                slowStartStep(self.slowStart), self._slowStartStep, backend
            ),
        )

    def _slowStartStep(self, backend: Backend) -> None:
        start, _ = self._ramps.pop(backend)
        elapsed = self._reactor.seconds() - start
        backend.effectiveWeight = slowStartWeight(
            backend.weight, elapsed, self.slowStart
        )
        if elapsed < self.slowStart:
            step = min(slowStartStep(self.slowStart), self.slowStart - elapsed)
            self._ramps[backend] = (
                start,
                self._reactor.callLater(step, self._slowStartStep, backend),
            )
        self._refresh(weights=backend in self.eligible)

    def _stopSlowStart(self, backend: Backend) -> None:
        ramp = self._ramps.pop(backend, None)
        if ramp is not None:
            ramp[1].cancel()
        backend.effectiveWeight = float(backend.weight)

    # Requests, and passive health.

    def pick(
        self, request: Any, exclude: Collection[Backend] = ()
    ) -> Optional[Backend]:
        """
        Ask the balancer for an eligible backend not in C{exclude} and not
        at its C{max_conns}.
        """
        full = self.full
        if full:
            exclude = frozenset(full).union(exclude)
        return self.balancer.pick(request, exclude)

    def atCapacity(self, exclude: Collection[Backend] = ()) -> bool:
        """
        Whether a request that found no backend (not in C{exclude}) found
        none because those eligible are at their C{max_conns}, so that it
        may wait for one in the L{queue}.
        """
        full = self.full
        return any(b in full for b in self.eligible if b not in exclude)

    def enqueue(
        self, resume: Callable[[], object], expire: Callable[[], object]
    ) -> Optional[QueuedRequest]:
        """
        Make a request wait for a backend with room (see L{RequestQueue.add}).
        """
        return self.queue.add(resume, expire)

    def _dispatchSoon(self) -> None:
        """
        A backend has room again: hand it to the oldest waiting requests,
        once the current event is done (so that the connection of the
        request that just finished is back among the idle ones first, and
        a request arriving meanwhile queues behind those waiting).
        """
        if self._dispatching is None:
            self._dispatching = self._reactor.callLater(0, self._dispatch)

    def _dispatch(self) -> None:
        self._dispatching = None
        queue = self.queue
        # Bounded: a request that still finds no room goes back to the
        # end of the queue, and is not looked at again in this round.
        for _ in range(len(queue.waiting)):
            full = self.full
            if all(b in full for b in self.eligible):
                return
            place = queue.pop()
            if place is None:
                return
            place.resume()

    def requestStarted(self, backend: Backend, request: Any) -> None:
        """
        C{request} is being sent to C{backend}.
        """
        backend.active += 1
        backend.requests += 1
        maxConns = backend.maxConns
        if maxConns is not None and backend.active >= maxConns:
            self.full.add(backend)
        self.balancer.requestStarted(backend, request)

    def requestFinished(
        self,
        backend: Backend,
        request: Any,
        outcome: Outcome,
        latency: float,
        status: Optional[int] = None,
    ) -> None:
        """
        The exchange of C{request} with C{backend} ended with C{outcome}.

        @param status: the status of the backend's response, if it sent
            one: a status C{eject_on} names counts as a failure.
        """
        backend.active -= 1
        if outcome is Outcome.SUCCESS:
            backend.responses += 1
            backend.lastLatency = latency
            ejectOn = self.ejectOn
            if ejectOn and status in ejectOn:
                assert status is not None
                backend.failures += 1
                self._recordFailure(backend, status)
        elif outcome.isFailure:
            backend.failures += 1
            self._recordFailure(backend, outcome)
        full = self.full
        if full and backend in full:
            self._followCap(backend)
        self.balancer.requestFinished(backend, request, outcome, latency)
        if backend.active == 0 and backend.adminState is not None:
            for waiter in self._drainWaiters.pop(backend, []):
                waiter.callback(True)
            if backend in self._leaving:
                self._drop(backend)

    def _recordFailure(self, backend: Backend, what: Union[int, Outcome]) -> None:
        maxFails = self.maxFails if backend.maxFails is None else backend.maxFails
        failTimeout = (
            self.failTimeout if backend.failTimeout is None else backend.failTimeout
        )
        if maxFails <= 0 or len(self._serving()) <= 1:
            return
        if backend.failedUntil is not None:
            return
        now = self._reactor.seconds()
        recent = [f for f in backend._recentFailures if now - f[0] < failTimeout]
        recent.append((now, what))
        backend._recentFailures = recent
        if len(recent) < maxFails:
            return
        backend._recentFailures = []
        if self.ejectOn:
            self._eject(backend, recent, failTimeout, now)
            return
        outcome = what.value if isinstance(what, Outcome) else f"response {what}"
        reason = (
            f"passive health: {len(recent)} failure(s) within "
            f"{failTimeout:g}s, latest: {outcome}; out for "
            f"{failTimeout:g}s"
        )
        self._takeOut(backend, failTimeout, now, reason)

    def _eject(
        self,
        backend: Backend,
        failures: list[tuple[float, Union[int, Outcome]]],
        failTimeout: float,
        now: float,
    ) -> None:
        """
        Outlier detection: take C{backend} out after C{failures}, for
        longer each time in a row, unless L{maxEjection} of the backends
        are out already.
        """
        what = describeFailures(failures)
        serving = self._serving()
        out = sum(1 for b in serving if b.failedUntil is not None)
        limit = maxEjected(self.maxEjection, len(serving))
        if out >= limit:
            if backend not in self._spared:
                self._spared.add(backend)
                self._log.warn(
                    "backend {backend} of upstream {upstream} not ejected "
                    "after {what} within {window:g}s: max_ejection "
                    "({share:g}%) allows {limit} of {count} backend(s) out "
                    "at once, and {out} are",
                    backend=backend.name,
                    upstream=self.name,
                    what=what,
                    window=failTimeout,
                    share=self.maxEjection * 100,
                    limit=limit,
                    count=len(serving),
                    out=out,
                )
            return
        self._spared.discard(backend)
        recovered = backend._recovered
        if recovered is not None and now - recovered[0] >= recovered[1]:
            # It stayed in for as long as it was last out: start again.
            backend.ejectedInARow = 0
        duration = ejectionTime(failTimeout, backend.ejectedInARow)
        backend.ejectedInARow += 1
        backend.ejections += 1
        reason = f"ejected: {what} within {failTimeout:g}s; out for {duration:g}s"
        if backend.ejectedInARow > 1:
            reason += f", ejection {backend.ejectedInARow} in a row"
        self._takeOut(backend, duration, now, reason)

    def _takeOut(
        self, backend: Backend, duration: float, now: float, reason: str
    ) -> None:
        backend.failedUntil = now + duration
        self._recoveries[backend] = self._reactor.callLater(
            duration, self._recover, backend, duration
        )
        backend._reasons[BackendState.FAILED] = reason
        self._update(backend, reason)

    def _recover(self, backend: Backend, duration: float) -> None:
        del self._recoveries[backend]
        backend.failedUntil = None
        backend._recovered = (self._reactor.seconds(), duration)
        self._spared.clear()
        expired = "ejection" if self.ejectOn else "fail_timeout"
        self._update(backend, f"passive health: {expired} expired")

    # Connections.

    def connection(
        self, backend: Backend, proxyHeader: Optional[bytes] = None
    ) -> tuple[Optional[UpstreamConnection], Optional[Deferred[Any]]]:
        """
        Get a connection to C{backend} for forwarding a request.

        @param proxyHeader: with C{send_proxy_protocol}, the request's
            PROXY header (see L{proxyHeader}): only a connection that
            started with it is reused.
        @return: C{(protocol, None)} when an idle persistent connection was
            reused, C{(None, deferred)} when a new one is being opened.
        """
        return self._connections[backend].get(proxyHeader)

    def freshConnection(
        self, backend: Backend, proxyHeader: Optional[bytes] = None
    ) -> Deferred[UpstreamConnection]:
        """
        Open a new connection to C{backend} for forwarding a request,
        ignoring idle ones.
        """
        return self._connections[backend].connectUpstream(proxyHeader)

    def newConnection(
        self,
        backend: Backend,
        build: Callable[[], UpstreamConnection] = UpstreamConnection,
        proxyHeader: Optional[bytes] = None,
    ) -> Deferred[UpstreamConnection]:
        """
        Open a new connection to C{backend} for a health probe (or a
        tunnel): it is closed after one request and never joins the idle
        cache.

        @param build: makes the protocol, an L{UpstreamConnection} (or a
            subclass of it).
        @param proxyHeader: the client's PROXY header, for a tunnel.
        """
        return self._connections[backend].connect(build, proxyHeader)

    def proxyHeader(self, client: Any, host: Any) -> Optional[bytes]:
        """
        With C{send_proxy_protocol}, the PROXY header of a request from
        C{client} to the listener address C{host}; else L{None}.
        """
        writer = self._proxyHeaders
        return None if writer is None else writer(client, host)

    def connectionsOpened(self, backend: Backend) -> int:
        """
        How many connections to C{backend} this pool has opened in total.
        """
        return self._connections[backend].opened

    def close(self) -> Deferred[Any]:
        """
        Cancel timers and close idle connections (those of backends that
        are leaving, and those kept of backends that left, too; those
        being closed already are waited for).

        Requests waiting in the L{queue} keep waiting: those in flight on
        this pool (it is closed on reload while they finish) still give
        them their backends, and their C{queue_timeout} still holds.
        """
        for call in self._recoveries.values():
            call.cancel()
        self._recoveries.clear()
        for backend in list(self._ramps):
            self._stopSlowStart(backend)
        closing, self._closing = self._closing, []
        closing.extend(c.close() for c in self._connections.values())
        closing.extend(self._left.close())
        if not closing:
            return succeed(None)
        return DeferredList(closing)
