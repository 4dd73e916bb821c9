# -*- test-case-name: tests.test_balancers -*-
"""
The randomised balancers: weighted random, power of two choices, and
peak-EWMA latency.
"""

from __future__ import annotations

import time
from math import exp
from random import Random
from typing import Any, Callable, Collection, Iterable, Optional

from zope.interface import implementer

from lbproxy._backend import Outcome
from lbproxy._interfaces import IBalancer
from lbproxy.balancers._base import (
    ActiveCounter,
    BalancerBase,
    WeightedSampler,
    weightOf,
)


class _Sampling(BalancerBase):
    """
    A balancer that draws from the eligible backends by weight.
    """

    def __init__(self, random: Optional[Random] = None) -> None:
        super().__init__()
        self._random = random if random is not None else Random()
        self._sampler = WeightedSampler((), ())

    def backendsChanged(self, backends: Iterable[Any]) -> None:
        super().backendsChanged(backends)
        self._sampler = WeightedSampler(
            self.backends, [weightOf(b) for b in self.backends]
        )

    def _drawTwo(self, exclude: Collection[Any]) -> tuple[int, Optional[int]]:
        """
        Draw two different backends by weight, neither in C{exclude}.

        @return: their indexes; the second is L{None} when only one backend
            is available, and the first is -1 when none is.
        """
        sampler = self._sampler
        n = len(sampler)
        if n == 0:
            return -1, None
        if not exclude:
            first = sampler.draw(self._random)
            if n == 1:
                return first, None
            return first, sampler.drawOther(self._random, first)
        drawn = sampler.drawExcluding(self._random, exclude)
        if drawn is None:
            return -1, None
        return drawn, sampler.drawExcluding(self._random, exclude, drawn)


class _TwoChoices(_Sampling):
    """
    Draw two different backends by weight and keep the better one, as
    C{_secondIsBetter} judges (the first drawn on a tie), counting the
    requests in flight to each backend for it.
    """

    def __init__(self, random: Optional[Random] = None) -> None:
        super().__init__(random)
        self._counter = ActiveCounter()

    @property
    def active(self) -> dict[Any, int]:
        """
        The requests in flight per backend, as this balancer counts them.
        """
        return self._counter.active

    def requestStarted(self, backend: Any, request: Any) -> None:
        self._counter.started(backend)

    def requestFinished(
        self, backend: Any, request: Any, outcome: Any, latency: float
    ) -> None:
        self._counter.finished(backend)

    def pick(self, request: Any, exclude: Collection[Any] = ()) -> Optional[Any]:
        first, second = self._drawTwo(exclude)
        if first < 0:
            return None
        if second is not None and self._secondIsBetter(first, second):
            return self._sampler.backends[second]
        return self._sampler.backends[first]

    def _secondIsBetter(self, first: int, second: int) -> bool:
        """
        Whether the backend drawn second (by index) is the better choice.
        """
        raise NotImplementedError()


@implementer(IBalancer)
class WeightedRandom(_Sampling):
    """
    A backend drawn at random, with probability proportional to its weight
    (O(log n): a binary search over the cumulative weights).
    """

    def pick(self, request: Any, exclude: Collection[Any] = ()) -> Optional[Any]:
        sampler = self._sampler
        if not sampler.backends:
            return None
        if exclude:
            index = sampler.drawExcluding(self._random, exclude)
            return None if index is None else sampler.backends[index]
        return sampler.backends[sampler.draw(self._random)]


@implementer(IBalancer)
class PowerOfTwoChoices(_TwoChoices):
    """
    The power of two random choices: draw two different backends by weight
    and take the one with fewer requests in flight relative to its weight
    (the first drawn on a tie, so that an idle pool is balanced by weight).

    One busy backend is avoided almost always, yet no backend is ever
    flooded the way least connections floods a newcomer, and a pick costs
    two draws whatever the size of the pool.
    """

    def _secondIsBetter(self, first: int, second: int) -> bool:
        sampler = self._sampler
        active = self._counter.active
        # active(b) / weight(b) < active(a) / weight(a), without dividing.
        return active.get(sampler.backends[second], 0) * sampler.weights[first] < (
            active.get(sampler.backends[first], 0) * sampler.weights[second]
        )


