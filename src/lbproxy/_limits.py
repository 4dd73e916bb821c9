# -*- test-case-name: tests.test_limits -*-
"""
Per-client limits on a vhost's requests: a request rate (C{limit_rate},
C{limit_burst}, C{limit_delay}) and requests in flight (C{limit_conn}),
each counted per key (C{limit_key}: the client address, a header or a
cookie), as nginx's C{limit_req} and C{limit_conn} do.

The rate is the generic cell rate algorithm (GCRA): one float per key, its
I{theoretical arrival time} (TAT), the time at which the key's requests
would have been let through had they come exactly at the rate.  A request
at C{now} passes when C{TAT - now} is within the burst's tolerance
(C{burst / rate}); it then moves the TAT on by C{1 / rate}.  That is
nginx's leaky bucket with its C{excess} counted in time rather than in
requests: with C{rate} and C{burst} the same requests pass and are
refused, and the delay nginx gives a request without C{nodelay}
(C{excess / rate}) is C{TAT - now}.  Nothing runs between requests: no
timer per key, one dictionary look-up and a few additions per request.

Memory is bounded whatever the clients do: the table of TATs is kept in
order of last use, a key whose TAT has passed holds nothing worth keeping
(its next request would pass as if it were new) and is dropped when it
reaches the front, a few at each request, and the table holds at most
C{maxKeys} keys, the least recently used forgotten first.  A flood of
made-up keys (a header a client writes anything into) therefore costs at
most the table's size, and what it evicts are the keys idle longest, whose
clients then start afresh (allowed more, never less).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from hashlib import blake2b
from math import ceil
from typing import Any, Callable, Hashable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from lbproxy._interfaces import IProxyRequest, implementsProxyRequest
from lbproxy._pages import renderError
from lbproxy._values import DEFAULT_LIMIT_KEYS

#: The most keys a vhost's rate table holds by default (C{limit_keys}).
DEFAULT_MAX_KEYS = DEFAULT_LIMIT_KEYS

#: Keys (header or cookie values) longer than this many bytes are kept as
#: a 16-byte digest, so that each entry of a table is small whatever
#: clients send.
_LONGEST_KEY = 64


class RateLimiter:
    """
    A request rate per key, with a burst: GCRA (see the module's
    docstring), in a table of bounded size.

    @ivar interval: seconds between two requests at the rate (C{1/rate}).
    @ivar tolerance: how far ahead of now a key's TAT may be for its next
        request to pass: C{burst * interval}.
    @ivar maxKeys: the most keys the table holds.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: IReactorTime,
        maxKeys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        """
        @param rate: requests per second, greater than 0.
        @param burst: requests allowed above the rate, at once, 0 or more
            (nginx's C{burst}; may be fractional when a rate is divided
            between workers).
        @param clock: gives the time (its C{seconds}).
        @param maxKeys: see L{maxKeys}, at least 1.
        """
        self.interval = 1.0 / rate
        self.tolerance = burst * self.interval
        self.maxKeys = maxKeys
        self._seconds = clock.seconds
        # Times are kept from the limiter's creation, so that they stay
        # small and exact to well under a microsecond (a time since 1970
        # is exact to a quarter of one); and the tolerance gets a
        # thousandth of a request of slack, so that the rounding of the
        # additions never refuses a request that keeps to the burst.
        self._origin = clock.seconds()
        self._most = self.tolerance + self.interval / 1000
        self._table: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        """
        The number of keys the table holds now.
        """
        return len(self._table)

    def acquire(self, key: Hashable) -> Optional[float]:
        """
        Count a request of C{key} now, if it is within the rate and burst.

        @return: L{None} when the request must be refused (nothing is
            counted then); else the seconds it would wait to keep to the
            rate (0 within the rate; what nginx delays it by without
            C{nodelay}).
        """
        now = self._seconds() - self._origin
        table = self._table
        tat = table.get(key)
        if tat is not None:
            if tat < now:
                tat = now
            wait = tat - now
            if wait > self._most:
                # Refused, and nothing counted; but the key was used: the
                # client hammering the limit is the last to be forgotten.
                table.move_to_end(key)
                return None
            table[key] = tat + self.interval
            table.move_to_end(key)
            return wait
        # A key not in the table: as if its TAT were now.
        table[key] = now + self.interval
        if len(table) > self.maxKeys:
            table.popitem(False)
        # A new key makes room: the two oldest keys go if they have
        # expired, so that the table holds little more than the keys in
        # use, and no request pays for a long clean-up.
        for _ in (1, 2):
            oldest = next(iter(table))
            if table[oldest] > now:
                break
            del table[oldest]
        return 0.0

    def retryAfter(self, key: Hashable) -> float:
        """
        The seconds until a request of C{key} would pass (0 if it would
        now).
        """
        tat = self._table.get(key)
        if tat is None:
            return 0.0
        return max(0.0, tat - self.tolerance - (self._seconds() - self._origin))


