"""
Tests for backend protection: C{max_conns} and the queue
(L{lbproxy._queue}), outlier ejection (C{eject_on}, C{max_ejection}) in
L{lbproxy._pool}, and the retry budget (L{lbproxy._budget}), on a clock and
in memory.
"""

from __future__ import annotations

from random import Random
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._backend import Backend, BackendState, Outcome
from lbproxy._budget import MIN_RETRIES, WINDOW, RetryBudget
from lbproxy._pool import (
    MAX_EJECTION_TIME,
    Pool,
    describeFailures,
    ejectionTime,
    maxEjected,
)
from lbproxy._queue import RequestQueue
from lbproxy.balancers import buildBalancer
from lbproxy.testing import ProxyHarness
from tests.test_balancers import BUILTIN_NAMES, REQUIRED_OPTIONS

_GET = b"GET /p HTTP/1.1\r\nHost: app.example\r\n\r\n"
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
_ERROR = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail"


def _backends(count: int, **kwargs: Any) -> list[Backend]:
    return [Backend("127.0.0.1", 9001 + i, **kwargs) for i in range(count)]


class RetryBudgetTests(SynchronousTestCase):
    """
    L{RetryBudget} allows retries up to its share of the requests of the
    last ten seconds, and never fewer than its floor.
    """

    def test_floor(self) -> None:
        """
        With no requests at all, L{MIN_RETRIES} retries fit in the window;
        the next is refused and counted.
        """
        budget = RetryBudget(0.2)
        self.assertEqual([budget.allows(5.0) for _ in range(MIN_RETRIES + 1)],
                         [True] * MIN_RETRIES + [False])
        self.assertEqual((budget.retries, budget.refused), (MIN_RETRIES, 1))

    def test_share(self) -> None:
        """
        Past the floor, retries may reach the share of the requests.
        """
        budget = RetryBudget(0.2)
        for _ in range(200):
            budget.request(100.0)
        allowed = 0
        while budget.allows(100.5):
            allowed += 1
        self.assertEqual(allowed, 40)

    def test_window(self) -> None:
        """
        Counts older than L{WINDOW} seconds leave the window, one second
        at a time, with no timer: a refused retry fits again once the
        retries of the seconds that counted them have gone.
        """
        budget = RetryBudget(0.0, minRetries=2)
        self.assertTrue(budget.allows(10.2))
        self.assertTrue(budget.allows(11.7))
        self.assertFalse(budget.allows(19.9))
        # Second 10 leaves the window at second 20, second 11 at 21.
        self.assertTrue(budget.allows(20.0))
        self.assertFalse(budget.allows(20.5))
        self.assertTrue(budget.allows(21.0))
        self.assertEqual(budget.retries, 2)

    def test_longGap(self) -> None:
        """
        After a silence longer than the window, nothing is left in it.
        """
        budget = RetryBudget(0.5)
        for _ in range(30):
            budget.request(1.0)
            budget.allows(1.0)
        budget.request(1000.0)
        self.assertEqual((budget.requests, budget.retries), (1, 0))
        self.assertEqual(WINDOW, 10)

    def test_clockBack(self) -> None:
        """
        A clock that goes back keeps counting in the current second.
        """
        budget = RetryBudget(0.0, minRetries=1)
        budget.request(50.0)
        self.assertTrue(budget.allows(50.0))
        self.assertFalse(budget.allows(40.0))
        self.assertEqual((budget.requests, budget.retries), (1, 1))


