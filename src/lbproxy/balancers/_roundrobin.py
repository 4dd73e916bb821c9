# -*- test-case-name: tests.test_balancers -*-
"""
Smooth weighted round robin, as nginx does it.
"""

from __future__ import annotations

from heapq import heapify, heapreplace
from math import floor, isqrt
from typing import Any, Collection, Iterable, Optional

from zope.interface import implementer

from lbproxy._interfaces import IBalancer
from lbproxy.balancers._base import BalancerBase, Weight, eligibleExcluded, weightOf

_Entry = tuple  # (-base, index, backend)


@implementer(IBalancer)
class RoundRobin(BalancerBase):
    """
    nginx's smooth weighted round robin (C{ngx_http_upstream_get_peer}).

    On every pick each candidate's current weight grows by its effective
    weight; the candidate with the highest current weight wins (the first
    in configuration order on a tie) and loses the sum of the effective
    weights.  Weights 5, 1, 1 give C{a a b a c a a}: the heavy server is
    spread out rather than picked five times in a row.

    nginx walks every backend on every pick.  This class produces exactly
    the same sequence without doing so:

      - a backend's current weight is kept as C{base + step * weight},
        where C{step} counts the picks, so the per-pick increment costs
        nothing;
      - backends of equal weight grow at the same rate, so their order
        never changes between picks: each weight class is a heap ordered
        by C{base} (then configuration order), and only the top of each
        class can win.  A pick compares the tops of the k classes and
        updates one heap: O(k + log n), and k, the number of distinct
        weights, is usually one to three;
      - when there are many classes (more than L{_BLOCKED}), they are
        grouped in about sqrt(k) blocks, and each block remembers its
        winner and the first step at which another of its classes (a
        steeper line) could overtake that winner.  A pick then compares
        the block winners and recomputes only the blocks whose winner may
        have changed: about O(sqrt(k) + log n).

    A retry (C{exclude} holds eligible backends) runs nginx's own loop,
    which skips the tried backends without growing their current weight,
    and rebuilds the heaps: O(n), but only on the failure path.

    Current weights survive L{backendsChanged} for the backends that stay,
    so that frequent weight updates (slow start) do not restart the
    sequence.
    """

    # Fold step into the bases once it gets this large, so that float
    # weights keep their precision.
    _REBASE = 1 << 16

    # Above this many weight classes, group them in blocks.
    _BLOCKED = 16

    def __init__(self) -> None:
        super().__init__()
        self._step = 0
        self._total: Weight = 0
        self._index: dict[Any, int] = {}
        self._weights: dict[Any, Weight] = {}
        # [(weight, heap)], heap entries: (-base, index, backend)
        self._classes: list[tuple[Weight, list[_Entry]]] = []
        # With blocks: the classes of each block, the block of each class,
        # each block's winning class, and the step from which it must be
        # recomputed.
        self._blocks: Optional[list[list[int]]] = None
        self._blockOf: list[int] = []
        self._winners: list[int] = []
        self._expiries: list[int] = []

    def _currents(self) -> dict[Any, Weight]:
        """
        Every eligible backend's current weight, as nginx would hold it.
        """
        step = self._step
        return {
            entry[2]: step * weight - entry[0]
            for weight, heap in self._classes
            for entry in heap
        }

    def _rebuild(self, backends: Iterable[Any], currents: dict[Any, Weight]) -> None:
        """
        Rebuild the weight classes from each backend's current weight.
        """
        self.backends = tuple(backends)
        self._step = 0
        self._index = {backend: i for i, backend in enumerate(self.backends)}
        self._weights = {backend: weightOf(backend) for backend in self.backends}
        classes: dict[Weight, list[_Entry]] = {}
        total: Weight = 0
        for i, backend in enumerate(self.backends):
            weight = self._weights[backend]
            total += weight
            classes.setdefault(weight, []).append(
                (-currents.get(backend, 0), i, backend)
            )
        for heap in classes.values():
            heapify(heap)
        self._classes = list(classes.items())
        self._total = total
        count = len(self._classes)
        if count > self._BLOCKED:
            size = isqrt(count)
            self._blocks = [
                list(range(start, min(start + size, count)))
                for start in range(0, count, size)
            ]
            self._blockOf = [c // size for c in range(count)]
            self._winners = [block[0] for block in self._blocks]
            self._expiries = [0] * len(self._blocks)
        else:
            self._blocks = None

    def backendsChanged(self, backends: Iterable[Any]) -> None:
        self._rebuild(backends, self._currents())

    def pick(self, request: Any, exclude: Collection[Any] = ()) -> Optional[Any]:
        if exclude and eligibleExcluded(exclude, self._index):
            return self._pickExcluding(exclude)
        classes = self._classes
        if not classes:
            return None
        step = self._step + 1
        self._step = step
        if len(classes) == 1:
            heap = classes[0][1]
        elif self._blocks is not None:
            heap = self._pickBlocked(step)
        else:
            best = None
            bestValue: Weight = 0
            for weight, candidates in classes:
                top = candidates[0]
                value = step * weight - top[0]
                if (
                    best is None
                    or value > bestValue
                    or (value == bestValue and top[1] < best[0][1])
                ):
                    best = candidates
                    bestValue = value
            assert best is not None
            heap = best
        top = heap[0]
        heapreplace(heap, (top[0] + self._total, top[1], top[2]))
        if step >= self._REBASE:
            self._rebuild(self.backends, self._currents())
        return top[2]

    def _pickBlocked(self, step: int) -> list[_Entry]:
        """
        The heap of the winning class at C{step}, through the blocks.
        """
        classes = self._classes
        winners = self._winners
        expiries = self._expiries
        best = -1
        bestValue: Weight = 0
        bestIndex = 0
        for block in range(len(winners)):
            if expiries[block] <= step:
                self._recompute(block, step)
            c = winners[block]
            weight, heap = classes[c]
            top = heap[0]
            value = step * weight - top[0]
            if (
                best < 0
                or value > bestValue
                or (value == bestValue and top[1] < bestIndex)
            ):
                best, bestValue, bestIndex = c, value, top[1]
        # The winner's line is about to drop: its block's winner may change.
        expiries[self._blockOf[best]] = step + 1
        return classes[best][1]

    def _recompute(self, block: int, step: int) -> None:
        """
        Find the winner of C{block} at C{step}, and the first step at which
        another of its classes could overtake it.
        """
        assert self._blocks is not None
        classes = self._classes
        members = self._blocks[block]
        winner = members[0]
        weight, heap = classes[winner]
        winnerWeight = weight
        winnerBase = -heap[0][0]
        winnerIndex = heap[0][1]
        winnerValue = step * weight + winnerBase
        for c in members[1:]:
            weight, heap = classes[c]
            base = -heap[0][0]
            value = step * weight + base
            if value > winnerValue or (
                value == winnerValue and heap[0][1] < winnerIndex
            ):
                winner, winnerWeight, winnerBase = c, weight, base
                winnerIndex, winnerValue = heap[0][1], value
        # A class of a steeper line catches up with the winner's at
        # (winnerBase - base) / (weight - winnerWeight); before that step
        # it is strictly behind.  Lines of the same slope or flatter never
        # catch up.  Recompute a step early for float weights.
        expiry: Weight = step + (1 << 62)
        for c in members:
            weight, heap = classes[c]
            if weight <= winnerWeight:
                continue
            base = -heap[0][0]
            if (
                isinstance(weight, int)
                and isinstance(winnerWeight, int)
                and (isinstance(base, int) and isinstance(winnerBase, int))
            ):
                catch = (winnerBase - base) // (weight - winnerWeight)
            else:
                catch = floor((winnerBase - base) / (weight - winnerWeight)) - 1
            if catch < expiry:
                expiry = catch
        self._winners[block] = winner
        self._expiries[block] = max(int(expiry), step + 1)

    def _pickExcluding(self, exclude: Collection[Any]) -> Optional[Any]:
        """
        nginx's loop over the backends not in C{exclude}.
        """
        currents = self._currents()
        weights = self._weights
        best = None
        bestValue: Weight = 0
        total: Weight = 0
        for backend in self.backends:
            if backend in exclude:
                continue
            weight = weights[backend]
            value = currents[backend] + weight
            currents[backend] = value
            total += weight
            if best is None or value > bestValue:
                best = backend
                bestValue = value
        if best is None:
            return None
        currents[best] = bestValue - total
        self._rebuild(self.backends, currents)
        return best