class ConcurrencyLimiter:
    """
    Requests in flight per key, at most L{limit} each.  A key is held only
    while it has requests in flight, so the table is no larger than the
    number of requests being served.
    """

    def __init__(self, limit: int) -> None:
        """
        @param limit: the most requests in flight per key, at least 1.
        """
        self.limit = limit
        self._counts: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def inFlight(self, key: Hashable) -> int:
        """
        The requests of C{key} in flight now.
        """
        return self._counts.get(key, 0)

    def acquire(self, key: Hashable) -> bool:
        """
        Count one more request of C{key} in flight, unless it has L{limit}
        already.

        @return: whether it was counted.
        """
        counts = self._counts
        count = counts.get(key, 0)
        if count >= self.limit:
            return False
        counts[key] = count + 1
        return True

    def release(self, key: Hashable) -> None:
        """
        A request of C{key} is over.
        """
        counts = self._counts
        left = counts[key] - 1
        if left:
            counts[key] = left
        else:
            del counts[key]


def _shortKey(value: Optional[bytes]) -> Optional[bytes]:
    """
    A header or cookie value as a key: L{None} when missing or empty (such
    a request is not limited, as nginx does not account an empty key), as
    it is when short, else as a 16-byte digest.
    """
    if not value:
        return None
    if len(value) > _LONGEST_KEY:
        return blake2b(value, digest_size=16).digest()
    return value


def limitKeyFunction(kind: str, name: str = "") -> Callable[[Any], Optional[Hashable]]:
    """
    What C{limit_key} reads from a request to count it by.

    @param kind: C{"remote_addr"}: the client's address (after
        C{trusted_proxies}: the request's C{getClientAddress()}), its IP
        address as text, or C{"unix:"} for a client on a UNIX socket (as
        nginx's C{$binary_remote_addr}); C{"header"}: the value of header
        C{name}; C{"cookie"}: the value of cookie C{name}.
    @return: a callable giving the key of a request, L{None} for a
        request that is not counted (no such header or cookie, or an
        empty one).
    @raise ValueError: for another C{kind}.
    """
    if kind == "remote_addr":

        def remoteAddress(request: Any) -> Optional[Hashable]:
            host = getattr(request.getClientAddress(), "host", None)
            return host if isinstance(host, str) and host else "unix:"

        return remoteAddress
    encoded = name.encode("ascii")
    if kind == "header":

        def header(request: Any) -> Optional[Hashable]:
            return _shortKey(request.getHeader(encoded))

        return header
    if kind == "cookie":

        def cookie(request: Any) -> Optional[Hashable]:
            return _shortKey(request.getCookie(encoded))

        return cookie
    raise ValueError(f"unknown limit_key kind {kind!r}")


class _Admitted:
    """
    A request let through by L{RequestLimits} but held back to keep to the
    rate (C{limit_delay = yes}), and perhaps holding a place of
    L{ConcurrencyLimiter} meanwhile.  (A request that only holds a place
    is told to give it back by a C{partial} of
    L{ConcurrencyLimiter.release}: cheaper to make.)
    """

    __slots__ = ("limits", "key", "delayed")

    def __init__(self, limits: RequestLimits, key: Hashable) -> None:
        self.limits = limits
        self.key = key
        self.delayed: Optional[IDelayedCall] = None

    def done(self) -> None:
        """
        The request is over (finished, or its client gone): give back its
        place, and forget it if it was still held back.
        """
        delayed, self.delayed = self.delayed, None
        if delayed is not None and delayed.active():
            delayed.cancel()
        conn = self.limits.conn
        if conn is not None:
            conn.release(self.key)

    def resume(self, request: Any, resource: Any) -> None:
        """
        The time a held-back request waited for is over: render it again
        from C{resource}, the vhost resource that held it, which now lets
        it through.
        """
        self.delayed = None
        self.limits.resumed.add(request)
        try:
            request.render(resource)
        except BaseException:
            self.limits.resumed.discard(request)
            request.processingFailed(Failure())


