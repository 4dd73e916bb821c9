# -*- test-case-name: tests.test_dns -*-
"""
Backends from DNS: the C{resolve} server lines of an upstream, looked up
again and again, their answers turned into the pool's members.

A line C{app.internal:8080 resolve} becomes one backend per address that
the A and AAAA records of C{app.internal} give, on port 8080.  A line
C{app.internal service=http resolve} asks for the SRV records of
C{_http._tcp.app.internal} and becomes one backend per address of each
target, on the target's port, with the record's weight; the records of the
lowest priority are the primaries, those of the next priority the backups,
and any further priorities are not used.

Each line is looked up again when its answer's TTL runs out, but never
sooner than C{resolve_min} nor later than C{resolve_max}.  A lookup that
fails (a timeout, a server failure, a name that does not exist, an answer
with no address) keeps the addresses the line had and is tried again
sooner: C{resolve_min}, doubled after each failure in a row, up to
L{RETRY_CAP} (and C{resolve_max}).  A line whose name has never resolved
is shown as a placeholder backend, down, whose reason says why (see
L{lbproxy._backend.placeholderFor}), so that lbproxy starts, and says what
it waits for, while a name does not resolve yet.

Every answer goes to the pool through L{lbproxy._pool.Pool.setBackends}:
a backend that stays keeps its state, counters and connections, and one
that leaves is drained.  A backend found in DNS is told the host name of
its line as C{Host} (when the vhost does not pass the client's on) and,
for C{https} lines, in SNI and checked against that name (see
L{lbproxy._backend.Backend.origin}).

The lookups go through L{twisted.names.client.Resolver}, to the servers of
C{resolver} in C{[lbproxy]}, else those of C{/etc/resolv.conf}.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IResolver
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names.error import AuthoritativeDomainError, DNSNameError
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy._backend import Backend, backendFor, placeholderFor
from lbproxy._config import ServerConfig
from lbproxy._dnsport import QuietResolverReactor
from lbproxy._interfaces import IMembershipSource
from lbproxy._pool import Pool

#: The most seconds between two tries of a lookup that keeps failing.
RETRY_CAP = 30.0

#: How long a query waits for an answer before it is sent again, then
#: given up: seconds, as L{twisted.names.client.Resolver} takes them.
QUERY_TIMEOUT = (1, 3)

#: The errors that say a name does not exist (from a server, or from an
#: authority asked directly).
NO_SUCH_NAME = (DNSNameError, AuthoritativeDomainError)

#: The file the system's DNS servers are read from when C{resolver} is
#: not set.
RESOLV_CONF = "/etc/resolv.conf"


def systemServers(path: str = RESOLV_CONF) -> list[tuple[str, int]]:
    """
    The DNS servers of the C{nameserver} lines of C{path} (port 53), or
    C{127.0.0.1:53} when it has none or cannot be read, as Twisted's own
    resolver does.

    It is read here, once, rather than by L{twisted.names.client.Resolver}
    itself: given the file, that resolver checks it again every minute on
    a timer that nothing stops, which would outlive the pool it serves
    across reloads.  (A reload reads the file again.)
    """
    servers = []
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            address = words[1].split("%", 1)[0]
            if _isAddress(address):
                servers.append((address, dns.PORT))
    return servers or [("127.0.0.1", dns.PORT)]


def _isAddress(text: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
        except OSError:
            continue
        return True
    return False


def makeResolver(
    servers: Sequence[tuple[str, int]], reactor: Any = None
) -> client.Resolver:
    """
    The resolver of C{resolve} lines: a L{twisted.names.client.Resolver}
    asking C{servers} (or, when empty, the servers of L{RESOLV_CONF}).

    No cache and no hosts file: each lookup asks the servers, whose TTLs
    decide when the next one is due.  Its queries go out through
    L{QuietResolverReactor}, so that they do not fill the log.
    """
    if reactor is None:
        from twisted.internet import reactor
    return client.Resolver(
        servers=list(servers) or systemServers(),
        timeout=QUERY_TIMEOUT,
        reactor=QuietResolverReactor(reactor),
    )


class LookupFailed(Exception):
    """
    A lookup gave no usable answer.

    @ivar detail: why, in a few words, for the logs and the placeholder.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def describeError(failure: Failure) -> str:
    """
    Say in a few words why a query failed.
    """
    error = failure.value
    if isinstance(error, LookupFailed):
        return error.detail
    if isinstance(error, NO_SUCH_NAME):
        return "no such name"
    if isinstance(error, dns.DNSQueryTimeoutError):
        return "no answer (timed out)"
    return f"{type(error).__name__}: {failure.getErrorMessage()}"


