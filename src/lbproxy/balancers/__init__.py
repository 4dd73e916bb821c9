# -*- test-case-name: tests.test_balancers -*-
"""
Balancing algorithms, found by name among the L{IBalancerFactory} plugins.

Lookup works like L{twisted.cred.strcred.findCheckerFactory}: every
L{IBalancerFactory} that L{twisted.plugin.getPlugins} finds in the
C{twisted.plugins} dropin package is a candidate, lbproxy's own built-ins
included, so a third party adds an algorithm by installing a dropin.
"""

from __future__ import annotations

from random import Random
from typing import Mapping, Optional

from twisted.logger import Logger
from twisted.plugin import getPlugins

from lbproxy._interfaces import IBalancer, IBalancerFactory
from lbproxy.balancers._base import (
    BalancerBase,
    BalancerFactory,
    InvalidBalancerOptions,
)
from lbproxy.balancers._hashing import ConsistentHash, IPHash
from lbproxy.balancers._leastconn import LeastConn
from lbproxy.balancers._random import PeakEWMA, PowerOfTwoChoices, WeightedRandom
from lbproxy.balancers._roundrobin import RoundRobin
from lbproxy.balancers._sticky import Sticky

__all__ = [
    "BalancerBase",
    "BalancerFactory",
    "BalancerNotFound",
    "ConsistentHash",
    "IPHash",
    "InvalidBalancerOptions",
    "LeastConn",
    "PeakEWMA",
    "PowerOfTwoChoices",
    "RoundRobin",
    "Sticky",
    "WeightedRandom",
    "buildBalancer",
    "findBalancerFactories",
    "findBalancerFactory",
]


class BalancerNotFound(KeyError):
    """
    No balancer plugin has the requested name.

    @ivar name: the name asked for.
    @ivar available: the names that were found, sorted.
    """

    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.available = available

    def __str__(self) -> str:
        return "unknown balancer {!r}; the balancers found are: {}".format(
            self.name, ", ".join(self.available)
        )


_log = Logger()


def findBalancerFactories() -> dict[str, IBalancerFactory]:
    """
    Find every balancer plugin.

    @return: a mapping of balancer name to its L{IBalancerFactory}.  When
        two plugins share a name, lbproxy's built-in wins over a third
        party's, and otherwise the first one found; the clash is logged.
    """
    from lbproxy.balancers._builtins import BUILTINS

    found: dict[str, IBalancerFactory] = {}
    for factory in getPlugins(IBalancerFactory):
        name = factory.name
        other = found.get(name)
        if other is None:
            found[name] = factory
            continue
        if other is factory:
            continue
        if factory in BUILTINS:
            found[name], factory = factory, other
        _log.warn(
            "two balancer plugins are called {name!r}: using {kept!r}, "
            "ignoring {ignored!r}",
            name=name,
            kept=found[name],
            ignored=factory,
        )
    return found


def findBalancerFactory(name: str) -> IBalancerFactory:
    """
    Find the balancer plugin called C{name}.

    @raise BalancerNotFound: when there is none.
    """
    factories = findBalancerFactories()
    try:
        return factories[name]
    except KeyError:
        raise BalancerNotFound(name, sorted(factories)) from None


def buildBalancer(
    name: str,
    options: Optional[Mapping[str, str]] = None,
    random: Optional[Random] = None,
) -> IBalancer:
    """
    Build the balancer called C{name} with its C{balancer.*} C{options}.

    @raise BalancerNotFound: when no plugin has that name.
    @raise InvalidBalancerOptions: when the options are wrong for it.
    """
    factory = findBalancerFactory(name)
    return factory.buildBalancer(dict(options or {}), random or Random())
