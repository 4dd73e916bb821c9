# -*- test-case-name: tests.test_balancers -*-
"""
Smooth weighted round robin, as nginx does it.
"""

from __future__ import annotations

from typing import Any, Collection, Optional

from zope.interface import implementer

from lbproxy._interfaces import IBalancer
from lbproxy.balancers._base import BalancerBase


@implementer(IBalancer)
class RoundRobin(BalancerBase):
    """
    nginx's smooth weighted round robin (C{ngx_http_upstream_get_peer}).

    On every pick each candidate's current weight grows by its effective
    weight; the candidate with the highest current weight wins and loses the
    sum of the effective weights.  Weights 5, 1, 1 give C{a a b a c a a}:
    the heavy server is spread out rather than picked five times in a row.
    """

    def __init__(self) -> None:
        super().__init__()
        self._current: dict[Any, float] = {}

    def backendsChanged(self, backends: tuple[Any, ...]) -> None:
        super().backendsChanged(backends)
        self._current = {b: self._current.get(b, 0.0) for b in self.backends}

    def pick(self, request: Any, exclude: Collection[Any] = ()) -> Optional[Any]:
        best = None
        bestWeight = 0.0
        total = 0.0
        current = self._current
        for backend in self.backends:
            if backend in exclude:
                continue
            weight = backend.effectiveWeight
            value = current[backend] + weight
            current[backend] = value
            total += weight
            if best is None or value > bestWeight:
                best = backend
                bestWeight = value
        if best is not None:
            current[best] = bestWeight - total
        return best