def _addressOrder(address: str) -> tuple[int, bytes]:
    """
    Sort IPv4 addresses before IPv6 ones, each in numeric order, so that
    an answer whose records come in another order (a server that rotates
    them) is the same answer.
    """
    if ":" in address:
        return (6, socket.inet_pton(socket.AF_INET6, address))
    return (4, socket.inet_pton(socket.AF_INET, address))


def _address(record: dns.RRHeader) -> Optional[str]:
    payload: Any = record.payload
    if record.type == dns.A:
        return str(payload.dottedQuad())
    if record.type == dns.AAAA:
        return socket.inet_ntop(socket.AF_INET6, payload.address)
    return None


@dataclass
class Answer:
    """
    What one lookup of a line found.

    @ivar backends: the backends, in the order of the answer.
    @ivar ttl: the smallest TTL of the records it was built from.
    @ivar partial: why part of the answer is the previous one (a query
        failed, and its earlier records stood in), or L{None}.
    """

    backends: list[Backend]
    ttl: float
    partial: Optional[str] = None


@dataclass
class LineState:
    """
    One C{resolve} line and where its lookups stand.

    @ivar backends: the backends of the latest good answer, or L{None}
        before the first.
    @ivar error: why the latest lookup failed, or L{None} after a good one.
    @ivar failures: lookups failed in a row.
    @ivar known: the addresses of each C{(name, type)} queried, from their
        latest answer: they stand in when that query fails.
    @ivar asked: the C{(name, type)} queries of the lookup in progress.
    @ivar lastAnswer: the reactor time of the latest good answer, or
        L{None} before the first.
    """

    line: ServerConfig
    backends: Optional[list[Backend]] = None
    error: Optional[str] = None
    failures: int = 0
    timer: Optional[IDelayedCall] = None
    looking: Optional[Deferred[Any]] = None
    known: dict[tuple[str, int], tuple[list[str], float]] = field(default_factory=dict)
    asked: set[tuple[str, int]] = field(default_factory=set)
    lastAnswer: Optional[float] = None

    @property
    def name(self) -> str:
        """
        The line as the status shows it: C{app.internal:8080}, or the
        SRV name of a C{service=} line (whose ports come from the answer).
        """
        if self.line.service is None:
            return f"{self.line.host}:{self.line.port}"
        return self.label

    @property
    def label(self) -> str:
        """
        The name the line asks for (L{labelOf}).
        """
        return labelOf(self.line)


def labelOf(line: ServerConfig) -> str:
    """
    The name a C{resolve} line asks for: C{app.internal}, or
    C{_http._tcp.app.internal} for a C{service=} line.
    """
    if line.service is None:
        return line.host
    return f"_{line.service}._tcp.{line.host}"


def placeholderOf(line: ServerConfig, why: str) -> Backend:
    """
    The placeholder of a C{resolve} line with no address yet.
    """
    label = labelOf(line)
    placeholder = placeholderFor(
        label, line.port, line.scheme, f"{label}: no address yet ({why})"
    )
    # Named as the line's backends are: for https, its TLS name is the
    # line's host, not the SRV name (whose "_" no TLS name may hold).
    placeholder.origin = line.host
    return placeholder


#: The placeholder's reason before the first lookup has ended.
NOT_YET = "waiting for the first DNS answer"


def initialBackends(lines: Iterable[ServerConfig]) -> list[Backend]:
    """
    The backends of C{lines} before any lookup: each line's own, and a
    placeholder for each C{resolve} line.
    """
    return [placeholderOf(line, NOT_YET) if line.resolve else backendFor(line) for line in lines]


def hasResolveLines(lines: Iterable[ServerConfig]) -> bool:
    """
    Whether any of C{lines} is a C{resolve} line.
    """
    return any(line.resolve for line in lines)