class RequestQueueTests(SynchronousTestCase):
    """
    L{RequestQueue}: first in first out, bounded, each place for at most
    its timeout, a place given up leaves nothing behind.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = RequestQueue(self.clock, 2, 5.0)
        self.events: list[str] = []

    def add(self, name: str) -> Any:
        return self.queue.add(
            lambda: self.events.append(f"resume {name}"),
            lambda: self.events.append(f"expire {name}"),
        )

    def test_fifoAndSize(self) -> None:
        """
        Places are handed out oldest first; past C{size}, L{add} refuses.
        """
        self.add("a")
        self.add("b")
        self.assertIsNone(self.add("c"))
        self.assertEqual(self.queue.rejected, 1)
        first = self.queue.pop()
        assert first is not None
        first.resume()
        self.assertEqual(self.events, ["resume a"])
        self.assertEqual(len(self.queue), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_timeout(self) -> None:
        """
        A request that waits C{timeout} seconds is taken out and told.
        """
        self.add("a")
        self.clock.advance(2)
        self.add("b")
        self.clock.advance(3)
        self.assertEqual(self.events, ["expire a"])
        self.clock.advance(2)
        self.assertEqual(self.events, ["expire a", "expire b"])
        self.assertEqual((len(self.queue), self.queue.timedOut), (0, 2))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_leave(self) -> None:
        """
        A place given up (its client left) leaves the queue at once, from
        anywhere in it, with its timer; it is never resumed nor expired.
        """
        a = self.add("a")
        self.add("b")
        a.leave()
        a.leave()
        self.assertEqual((len(self.queue), self.queue.left), (1, 1))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.add("c")
        self.clock.advance(10)
        self.assertEqual(self.events, ["expire b", "expire c"])
        self.assertIsNone(self.queue.pop())


class CapsTests(SynchronousTestCase):
    """
    A backend at its C{max_conns} is left out of every balancer's choice.
    """

    def test_everyBalancerSkipsAFullBackend(self) -> None:
        """
        Whatever the balancer, a backend at its cap is never picked while
        it is, and is picked again once it has room; a pool with no cap
        reached adds nothing to C{exclude}.
        """
        for name in BUILTIN_NAMES:
            backends = [
                Backend("127.0.0.1", 9001, maxConns=1),
                Backend("127.0.0.1", 9002, maxConns=1000),
                Backend("127.0.0.1", 9003),
            ]
            pool = Pool(
                "app",
                backends,
                buildBalancer(name, REQUIRED_OPTIONS.get(name, {}), Random(7)),
                Clock(),
            )
            full = backends[0]
            request = object()
            pool.requestStarted(full, request)
            self.assertEqual(pool.full, {full})
            picked = {pool.pick(None) for _ in range(300)}
            self.assertNotIn(full, picked, name)
            self.assertNotIn(None, picked, name)
            pool.requestFinished(full, request, Outcome.SUCCESS, 0.01)
            self.assertEqual(pool.full, set(), name)

    def test_atCapacity(self) -> None:
        """
        L{Pool.atCapacity} says whether eligible backends are at their cap
        (a request may wait) rather than all gone (502).
        """
        backends = _backends(2, maxConns=1)
        pool = Pool("app", backends, None, Clock())
        self.assertFalse(pool.atCapacity())
        for backend in backends:
            pool.requestStarted(backend, object())
        self.assertIsNone(pool.pick(None))
        self.assertTrue(pool.atCapacity())
        pool.disable(backends[0])
        pool.disable(backends[1])
        self.assertFalse(pool.atCapacity())

    def test_membershipChangesTheCap(self) -> None:
        """
        A backend that stays through L{Pool.setBackends} takes the
        C{max_conns} of its new line: a lower cap makes it full, a cap
        lifted gives the queue its room.
        """
        backends = _backends(1)
        pool = Pool("app", backends, None, Clock())
        backend = backends[0]
        pool.requestStarted(backend, object())
        pool.setBackends(_backends(1, maxConns=1), "test")
        self.assertEqual((backend.maxConns, pool.full), (1, {backend}))
        pool.setBackends(_backends(1), "test")
        self.assertEqual((backend.maxConns, pool.full), (None, set()))

    def test_lowerCapStaysFullUntilBelowIt(self) -> None:
        """
        A backend whose cap was lowered below its requests in flight stays
        full until fewer than the new cap are in flight.
        """
        backends = _backends(1, maxConns=3)
        pool = Pool("app", backends, None, Clock())
        backend = backends[0]
        requests = [object() for _ in range(3)]
        for request in requests:
            pool.requestStarted(backend, request)
        pool.setBackends(_backends(1, maxConns=1), "test")
        pool.requestFinished(backend, requests[0], Outcome.SUCCESS, 0.01)
        self.assertEqual(pool.full, {backend})
        pool.requestFinished(backend, requests[1], Outcome.SUCCESS, 0.01)
        self.assertEqual(pool.full, {backend})
        pool.requestFinished(backend, requests[2], Outcome.SUCCESS, 0.01)
        self.assertEqual(pool.full, set())

    def test_badMaxConns(self) -> None:
        """
        C{max_conns} is at least 1.
        """
        self.assertRaises(ValueError, Backend, "h", 80, maxConns=0)


class QueueThroughTheProxyTests(SynchronousTestCase):
    """
    Requests that find every backend at its C{max_conns} wait in the
    upstream's queue, in memory.
    """

    def harness(self, count: int = 1, **kwargs: Any) -> ProxyHarness:
        reactor = MemoryReactorClock()
        self.backends = _backends(count, maxConns=1)
        self.pool = Pool("app", self.backends, None, reactor, **kwargs)
        h = ProxyHarness(self.pool)
        self.addCleanup(h.close)
        return h

    def test_waitsAndGoesInOrder(self) -> None:
        """
        With C{max_conns=1}, a second and a third request wait while the
        first is answered, then go one after the other, in order, on the
        connection the first one freed.
        """
        h = self.harness()
        clients = [h.connect() for _ in range(3)]
        for i, client in enumerate(clients):
            client.send(b"GET /%d HTTP/1.1\r\nHost: app.example\r\n\r\n" % i)
        backend = h.acceptBackend()
        self.assertEqual(h.pending(), [])
        self.assertEqual(len(self.pool.queue), 2)
        for i, client in enumerate(clients):
            self.assertTrue(backend.received().startswith(b"GET /%d " % i))
            backend.clear()
            backend.respond(_OK)
            self.assertTrue(client.received().startswith(b"HTTP/1.1 200 "))
            self.assertEqual(self.backends[0].active, 0)
            # The next request goes once the current event is done.
            h.advance(0)
            self.assertEqual(self.backends[0].active, 1 if i < 2 else 0)
        self.assertEqual(h.pending(), [])
        self.assertEqual(self.backends[0].requests, 3)
        self.assertEqual(len(self.pool.queue), 0)

    def test_fullQueue(self) -> None:
        """
        A request that finds the queue full gets 503 at once.
        """
        h = self.harness(queue=1)
        first, second, third = (h.connect() for _ in range(3))
        for client in (first, second):
            client.send(_GET)
        with capturedLogs() as events:
            third.send(_GET)
        self.assertTrue(third.received().startswith(b"HTTP/1.1 503 "), third.received())
        self.assertIn(b"not available", third.received())
        self.assertIn(
            "the queue is full (1 waiting)",
            " ".join(str(e.get("log_format", "")).format(**e) for e in events),
        )
        self.assertEqual(self.pool.queue.rejected, 1)

    def test_noQueue(self) -> None:
        """
        With C{queue = 0} a request that finds every backend at its cap
        gets 503 at once.
        """
        h = self.harness(queue=0)
        first, second = h.connect(), h.connect()
        first.send(_GET)
        second.send(_GET)
        self.assertTrue(second.received().startswith(b"HTTP/1.1 503 "))

    def test_queueTimeout(self) -> None:
        """
        A request that waits C{queue_timeout} gets 503; the one in flight
        is not disturbed.
        """
        h = self.harness(queueTimeout=2.0)
        first, second = h.connect(), h.connect()
        first.send(_GET)
        second.send(_GET)
        backend = h.acceptBackend()
        h.advance(1.9)
        self.assertEqual(second.received(), b"")
        h.advance(0.2)
        self.assertTrue(second.received().startswith(b"HTTP/1.1 503 "))
        backend.respond(_OK)
        self.assertTrue(first.received().startswith(b"HTTP/1.1 200 "))
        h.advance(0)
        self.assertEqual(self.backends[0].requests, 1)

    def test_clientLeavesTheQueue(self) -> None:
        """
        A client that disconnects while it waits frees its place: the
        queue does not hold it, no timer is left for it, and it is never
        sent to the backend.
        """
        h = self.harness(queue=1)
        first, second, third = h.connect(), h.connect(), h.connect()
        first.send(_GET)
        second.send(_GET)
        backend = h.acceptBackend()
        self.assertEqual(len(self.pool.queue), 1)
        second.disconnect()
        self.assertEqual(len(self.pool.queue), 0)
        self.assertEqual(self.pool.queue.left, 1)
        third.send(_GET)
        self.assertEqual(third.received(), b"")
        backend.respond(_OK)
        backend.clear()
        h.advance(0)
        self.assertTrue(backend.received().startswith(b"GET /p "))
        backend.respond(_OK)
        self.assertTrue(third.received().startswith(b"HTTP/1.1 200 "))
        h.advance(10)
        self.assertEqual(self.backends[0].requests, 2)
        self.assertEqual(self.pool.queue.timedOut, 0)

    def test_backendComingBackServesTheQueue(self) -> None:
        """
        A backend that becomes eligible takes waiting requests at once,
        not only when another request finishes.
        """
        h = self.harness(2)
        self.pool.disable(self.backends[1])
        first, second = h.connect(), h.connect()
        first.send(_GET)
        second.send(_GET)
        self.assertEqual(len(self.pool.queue), 1)
        self.pool.enable(self.backends[1])
        h.advance(0)
        self.assertEqual(len(self.pool.queue), 0)
        self.assertEqual([b.active for b in self.backends], [1, 1])


class EjectionArithmeticTests(SynchronousTestCase):
    """
    How long an ejected backend stays out, how many may be out at once.
    """

    def test_doubling(self) -> None:
        """
        Each ejection in a row doubles the time out, up to
        L{MAX_EJECTION_TIME}, or C{fail_timeout} if that is longer.
        """
        self.assertEqual(
            [ejectionTime(10.0, n) for n in range(7)],
            [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0],
        )
        self.assertEqual(MAX_EJECTION_TIME, 300.0)
        self.assertEqual(ejectionTime(600.0, 3), 600.0)
        self.assertEqual(ejectionTime(10.0, 10**6), 300.0)

    def test_maxEjected(self) -> None:
        """
        The share rounds down, with at least one backend unless it is 0.
        """
        self.assertEqual(maxEjected(0.5, 4), 2)
        self.assertEqual(maxEjected(0.5, 3), 1)
        self.assertEqual(maxEjected(0.1, 2), 1)
        self.assertEqual(maxEjected(0.0, 10), 0)
        self.assertEqual(maxEjected(1.0, 3), 3)
        self.assertEqual(maxEjected(0.3, 10), 3)

    def test_describe(self) -> None:
        self.assertEqual(
            describeFailures([(0.0, 500)] * 5), "5 responses 500"
        )
        self.assertEqual(
            describeFailures([(0.0, 502), (1.0, Outcome.RESET), (2.0, 502)]),
            "2 responses 502, 1 reset",
        )


class EjectionTests(SynchronousTestCase):
    """
    With C{eject_on}, responses with those statuses take a backend out
    under the C{max_fails}/C{fail_timeout} rules, for longer each time in
    a row, never more than C{max_ejection} of the backends at once.
    """

    def pool(self, count: int = 4, **kwargs: Any) -> Pool:
        self.clock = Clock()
        self.backends = _backends(count)
        kwargs.setdefault("ejectOn", range(500, 600))
        kwargs.setdefault("maxFails", 3)
        pool = Pool("app", self.backends, None, self.clock, **kwargs)
        self.addCleanup(pool.close)
        return pool

    def answer(self, pool: Pool, backend: Backend, status: int, times: int = 1) -> None:
        for _ in range(times):
            request = object()
            pool.requestStarted(backend, request)
            pool.requestFinished(backend, request, Outcome.SUCCESS, 0.01, status)

    def test_shareOfServingBackends(self) -> None:
        """
        C{max_ejection}'s share is of the backends that take requests: of
        four, two that left and are finishing a request each do not
        count, so at 50 % one of the other two may be out, not both.
        """
        pool = self.pool(maxFails=1, maxEjection=0.5)
        a, b, c, d = self.backends
        for busy in (c, d):
            pool.requestStarted(busy, object())
        pool.setBackends([a, b], "etcd revision 7")
        with capturedLogs():
            self.answer(pool, a, 503)
            self.answer(pool, b, 503)
        self.assertEqual((a.state, b.state), (BackendState.FAILED, BackendState.UP))

    def test_ejectedAndBack(self) -> None:
        """
        C{max_fails} responses 5xx within C{fail_timeout} eject the
        backend for C{fail_timeout}, saying why; other statuses do not
        count; it comes back after.
        """
        pool = self.pool()
        backend = self.backends[0]
        self.answer(pool, backend, 404, 10)
        self.answer(pool, backend, 500, 2)
        self.assertIs(backend.state, BackendState.UP)
        with capturedLogs() as events:
            self.answer(pool, backend, 503)
        self.assertIs(backend.state, BackendState.FAILED)
        self.assertEqual(
            backend.stateReason,
            "ejected: 2 responses 500, 1 response 503 within 10s; out for 10s",
        )
        self.assertIn(backend.stateReason, [e.get("reason") for e in events])
        self.assertEqual((backend.responses, backend.failures), (13, 3))
        self.assertNotIn(backend, pool.eligible)
        self.clock.advance(10)
        self.assertIs(backend.state, BackendState.UP)
        self.assertEqual(backend.stateReason, "passive health: ejection expired")

    def test_withoutEjectOnStatusesDoNotCount(self) -> None:
        """
        Without C{eject_on} a 500 is a response like any other.
        """
        pool = self.pool(ejectOn=())
        self.answer(pool, self.backends[0], 500, 10)
        self.assertIs(self.backends[0].state, BackendState.UP)
        self.assertEqual(self.backends[0].failures, 0)

    def test_doublingAndReset(self) -> None:
        """
        Ejected again soon after it came back, a backend stays out twice
        as long; once it has stayed in for as long as it was last out, it
        starts again from C{fail_timeout}.
        """
        pool = self.pool()
        backend = self.backends[0]
        outs = []
        for _ in range(3):
            self.answer(pool, backend, 500, 3)
            assert backend.failedUntil is not None
            outs.append(backend.failedUntil - self.clock.seconds())
            self.clock.advance(outs[-1])
            self.assertIs(backend.state, BackendState.UP)
        self.assertEqual(outs, [10.0, 20.0, 40.0])
        self.assertIn("out for 40s, ejection 3 in a row", backend._reasons[BackendState.FAILED])
        self.clock.advance(40.0)
        self.answer(pool, backend, 500, 3)
        self.assertEqual(backend.failedUntil, self.clock.seconds() + 10.0)
        self.assertEqual(backend.ejections, 4)

    def test_maxEjection(self) -> None:
        """
        When every backend answers 500, no more than C{max_ejection} of
        them are out at once; the one spared is logged once, and ejected
        when another comes back.
        """
        pool = self.pool(count=4, maxEjection=0.5)
        with capturedLogs() as events:
            for _ in range(3):
                for backend in self.backends:
                    if backend.state is BackendState.UP:
                        self.answer(pool, backend, 500, 3)
        states = [b.state for b in self.backends]
        self.assertEqual(states.count(BackendState.FAILED), 2)
        self.assertEqual(len(pool.eligible), 2)
        spared = [
            e for e in events if "not ejected" in str(e.get("log_format", ""))
        ]
        self.assertEqual(len(spared), 2)
        self.assertEqual(
            spared[0]["log_format"].format(**spared[0]),
            "backend 127.0.0.1:9003 of upstream app not ejected after 3 "
            "responses 500 within 10s: max_ejection (50%) allows 2 of 4 "
            "backend(s) out at once, and 2 are",
        )
        self.clock.advance(10)
        self.assertEqual(len(pool.eligible), 4)
        self.answer(pool, self.backends[2], 500, 3)
        self.assertIs(self.backends[2].state, BackendState.FAILED)

    def test_connectFailuresFollowTheSameRules(self) -> None:
        """
        With C{eject_on}, a connection failure counts with the statuses,
        and the cap holds for it too.
        """
        pool = self.pool(count=2, maxFails=2)
        a, b = self.backends
        self.answer(pool, a, 502)
        request = object()
        pool.requestStarted(a, request)
        pool.requestFinished(a, request, Outcome.CONNECT_FAILED, 0.01)
        self.assertEqual(
            a.stateReason,
            "ejected: 1 response 502, 1 connect_failed within 10s; out for 10s",
        )
        pool.requestStarted(b, request)
        pool.requestFinished(b, request, Outcome.CONNECT_FAILED, 0.01)
        pool.requestStarted(b, request)
        pool.requestFinished(b, request, Outcome.CONNECT_FAILED, 0.01)
        self.assertIs(b.state, BackendState.UP)


class RetryBudgetThroughTheProxyTests(SynchronousTestCase):
    """
    A retry the budget refuses ends the request with 502, logged.
    """

    def test_budgetExhausted(self) -> None:
        """
        With C{retry_budget = 0%} and a floor of 2, the first two refused
        connections are retried on the other backend and the third is
        not.
        """
        reactor = MemoryReactorClock()
        backends = _backends(2)
        pool = Pool(
            "app", backends, None, reactor, maxFails=0, keepalive=0, retryBudget=0.0
        )
        assert pool.budget is not None
        pool.budget.minRetries = 2
        h = ProxyHarness(pool)
        self.addCleanup(h.close)
        for attempt in range(3):
            client = h.connect()
            client.send(_GET)
            with capturedLogs() as events:
                h.refuseBackend()
            if attempt < 2:
                h.acceptBackend().respond(_OK)
                self.assertTrue(client.received().startswith(b"HTTP/1.1 200 "))
            else:
                self.assertEqual(h.pending(), [])
                self.assertTrue(client.received().startswith(b"HTTP/1.1 502 "))
                text = " ".join(
                    str(e.get("log_format", "")).format(**e) for e in events
                )
                self.assertIn("retry budget exhausted (2 retries for 3 requests", text)
        self.assertEqual(pool.retries, 2)
        self.assertEqual(pool.budget.refused, 1)


class ProtectionMetricsTests(SynchronousTestCase):
    """
    The queue, the budget and ejections reach the admin snapshot and the
    Prometheus exposition rendered from it.
    """

    def test_snapshotAndMetrics(self) -> None:
        """
        A request refused by a full queue, one given up after
        C{queue_timeout}, one that waits, a retry refused by the budget and
        an ejection are counted, and exposed.
        """
        from lbproxy._snapshot import upstreamStatus
        from tests.test_metrics import SnapshotPartsTests, key, metricsText, samples

        reactor = MemoryReactorClock()
        backends = [
            Backend("127.0.0.1", 9001, maxConns=1),
            Backend("127.0.0.1", 9002, maxConns=1),
        ]
        pool = Pool(
            "app", backends, None, reactor, queue=1, queueTimeout=1.0,
            ejectOn=[500], retryBudget=0.0,
        )
        assert pool.budget is not None
        h = ProxyHarness(pool)
        self.addCleanup(h.close)
        clients = [h.connect() for _ in range(4)]
        for client in clients[:3]:
            client.send(_GET)
        h.advance(1.0)  # the third gives up waiting
        clients[3].send(_GET)  # waits
        h.connect().send(_GET)  # the queue is full
        for _ in range(MIN_RETRIES):
            pool.budget.allows(reactor.seconds())
        pool.budget.allows(reactor.seconds())
        pool.requestStarted(backends[0], object())
        pool.requestFinished(backends[0], object(), Outcome.SUCCESS, 0.1, 500)
        status = upstreamStatus(pool)
        self.assertEqual(
            {k: status[k] for k in (
                "queued", "queue_rejected", "queue_timed_out", "queue_left",
                "retries_refused",
            )},
            {"queued": 1, "queue_rejected": 1, "queue_timed_out": 1,
             "queue_left": 0, "retries_refused": 1},
        )
        self.assertEqual(
            [(b["max_conns"], b["ejections"]) for b in status["backends"]],
            [(1, 1), (1, 0)],
        )
        # The rest of a snapshot, as test_metrics fills it in.
        snapshot = SnapshotPartsTests("test_health").snapshot([status], [])
        found = samples(metricsText(snapshot)[0])
        self.assertEqual(found[key("lbproxy_queued_requests", upstream="app")], 1)
        self.assertEqual(
            found[key("lbproxy_queue_refused_total", upstream="app", reason="full")], 1
        )
        self.assertEqual(
            found[key("lbproxy_queue_refused_total", upstream="app", reason="timeout")], 1
        )
        self.assertEqual(found[key("lbproxy_retries_refused_total", upstream="app")], 1)
        self.assertEqual(
            found[
                key(
                    "lbproxy_backend_ejections_total",
                    upstream="app",
                    backend="127.0.0.1:9001",
                )
            ],
            1,
        )
