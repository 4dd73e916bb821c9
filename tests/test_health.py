"""
Tests for L{lbproxy._health}: active health checks.
"""

from __future__ import annotations

import weakref
from random import Random
from typing import Any, Callable, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lbproxy._backend import Backend, BackendState
from lbproxy._config import HealthCheckConfig
from lbproxy._health import (
    BODY_LIMIT,
    JITTER,
    HealthChecker,
    HTTPProbe,
    NoAnswer,
    ParseError,
    ProbeFailed,
    describeFailure,
)
from lbproxy._interfaces import IMembershipObserver
from lbproxy._pool import Pool
from tests.refcounting import withoutCollector

UP = BackendState.UP
DOWN = BackendState.DOWN
FAILED = BackendState.FAILED


class ControlledProbe:
    """
    A probe whose results the test gives, one by one.

    @ivar calls: C{(backend, time, deferred)} for every probe started.
    @ivar cancelled: the backends whose probes were cancelled.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[Backend, float, Deferred[str]]] = []
        self.cancelled: list[Backend] = []

    def __call__(self, backend: Backend) -> Deferred[str]:
        d: Deferred[str] = Deferred(lambda d: self.cancelled.append(backend))
        self.calls.append((backend, self.clock.seconds(), d))
        return d

    def running(self) -> list[Deferred[str]]:
        return [d for _, _, d in self.calls if not d.called]


class AnsweringProbe:
    """
    A probe that answers at once, passing while C{healthy(backend)} is true.
    """

    def __init__(self, healthy: Callable[[Backend], bool]) -> None:
        self.healthy = healthy
        self.count = 0

    def __call__(self, backend: Backend) -> Deferred[str]:
        self.count += 1
        if self.healthy(backend):
            return succeed("status 200")
        return fail(ProbeFailed("status 500, expected 200-399"))


class ExtremeRandom(Random):
    """
    A L{Random} whose C{uniform} always gives the top of the range.
    """

    def uniform(self, a: float, b: float) -> float:
        return b


class NoJitter(Random):
    """
    A L{Random} whose C{uniform} always gives the bottom of the range, so
    that probes run exactly when due.
    """

    def uniform(self, a: float, b: float) -> float:
        return a


def makePool(
    count: int = 2, reactor: Any = None, scheme: str = "http", **kwargs: Any
) -> tuple[Pool, list[Backend]]:
    backends = [Backend("127.0.0.1", 9001 + i, scheme=scheme) for i in range(count)]
    return Pool("app", backends, None, reactor or Clock(), **kwargs), backends


def makeChecker(
    pool: Pool,
    clock: Any,
    probe: Any = None,
    random: Optional[Random] = None,
    **config: Any,
) -> HealthChecker:
    settings: dict[str, Any] = dict(
        path="/healthz", interval=1.0, timeout=0.5, rise=2, fall=3
    )
    settings.update(config)
    return HealthChecker(
        pool,
        HealthCheckConfig(**settings),
        reactor=clock,
        random=random or Random(1),
        probe=probe,
    )


class RiseAndFallTests(SynchronousTestCase):
    """
    C{health_fall} consecutive failures take a backend down and
    C{health_rise} consecutive passes bring it back.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.pool, (self.a, self.b) = makePool(reactor=self.clock)
        self.healthy = {self.a: True, self.b: True}
        self.probe = AnsweringProbe(lambda b: self.healthy[b])
        self.checker = makeChecker(
            self.pool, self.clock, self.probe, NoJitter(), rise=2, fall=3
        )
        self.checker.startService()
        self.addCleanup(self.checker.stopService)

    def tick(self) -> None:
        """
        Let one interval pass, and its probes run.
        """
        self.clock.advance(1.0)

    def test_fall(self) -> None:
        """
        The backend stays up after two failures and goes down at the third,
        with the count and the latest failure as the reason.
        """
        self.clock.advance(0)  # the first probes
        self.healthy[self.a] = False
        self.tick()
        self.tick()
        self.assertIs(self.a.state, UP)
        self.assertEqual(self.checker.checks[self.a].failures, 2)
        with capturedLogs() as events:
            self.tick()
        self.assertIs(self.a.state, DOWN)
        self.assertEqual(self.pool.eligible, (self.b,))
        [event] = [e for e in events if "new" in e]
        self.assertEqual(
            event["reason"],
            "3 consecutive failed health checks, latest: status 500, expected 200-399",
        )

    def test_passResetsTheFailures(self) -> None:
        """
        A pass between failures starts the count again.
        """
        self.clock.advance(0)
        for healthy in [False, False, True, False, False]:
            self.healthy[self.a] = healthy
            self.tick()
        self.assertIs(self.a.state, UP)
        self.healthy[self.a] = False
        self.tick()
        self.assertIs(self.a.state, DOWN)

    def test_rise(self) -> None:
        """
        A down backend needs two consecutive passes to come back, and a
        failure in between starts the count again.
        """
        self.clock.advance(0)
        self.healthy[self.a] = False
        for _ in range(3):
            self.tick()
        self.assertIs(self.a.state, DOWN)
        self.healthy[self.a] = True
        self.tick()
        self.assertIs(self.a.state, DOWN)
        self.healthy[self.a] = False
        self.tick()
        self.healthy[self.a] = True
        self.tick()
        self.assertIs(self.a.state, DOWN)
        with capturedLogs() as events:
            self.tick()
        self.assertIs(self.a.state, UP)
        [event] = [e for e in events if "new" in e]
        self.assertEqual(
            (event["old"], event["new"], event["reason"]),
            ("down", "up", "2 consecutive passing health checks, latest: status 200"),
        )

    def test_passesDoNotReviveAPassiveFailure(self) -> None:
        """
        A backend failed by passive accounting stays out for
        C{fail_timeout} while its checks keep passing.
        """
        self.clock.advance(0)
        self.pool.requestStarted(self.a, object())
        from lbproxy._backend import Outcome

        self.pool.requestFinished(self.a, object(), Outcome.CONNECT_FAILED, 0.1)
        self.assertIs(self.a.state, FAILED)
        for _ in range(9):
            self.tick()
        self.assertIs(self.a.state, FAILED)
        self.tick()
        self.assertIs(self.a.state, UP)

    def test_downIsNotRevivedByFailTimeout(self) -> None:
        """
        A backend that failed passively and then failed its checks stays
        down after C{fail_timeout}, until its checks pass.
        """
        from lbproxy._backend import Outcome

        self.clock.advance(0)
        self.pool.requestStarted(self.a, object())
        self.pool.requestFinished(self.a, object(), Outcome.CONNECT_FAILED, 0.1)
        self.healthy[self.a] = False
        for _ in range(12):
            self.tick()
        self.assertIs(self.a.state, DOWN)
        self.healthy[self.a] = True
        self.tick()
        self.tick()
        self.assertIs(self.a.state, UP)

    def test_disabledBackendsAreNotProbed(self) -> None:
        """
        A disabled backend is not probed, and its counts start again when
        it is enabled.
        """
        self.clock.advance(0)
        self.healthy[self.a] = False
        self.tick()
        self.tick()
        self.pool.disable(self.a)
        before = self.probe.count
        for _ in range(5):
            self.tick()
        self.assertEqual(self.probe.count, before + 5)  # only b
        self.pool.enable(self.a)
        self.tick()
        self.tick()
        self.assertIs(self.a.state, UP)
        self.tick()
        self.assertIs(self.a.state, DOWN)

    def test_drainingBackendsAreProbed(self) -> None:
        """
        A draining backend is still probed, so that enabling it gives it
        the state its health says.
        """
        self.clock.advance(0)
        self.pool.drain(self.a)
        self.healthy[self.a] = False
        for _ in range(3):
            self.tick()
        self.assertIs(self.a.state, BackendState.DRAINING)
        self.pool.enable(self.a)
        self.assertIs(self.a.state, DOWN)