class _PeakEWMA:
    """
    One backend's latency estimate: a moving average that jumps up to any
    slower sample at once (the peak) and decays towards recent samples, and
    towards zero while no sample comes, with time constant C{decay}.
    """

    __slots__ = ("estimate", "stamp")

    def __init__(self, now: float) -> None:
        self.estimate = 0.0
        self.stamp = now

    def current(self, now: float, decay: float) -> float:
        """
        The estimate, decayed to C{now}.
        """
        elapsed = now - self.stamp
        if elapsed <= 0:
            return self.estimate
        return self.estimate * exp(-elapsed / decay)

    def observe(self, latency: float, now: float, decay: float) -> None:
        """
        Fold in one latency sample taken at C{now}.
        """
        elapsed = max(now - self.stamp, 0.0)
        if latency > self.estimate:
            self.estimate = latency
        else:
            w = exp(-elapsed / decay)
            self.estimate = self.estimate * w + latency * (1.0 - w)
        self.stamp = now

    def raiseTo(self, latency: float, now: float, decay: float) -> None:
        """
        Fold in a failure that took C{latency}: it may raise the estimate,
        never lower it.
        """
        decayed = self.current(now, decay)
        self.estimate = max(decayed, latency)
        self.stamp = now


@implementer(IBalancer)
class PeakEWMA(_TwoChoices):
    """
    Peak-EWMA latency with two random choices, as Finagle's and linkerd's
    C{PeakEwma} balancers do.

    Each backend's cost is its peak-sensitive latency estimate (see
    L{_PeakEWMA}) times its requests in flight plus one; of two different
    backends drawn by weight, the cheaper wins, the first drawn on a tie.
    Weights act through the draw: a backend of weight 2 is drawn twice as
    often as one of weight 1, so with equal latency and load it gets twice
    the traffic (dividing the cost by the weight as well would count the
    weight twice, and hand the heavier backend every pair it is in).  A backend
    that has not answered yet costs nothing until a request is in flight to
    it, then a large penalty (Finagle's rule), so that a newcomer is probed
    without being flooded.  Estimates decay towards zero while a backend
    gets no traffic, so a backend that was slow is tried again after a
    while.

    Successful exchanges feed the latency to the estimate; failures can only
    raise it (a refused connection is fast, not good); cancelled exchanges
    say nothing about the backend.
    """

    PENALTY = 1e6

    def __init__(
        self,
        random: Optional[Random] = None,
        decay: float = 10.0,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        """
        @param random: the source of randomness.
        @param decay: the time constant of the moving average, in seconds.
        @param clock: returns the time in seconds; L{time.monotonic} when
            L{None}.
        """
        super().__init__(random)
        if not decay > 0:
            raise ValueError(f"decay must be positive, not {decay!r}")
        self._decay = decay
        self._clock = clock if clock is not None else time.monotonic
        self._ewma: dict[Any, _PeakEWMA] = {}

    def estimate(self, backend: Any) -> float:
        """
        The latency estimate of C{backend} now, in seconds.
        """
        ewma = self._ewma.get(backend)
        if ewma is None:
            return 0.0
        return ewma.current(self._clock(), self._decay)

    def backendsChanged(self, backends: Iterable[Any]) -> None:
        super().backendsChanged(backends)
        now = self._clock()
        self._ewma = {b: self._ewma.get(b) or _PeakEWMA(now) for b in self.backends}

    def requestFinished(
        self, backend: Any, request: Any, outcome: Any, latency: float
    ) -> None:
        super().requestFinished(backend, request, outcome, latency)
        ewma = self._ewma.get(backend)
        if ewma is None or outcome is Outcome.CANCELLED:
            return
        if outcome is Outcome.SUCCESS:
            ewma.observe(latency, self._clock(), self._decay)
        else:
            ewma.raiseTo(latency, self._clock(), self._decay)

    def _cost(self, backend: Any, now: float) -> float:
        active = self._counter.active.get(backend, 0)
        estimate = self._ewma[backend].current(now, self._decay)
        if estimate == 0.0 and active:
            return self.PENALTY + active
        return estimate * (active + 1)

    def _secondIsBetter(self, first: int, second: int) -> bool:
        backends = self._sampler.backends
        now = self._clock()
        return self._cost(backends[second], now) < self._cost(backends[first], now)