@implementer(IMembershipSource)
class DNSBackends(Service):
    """
    The C{resolve} lines of one pool, looked up while the service runs,
    their answers applied to the pool (see the module docstring).

    A child of the L{lbproxy.LoadBalancerService}, as the health checkers
    are, replaced with its pool on reload.  Stopping it cancels the
    lookups to come and ignores the answers still to arrive; the
    L{Deferred} it returns fires once those have arrived (or timed out,
    L{QUERY_TIMEOUT}), so that nothing it started is left behind.

    @ivar pool: the L{Pool} whose members the answers become.
    @ivar lines: every server line of the upstream, in order.
    @ivar states: the L{LineState} of each C{resolve} line.
    @ivar lookups: lookups that ended (answered or failed), in total.
    @ivar lookupFailures: of those, the ones that failed.
    """

    _log = Logger()

    def __init__(
        self,
        pool: Pool,
        lines: Sequence[ServerConfig],
        resolver: IResolver,
        reactor: Any = None,
        resolveMin: float = 1.0,
        resolveMax: float = 300.0,
    ) -> None:
        """
        @param pool: the pool; its members are the backends of C{lines}
            (see L{initialBackends}).
        @param lines: the upstream's server lines.
        @param resolver: what the lookups ask.
        @param reactor: an L{IReactorTime}; the global reactor when L{None}.
        @param resolveMin: the fewest seconds between two lookups of a line.
        @param resolveMax: the most seconds between two lookups of a line.
        """
        if reactor is None:
            from twisted.internet import reactor as _globalReactor

            reactor = _globalReactor
        self.pool = pool
        self.lines = tuple(lines)
        self.resolver = resolver
        self.name = f"dns:{pool.name}"
        self.resolveMin = resolveMin
        self.resolveMax = max(resolveMax, resolveMin)
        self._reactor = reactor
        self.states = [LineState(line) for line in self.lines if line.resolve]
        self.lookups = 0
        self.lookupFailures = 0
        #: The call that applies the answers of this turn (L{_applySoon}),
        #: and why they changed the members.
        self._applying: Optional[IDelayedCall] = None
        self._reasons: list[str] = []

    def startService(self) -> None:
        """
        Look every line up now.
        """
        Service.startService(self)
        for state in self.states:
            self._lookup(state)

    def stopService(self) -> Deferred[Any]:
        """
        Cancel the lookups to come; answers still to arrive are ignored.

        @return: a L{Deferred} that fires once the lookups in flight have
            ended.
        """
        Service.stopService(self)
        if self._applying is not None:
            # Only ever set while the call is still to come (L{_applyNow}).
            self._applying.cancel()
        self._applying = None
        self._reasons = []
        looking = []
        for state in self.states:
            if state.timer is not None and state.timer.active():
                state.timer.cancel()
            state.timer = None
            if state.looking is not None:
                looking.append(state.looking)
        done: Deferred[Any] = DeferredList(looking)
        return done.addCallback(self._closeConnections)

    def _closeConnections(self, result: object) -> object:
        # The TCP connections that truncated answers made a Twisted client
        # resolver open (to ask again over TCP) stay open otherwise.
        if isinstance(self.resolver, client.Resolver):
            for protocol in list(self.resolver.connections):
                protocol.transport.loseConnection()
        return result

    def carryOver(self, previous: DNSBackends) -> None:
        """
        Start from the answers of C{previous}, the source of the same
        upstream before a reload, for the lines it had too (same scheme,
        name, port and service), so that the new pool does not wait for its
        first answers with placeholders.  Call it before starting.
        """
        before = {_lineKey(s.line): s for s in previous.states if s.backends is not None}
        carried = False
        for state in self.states:
            old = before.get(_lineKey(state.line))
            if old is None or old.backends is None:
                continue
            line = state.line
            state.backends = [
                self._backend(
                    line,
                    b.host,
                    b.port,
                    b.weight if line.service else line.weight,
                    b.backup if line.service else line.backup,
                )
                for b in old.backends
            ]
            state.known = dict(old.known)
            state.lastAnswer = old.lastAnswer
            carried = True
        if carried:
            self._apply("DNS answers kept across the reload")

    def status(self) -> dict[str, Any]:
        """
        What the admin snapshot shows of the lookups (see
        L{lbproxy._snapshot}): their counts, and for each line its
        addresses now, its latest good answer's time, when it is looked
        up next, and why its latest lookup failed.
        """
        lines = []
        for state in self.states:
            timer = state.timer
            lines.append(
                {
                    "name": state.name,
                    "addresses": len(state.backends or ()),
                    "last_answer": state.lastAnswer,
                    "next_lookup": timer.getTime() if timer is not None and timer.active() else None,
                    "error": state.error,
                }
            )
        return {
            "kind": "dns",
            "lookups": self.lookups,
            "lookup_failures": self.lookupFailures,
            "lines": lines,
        }

    # Lookups.

    def _lookup(self, state: LineState) -> None:
        state.timer = None
        looking = Deferred.fromCoroutine(self._answer(state))
        state.looking = looking
        looking.addBoth(self._answered, state, looking)

    async def _answer(self, state: LineState) -> Answer:
        line = state.line
        state.asked = set()
        if line.service is None:
            addresses, ttl, partial = await self._addresses(state, line.host)
            backends = [
                self._backend(line, a, line.port, line.weight, line.backup)
                for a in addresses
            ]
            answer = Answer(backends, ttl, partial)
        else:
            answer = await self._service(state)
        # Forget the names this answer no longer has (SRV targets).
        state.known = {k: v for k, v in state.known.items() if k in state.asked}
        return answer

    async def _service(self, state: LineState) -> Answer:
        line = state.line
        answers: Any
        answers, _, _ = await self.resolver.lookupService(state.label, QUERY_TIMEOUT)
        if not self.running:
            # Stopped meanwhile: the answer would be ignored, so its
            # targets are not asked (and the stop need not wait for them).
            return Answer([], 0, None)
        records = [rr for rr in answers if rr.type == dns.SRV]
        ttl = min((rr.ttl for rr in answers), default=self.resolveMax)
        # A record with port 0, or whose target is the root ("the service
        # is not offered"), empty, or not ASCII (a label may hold any byte,
        # and no such name can be asked) gives no backend: it is left out
        # as a target without addresses is, and the others are used.
        usable = [
            rr.payload
            for rr in records
            if rr.payload.port
            and rr.payload.target.name not in (b"", b".")
            and rr.payload.target.name.isascii()
        ]
        priorities = sorted({srv.priority for srv in usable})[:2]
        chosen = [srv for srv in usable if srv.priority in priorities]
        # In one order whatever the order of the records, which a server
        # may rotate (BIND's default): the same records are the same answer.
        chosen.sort(key=lambda srv: (srv.priority, -srv.weight, srv.target.name, srv.port))
        targets = sorted({srv.target.name.decode("ascii") for srv in chosen})
        results: list[tuple[bool, Any]] = await DeferredList(
            [Deferred.fromCoroutine(self._addresses(state, t, True)) for t in targets],
            consumeErrors=True,
        )
        found: dict[str, list[str]] = {}
        problems = []
        for target, (ok, result) in zip(targets, results):
            if ok:
                found[target] = result[0]
                ttl = min(ttl, result[1])
                if result[2] is not None:
                    problems.append(f"{target}: {result[2]}")
            else:
                problems.append(f"{target}: {describeError(result)}")
        backends = []
        for srv in chosen:
            for address in found.get(srv.target.name.decode("ascii"), []):
                backends.append(
                    self._backend(
                        line,
                        address,
                        srv.port,
                        max(1, srv.weight),
                        line.backup or srv.priority != priorities[0],
                    )
                )
        if not backends:
            detail = "; ".join(problems) or "no usable SRV record"
            raise LookupFailed(detail)
        return Answer(backends, ttl, "; ".join(problems) or None)

    async def _addresses(
        self, state: LineState, name: str, standIn: bool = False
    ) -> tuple[list[str], float, Optional[str]]:
        """
        The A and AAAA addresses of C{name}, with the smallest TTL of the
        records, and why part of them is an earlier answer (or L{None}).

        A query that fails for another reason than a name that does not
        exist gives the addresses of its previous answer, if any, when the
        other query was answered, or when C{standIn} is set (for an SRV
        target, whose line has other targets).

        @raise LookupFailed: when there is no address, or no query was
            answered and C{standIn} is not set.
        """
        queries = [
            (dns.A, self.resolver.lookupAddress),
            (dns.AAAA, self.resolver.lookupIPV6Address),
        ]
        state.asked.update((name, kind) for kind, _ in queries)
        results: list[tuple[bool, Any]] = await DeferredList(
            [lookup(name, QUERY_TIMEOUT) for _, lookup in queries], consumeErrors=True
        )
        addresses: list[str] = []
        ttls: list[float] = []
        problems = []
        for (kind, _), (ok, result) in zip(queries, results):
            key = (name, kind)
            if ok:
                answers = result[0]
                found = [a for a in (_address(rr) for rr in answers if rr.type == kind) if a]
                ttl = min((rr.ttl for rr in answers), default=self.resolveMax)
                if found:
                    state.known[key] = (found, ttl)
                else:
                    state.known.pop(key, None)
            elif result.check(*NO_SUCH_NAME):
                state.known.pop(key, None)
                found, ttl = [], self.resolveMax
            else:
                problems.append(describeError(result))
                found, ttl = state.known.get(key, ([], self.resolveMax))
            addresses.extend(a for a in found if a not in addresses)
            if found:
                ttls.append(ttl)
        if len(problems) == len(queries) and not standIn:
            raise LookupFailed(problems[0])
        if not addresses:
            if problems:
                raise LookupFailed(problems[0])
            if all(not ok and result.check(*NO_SUCH_NAME) for ok, result in results):
                raise LookupFailed("no such name")
            raise LookupFailed("no A or AAAA record")
        addresses.sort(key=_addressOrder)
        return addresses, min(ttls), problems[0] if problems else None

    def _backend(
        self, line: ServerConfig, address: str, port: int, weight: int, backup: bool
    ) -> Backend:
        backend = Backend(
            address,
            port,
            scheme=line.scheme,
            weight=weight,
            backup=backup,
            down=line.down,
            maxFails=line.maxFails,
            failTimeout=line.failTimeout,
        )
        backend.origin = line.host
        return backend

    def _answered(self, result: object, state: LineState, looking: Deferred[Any]) -> None:
        if state.looking is looking:
            state.looking = None
        if not self.running:
            return
        self.lookups += 1
        if isinstance(result, Failure):
            self._failed(state, describeError(result))
            return
        assert isinstance(result, Answer)
        state.error = None
        state.lastAnswer = self._reactor.seconds()
        changed = _members(state.backends) != _members(result.backends)
        state.backends = result.backends
        if result.partial is not None:
            self._log.warn(
                "upstream {upstream}: DNS lookup of {name} partly failed "
                "({problem}); the earlier records stand in",
                upstream=self.pool.name,
                name=state.label,
                problem=result.partial,
            )
            state.failures += 1
            delay = self._retryDelay(state.failures)
        else:
            state.failures = 0
            delay = min(max(result.ttl, self.resolveMin), self.resolveMax)
        if changed:
            self._applySoon(
                f"DNS answer for {state.label}: "
                + ", ".join(b.name for b in result.backends)
            )
        state.timer = self._reactor.callLater(delay, self._lookup, state)

    def _failed(self, state: LineState, why: str) -> None:
        self.lookupFailures += 1
        state.failures += 1
        state.error = why
        delay = self._retryDelay(state.failures)
        if state.backends is None:
            self._log.warn(
                "upstream {upstream}: {name} has no address yet ({why}); "
                "trying again in {delay:g}s",
                upstream=self.pool.name,
                name=state.label,
                why=why,
                delay=delay,
            )
            self._applySoon(f"DNS lookup of {state.label} failed")
        else:
            self._log.warn(
                "upstream {upstream}: DNS lookup of {name} failed ({why}); "
                "its {count} backend(s) stay as they were; trying again in "
                "{delay:g}s",
                upstream=self.pool.name,
                name=state.label,
                why=why,
                count=len(state.backends),
                delay=delay,
            )
        state.timer = self._reactor.callLater(delay, self._lookup, state)

    def _retryDelay(self, failures: int) -> float:
        """
        The seconds until a line is looked up again after C{failures}
        failed lookups in a row.
        """
        delay = self.resolveMin * 2 ** min(failures - 1, 30)
        return max(self.resolveMin, min(delay, RETRY_CAP, self.resolveMax))

    def _applySoon(self, reason: str) -> None:
        """
        Apply the lines as they stand (L{_apply}) in the reactor's next
        turn, once for all the answers that arrive in this one.

        The turn that reads an answer has already parsed its datagrams
        (about 130 microseconds each on CPython, an A and an AAAA per
        lookup), and applying a change costs as much again or more (new
        backends' connections, drained ones closed, log lines): done in
        the same turn, the two add up in front of every request that turn
        carries.  In C{benchmarks/membership.py}'s fresh row (a new
        address ten times a second) this took the p99 of requests during
        the changes from 1.26 to 1.19 times that between them, pooled
        over six alternated rounds (see "Where a new backend's cost goes"
        in C{docs/performance.rst}).
        """
        self._reasons.append(reason)
        if self._applying is None:
            self._applying = self._reactor.callLater(0, self._applyNow)

    def _applyNow(self) -> None:
        reasons, self._reasons, self._applying = self._reasons, [], None
        self._apply("; ".join(reasons))

    def _apply(self, reason: str) -> None:
        """
        Make the pool's members the backends of every line as they stand.
        """
        states = {id(state.line): state for state in self.states}
        backends: list[Backend] = []
        for line in self.lines:
            state = states.get(id(line))
            if state is None:
                backends.append(backendFor(line))
            elif state.backends is not None:
                backends.extend(state.backends)
            else:
                why = NOT_YET if state.error is None else f"DNS error: {state.error}"
                backends.append(placeholderOf(line, why))
        self.pool.setBackends(backends, reason)


def _lineKey(line: ServerConfig) -> tuple[Any, ...]:
    return (line.scheme, line.host, line.port, line.service)


def _members(backends: Optional[Sequence[Backend]]) -> Optional[list[tuple[Any, ...]]]:
    if backends is None:
        return None
    return [(b.scheme, b.host, b.port, b.weight, b.backup) for b in backends]