class MandatoryTests(SynchronousTestCase):
    """
    C{health_mandatory = yes} starts backends down until a first pass.
    """

    def test_downUntilTheFirstPass(self) -> None:
        """
        Backends are down as soon as the checker exists, and one passing
        probe (not C{health_rise}) brings each up.
        """
        clock = Clock()
        pool, (a, b) = makePool(reactor=clock)
        probe = ControlledProbe(clock)
        checker = makeChecker(pool, clock, probe, mandatory=True, rise=3)
        self.assertEqual((a.state, b.state), (DOWN, DOWN))
        self.assertEqual(pool.eligible, ())
        self.assertIn("health_mandatory", a.stateReason)
        checker.startService()
        self.addCleanup(checker.stopService)
        clock.advance(JITTER)
        [(pa, _, da), (pb, _, db)] = probe.calls
        da.callback("status 200")
        self.assertIs(a.state, UP)
        self.assertEqual(a.stateReason, "first passing health check: status 200")
        db.errback(ProbeFailed("status 503, expected 200-399"))
        self.assertIs(b.state, DOWN)

    def test_laterRecoveriesNeedRise(self) -> None:
        """
        Once a backend has passed, coming back from down needs
        C{health_rise} passes again.
        """
        clock = Clock()
        pool, (a, b) = makePool(reactor=clock)
        healthy = {a: True, b: True}
        checker = makeChecker(
            pool,
            clock,
            AnsweringProbe(lambda x: healthy[x]),
            NoJitter(),
            mandatory=True,
            rise=3,
            fall=1,
        )
        checker.startService()
        self.addCleanup(checker.stopService)
        clock.advance(0)
        self.assertIs(a.state, UP)
        healthy[a] = False
        clock.advance(1)
        self.assertIs(a.state, DOWN)
        healthy[a] = True
        clock.advance(1)
        clock.advance(1)
        self.assertIs(a.state, DOWN)
        clock.advance(1)
        self.assertIs(a.state, UP)

    def test_withoutMandatoryBackendsStartUp(self) -> None:
        """
        By default, backends are up before their first probe.
        """
        clock = Clock()
        pool, (a, b) = makePool(reactor=clock)
        makeChecker(pool, clock, ControlledProbe(clock))
        self.assertEqual((a.state, b.state), (UP, UP))


