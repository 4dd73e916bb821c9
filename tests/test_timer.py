"""
Tests for L{lbproxy._timer.Deadline}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._timer import Deadline


class DeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fired: list[float] = []
        self.deadline = Deadline(self.clock, lambda: self.fired.append(self.clock.seconds()))

    def test_fires(self) -> None:
        """
        The callback runs once the time set has passed, and only once.
        """
        self.deadline.set(5)
        self.clock.advance(4.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, [5.0])
        self.assertIsNone(self.deadline.deadline)
        self.clock.advance(100)
        self.assertEqual(self.fired, [5.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pushedBack(self) -> None:
        """
        Setting the deadline again moves it later without a new delayed
        call; the pending call, when it comes due, reschedules itself for
        the rest.
        """
        self.deadline.set(5)
        call = self.clock.getDelayedCalls()[0]
        self.clock.advance(2)
        self.deadline.set(5)
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        for _ in range(3):
            self.clock.advance(2)
            self.deadline.set(5)
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(4.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, [13.0])

    def test_broughtForward(self) -> None:
        """
        A deadline set earlier than the pending call moves the call.
        """
        self.deadline.set(10)
        self.deadline.set(1)
        self.clock.advance(1)
        self.assertEqual(self.fired, [1.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clear(self) -> None:
        """
        A cleared deadline does not fire; its pending call goes away when
        it comes due.
        """
        self.deadline.set(5)
        self.deadline.clear()
        self.clock.advance(5)
        self.assertEqual(self.fired, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clearThenSet(self) -> None:
        """
        A deadline set again after L{Deadline.clear} reuses the pending call.
        """
        self.deadline.set(5)
        self.deadline.clear()
        self.clock.advance(3)
        self.deadline.set(5)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(4.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, [8.0])

    def test_cancel(self) -> None:
        """
        L{Deadline.cancel} leaves nothing scheduled.
        """
        self.deadline.set(5)
        self.deadline.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.fired, [])
        self.deadline.cancel()
