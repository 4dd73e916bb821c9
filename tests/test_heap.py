"""
Tests for L{lbproxy._heap}.
"""

from __future__ import annotations

import gc
import platform
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import LoadBalancerService, parseConfigText
from lbproxy._heap import settle
from tests.test_stopsignals import _SITE


class RecordingCollector:
    """
    Looks like the L{gc} module, and records what is asked of it.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")

    def collect(self) -> int:
        self.calls.append("collect")
        return 0

    def freeze(self) -> None:
        self.calls.append("freeze")


class OldCollector:
    """
    A collector with no permanent generation, as PyPy's.
    """

    def __init__(self) -> None:
        self.collected = 0

    def collect(self) -> int:
        self.collected += 1
        return 0


class SettleTests(SynchronousTestCase):
    def test_order(self) -> None:
        """
        What an earlier settle froze is taken back, then everything is
        collected, then what is left is frozen.
        """
        collector = RecordingCollector()
        self.assertTrue(settle(collector))
        self.assertEqual(collector.calls, ["unfreeze", "collect", "freeze"])

    def test_noPermanentGeneration(self) -> None:
        """
        A collector with no C{freeze} is left alone: not even a collection.
        """
        collector = OldCollector()
        self.assertFalse(settle(collector))
        self.assertEqual(collector.collected, 0)

    def test_realCollector(self) -> None:
        """
        With CPython's collector, what is alive ends up frozen, and a cycle
        made afterwards is still collected.
        """
        if not hasattr(gc, "freeze"):
            raise self.skipTest(f"{platform.python_implementation()} has no gc.freeze")
        self.addCleanup(gc.unfreeze)
        self.assertTrue(settle())
        self.assertGreater(gc.get_freeze_count(), 0)

        class Node:
            other: Any = None

        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        self.assertGreaterEqual(gc.collect(), 2)


class ServiceTests(SynchronousTestCase):
    """
    L{LoadBalancerService.settleHeap}.
    """

    def service(self) -> tuple[LoadBalancerService, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        service = LoadBalancerService(parseConfigText(_SITE, "site.ini"), reactor)
        self.addCleanup(service.stopService)
        return service, reactor

    def test_onceRunning(self) -> None:
        """
        The heap is settled once the reactor runs, not before.
        """
        service, reactor = self.service()
        collector = RecordingCollector()
        service.settleHeap(collector)
        service.startService()
        self.assertEqual(collector.calls, [])
        reactor.run()
        self.assertEqual(collector.calls, ["unfreeze", "collect", "freeze"])

    def test_afterReload(self) -> None:
        """
        A reload settles the heap again once the old pools are closed.
        """
        service, reactor = self.service()
        collector = RecordingCollector()
        service.settleHeap(collector)
        service.startService()
        reactor.run()
        del collector.calls[:]
        reloaded = service.reload(
            parseConfigText(_SITE.replace("9001", "9002"), "site.ini")
        )
        self.successResultOf(reloaded)
        self.assertEqual(collector.calls, ["unfreeze", "collect", "freeze"])

    def test_notAsked(self) -> None:
        """
        A service not asked to (one an application embeds) leaves the
        collector alone, at start and on reload.
        """
        service, reactor = self.service()
        service.startService()
        reactor.run()
        self.successResultOf(
            service.reload(parseConfigText(_SITE.replace("9001", "9002"), "site.ini"))
        )
        self.assertEqual(reactor.whenRunningHooks, [])
