# -*- test-case-name: tests.test_balancers -*-
"""
Shared pieces of the built-in balancers: the base class, the plugin factory,
weights, weighted sampling, and option parsing.
"""

from __future__ import annotations

from bisect import bisect_right
from random import Random
from typing import (
    Any,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Optional,
    Sequence,
    Union,
)

from twisted.plugin import IPlugin
from zope.interface import implementer

from lbproxy._interfaces import IBalancer, IBalancerFactory
from lbproxy._values import parseDuration

Weight = Union[int, float]

_MIN_WEIGHT = 1e-6


def weightOf(backend: Any) -> Weight:
    """
    The weight a balancer should use for C{backend} now: its
    C{effectiveWeight}, as an L{int} when it is a whole number (so that
    integer arithmetic stays exact, as nginx's does), never below a tiny
    positive number.
    """
    weight = backend.effectiveWeight
    if weight <= _MIN_WEIGHT:
        return _MIN_WEIGHT
    if isinstance(weight, float) and weight.is_integer():
        return int(weight)
    return weight  # type: ignore[no-any-return]


def eligibleExcluded(exclude: Collection[Any], eligible: Collection[Any]) -> int:
    """
    How many of C{eligible} are in C{exclude}.
    """
    if not exclude:
        return 0
    return sum(1 for backend in exclude if backend in eligible)


class BalancerBase:
    """
    A balancer that keeps the eligible backends and ignores notifications.

    Subclasses implement C{pick}, and override the notifications they need.

    @ivar backends: the eligible backends, as last told by the pool.
    """

    def __init__(self) -> None:
        self.backends: tuple[Any, ...] = ()

    def backendsChanged(self, backends: Iterable[Any]) -> None:
        self.backends = tuple(backends)

    def requestStarted(self, backend: Any, request: Any) -> None:
        pass

    def requestFinished(
        self, backend: Any, request: Any, outcome: Any, latency: float
    ) -> None:
        pass


class ActiveCounter:
    """
    The requests in flight per backend, as the notifications tell them.

    A balancer keeps its own counts rather than reading C{backend.active},
    so that it agrees with the notifications it was given even when it is
    driven without a pool (in tests and benchmarks), and so that a request
    started before a backend left the eligible set still ends correctly.
    """

    def __init__(self) -> None:
        self.active: dict[Any, int] = {}

    def started(self, backend: Any) -> int:
        """
        Count one more request to C{backend}; return the new count.
        """
        count = self.active.get(backend, 0) + 1
        self.active[backend] = count
        return count

    def finished(self, backend: Any) -> int:
        """
        Count one request fewer to C{backend}; return the new count.
        """
        count = self.active.get(backend, 0) - 1
        if count <= 0:
            self.active.pop(backend, None)
            return 0
        self.active[backend] = count
        return count


class WeightedSampler:
    """
    Draw backends at random, each with a probability proportional to its
    weight: a binary search over the cumulative weights (O(log n)), or a
    plain index when every weight is the same (O(1)).

    @ivar backends: the backends, in order.
    @ivar weights: their weights.
    """

    # Draws rejected (because the backend was excluded) before a retry
    # falls back to a linear pass over the candidates.
    _REJECTIONS = 8

    def __init__(self, backends: Sequence[Any], weights: Sequence[Weight]) -> None:
        self.backends = tuple(backends)
        self.weights = tuple(weights)
        self._uniform = len(set(self.weights)) <= 1
        cumulative = []
        total: Weight = 0
        for weight in self.weights:
            total += weight
            cumulative.append(total)
        self._cumulative = cumulative
        self._total = total

    def __len__(self) -> int:
        return len(self.backends)

    def draw(self, random: Random) -> int:
        """
        Draw the index of one backend.
        """
        n = len(self.backends)
        if self._uniform:
            return min(int(random.random() * n), n - 1)
        index = bisect_right(self._cumulative, random.random() * self._total)
        return min(index, n - 1)

    def drawOther(self, random: Random, first: int) -> int:
        """
        Draw the index of a backend other than C{first}, with probability
        proportional to weight among the others.  There must be at least
        two backends.
        """
        n = len(self.backends)
        if self._uniform:
            index = min(int(random.random() * (n - 1)), n - 2)
            return index + 1 if index >= first else index
        weight = self.weights[first]
        x = random.random() * (self._total - weight)
        if x >= self._cumulative[first] - weight:
            x += weight
        index = bisect_right(self._cumulative, x)
        if index >= n or index == first:
            # Only reachable through float rounding at a boundary.
            index = (first + 1) % n
        return index

    def drawExcluding(
        self, random: Random, exclude: Collection[Any], other: Optional[int] = None
    ) -> Optional[int]:
        """
        Draw the index of a backend not in C{exclude} (and not C{other}), or
        return L{None} when there is none.  Rejection sampling first; when
        that keeps hitting excluded backends, one linear pass.
        """
        backends = self.backends
        n = len(backends)
        if n == 0 or (n == 1 and other == 0):
            return None
        for _ in range(self._REJECTIONS):
            if other is None:
                index = self.draw(random)
            else:
                index = self.drawOther(random, other)
            if backends[index] not in exclude:
                return index
        candidates = [i for i in range(n) if i != other and backends[i] not in exclude]
        if not candidates:
            return None
        total = sum(self.weights[i] for i in candidates)
        x = random.random() * total
        for i in candidates:
            x -= self.weights[i]
            if x < 0:
                return i
        return candidates[-1]


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
        options: Optional[Mapping[str, str]] = None,
    ) -> None:
        """
        @param name: see L{IBalancerFactory.name}.
        @param description: see L{IBalancerFactory.description}.
        @param build: builds the balancer from options already checked to be
            known; raises L{lbproxy.balancers.InvalidBalancerOptions} for a
            bad value.
        @param options: see L{IBalancerFactory.options}.
        """
        self.name = name
        self.description = description
        self.options = dict(options or {})
        self._build = build

    def buildBalancer(self, options: Mapping[str, str], random: Random) -> IBalancer:
        """
        Check that every option is known, then build the balancer.

        @raise lbproxy.balancers.InvalidBalancerOptions: for an unknown option
            or a bad value.
        """
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


class InvalidBalancerOptions(ValueError):
    """
    A C{balancer.*} option is unknown to the chosen balancer, or its value is
    bad.  The message says which and what was expected.
    """


def durationOption(
    balancer: str, options: Mapping[str, str], name: str, default: Optional[float]
) -> Optional[float]:
    """
    Read the positive duration option C{name} (C{500ms}, C{10s}, C{1m}, or a
    bare number of seconds), with the same syntax as the rest of site.ini.

    @raise InvalidBalancerOptions: when the value is not a positive duration.
    """
    text = options.get(name)
    if text is None:
        return default
    try:
        value = parseDuration(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidBalancerOptions(
            f"balancer {balancer!r}: balancer.{name} = {text!r} is not valid; "
            "expected a positive duration such as 500ms, 10s or 1m"
        )
    return value