class MembershipTests(SynchronousTestCase):
    """
    The checker follows the pool's membership (L{Pool.setBackends}).
    """

    def test_providesTheObserverInterface(self) -> None:
        """
        L{HealthChecker} provides L{IMembershipObserver}.
        """
        clock = Clock()
        pool, _ = makePool(reactor=clock)
        checker = makeChecker(pool, clock, ControlledProbe(clock))
        self.assertTrue(verifyObject(IMembershipObserver, checker))

    def test_newBackendIsProbed(self) -> None:
        """
        A backend that joins a running checker's pool is probed on the
        checker's interval from then on, and its failures take it down.
        """
        clock = Clock()
        pool, (a, b) = makePool(reactor=clock)
        healthy = {a: True, b: True}
        probe = AnsweringProbe(lambda x: healthy.get(x, False))
        checker = makeChecker(pool, clock, probe, NoJitter(), fall=2)
        checker.startService()
        self.addCleanup(checker.stopService)
        clock.advance(0)
        pool.setBackends([Backend("127.0.0.1", 9001), Backend("127.0.0.1", 9003)], "t")
        (c,) = [x for x in pool.backends if x.port == 9003]
        self.assertEqual(set(checker.checks), {a, c})
        clock.advance(0)
        self.assertEqual(checker.checks[c].probes, 1)
        self.assertIs(c.state, UP)
        clock.advance(1)
        self.assertIs(c.state, DOWN)
        self.assertEqual(checker.checks[a].probes, 2)

    def test_newBackendWithMandatory(self) -> None:
        """
        With C{health_mandatory}, a backend that joins is down until its
        first probe passes.
        """
        clock = Clock()
        pool, (a, b) = makePool(reactor=clock)
        probe = ControlledProbe(clock)
        checker = makeChecker(pool, clock, probe, mandatory=True)
        pool.setBackends([Backend("127.0.0.1", 9003)], "t")
        (c,) = pool.backends
        self.assertIs(c.state, DOWN)
        self.assertIn("health_mandatory", c.stateReason)
        checker.startService()
        self.addCleanup(checker.stopService)
        clock.advance(JITTER)
        [(backend, _, d)] = probe.calls
        self.assertIs(backend, c)
        d.callback("status 200")
        self.assertIs(c.state, UP)

    def test_removedBackendIsNoLongerProbed(self) -> None:
        """
        A backend dropped from the pool stops being probed; its probe in
        flight is cancelled and its result ignored.
        """
        clock = Clock()
        pool, (a, b) = makePool(reactor=clock)
        probe = ControlledProbe(clock)
        checker = makeChecker(pool, clock, probe, NoJitter())
        checker.startService()
        self.addCleanup(checker.stopService)
        clock.advance(0)
        self.assertEqual(len(probe.calls), 2)
        pool.setBackends([Backend("127.0.0.1", 9001)], "t")
        self.assertEqual(set(checker.checks), {a})
        self.assertEqual(probe.cancelled, [b])
        self.assertIs(b.state, UP)
        clock.advance(1)
        clock.advance(1)
        self.assertEqual([x for x, _, _ in probe.calls].count(b), 1)

    def test_stoppedCheckerStartsNewBackendsOnStart(self) -> None:
        """
        A backend that joins while the checker is stopped is probed once it
        starts.
        """
        clock = Clock()
        pool, (a, b) = makePool(reactor=clock)
        probe = ControlledProbe(clock)
        checker = makeChecker(pool, clock, probe, NoJitter())
        pool.setBackends([Backend("127.0.0.1", 9003)], "t")
        clock.advance(5)
        self.assertEqual(probe.calls, [])
        checker.startService()
        self.addCleanup(checker.stopService)
        clock.advance(0)
        self.assertEqual([x.port for x, _, _ in probe.calls], [9003])


