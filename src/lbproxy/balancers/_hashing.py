# -*- test-case-name: tests.test_balancers -*-
"""
The hashing balancers: nginx's C{ip_hash} and a ketama-style consistent hash
ring.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left, bisect_right
from hashlib import blake2b
from typing import Any, Callable, Collection, Iterable, Optional

from zope.interface import implementer

from lbproxy._interfaces import IBalancer
from lbproxy.balancers._base import (
    BalancerBase,
    InvalidBalancerOptions,
    eligibleExcluded,
    weightOf,
)
from lbproxy.balancers._roundrobin import RoundRobin


def clientHost(request: Any) -> Optional[str]:
    """
    The client's IP address for C{request}, or L{None} when there is no
    request or its client has no IP address (a UNIX socket, say).
    """
    if request is None:
        return None
    try:
        address = request.getClientAddress()
    except AttributeError:
        return None
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


#: nginx's ip_hash works modulo this prime.
_NGINX_MODULUS = 6271


def _hash64(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


@implementer(IBalancer)
class IPHash(BalancerBase):
    """
    nginx's C{ip_hash}: the client's address picks the backend, so a client
    keeps its backend.

    The key is the first three octets of an IPv4 address (a whole /24 goes
    to one backend, as in nginx) or the whole IPv6 address; an IPv4-mapped
    IPv6 address counts as IPv4.  The hash is nginx's (C{89}, then
    C{hash * 113 + byte} modulo 6271 per byte), laid over the backends in
    proportion to their weights.  When it lands on a backend that is not
    eligible, the hash is stirred again and the next landing tried, up to
    20 times, then round robin decides, as in nginx.

    nginx's hash has only 6271 values, so with a total weight above that
    some backends could never be chosen; then (and only then) a 64-bit hash
    of the same key, stirred by hashing it again, takes its place.

    The layout is over every backend this balancer has ever seen, not only
    the eligible ones: so when a backend goes down only its clients move,
    and when it comes back they return; the other clients stay where they
    are.  (The pool only shows a balancer its eligible backends, so this
    balancer remembers the others.)  A backend is remembered by its URL, so
    one that leaves the pool and joins it again (a DNS answer that comes
    back) takes its old place.  Where backends come and go for good (new
    addresses from DNS or etcd), the remembered ones that are not eligible
    could pile up; once they outnumber twice the eligible ones (plus
    L{_SPARE}), the layout is built again from the eligible backends alone,
    which moves clients once.

    The layout uses each backend's configured weight, which keeps the
    mapping stable.  While a backend slow-starts (its effective weight is a
    fraction of its weight), that fraction of its clients, always the same
    ones for a given fraction, is let through and the rest are stirred on.

    Requests without an IP client address (or no request) go round robin.
    """

    _TRIES = 20
    _SPARE = 16

    def __init__(self) -> None:
        super().__init__()
        self._known: list[Any] = []
        self._knownIndex: dict[str, int] = {}
        self._knownWeights: list[int] = []
        self._cumulative: list[int] = []
        self._total = 0
        self._share: dict[Any, float] = {}
        self._fallback = RoundRobin()
        self._keys: dict[str, bytes] = {}

    def backendsChanged(self, backends: Iterable[Any]) -> None:
        super().backendsChanged(backends)
        self._fallback.backendsChanged(self.backends)
        changed = False
        if len(self._known) > 2 * len(self.backends) + self._SPARE:
            self._known, self._knownIndex, self._knownWeights = [], {}, []
        for backend in self.backends:
            index = self._knownIndex.get(backend.url)
            if index is None:
                self._knownIndex[backend.url] = len(self._known)
                self._known.append(backend)
                self._knownWeights.append(backend.weight)
                changed = True
            else:
                self._known[index] = backend
                if self._knownWeights[index] != backend.weight:
                    self._knownWeights[index] = backend.weight
                    changed = True
        if changed:
            cumulative = []
            total = 0
            for weight in self._knownWeights:
                total += weight
                cumulative.append(total)
            self._cumulative = cumulative
            self._total = total
        self._share = {b: min(1.0, weightOf(b) / b.weight) for b in self.backends}

    def _key(self, host: str) -> Optional[bytes]:
        key = self._keys.get(host)
        if key is None:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                return None
            if isinstance(address, ipaddress.IPv6Address):
                mapped = address.ipv4_mapped
                key = mapped.packed[:3] if mapped is not None else address.packed
            else:
                key = address.packed[:3]
            if len(self._keys) >= 65536:
                self._keys.clear()
            self._keys[host] = key
        return key

    def pick(self, request: Any, exclude: Collection[Any] = ()) -> Optional[Any]:
        share = self._share
        if not share:
            return None
        host = clientHost(request)
        key = self._key(host) if host is not None else None
        if key is None:
            return self._fallback.pick(request, exclude)
        known = self._known
        cumulative = self._cumulative
        total = self._total
        if total > _NGINX_MODULUS:
            return self._pickWide(key, exclude)
        value = 89
        for _ in range(self._TRIES):
            for byte in key:
                value = (value * 113 + byte) % _NGINX_MODULUS
            backend = known[bisect_right(cumulative, value % total)]
            fraction = share.get(backend)
            if (
                fraction is not None
                and backend not in exclude
                and (
                    fraction >= 1.0
                    or (value * 7919 % _NGINX_MODULUS) / _NGINX_MODULUS < fraction
                )
            ):
                return backend
        return self._fallback.pick(request, exclude)

    def _pickWide(self, key: bytes, exclude: Collection[Any]) -> Optional[Any]:
        """
        L{pick} with a 64-bit hash, for total weights beyond nginx's hash.
        """
        share = self._share
        value = _hash64(key)
        for _ in range(self._TRIES):
            backend = self._known[
                bisect_right(self._cumulative, (value & 0xFFFFFFFF) % self._total)
            ]
            fraction = share.get(backend)
            if (
                fraction is not None
                and backend not in exclude
                and (fraction >= 1.0 or (value >> 32) / 2**32 < fraction)
            ):
                return backend
            value = _hash64(value.to_bytes(8, "big"))
        return self._fallback.pick(None, exclude)


def parseKey(spec: str) -> Callable[[Any], Optional[bytes]]:
    """
    Parse a C{balancer.key} specification into a function that extracts the
    key from a request, returning L{None} when the request has none.

    @param spec: C{header:NAME}, C{cookie:NAME}, C{query:NAME}, C{uri} or
        C{remote_addr}.

    @raise InvalidBalancerOptions: when C{spec} is none of those.
    """
    kind, sep, name = spec.strip().partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    raw = name.encode("latin-1", "replace")
    if kind in ("header", "cookie", "query") and sep and name:
        if kind == "header":

            def header(request: Any) -> Optional[bytes]:
                values = request.requestHeaders.getRawHeaders(raw)
                return values[0] if values else None

            return header
        if kind == "cookie":

            def cookie(request: Any) -> Optional[bytes]:
                value: Optional[bytes] = request.getCookie(raw)
                return value

            return cookie

        def query(request: Any) -> Optional[bytes]:
            values = (getattr(request, "args", None) or {}).get(raw)
            return values[0] if values else None

        return query
    if not sep and kind == "uri":

        def uri(request: Any) -> Optional[bytes]:
            value: Optional[bytes] = getattr(request, "uri", None)
            return value

        return uri
    if not sep and kind == "remote_addr":

        def remoteAddress(request: Any) -> Optional[bytes]:
            host = clientHost(request)
            return None if host is None else host.encode("ascii")

        return remoteAddress
    raise InvalidBalancerOptions(
        f"balancer.key = {spec!r} is not valid; expected header:NAME, "
        "cookie:NAME, query:NAME, uri or remote_addr"
    )


@implementer(IBalancer)
class ConsistentHash(BalancerBase):
    """
    A ketama-style consistent hash ring.

    Each backend owns points on a 64-bit ring, 160 per unit of effective
    weight (as nginx's C{hash ... consistent}), placed by hashing its URL
    and the point's number; a request's key is hashed onto the ring and the
    first point at or after it names the backend.  When a backend joins,
    it takes over only the keys that now land on its points; when one
    leaves, only its keys move, each to the next point along the ring.  A
    lookup is a binary search: O(log n).

    The ring holds at most L{MAX_POINTS} points: when the weights add up to
    more (hundreds of backends of large weights), every backend's share of
    points is scaled down alike.  The proportions stay, but then a change
    of membership also moves a few keys between the backends that stay, as
    in the original ketama.

    A retry walks on along the ring to the next backend not yet tried.  A
    request without the key (or no request) goes round robin.

    The points depend only on the backends' URLs and weights, so every
    lbproxy with the same backends has the same ring, and a backend that
    leaves and comes back gets its points back.  Each backend's points are
    kept while it is out (down, say), until the backends kept outnumber
    twice the eligible ones.

    @ivar keyOf: extracts the key from a request (see L{parseKey}).
    """

    POINTS_PER_WEIGHT = 160
    MAX_POINTS = 1 << 17

    def __init__(self, key: str) -> None:
        """
        @param key: the C{balancer.key} specification (see L{parseKey}).

        @raise InvalidBalancerOptions: when C{key} is not valid.
        """
        super().__init__()
        self.keyOf = parseKey(key)
        self._fallback = RoundRobin()
        self._points: dict[str, list[int]] = {}
        self._hashes: list[int] = []
        self._owners: list[Any] = []
        self._eligible: frozenset[Any] = frozenset()

    def _pointsOf(self, backend: Any, count: int) -> list[int]:
        points = self._points.setdefault(backend.url, [])
        if len(points) < count:
            prefix = backend.url.encode("utf-8") + b"-"
            points.extend(
                _hash64(prefix + b"%d" % i) for i in range(len(points), count)
            )
        return points[:count]

    def backendsChanged(self, backends: Iterable[Any]) -> None:
        super().backendsChanged(backends)
        self._fallback.backendsChanged(self.backends)
        self._eligible = frozenset(self.backends)
        if len(self._points) > 2 * len(self.backends) + 16:
            urls = {backend.url for backend in self.backends}
            self._points = {u: p for u, p in self._points.items() if u in urls}
        weights = [weightOf(backend) for backend in self.backends]
        perWeight = float(self.POINTS_PER_WEIGHT)
        wanted = perWeight * sum(weights)
        if wanted > self.MAX_POINTS:
            perWeight *= self.MAX_POINTS / wanted
        ring: list[tuple[int, int]] = []
        for index, backend in enumerate(self.backends):
            count = max(1, round(perWeight * weights[index]))
            ring.extend((point, index) for point in self._pointsOf(backend, count))
        ring.sort()
        self._hashes = [point for point, _ in ring]
        self._owners = [self.backends[index] for _, index in ring]

    def pick(self, request: Any, exclude: Collection[Any] = ()) -> Optional[Any]:
        hashes = self._hashes
        if not hashes:
            return None
        key = None if request is None else self.keyOf(request)
        if key is None:
            return self._fallback.pick(request, exclude)
        position = bisect_left(hashes, _hash64(key))
        owners = self._owners
        size = len(owners)
        if position == size:
            position = 0
        owner = owners[position]
        if not exclude or owner not in exclude:
            return owner
        if eligibleExcluded(exclude, self._eligible) >= len(self._eligible):
            return None
        while owner in exclude:
            position = (position + 1) % size
            owner = owners[position]
        return owner
