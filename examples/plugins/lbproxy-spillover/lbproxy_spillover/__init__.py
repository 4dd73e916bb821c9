"""
C{spillover}: fill the first backend, then spill over to the next.

An example of a third-party lbproxy balancer plugin.  The balancer sends
every request to the first eligible backend, in configuration order, that
has fewer than C{limit * weight} requests in flight; when all of them are
that busy, the least loaded relative to its capacity gets the request.
Useful to keep a warm primary and pay for the others only under load.
"""

from __future__ import annotations

from random import Random
from typing import Any, Collection, Iterable, Mapping, Optional

from twisted.plugin import IPlugin
from zope.interface import implementer

from lbproxy.balancers import InvalidBalancerOptions
from lbproxy.interfaces import IBalancer, IBalancerFactory

__all__ = ["Spillover", "SpilloverFactory", "spillover"]


@implementer(IBalancer)
class Spillover:
    """
    The spillover balancer for one pool.

    @ivar limit: requests in flight per unit of weight before spilling over.
    @ivar backends: the eligible backends, in configuration order.
    @ivar active: requests in flight per backend, as the notifications say.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.backends: tuple[Any, ...] = ()
        self.active: dict[Any, int] = {}

    def backendsChanged(self, backends: Iterable[Any]) -> None:
        # Only eligible backends arrive here: the pool has already left out
        # the ones that are down, draining or disabled, and the backups
        # while a primary is up.
        self.backends = tuple(backends)

    def pick(self, request: Any, exclude: Collection[Any] = ()) -> Optional[Any]:
        # O(n) in the number of backends: fine for the handful a spillover
        # pool has.  Built-in balancers keep a heap or a ring instead.
        best = None
        bestLoad = 0.0
        for backend in self.backends:
            if backend in exclude:
                continue
            capacity = self.limit * backend.effectiveWeight
            load = self.active.get(backend, 0) / capacity
            if load < 1.0:
                return backend
            if best is None or load < bestLoad:
                best, bestLoad = backend, load
        return best

    def requestStarted(self, backend: Any, request: Any) -> None:
        self.active[backend] = self.active.get(backend, 0) + 1

    def requestFinished(
        self, backend: Any, request: Any, outcome: Any, latency: float
    ) -> None:
        count = self.active.get(backend, 0) - 1
        if count > 0:
            self.active[backend] = count
        else:
            self.active.pop(backend, None)


@implementer(IPlugin, IBalancerFactory)
class SpilloverFactory:
    """
    The plugin: its name in site.ini, the options it takes, and how to
    build a balancer from them.
    """

    name = "spillover"
    description = "fill the first backend up to balancer.limit, then the next"
    options = {
        "limit": "requests in flight per unit of weight before the next "
        "backend gets requests (default 10)"
    }

    def buildBalancer(self, options: Mapping[str, str], random: Random) -> Spillover:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise InvalidBalancerOptions(
                "balancer 'spillover' has no option "
                + ", ".join(f"balancer.{name}" for name in unknown)
                + "; it accepts balancer.limit"
            )
        text = options.get("limit", "10")
        try:
            limit = int(text)
        except ValueError:
            limit = 0
        if limit < 1:
            raise InvalidBalancerOptions(
                f"balancer.limit = {text!r} is not valid; expected a positive integer"
            )
        return Spillover(limit)


spillover = SpilloverFactory()
