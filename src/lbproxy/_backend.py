# -*- test-case-name: tests.test_pool -*-
"""
Backends, their states, and the outcomes of the requests sent to them.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Optional, Union

from zope.interface import implementer

from lbproxy._counters import Histogram, statusClasses
from lbproxy._interfaces import IBackend

if TYPE_CHECKING:
    from lbproxy._config import ServerConfig

#: The reason given for a backend that its server line marks C{down}.
DOWN_IN_CONFIGURATION = "down in the configuration"


class BackendState(enum.Enum):
    """
    The states of a backend.

    A backend's state is never set on its own: it follows from three
    independent conditions that its L{lbproxy.Pool} keeps (see
    L{Backend.adminState}, L{Backend.checkedDown} and
    L{Backend.failedUntil}).  The first of these that holds is the state:

        1. L{DISABLED}, 2. L{DRAINING} (administrative, set by the
        configuration or the operator), 3. L{DOWN} (active checks),
        4. L{FAILED} (passive accounting), 5. L{UP} otherwise.

    So a backend that is both failed and down by checks is L{DOWN}, and the
    expiry of C{fail_timeout} does not bring it back; a backend whose
    checks pass stays L{FAILED} until C{fail_timeout} expires; and an
    operator's drain holds whatever the checks say.

    @cvar UP: taking requests.
    @cvar DOWN: taken out by active health checks; only passing checks bring
        it back.
    @cvar FAILED: taken out by passive health accounting (C{max_fails}
        failures within C{fail_timeout}); it comes back after
        C{fail_timeout}.
    @cvar DRAINING: finishing its requests, taking no new ones.
    @cvar DISABLED: marked C{down} in the configuration, or disabled by the
        operator.
    """

    UP = "up"
    DOWN = "down"
    FAILED = "failed"
    DRAINING = "draining"
    DISABLED = "disabled"


class Outcome(enum.Enum):
    """
    How one exchange with a backend ended, as balancers are told.

    @cvar SUCCESS: a response head arrived.
    @cvar CONNECT_FAILED: the connection could not be made (refused, timed
        out, unresolvable).
    @cvar RESET: the connection broke before the response head arrived.
    @cvar TIMEOUT: the backend accepted the request but stopped answering.
    @cvar INVALID: the backend answered with something that is not HTTP.
    @cvar CANCELLED: the client went away first; not the backend's fault.
    """

    SUCCESS = "success"
    CONNECT_FAILED = "connect_failed"
    RESET = "reset"
    TIMEOUT = "timeout"
    INVALID = "invalid"
    CANCELLED = "cancelled"

    @property
    def isFailure(self) -> bool:
        """
        Whether this outcome counts against the backend (passive health).
        """
        return self not in (Outcome.SUCCESS, Outcome.CANCELLED)


@implementer(IBackend)
class Backend:
    """
    One server of an upstream: its address, weight, state and counters.

    Only its L{lbproxy.Pool} changes its state.

    @ivar id: see L{IBackend.id}.
    @ivar active: requests in flight.
    @ivar requests: requests sent, in total.
    @ivar failures: failed exchanges (see L{Outcome.isFailure}), in total.
    @ivar responses: responses received, in total.
    @ivar lastLatency: seconds to the response head of the latest success.
    @ivar responseClasses: the responses received (L{responses}) by status
        class, indexed by C{code // 100} (see
        L{lbproxy._counters.statusClasses}).
    @ivar responseTimes: a L{Histogram} of the seconds from the pick to the
        end of each response received, but a C{101}'s (whose tunnel may
        last hours): nginx's C{$upstream_response_time}.
    @ivar effectiveWeight: see L{IBackend.effectiveWeight}: C{weight}, or
        less while the backend is slow-starting.
    @ivar adminState: L{BackendState.DISABLED} or L{BackendState.DRAINING}
        when the configuration or the operator took the backend out, else
        L{None}.
    @ivar checkedDown: whether active health checks consider the backend
        down.
    @ivar failedUntil: while passive accounting keeps the backend out, the
        reactor time at which it comes back; else L{None}.
    @ivar stateReason: why the backend is in its current state, a L{str}.
    @ivar stateSince: the reactor time of the latest state change, or
        L{None} when the state has not changed since the start.
    @ivar maxConns: the most requests that may be in flight to this
        backend at once (C{max_conns}), or L{None} for no limit.
    @ivar ejections: how many times passive accounting took the backend
        out, in total.
    @ivar ejectedInARow: how many times it was taken out without staying
        healthy in between (see L{lbproxy.Pool}); the next time out lasts
        longer for each.
    @ivar origin: for a backend that a C{resolve} server line found in DNS
        (its C{host} is an address), the host name on that line: what the
        backend is sent as C{Host} (see L{authority}) and, for C{https},
        in SNI and checked against; else L{None}.
    @ivar placeholder: whether this stands for a C{resolve} line whose name
        has no address yet (see L{placeholderFor}): down, never probed,
        never picked.
    """

    origin: Optional[str] = None
    placeholder = False

    def __init__(
        self,
        host: str,
        port: int,
        scheme: str = "http",
        weight: int = 1,
        backup: bool = False,
        down: bool = False,
        maxFails: Optional[int] = None,
        failTimeout: Optional[float] = None,
        maxConns: Optional[int] = None,
    ) -> None:
        """
        @param host: host name or IP address.
        @param port: TCP port.
        @param scheme: C{"http"} or C{"https"}.
        @param weight: a positive weight.
        @param backup: whether this is a backup server.
        @param down: whether the configuration marks it down for good.
        @param maxFails: this server's C{max_fails}, or L{None} for the
            upstream's.
        @param failTimeout: this server's C{fail_timeout} in seconds, or
            L{None} for the upstream's.
        @param maxConns: see L{maxConns}.
        """
        if weight < 1:
            raise ValueError(f"weight must be a positive integer, not {weight!r}")
        if maxConns is not None and maxConns < 1:
            raise ValueError(f"max_conns must be a positive integer, not {maxConns!r}")
        self.host = host
        self.port = port
        self.scheme = scheme
        self.weight = weight
        self.effectiveWeight = float(weight)
        self.backup = backup
        self.maxFails = maxFails
        self.failTimeout = failTimeout
        self.adminState: Optional[BackendState] = (
            BackendState.DISABLED if down else None
        )
        self.checkedDown = False
        self.failedUntil: Optional[float] = None
        self.state = BackendState.DISABLED if down else BackendState.UP
        self.stateReason = DOWN_IN_CONFIGURATION if down else "started"
        self.stateSince: Optional[float] = None
        self._reasons: dict[BackendState, str] = {}
        if down:
            self._reasons[BackendState.DISABLED] = self.stateReason
        self.id = ""
        self.active = 0
        self.requests = 0
        self.responses = 0
        self.failures = 0
        self.lastLatency: Optional[float] = None
        self.responseClasses = statusClasses()
        self.responseTimes = Histogram()
        self.maxConns = maxConns
        self.ejections = 0
        self.ejectedInARow = 0
        #: The failures within the current window: when, and what (a
        #: response status that C{eject_on} names, or an L{Outcome}).
        self._recentFailures: list[tuple[float, Union[int, Outcome]]] = []
        #: When passive accounting last let the backend back, and for how
        #: long it had been out.
        self._recovered: Optional[tuple[float, float]] = None

    @property
    def name(self) -> str:
        """
        C{host:port}, with brackets around an IPv6 address.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def authority(self) -> str:
        """
        C{host:port} as the backend is told it in C{Host} when the client's
        is not kept (and in health probes): L{origin} and the port for a
        backend found in DNS, else L{name}.
        """
        if self.origin is None:
            return self.name
        return f"{self.origin}:{self.port}"

    @property
    def url(self) -> str:
        """
        C{scheme://host:port}.
        """
        return f"{self.scheme}://{self.name}"

    def __repr__(self) -> str:
        return f"<Backend {self.url} weight={self.weight} {self.state.value}>"


def backendFor(server: ServerConfig) -> Backend:
    """
    A new L{Backend} for one server line: the configuration's C{servers},
    or one that a dynamic source (etcd, DNS) found.
    """
    return Backend(
        server.host,
        server.port,
        scheme=server.scheme,
        weight=server.weight,
        backup=server.backup,
        down=server.down,
        maxFails=server.maxFails,
        failTimeout=server.failTimeout,
        maxConns=server.maxConns,
    )


def placeholderFor(host: str, port: int, scheme: str, reason: str) -> Backend:
    """
    The backend that stands for a C{resolve} server line whose name has no
    address yet: down (as if its checks had failed), with C{reason}, so
    that the line shows (in the admin API, in the log line of a 502) with
    why it takes no request.  It is replaced as soon as the name resolves.

    @param host: the name, or the SRV name of a C{service=} line.
    """
    backend = Backend(host, port, scheme=scheme)
    backend.placeholder = True
    backend.checkedDown = True
    backend.state = BackendState.DOWN
    backend.stateReason = reason
    backend._reasons[BackendState.DOWN] = reason
    return backend
