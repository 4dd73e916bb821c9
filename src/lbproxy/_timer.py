# -*- test-case-name: tests.test_timer -*-
"""
A timeout that is pushed back on every read and almost never fires.

An idle or read timeout is reset for every request or every chunk of a
body.  Done with L{IReactorTime.callLater} and L{IDelayedCall.cancel}, each
reset allocates a L{twisted.internet.base.DelayedCall} and leaves a
cancelled one in the reactor's heap: a few microseconds every time, on
the hot path of every request.  A L{Deadline} keeps one delayed call and
moves only a number; when the call comes due before the deadline it is
scheduled again for the rest, so a timeout that keeps being pushed back
costs one delayed call per period instead of one per reset.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall


class Deadline:
    """
    Call C{callback} once the deadline set with L{set} has passed, unless
    L{clear} or L{cancel} came first.

    @ivar deadline: when the callback is due, in the reactor's seconds, or
        L{None} when it is not armed.
    """

    __slots__ = ("_reactor", "_callback", "_call", "deadline")

    def __init__(self, reactor: Any, callback: Callable[[], object]) -> None:
        """
        @param reactor: an L{IReactorTime}.
        @param callback: what to call when the deadline passes.
        """
        self._reactor = reactor
        self._callback = callback
        self._call: Optional[IDelayedCall] = None
        self.deadline: Optional[float] = None

    def set(self, seconds: float) -> None:
        """
        Arm the deadline C{seconds} from now, replacing any earlier one.
        """
        reactor = self._reactor
        deadline = reactor.seconds() + seconds
        self.deadline = deadline
        call = self._call
        if call is None:
            self._call = reactor.callLater(seconds, self._due)
        elif call.getTime() > deadline:
            call.reset(seconds)

    def clear(self) -> None:
        """
        Disarm the deadline, cheaply: a pending delayed call stays, and does
        nothing when it comes due (or is reused by the next L{set}).
        """
        self.deadline = None

    def cancel(self) -> None:
        """
        Disarm the deadline and cancel the pending delayed call: use it when
        the owner goes away (a connection is lost), so that nothing stays
        scheduled for it.  The owner then lets go of the deadline too: a
        callback that is one of its methods holds it, and the two would
        be left in a cycle for CPython's garbage collector (see
        C{tests/refcounting.py}).
        """
        self.deadline = None
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _due(self) -> None:
        self._call = None
        deadline = self.deadline
        if deadline is None:
            return
        now = self._reactor.seconds()
        if now < deadline:
            self._call = self._reactor.callLater(deadline - now, self._due)
            return
        self.deadline = None
        self._callback()