class RequestLimits:
    """
    The limits of one vhost, checked for each of its requests before its
    route is rendered (see L{admit}).

    @ivar rate: the L{RateLimiter}, or L{None}.
    @ivar conn: the L{ConcurrencyLimiter}, or L{None}.
    @ivar delay: whether a request within the burst but above the rate is
        held back until it keeps to the rate (nginx without C{nodelay}),
        rather than let through at once.
    @ivar refusedRate: requests refused for their rate so far.
    @ivar refusedConn: requests refused for their requests in flight.
    @ivar delayed: requests held back so far.
    @ivar resumed: the requests being rendered again once their delay is
        over, which L{admit} lets through.
    """

    refusedRate = 0
    refusedConn = 0
    delayed = 0

    def __init__(
        self,
        key: Callable[[Any], Optional[Hashable]],
        clock: Any,
        rate: Optional[RateLimiter] = None,
        conn: Optional[ConcurrencyLimiter] = None,
        delay: bool = False,
    ) -> None:
        """
        @param key: what to count a request by (see L{limitKeyFunction}).
        @param clock: an L{IReactorTime}, for L{delay}.
        """
        self.keyOf = key
        self.clock = clock
        self.rate = rate
        self.conn = conn
        self.delay = delay
        self.resumed: set[Any] = set()

    def asDict(self) -> dict[str, int]:
        """
        What the limits did, for the admin snapshot: C{refused_rate},
        C{refused_conn} and C{delayed} (requests so far), C{clients} (the
        keys the rate's table holds now) and C{in_flight} (the keys with
        requests in flight now).  Each adds up across workers.
        """
        rate, conn = self.rate, self.conn
        return {
            "refused_rate": self.refusedRate,
            "refused_conn": self.refusedConn,
            "delayed": self.delayed,
            "clients": 0 if rate is None else len(rate),
            "in_flight": 0 if conn is None else len(conn),
        }

    def admit(self, request: Any, resource: Any) -> Any:
        """
        Check C{request} against the limits.

        @param resource: the resource rendering C{request} (the vhost
            resource), rendered again for a request held back.
        @return: L{None} to go on with the request now; else what the
            resource's C{render} returns: the body of a C{429 Too Many
            Requests} page (with C{Retry-After} when it is the rate that
            refused it), or C{NOT_DONE_YET} for a request held back.
        """
        resumed = self.resumed
        if resumed and request in resumed:
            resumed.discard(request)
            return None
        key = self.keyOf(request)
        if key is None:
            return None
        conn = self.conn
        rate = self.rate
        wait = 0.0
        if rate is not None:
            if conn is not None and conn.inFlight(key) >= conn.limit:
                # Checked first, so that a request refused here does not
                # count against the rate.
                self.refusedConn += 1
                return renderError(request, 429)
            allowed = rate.acquire(key)
            if allowed is None:
                self.refusedRate += 1
                seconds = max(1, ceil(rate.retryAfter(key)))
                body = renderError(request, 429)
                request.responseHeaders.setRawHeaders(b"retry-after", [b"%d" % seconds])
                return body
            wait = allowed
        if conn is not None and not conn.acquire(key):
            self.refusedConn += 1
            return renderError(request, 429)
        held = wait > 0 and self.delay
        whenDone: Callable[[], object]
        if held:
            admitted = _Admitted(self, key)
            self.delayed += 1
            admitted.delayed = self.clock.callLater(wait, admitted.resume, request, resource)
            whenDone = admitted.done
        elif conn is not None:
            whenDone = partial(conn.release, key)
        else:
            return None
        if implementsProxyRequest(request):
            request.callWhenDone(whenDone)
        else:
            IProxyRequest(request).callWhenDone(whenDone)
        return NOT_DONE_YET if held else None
