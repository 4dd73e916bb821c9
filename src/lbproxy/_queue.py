# -*- test-case-name: tests.test_caps -*-
"""
The queue of an upstream (C{queue}, C{queue_timeout}): requests that wait,
first in first out, while every backend that could take them is at its
C{max_conns}, as HAProxy's per-backend queue and C{timeout queue}.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall


class QueuedRequest:
    """
    A place in a L{RequestQueue}, held by the request waiting in it.

    @ivar since: the reactor time the request began to wait.
    """

    __slots__ = ("_queue", "resume", "expire", "since", "_call")

    def __init__(
        self,
        queue: RequestQueue,
        resume: Callable[[], object],
        expire: Callable[[], object],
        since: float,
    ) -> None:
        self._queue = queue
        self.resume = resume
        self.expire = expire
        self.since = since
        self._call: Optional[IDelayedCall] = None

    def leave(self) -> None:
        """
        The request no longer waits (its client left): give up the place.
        Neither C{resume} nor C{expire} is called after this.
        """
        self._queue.remove(self)


class RequestQueue:
    """
    Requests waiting for a backend, oldest first, at most C{size} of them,
    each for at most C{timeout} seconds.

    Waiting costs one delayed call per request, cancelled when it leaves
    the queue; a request that does not wait costs nothing here.  Leaving
    from any place is O(1) (an L{OrderedDict}), so that clients that give
    up while they wait leave nothing behind.

    @ivar size: how many requests may wait; 0 for none.
    @ivar timeout: seconds a request may wait before it is given up on.
    @ivar timedOut: requests given up on after C{timeout}, in total.
    @ivar rejected: requests refused because the queue was full, in total.
    @ivar left: requests whose client left while they waited, in total.
    @ivar waiting: the places of the waiting requests, oldest first (an
        L{OrderedDict} of L{QueuedRequest} to L{None}): read it, change it
        only through this queue's methods.
    """

    def __init__(self, reactor: Any, size: int, timeout: float) -> None:
        """
        @param reactor: an L{IReactorTime}.
        @param size: see L{size}.
        @param timeout: see L{timeout}.
        """
        self._reactor = reactor
        self.size = size
        self.timeout = timeout
        self.timedOut = 0
        self.rejected = 0
        self.left = 0
        self.waiting: OrderedDict[QueuedRequest, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self.waiting)

    def add(
        self, resume: Callable[[], object], expire: Callable[[], object]
    ) -> Optional[QueuedRequest]:
        """
        Put a request at the end of the queue.

        @param resume: called when the request leaves the queue because a
            backend has room for it (see L{pop}).
        @param expire: called when it has waited C{timeout} seconds.
        @return: its place, or L{None} when the queue is full (the request
            is counted in L{rejected}).
        """
        if len(self.waiting) >= self.size:
            self.rejected += 1
            return None
        reactor = self._reactor
        place = QueuedRequest(self, resume, expire, reactor.seconds())
        place._call = reactor.callLater(self.timeout, self._expire, place)
        self.waiting[place] = None
        return place

    def pop(self) -> Optional[QueuedRequest]:
        """
        Take the oldest request out of the queue (its C{resume} is the
        caller's to call), or return L{None} when none waits.
        """
        if not self.waiting:
            return None
        place, _ = self.waiting.popitem(last=False)
        self._stop(place)
        return place

    def remove(self, place: QueuedRequest) -> None:
        """
        Take C{place} out of the queue, wherever it is (its client left).
        """
        if self.waiting.pop(place, True) is None:
            self.left += 1
            self._stop(place)

    def _stop(self, place: QueuedRequest) -> None:
        call, place._call = place._call, None
        if call is not None and call.active():
            call.cancel()

    def _expire(self, place: QueuedRequest) -> None:
        place._call = None
        del self.waiting[place]
        self.timedOut += 1
        place.expire()
