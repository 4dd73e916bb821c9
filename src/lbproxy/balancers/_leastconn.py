# -*- test-case-name: tests.test_balancers -*-
"""
Weighted least connections.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush, heapreplace
from typing import Any, Collection, Iterable, Optional

from zope.interface import implementer

from lbproxy._interfaces import IBalancer
from lbproxy.balancers._base import ActiveCounter, BalancerBase, Weight, weightOf


@implementer(IBalancer)
class LeastConn(BalancerBase):
    """
    The backend with the fewest requests in flight relative to its weight
    (C{active / weight}, as nginx's C{least_conn}), ties broken by weighted
    round robin.

    Ties matter: under light load every backend has nothing in flight, and
    the tie-break alone decides, so it has to honour the weights.  nginx
    runs smooth weighted round robin over the tied backends, walking all of
    them; this class breaks ties by stride scheduling instead (each backend
    has a virtual finishing time that a pick advances by C{1 / weight}, and
    the earliest wins), which spreads picks in proportion to the weights
    just the same and lets one heap, keyed by C{(active / weight, virtual
    time, configuration order)}, answer every pick in O(log n).

    The heap is updated lazily: a change of a backend's key pushes a new
    entry and makes the old one stale (its version no longer matches); stale
    entries are dropped when they reach the top, and the heap is rebuilt
    when they outnumber the live ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self._counter = ActiveCounter()
        self._weights: dict[Any, Weight] = {}
        self._index: dict[Any, int] = {}
        self._pass: dict[Any, float] = {}
        self._version: dict[Any, int] = {}
        self._heap: list[tuple[float, float, int, int, Any]] = []
        self._virtualTime = 0.0

    @property
    def active(self) -> dict[Any, int]:
        """
        The requests in flight per backend, as this balancer counts them.
        """
        return self._counter.active

    def _entry(self, backend: Any) -> tuple[float, float, int, int, Any]:
        version = self._version[backend] + 1
        self._version[backend] = version
        return (
            self._counter.active.get(backend, 0) / self._weights[backend],
            self._pass[backend],
            self._index[backend],
            version,
            backend,
        )

    def _rebuildHeap(self) -> None:
        self._heap = [self._entry(backend) for backend in self.backends]
        heapify(self._heap)

    def backendsChanged(self, backends: Iterable[Any]) -> None:
        super().backendsChanged(backends)
        self._weights = {b: weightOf(b) for b in self.backends}
        self._index = {b: i for i, b in enumerate(self.backends)}
        # A newcomer starts one stride after the present, not at zero, so
        # that it does not win every tie until it has caught up.
        self._pass = {
            b: self._pass.get(b, self._virtualTime + 1.0 / self._weights[b])
            for b in self.backends
        }
        self._version = {b: self._version.get(b, 0) for b in self.backends}
        self._rebuildHeap()

    def _changed(self, backend: Any) -> None:
        if backend not in self._index:
            return
        heap = self._heap
        if len(heap) > 2 * len(self.backends) + 16:
            self._rebuildHeap()
        else:
            heappush(heap, self._entry(backend))

    def requestStarted(self, backend: Any, request: Any) -> None:
        self._counter.started(backend)
        self._changed(backend)

    def requestFinished(
        self, backend: Any, request: Any, outcome: Any, latency: float
    ) -> None:
        self._counter.finished(backend)
        self._changed(backend)

    def pick(self, request: Any, exclude: Collection[Any] = ()) -> Optional[Any]:
        heap = self._heap
        version = self._version
        aside = []
        chosen = None
        while heap:
            entry = heap[0]
            backend = entry[4]
            if version.get(backend) != entry[3]:
                heappop(heap)
            elif backend in exclude:
                aside.append(heappop(heap))
            else:
                chosen = backend
                break
        if chosen is not None:
            passed = self._pass[chosen]
            self._virtualTime = passed
            self._pass[chosen] = passed + 1.0 / self._weights[chosen]
            heapreplace(heap, self._entry(chosen))
        for entry in aside:
            heappush(heap, entry)
        return chosen