class SchedulingTests(SynchronousTestCase):
    """
    Probes run every interval with up to 10% jitter, never overlap, and
    stop with the service.
    """

    def test_jitterBounds(self) -> None:
        """
        The k-th probe of a backend runs between k intervals and k
        intervals plus 10% after the start; the offsets vary from probe to
        probe and from backend to backend.
        """
        clock = Clock()
        pool, backends = makePool(3, reactor=clock)
        probe = ControlledProbe(clock)
        checker = makeChecker(pool, clock, probe, Random(42), interval=2.0, timeout=1.0)
        checker.startService()
        self.addCleanup(checker.stopService)
        # run every timed call exactly when it is due, answering each probe
        while True:
            due = min(call.getTime() for call in clock.getDelayedCalls())
            if due > 9.9:
                break
            clock.rightNow = due
            clock.advance(0)
            for d in probe.running():
                d.callback("status 200")
        times: dict[Backend, list[float]] = {b: [] for b in backends}
        for backend, time, _ in probe.calls:
            times[backend].append(time)
        for backend in backends:
            self.assertEqual(len(times[backend]), 5)
            for k, time in enumerate(times[backend]):
                self.assertGreaterEqual(time, k * 2.0)
                self.assertLessEqual(time, k * 2.0 + 0.2)
        self.assertEqual(len({t % 2.0 for t in times[backends[0]]}), 5)
        self.assertEqual(len({times[b][0] for b in backends}), 3)
        intervals = [b - a for a, b in zip(times[backends[0]], times[backends[0]][1:])]
        for interval in intervals:
            self.assertTrue(1.8 <= interval <= 2.2, interval)

    def test_jitterIsAtMostTenPercent(self) -> None:
        """
        With the largest jitter the random source can give, a probe runs
        exactly 10% of the interval after it is due.
        """
        clock = Clock()
        pool, (a, b) = makePool(reactor=clock)
        probe = ControlledProbe(clock)
        checker = makeChecker(
            pool, clock, probe, ExtremeRandom(), interval=5.0, timeout=1.0
        )
        checker.startService()
        self.addCleanup(checker.stopService)
        clock.advance(0.499)
        self.assertEqual(probe.calls, [])
        clock.advance(0.001)
        self.assertEqual([t for _, t, _ in probe.calls], [0.5, 0.5])

    def test_noOverlappingProbes(self) -> None:
        """
        While a probe is running, the probes that come due are skipped, not
        started alongside it.
        """
        clock = Clock()
        pool, (a,) = makePool(1, reactor=clock)
        probe = ControlledProbe(clock)
        checker = makeChecker(
            pool, clock, probe, NoJitter(), interval=1.0, timeout=10.0
        )
        checker.startService()
        self.addCleanup(checker.stopService)
        clock.advance(0)
        self.assertEqual(len(probe.calls), 1)
        for _ in range(5):
            clock.advance(1.0)
        self.assertEqual(len(probe.calls), 1)
        self.assertEqual(checker.checks[a].skipped, 5)
        probe.calls[0][2].callback("status 200")
        clock.advance(1.0)
        self.assertEqual(len(probe.calls), 2)

    def test_timeoutCancelsTheProbe(self) -> None:
        """
        A probe with no answer after C{health_timeout} is cancelled and
        counts as a failure.
        """
        clock = Clock()
        pool, (a, b) = makePool(reactor=clock)
        probe = ControlledProbe(clock)
        checker = makeChecker(
            pool, clock, probe, ExtremeRandom(), interval=1.0, timeout=0.5, fall=1
        )
        checker.startService()
        self.addCleanup(checker.stopService)
        clock.advance(0.1)
        clock.advance(0.499)
        self.assertEqual(probe.cancelled, [])
        clock.advance(0.001)
        self.assertEqual(sorted(b.port for b in probe.cancelled), [9001, 9002])
        self.assertIs(a.state, DOWN)
        self.assertEqual(
            a.stateReason,
            "1 consecutive failed health checks, latest: no answer within 0.5s",
        )

    def test_answerCancelsTheTimeout(self) -> None:
        """
        A probe that answers in time leaves no timer behind.
        """
        clock = Clock()
        pool, (a,) = makePool(1, reactor=clock)
        probe = ControlledProbe(clock)
        checker = makeChecker(
            pool, clock, probe, ExtremeRandom(), interval=1.0, timeout=0.5
        )
        checker.startService()
        clock.advance(0.1)
        probe.calls[0][2].callback("status 200")
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # the loop
        checker.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stopCancelsAndIgnores(self) -> None:
        """
        Stopping the service stops the timers, cancels the probes in flight
        without counting them, and fires once they have closed.
        """
        clock = Clock()
        pool, (a, b) = makePool(reactor=clock)
        closing: list[Deferred[None]] = []

        async def slowly(backend: Backend) -> str:
            try:
                await Deferred()
            finally:
                # closing its connection takes a while
                closed: Deferred[None] = Deferred()
                closing.append(closed)
                await closed
            return "status 200"

        def slowToClose(backend: Backend) -> Deferred[str]:
            return Deferred.fromCoroutine(slowly(backend))

        checker = makeChecker(pool, clock, slowToClose, ExtremeRandom(), fall=1)
        checker.startService()
        clock.advance(0.1)
        stopped = checker.stopService()
        self.assertEqual(len(closing), 2)
        self.assertNoResult(stopped)
        closing[0].callback(None)
        self.assertNoResult(stopped)
        closing[1].callback(None)
        self.successResultOf(stopped)
        self.assertEqual((a.state, b.state), (UP, UP))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(checker.running)

    def test_stopBeforeTheJitter(self) -> None:
        """
        A probe waiting for its jitter delay is cancelled by stopping.
        """
        clock = Clock()
        pool, (a,) = makePool(1, reactor=clock)
        probe = ControlledProbe(clock)
        checker = makeChecker(pool, clock, probe, ExtremeRandom())
        checker.startService()
        self.successResultOf(checker.stopService())
        clock.advance(10)
        self.assertEqual(probe.calls, [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_restart(self) -> None:
        """
        A stopped checker can be started again.
        """
        clock = Clock()
        pool, (a,) = makePool(1, reactor=clock)
        probe = AnsweringProbe(lambda b: True)
        checker = makeChecker(pool, clock, probe, ExtremeRandom())
        checker.startService()
        clock.advance(0.1)
        checker.stopService()
        checker.startService()
        clock.advance(0.1)
        self.assertEqual(probe.count, 2)
        checker.stopService()

    def test_serviceName(self) -> None:
        """
        The checker is named after its upstream.
        """
        clock = Clock()
        pool, _ = makePool(reactor=clock)
        self.assertEqual(
            makeChecker(pool, clock, ControlledProbe(clock)).name, "health-check:app"
        )


class ProbeFailureTests(SynchronousTestCase):
    """
    What a failed probe leaves behind.
    """

    def test_failureFreedWithoutCollector(self) -> None:
        """
        A probe that fails with an error thrown into its coroutine (as
        L{HTTPProbe}'s connect fails, from a delayed call, when the
        backend refuses) leaves nothing in a cycle: once the checker has
        said why, it drops the failure's traceback, whose frames would
        otherwise hold the delayed call, and through it the error.
        """
        clock = Clock()
        pool, _ = makePool(1, reactor=clock)
        errors: list[Any] = []

        def probe(backend: Backend) -> Deferred[str]:
            error = ConnectionRefusedError()
            errors.append(weakref.ref(error))
            refused: Deferred[str] = Deferred()
            clock.callLater(0, refused.errback, error)

            async def probing() -> str:
                return await refused

            return Deferred.fromCoroutine(probing())

        checker = makeChecker(pool, clock, probe, NoJitter())
        withoutCollector(self)
        checker.startService()
        self.addCleanup(checker.stopService)
        clock.advance(0)
        clock.advance(0)
        self.assertEqual(
            checker.checks[pool.backends[0]].lastResult, "failed: connection refused"
        )
        self.assertEqual([error() for error in errors], [None])


class ReactorTransport(StringTransport):
    """
    A string transport that, like a real one, tells its protocol that the
    connection is lost on a later turn of the reactor.

    @ivar closed: whether the protocol has been told.
    """

    def __init__(self, reactor: MemoryReactorClock, protocol: Any) -> None:
        StringTransport.__init__(self)
        self.reactor = reactor
        self.protocol = protocol
        self.closed = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        Accept what a protocol under TLS asks of its TCP transport: TLS
        says it provides C{ITCPTransport} and passes this on.
        """

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.reactor.callLater(0, self.lose, ConnectionDone())

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()

    def lose(self, reason: Exception) -> None:
        """
        Tell the protocol the connection is lost, if it was not told yet.
        """
        if not self.closed:
            self.closed = True
            self.protocol.connectionLost(Failure(reason))


def connect(reactor: MemoryReactorClock) -> tuple[Any, ReactorTransport]:
    """
    Complete the oldest connection attempt over a L{ReactorTransport}.
    """
    host, port, factory, timeout, bindAddress = reactor.tcpClients.pop(0)
    protocol: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = ReactorTransport(reactor, protocol)
    protocol.makeConnection(transport)
    return protocol, transport


class HTTPProbeTests(SynchronousTestCase):
    """
    L{HTTPProbe} GETs the check path on a new connection to the backend.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pool, (self.a, self.b) = makePool(reactor=self.reactor)

    def probe(self, **config: Any) -> Deferred[str]:
        settings: dict[str, Any] = dict(path="/healthz?full=1")
        settings.update(config)
        return HTTPProbe(self.pool, HealthCheckConfig(**settings))(self.a)

    def answer(self, protocol: Any, data: bytes) -> None:
        """
        The backend sends C{data}; then the reactor turns.
        """
        protocol.dataReceived(data)
        self.reactor.advance(0)

    def test_request(self) -> None:
        """
        The probe connects to the backend's address and sends a GET of the
        path with the backend as Host and C{Connection: close}; once it has
        the answer, it closes the connection.
        """
        d = self.probe()
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 9001))
        protocol, transport = connect(self.reactor)
        request = transport.value()
        self.assertTrue(request.startswith(b"GET /healthz?full=1 HTTP/1.1\r\n"))
        self.assertIn(b"\r\nConnection: close\r\n", request)
        self.assertIn(b"\r\nHost: 127.0.0.1:9001\r\n", request)
        self.assertIn(b"\r\nUser-Agent: lbproxy health check\r\n", request)
        self.assertNoResult(d)
        protocol.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertNoResult(d)  # until the connection is closed
        self.reactor.advance(0)
        self.assertEqual(self.successResultOf(d), "status 204")
        self.assertTrue(transport.closed)

    def test_freshConnection(self) -> None:
        """
        Every probe opens its own connection; none goes to the idle cache.
        """
        for _ in range(2):
            d = self.probe()
            protocol, transport = connect(self.reactor)
            self.answer(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            self.successResultOf(d)
        self.assertEqual(self.pool.connectionsOpened(self.a), 2)
        self.assertEqual(self.pool._connections[self.a].idle, [])

    def test_httpsBackendsAreProbedOverTLS(self) -> None:
        """
        An C{https://} backend is probed through TLS: the first bytes on
        its connection are a TLS handshake record (a ClientHello), not the
        probe's request.
        """
        pool, (a, b) = makePool(reactor=self.reactor, scheme="https", tlsVerify=False)
        HTTPProbe(pool, HealthCheckConfig(path="/"))(a)
        host, port = self.reactor.tcpClients[0][:2]
        self.assertEqual((host, port), ("127.0.0.1", 9001))
        protocol, transport = connect(self.reactor)
        hello = transport.value()
        self.assertEqual(hello[:2], b"\x16\x03")
        self.assertEqual(hello[5:6], b"\x01")
        self.assertNotIn(b"GET", hello)

    def test_badStatus(self) -> None:
        """
        A status outside C{health_status} fails the probe, naming the
        status and the expected ranges, and closes the connection without
        waiting for the body.
        """
        d = self.probe(status=((200, 200), (204, 206)))
        protocol, transport = connect(self.reactor)
        self.answer(protocol, b"HTTP/1.1 500 Oops\r\nContent-Length: 1000\r\n\r\n")
        failure = self.failureResultOf(d, ProbeFailed)
        self.assertEqual(describeFailure(failure), "status 500, expected 200 204-206")
        self.assertTrue(transport.closed)

    def test_statusInARange(self) -> None:
        """
        Any status inside a C{health_status} range passes.
        """
        d = self.probe(status=((200, 200), (204, 206)))
        protocol, transport = connect(self.reactor)
        self.answer(protocol, b"HTTP/1.1 205 Reset\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.successResultOf(d), "status 205")

    def test_bodyContains(self) -> None:
        """
        With C{health_body}, the probe passes when the body contains it,
        even split across reads, and stops reading there.
        """
        d = self.probe(body="ALL GOOD")
        protocol, transport = connect(self.reactor)
        self.answer(
            protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstatus: ALL"
        )
        self.assertNoResult(d)
        self.answer(protocol, b" GOOD")
        self.assertEqual(
            self.successResultOf(d), "status 200, body contains 'ALL GOOD'"
        )
        self.assertTrue(transport.closed)

    def test_bodyLacks(self) -> None:
        """
        A body that ends without C{health_body} fails the probe.
        """
        d = self.probe(body="ALL GOOD")
        protocol, transport = connect(self.reactor)
        self.answer(
            protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nstatus: BAD"
        )
        failure = self.failureResultOf(d, ProbeFailed)
        self.assertEqual(
            describeFailure(failure),
            "status 200, but the body does not contain 'ALL GOOD'",
        )

    def test_bodyIsBounded(self) -> None:
        """
        Only the first L{BODY_LIMIT} bytes are searched; a longer body
        fails the probe without being read to its end.
        """
        d = self.probe(body="needle")
        protocol, transport = connect(self.reactor)
        self.answer(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
        self.answer(protocol, b"x" * (BODY_LIMIT - 3) + b"needle")
        failure = self.failureResultOf(d, ProbeFailed)
        self.assertIn(f"in its first {BODY_LIMIT} bytes", describeFailure(failure))
        self.assertTrue(transport.closed)

    def test_bodyBrokenOff(self) -> None:
        """
        A body cut off by the backend fails the probe.
        """
        d = self.probe(body="needle")
        protocol, transport = connect(self.reactor)
        self.answer(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nab")
        transport.lose(ConnectionLost())
        self.assertEqual(
            describeFailure(self.failureResultOf(d)),
            "connection closed before the end of the body",
        )

    def test_connectionRefused(self) -> None:
        """
        A refused connection fails the probe.
        """
        d = self.probe()
        factory = self.reactor.tcpClients[0][2]
        connector = self.reactor.connectors[0]
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.assertEqual(describeFailure(self.failureResultOf(d)), "connection refused")

    def test_closedBeforeAnswer(self) -> None:
        """
        A connection closed before the response fails the probe.
        """
        d = self.probe()
        protocol, transport = connect(self.reactor)
        transport.lose(ConnectionDone())
        self.assertEqual(
            describeFailure(self.failureResultOf(d)),
            "connection closed before a complete response",
        )

    def test_garbage(self) -> None:
        """
        An answer that is not HTTP fails the probe.
        """
        d = self.probe()
        protocol, transport = connect(self.reactor)
        self.answer(protocol, b"SSH-2.0-OpenSSH\r\n\r\n")
        self.assertIn("ParseError", describeFailure(self.failureResultOf(d)))
        self.assertTrue(transport.closed)

    def test_garbageIsDescribed(self) -> None:
        """
        The failure of an answer that is not HTTP says what was wrong with
        it.
        """
        d = self.probe()
        protocol, transport = connect(self.reactor)
        self.answer(protocol, b"SSH-2.0-OpenSSH\r\n\r\n")
        failure = self.failureResultOf(d, ParseError)
        self.assertEqual(
            describeFailure(failure),
            "ParseError: invalid status line b'SSH-2.0-OpenSSH'",
        )

    def test_lostForAReason(self) -> None:
        """
        A connection lost before the answer for another reason than its
        close (a TLS handshake refused, say) fails the probe with that
        reason.
        """
        d = self.probe()
        protocol, transport = connect(self.reactor)
        transport.lose(OSError("certificate verify failed"))
        self.assertEqual(
            describeFailure(self.failureResultOf(d, OSError)),
            "OSError: certificate verify failed",
        )

    def test_closedInTheHead(self) -> None:
        """
        A connection closed in the middle of the response head fails the
        probe as one closed before the answer.
        """
        d = self.probe()
        protocol, transport = connect(self.reactor)
        self.answer(protocol, b"HTTP/1.1 200 OK\r\nContent-")
        transport.lose(ConnectionDone())
        failure = self.failureResultOf(d, NoAnswer)
        self.assertEqual(
            describeFailure(failure), "connection closed before a complete response"
        )

    def test_chunkedBody(self) -> None:
        """
        C{health_body} is searched for in a chunked body too, across
        chunks, and a chunked body that ends without it fails the probe.
        """
        d = self.probe(body="ALL GOOD")
        protocol, transport = connect(self.reactor)
        self.answer(
            protocol,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nis ALL\r\n",
        )
        self.assertNoResult(d)
        self.answer(protocol, b"5\r\n GOOD\r\n0\r\n\r\n")
        self.assertEqual(
            self.successResultOf(d), "status 200, body contains 'ALL GOOD'"
        )
        d = self.probe(body="ALL GOOD")
        protocol, transport = connect(self.reactor)
        self.answer(
            protocol,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nBAD\r\n0\r\n\r\n",
        )
        self.failureResultOf(d, ProbeFailed)

    def test_bodyUntilTheConnectionCloses(self) -> None:
        """
        A body without a length ends when the connection closes: the probe
        then judges what it read.
        """
        d = self.probe(body="ALL GOOD")
        protocol, transport = connect(self.reactor)
        self.answer(protocol, b"HTTP/1.0 200 OK\r\n\r\nstatus: ALL GOOD")
        self.assertEqual(
            self.successResultOf(d), "status 200, body contains 'ALL GOOD'"
        )
        d = self.probe(body="ALL GOOD")
        protocol, transport = connect(self.reactor)
        self.answer(protocol, b"HTTP/1.0 200 OK\r\n\r\nstatus: BAD")
        transport.lose(ConnectionDone())
        self.reactor.advance(0)
        self.failureResultOf(d, ProbeFailed)

    def test_invalidPath(self) -> None:
        """
        A check path that cannot be sent fails the probe without a
        connection.
        """
        d = self.probe(path="/health\x00z")
        self.assertIn(
            "invalid health check path", describeFailure(self.failureResultOf(d))
        )
        self.assertEqual(self.reactor.tcpClients, [])

    def test_cancelClosesTheConnection(self) -> None:
        """
        Cancelling a probe (as C{health_timeout} does) aborts its
        connection, and the probe ends once the connection is closed.
        """
        d = self.probe()
        protocol, transport = connect(self.reactor)
        d.cancel()
        self.assertTrue(transport.aborted)
        self.reactor.advance(0)
        self.assertTrue(transport.closed)
        self.failureResultOf(d)

    def test_cancelWhileConnecting(self) -> None:
        """
        Cancelling a probe that is still connecting stops the attempt.
        """
        d = self.probe()
        connector = self.reactor.connectors[0]
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(connector.stoppedConnecting)

    def test_timeoutInTheChecker(self) -> None:
        """
        Run by a L{HealthChecker}, a backend that accepts and never answers
        is cut off after C{health_timeout}, and the failure says so.
        """
        checker = HealthChecker(
            self.pool,
            HealthCheckConfig(path="/healthz", interval=5.0, timeout=2.0, fall=1),
            reactor=self.reactor,
            random=NoJitter(),
        )
        checker.startService()
        self.addCleanup(checker.stopService)
        self.reactor.advance(0)
        (_, ta), (pb, _) = connect(self.reactor), connect(self.reactor)
        self.answer(pb, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.reactor.advance(2.0)
        self.assertTrue(ta.aborted)
        self.assertTrue(ta.closed)
        self.assertIs(self.a.state, DOWN)
        self.assertEqual(
            self.a.stateReason,
            "1 consecutive failed health checks, latest: no answer within 2s",
        )
        self.assertIs(self.b.state, UP)
        self.assertEqual(checker.checks[self.b].lastResult, "passed: status 200")

    def test_stopClosesProbeConnections(self) -> None:
        """
        Stopping the checker aborts the connections of the probes in
        flight, and fires once they are closed.
        """
        checker = HealthChecker(
            self.pool,
            HealthCheckConfig(path="/healthz", interval=5.0, timeout=2.0, fall=1),
            reactor=self.reactor,
            random=NoJitter(),
        )
        checker.startService()
        self.reactor.advance(0)
        (_, ta), (_, tb) = connect(self.reactor), connect(self.reactor)
        stopped = checker.stopService()
        self.assertNoResult(stopped)
        self.reactor.advance(0)
        self.successResultOf(stopped)
        self.assertTrue(ta.closed and tb.closed)
        self.assertEqual((self.a.state, self.b.state), (UP, UP))
        self.assertEqual(self.reactor.getDelayedCalls(), [])


SITE = """
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = off

[upstream:app]
servers =
    127.0.0.1:9001
    127.0.0.1:9002
health_check = /healthz
health_interval = 2s
health_fall = 1
slow_start = 30s

[upstream:other]
servers = 127.0.0.1:9003

[vhost:app]
server_names = localhost
default = yes
upstream = app
"""


class ServiceTests(SynchronousTestCase):
    """
    L{LoadBalancerService} runs a checker for each upstream with
    C{health_check}, started and stopped with it.
    """

    def test_checkersStartAndStopWithTheService(self) -> None:
        """
        The upstream with C{health_check} gets a checker that probes its
        backends once the service starts, and stops when it stops; the
        upstream without gets none.  C{slow_start} reaches the pool.
        """
        from lbproxy._config import parseConfigText
        from lbproxy.service import LoadBalancerService

        reactor = MemoryReactorClock()
        service = LoadBalancerService(parseConfigText(SITE), reactor=reactor)
        self.assertEqual(list(service.healthCheckers), ["app"])
        checker = service.healthCheckers["app"]
        self.assertIs(service.getServiceNamed("health-check:app"), checker)
        self.assertIs(checker.pool, service.pools["app"])
        self.assertEqual(service.pools["app"].slowStart, 30.0)
        self.assertEqual(reactor.tcpClients, [])
        service.startService()
        self.assertTrue(checker.running)
        reactor.advance(0.2)
        self.assertEqual(
            sorted(port for _, port, *_ in reactor.tcpClients), [9001, 9002]
        )
        self.successResultOf(service.stopService())
        self.assertFalse(checker.running)
        self.assertEqual(reactor.getDelayedCalls(), [])
