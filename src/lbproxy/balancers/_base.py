# -*- test-case-name: tests.test_balancers -*-
"""
Shared pieces of the built-in balancers.
"""

from __future__ import annotations

from random import Random
from typing import Any, Callable, Mapping

from twisted.plugin import IPlugin
from zope.interface import implementer

from lbproxy._interfaces import IBalancer, IBalancerFactory


class BalancerBase:
    """
    A balancer that keeps the eligible backends and ignores notifications.

    Subclasses implement C{pick}, and override the notifications they need.

    @ivar backends: the eligible backends, as last told by the pool.
    """

    def __init__(self) -> None:
        self.backends: tuple[Any, ...] = ()

    def backendsChanged(self, backends: tuple[Any, ...]) -> None:
        self.backends = tuple(backends)

    def requestStarted(self, backend: Any, request: Any) -> None:
        pass

    def requestFinished(
        self, backend: Any, request: Any, outcome: Any, latency: float
    ) -> None:
        pass


@implementer(IPlugin, IBalancerFactory)
class BalancerFactory:
    """
    A balancer plugin made from a name, a description, the options it takes
    and a function that builds the balancer.

    @ivar _build: called with the options and the L{Random} to use.
    """

    def __init__(
        self,
        name: str,
        description: str,
        build: Callable[[Mapping[str, str], Random], IBalancer],
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.options = dict(options or {})
        self._build = build

    def buildBalancer(self, options: Mapping[str, str], random: Random) -> IBalancer:
        from lbproxy.balancers import InvalidBalancerOptions

        unknown = sorted(set(options) - set(self.options))
        if unknown:
            accepted = ", ".join(f"balancer.{o}" for o in sorted(self.options))
            raise InvalidBalancerOptions(
                "balancer {!r} has no option {}; it accepts {}".format(
                    self.name,
                    ", ".join(f"balancer.{o}" for o in unknown),
                    accepted or "no options",
                )
            )
        return self._build(options, random)

    def __repr__(self) -> str:
        return f"<BalancerFactory {self.name!r}>"
