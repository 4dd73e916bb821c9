"""
Tests for L{lbproxy._pool}: the backend state machine, passive health,
eligibility, draining and slow start.
"""

from __future__ import annotations

import gc
import platform
import weakref
from random import Random
from typing import Any, Collection, Optional

from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy._backend import (
    DOWN_IN_CONFIGURATION,
    Backend,
    BackendState,
    Outcome,
    placeholderFor,
)
from lbproxy._client import UpstreamConnection
from lbproxy._config import HealthCheckConfig
from lbproxy._health import HealthChecker
from lbproxy._interfaces import IBalancer, IMembershipObserver
from lbproxy._pool import (
    SLOW_START_SHARE,
    Pool,
    deriveState,
    slowStartStep,
    slowStartWeight,
)
from lbproxy.balancers import buildBalancer
from lbproxy.balancers._base import BalancerBase
from lbproxy.balancers._roundrobin import RoundRobin
from tests.test_balancers import BUILTIN_NAMES, REQUIRED_OPTIONS, makeRequest
from tests.test_connections import idleConnection as putIdle

UP = BackendState.UP
DOWN = BackendState.DOWN
FAILED = BackendState.FAILED
DRAINING = BackendState.DRAINING
DISABLED = BackendState.DISABLED


@implementer(IBalancer)
class RecordingBalancer(BalancerBase):
    """
    A balancer that picks the first eligible backend and records what the
    pool told it.

    @ivar changes: every eligible set it was given, with the effective
        weights at that moment.
    """

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[tuple[tuple[str, float], ...]] = []

    def backendsChanged(self, backends: tuple[Any, ...]) -> None:
        super().backendsChanged(backends)
        self.changes.append(tuple((b.name, b.effectiveWeight) for b in backends))

    def pick(self, request: Any, exclude: Collection[Any] = ()) -> Optional[Any]:
        for backend in self.backends:
            if backend not in exclude:
                return backend
        return None


def makePool(
    *specs: str,
    clock: Optional[Clock] = None,
    balancer: Any = None,
    **kwargs: Any,
) -> tuple[Pool, Clock, list[Backend]]:
    """
    Build a pool of backends on 127.0.0.1, one per spec: C{"9001"},
    C{"9002 backup"}, C{"9003 down"}, C{"9004 weight=3"}.
    """
    clock = clock or Clock()
    backends = []
    for spec in specs:
        port, *flags = spec.split()
        weight = 1
        for flag in flags:
            if flag.startswith("weight="):
                weight = int(flag[len("weight=") :])
        backends.append(
            Backend(
                "127.0.0.1",
                int(port),
                weight=weight,
                backup="backup" in flags,
                down="down" in flags,
            )
        )
    pool = Pool(
        "app",
        backends,
        balancer if balancer is not None else RecordingBalancer(),
        clock,
        **kwargs,
    )
    return pool, clock, backends


def recorder(pool: Pool) -> RecordingBalancer:
    """
    The L{RecordingBalancer} of C{pool}.
    """
    balancer = pool.balancer
    assert isinstance(balancer, RecordingBalancer)
    return balancer


def fail(
    pool: Pool, backend: Backend, outcome: Outcome = Outcome.CONNECT_FAILED
) -> None:
    """
    Send one request to C{backend} that ends with C{outcome}.
    """
    pool.requestStarted(backend, object())
    pool.requestFinished(backend, object(), outcome, 0.1)


class RecordingBalancerTests(SynchronousTestCase):
    """
    The test balancer keeps the balancer contract.
    """

    def test_provides(self) -> None:
        """
        L{RecordingBalancer} provides L{IBalancer}.
        """
        self.assertTrue(verifyObject(IBalancer, RecordingBalancer()))


class PassiveHealthTests(SynchronousTestCase):
    """
    C{max_fails} failures within C{fail_timeout} take a backend out for
    C{fail_timeout}.
    """

    def test_maxFailsWithinFailTimeout(self) -> None:
        """
        With C{max_fails = 2}, one failure leaves the backend up; a second
        within C{fail_timeout} makes it failed and no longer eligible; it
        comes back after C{fail_timeout}.
        """
        pool, clock, (a, b) = makePool("9001", "9002", maxFails=2, failTimeout=10)
        fail(pool, a)
        self.assertIs(a.state, UP)
        clock.advance(9)
        fail(pool, a)
        self.assertIs(a.state, FAILED)
        self.assertEqual(pool.eligible, (b,))
        self.assertEqual(a.failedUntil, 19)
        clock.advance(9.9)
        self.assertIs(a.state, FAILED)
        clock.advance(0.1)
        self.assertIs(a.state, UP)
        self.assertIsNone(a.failedUntil)
        self.assertEqual(pool.eligible, (a, b))

    def test_failuresOutsideTheWindowDoNotAddUp(self) -> None:
        """
        Failures further apart than C{fail_timeout} never reach
        C{max_fails}.
        """
        pool, clock, (a, b) = makePool("9001", "9002", maxFails=2, failTimeout=10)
        for _ in range(5):
            fail(pool, a)
            clock.advance(10)
        self.assertIs(a.state, UP)
        self.assertEqual(a.failures, 5)

    def test_perServerOverrides(self) -> None:
        """
        A server's own C{max_fails} and C{fail_timeout} win over the
        upstream's.
        """
        pool, clock, (a, b) = makePool("9001", "9002", maxFails=5, failTimeout=10)
        a.maxFails = 1
        a.failTimeout = 3
        fail(pool, a)
        self.assertIs(a.state, FAILED)
        clock.advance(3)
        self.assertIs(a.state, UP)

    def test_notFailures(self) -> None:
        """
        Successes and requests the client cancelled do not count.
        """
        pool, clock, (a, b) = makePool("9001", "9002", maxFails=1)
        fail(pool, a, Outcome.SUCCESS)
        fail(pool, a, Outcome.CANCELLED)
        self.assertIs(a.state, UP)
        for outcome in (Outcome.RESET, Outcome.TIMEOUT, Outcome.INVALID):
            pool2, _, (c, d) = makePool("9001", "9002", maxFails=1)
            fail(pool2, c, outcome)
            self.assertIs(c.state, FAILED, outcome)

    def test_maxFailsZeroTurnsItOff(self) -> None:
        """
        C{max_fails = 0} turns passive accounting off.
        """
        pool, clock, (a, b) = makePool("9001", "9002", maxFails=0)
        for _ in range(10):
            fail(pool, a)
        self.assertIs(a.state, UP)

    def test_singleBackendIsNeverTakenOut(self) -> None:
        """
        The only backend of an upstream is never failed: there is no other
        server to try.
        """
        pool, clock, (a,) = makePool("9001", maxFails=1)
        for _ in range(10):
            fail(pool, a)
        self.assertIs(a.state, UP)
        self.assertEqual(pool.eligible, (a,))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_onlyServingBackendIsNeverTakenOut(self) -> None:
        """
        Backends that take no request do not count as other servers: one
        that left and is finishing a request in flight, and one that
        stands for a name with no address yet.  The only backend that
        serves is never failed.
        """
        pool, clock, (a,) = makePool("9001", maxFails=1)
        pool.requestStarted(a, object())
        b = Backend("127.0.0.1", 9002)
        pool.setBackends([b], "DNS answer")
        self.assertTrue(pool.leaving(a))
        fail(pool, b)
        self.assertIs(b.state, UP)
        self.assertEqual(pool.eligible, (b,))
        placeholder = placeholderFor("app.example", 8080, "http", "no address yet")
        pool.setBackends([b, placeholder], "DNS answer")
        fail(pool, b)
        self.assertIs(b.state, UP)

    def test_transitionIsLogged(self) -> None:
        """
        The transition is a log event with the backend, the upstream, the
        old and new states and the reason as fields.
        """
        pool, clock, (a, b) = makePool("9001", "9002", maxFails=1, failTimeout=7)
        with capturedLogs() as events:
            fail(pool, a, Outcome.RESET)
            clock.advance(7)
        transitions = [e for e in events if "new" in e]
        self.assertEqual(
            [(e["backend"], e["upstream"], e["old"], e["new"]) for e in transitions],
            [
                ("127.0.0.1:9001", "app", "up", "failed"),
                ("127.0.0.1:9001", "app", "failed", "up"),
            ],
        )
        self.assertIn("1 failure(s) within 7s", transitions[0]["reason"])
        self.assertIn("reset", transitions[0]["reason"])
        self.assertEqual(transitions[0]["log_level"], LogLevel.warn)
        self.assertIn("fail_timeout expired", transitions[1]["reason"])
        self.assertEqual(transitions[1]["log_level"], LogLevel.info)

    def test_closeCancelsRecovery(self) -> None:
        """
        L{Pool.close} cancels the pending recovery timers.
        """
        pool, clock, (a, b) = makePool("9001", "9002", maxFails=1)
        fail(pool, a)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        pool.close()
        self.assertEqual(clock.getDelayedCalls(), [])


class EligibilityTests(SynchronousTestCase):
    """
    The balancer sees the up primaries, or the up backups while no primary
    is up, and never a backend marked down in the configuration.
    """

    def test_backupsOnlyWhileNoPrimaryIsUp(self) -> None:
        """
        Backups become eligible when the last primary goes, and leave when
        a primary comes back.
        """
        pool, clock, (a, b, c) = makePool(
            "9001", "9002", "9003 backup", maxFails=1, failTimeout=5
        )
        balancer = recorder(pool)
        self.assertEqual(pool.eligible, (a, b))
        fail(pool, a)
        self.assertEqual(pool.eligible, (b,))
        fail(pool, b)
        self.assertEqual(pool.eligible, (c,))
        self.assertEqual(balancer.backends, (c,))
        clock.advance(5)
        self.assertEqual(pool.eligible, (a, b))
        self.assertEqual(balancer.backends, (a, b))

    def test_downInConfigurationIsNeverUsed(self) -> None:
        """
        A server marked C{down} is disabled and never eligible, even when
        every other server is out.
        """
        pool, clock, (a, b, c) = makePool(
            "9001", "9002 down", "9003 backup down", maxFails=1
        )
        self.assertIs(b.state, DISABLED)
        self.assertEqual(pool.eligible, (a,))
        pool.markDown(a, "checks")
        self.assertEqual(pool.eligible, ())
        self.assertIsNone(pool.pick(object()))
        self.assertIs(b.state, DISABLED)
        self.assertIs(c.state, DISABLED)

    def test_balancerToldAtStart(self) -> None:
        """
        The balancer is told the eligible set when the pool is built, even
        when it is empty.
        """
        pool, clock, backends = makePool("9001 down")
        self.assertEqual(recorder(pool).changes, [()])

    def test_noneEligibleIsLoggedWithTheReasons(self) -> None:
        """
        When the last backend goes, an error names the upstream and says
        why each backend is out; when one comes back, that is logged too.
        """
        pool, clock, (a, b) = makePool("9001", "9002 down")
        with capturedLogs() as events:
            pool.markDown(a, "3 consecutive failed health checks, latest: status 500")
        errors = [e for e in events if e["log_level"] is LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["upstream"], "app")
        self.assertIn(
            "127.0.0.1:9001 down (3 consecutive failed health checks, latest: status 500)",
            errors[0]["why"],
        )
        self.assertIn(
            "127.0.0.1:9002 disabled (down in the configuration)", errors[0]["why"]
        )
        self.assertEqual(pool.unavailableReason(), errors[0]["why"])
        with capturedLogs() as events:
            pool.markUp(a, "2 consecutive passing health checks")
        self.assertEqual(
            [e["backends"] for e in events if "backends" in e], ["127.0.0.1:9001"]
        )

    def test_noBackendsAtAll(self) -> None:
        """
        A pool left with no backend at all (an etcd prefix or a DNS name
        that gives none) says so rather than nothing.
        """
        pool, clock, (a,) = makePool("9001")
        pool.setBackends([], "etcd revision 9: delete /app/a")
        self.assertEqual(pool.unavailableReason(), "it has no backends")


class StateMachineTests(SynchronousTestCase):
    """
    Passive accounting, active checks and the operator each own one
    condition; the state is the first condition that holds.
    """

    def test_precedence(self) -> None:
        """
        Disabled wins over draining, which wins over down, which wins over
        failed.
        """
        backend = Backend("127.0.0.1", 1)
        self.assertIs(deriveState(backend), UP)
        backend.failedUntil = 5.0
        self.assertIs(deriveState(backend), FAILED)
        backend.checkedDown = True
        self.assertIs(deriveState(backend), DOWN)
        backend.adminState = DRAINING
        self.assertIs(deriveState(backend), DRAINING)
        backend.adminState = DISABLED
        self.assertIs(deriveState(backend), DISABLED)

    def test_failedThenDownIsNotRevivedByFailTimeout(self) -> None:
        """
        A failed backend whose checks then fail becomes down, and the
        expiry of C{fail_timeout} does not bring it back: only passing
        checks do.
        """
        pool, clock, (a, b) = makePool("9001", "9002", maxFails=1, failTimeout=10)
        fail(pool, a)
        self.assertIs(a.state, FAILED)
        pool.markDown(a, "3 consecutive failed health checks")
        self.assertIs(a.state, DOWN)
        clock.advance(10)
        self.assertIs(a.state, DOWN)
        self.assertNotIn(a, pool.eligible)
        pool.markUp(a, "2 consecutive passing health checks")
        self.assertIs(a.state, UP)

    def test_passingChecksDoNotReviveFailed(self) -> None:
        """
        A passive failure keeps a backend out for C{fail_timeout} even
        though its checks pass.
        """
        pool, clock, (a, b) = makePool("9001", "9002", maxFails=1, failTimeout=10)
        pool.markDown(a, "checks failed")
        clock.advance(1)
        # a request that was in flight when the checks took it down fails
        fail(pool, a)
        self.assertIs(a.state, DOWN)
        with capturedLogs() as events:
            pool.markUp(a, "2 consecutive passing health checks")
        self.assertIs(a.state, FAILED)
        [event] = [e for e in events if "new" in e]
        self.assertIn("2 consecutive passing health checks", event["reason"])
        self.assertIn("failed because: passive health", event["reason"])
        clock.advance(10)
        self.assertIs(a.state, UP)

    def test_stayingIsLogged(self) -> None:
        """
        A condition change that does not change the state is logged too.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        pool.drain(a)
        with capturedLogs() as events:
            pool.markDown(a, "3 consecutive failed health checks")
        self.assertIs(a.state, DRAINING)
        self.assertEqual(
            [(e["state"], e["reason"]) for e in events],
            [("draining", "3 consecutive failed health checks")],
        )

    def test_setStateMustFollowTheConditions(self) -> None:
        """
        L{Pool.setState} refuses a state that the backend's conditions do
        not give, so the conditions and the state cannot disagree.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        self.assertRaises(ValueError, pool.setState, a, DOWN, "because")
        self.assertIs(a.state, UP)

    def test_observers(self) -> None:
        """
        State observers see every transition, with its reason, until
        removed.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        seen: list[tuple[Any, ...]] = []

        def observer(*args: Any) -> None:
            seen.append(args)

        pool.addStateObserver(observer)
        pool.markDown(a, "checks")
        pool.markUp(a, "checks passed")
        pool.removeStateObserver(observer)
        pool.markDown(a, "checks again")
        self.assertEqual(
            seen, [(a, UP, DOWN, "checks"), (a, DOWN, UP, "checks passed")]
        )

    def test_stateReasonAndSince(self) -> None:
        """
        A backend remembers why and when it entered its state.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        self.assertEqual((a.stateReason, a.stateSince), ("started", None))
        clock.advance(4)
        pool.markDown(a, "checks")
        self.assertEqual((a.stateReason, a.stateSince), ("checks", 4))


class AdministrativeStateTests(SynchronousTestCase):
    """
    Draining, disabling and enabling, as the admin API will use them.
    """

    def test_drainTakesNoNewRequests(self) -> None:
        """
        A draining backend leaves the eligible set at once; the Deferred
        from L{Pool.drain} fires once its last request finishes.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        pool.requestStarted(a, "r1")
        pool.requestStarted(a, "r2")
        drained = pool.drain(a)
        self.assertIs(a.state, DRAINING)
        self.assertEqual(pool.eligible, (b,))
        self.assertIs(pool.pick(object()), b)
        pool.requestFinished(a, "r1", Outcome.SUCCESS, 0.1)
        self.assertNoResult(drained)
        pool.requestFinished(a, "r2", Outcome.SUCCESS, 0.1)
        self.assertIs(self.successResultOf(drained), True)

    def test_drainIdle(self) -> None:
        """
        Draining an idle backend is done at once.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        self.assertIs(self.successResultOf(pool.drain(a)), True)

    def test_drainWinsOverChecks(self) -> None:
        """
        Checks that fail and pass again while a backend drains do not
        change its state; enabling it then gives the state its checks say.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        pool.drain(a)
        pool.markDown(a, "checks failed")
        self.assertIs(a.state, DRAINING)
        pool.enable(a)
        self.assertIs(a.state, DOWN)
        pool.drain(a)
        pool.markUp(a, "checks passed")
        self.assertIs(a.state, DRAINING)
        pool.enable(a)
        self.assertIs(a.state, UP)
        self.assertEqual(pool.eligible, (a, b))

    def test_enableCallsOffTheDrain(self) -> None:
        """
        Enabling a backend before it drained fires the drain Deferred with
        L{False}.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        pool.requestStarted(a, "r1")
        drained = pool.drain(a)
        pool.enable(a)
        self.assertIs(self.successResultOf(drained), False)
        pool.requestFinished(a, "r1", Outcome.SUCCESS, 0.1)

    def test_disableAndEnable(self) -> None:
        """
        A disabled backend is not eligible; enabling a backend marked
        C{down} in the configuration brings it up.
        """
        pool, clock, (a, b) = makePool("9001", "9002 down")
        pool.disable(a, "maintenance")
        self.assertIs(a.state, DISABLED)
        self.assertEqual(a.stateReason, "maintenance")
        self.assertEqual(pool.eligible, ())
        pool.enable(b)
        self.assertIs(b.state, UP)
        self.assertEqual(pool.eligible, (b,))
        pool.enable(b)
        self.assertIs(b.state, UP)

    def test_setWeight(self) -> None:
        """
        L{Pool.setWeight} changes the weight and effective weight and tells
        the balancer; a weight below 1 is refused.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        pool.setWeight(a, 3)
        self.assertEqual((a.weight, a.effectiveWeight), (3, 3.0))
        self.assertEqual(
            recorder(pool).changes[-1],
            (("127.0.0.1:9001", 3.0), ("127.0.0.1:9002", 1.0)),
        )
        self.assertRaises(ValueError, pool.setWeight, a, 0)


class SlowStartWeightTests(SynchronousTestCase):
    """
    The ramp of a slow-starting backend's effective weight.
    """

    def test_ramp(self) -> None:
        """
        The effective weight grows linearly from a tenth of the weight to
        all of it.
        """
        self.assertEqual(SLOW_START_SHARE, 0.1)
        self.assertAlmostEqual(slowStartWeight(10, 0, 30), 1.0)
        self.assertAlmostEqual(slowStartWeight(10, 15, 30), 5.5)
        self.assertAlmostEqual(slowStartWeight(10, 27, 30), 9.1)
        self.assertEqual(slowStartWeight(10, 30, 30), 10.0)
        self.assertEqual(slowStartWeight(10, 31, 30), 10.0)
        self.assertEqual(slowStartWeight(4, 5, 0), 4.0)

    def test_step(self) -> None:
        """
        The weight is recomputed 20 times over the ramp, but between 10
        times a second and once a second.
        """
        self.assertEqual(slowStartStep(10), 0.5)
        self.assertEqual(slowStartStep(0.5), 0.1)
        self.assertEqual(slowStartStep(600), 1.0)


class SlowStartTests(SynchronousTestCase):
    """
    A backend coming back ramps its effective weight, and the balancer sees
    every step.
    """

    def test_rampAfterRecovery(self) -> None:
        """
        A backend coming back from down starts at a tenth of its weight,
        and the balancer is told each new effective weight until it
        reaches the full weight; then the timer stops.
        """
        pool, clock, (a, b) = makePool("9001 weight=10", "9002", slowStart=2.0)
        self.assertEqual(a.effectiveWeight, 10.0)
        pool.markDown(a, "checks")
        pool.markUp(a, "checks passed")
        self.assertAlmostEqual(a.effectiveWeight, 1.0)
        balancer = recorder(pool)
        balancer.changes = []
        seen = []
        for _ in range(20):
            clock.advance(0.1)
            seen.append(round(a.effectiveWeight, 6))
        self.assertEqual(seen, [round(1.0 + 0.45 * i, 6) for i in range(1, 21)])
        self.assertEqual(
            [round(dict(change)["127.0.0.1:9001"], 6) for change in balancer.changes],
            seen,
        )
        self.assertAlmostEqual(dict(balancer.changes[9])["127.0.0.1:9001"], 5.5)
        self.assertEqual(dict(balancer.changes[-1])["127.0.0.1:9001"], 10.0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_rampAfterFailedAndEnable(self) -> None:
        """
        Slow start follows every return to up: from failed, and from
        draining or disabled.
        """
        pool, clock, (a, b) = makePool(
            "9001 weight=10", "9002", slowStart=10.0, maxFails=1, failTimeout=5
        )
        fail(pool, a)
        clock.advance(5)
        self.assertIs(a.state, UP)
        self.assertAlmostEqual(a.effectiveWeight, 1.0)
        clock.advance(10)
        self.assertEqual(a.effectiveWeight, 10.0)
        pool.disable(a)
        pool.enable(a)
        self.assertAlmostEqual(a.effectiveWeight, 1.0)

    def test_noRampAtStart(self) -> None:
        """
        Backends that are up from the start have their full weight at once.
        """
        pool, clock, (a, b) = makePool("9001 weight=10", "9002", slowStart=10.0)
        self.assertEqual(a.effectiveWeight, 10.0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_noRampForASingleBackend(self) -> None:
        """
        As in nginx, the only server of an upstream does not slow-start.
        """
        pool, clock, (a,) = makePool("9001 weight=10", slowStart=10.0)
        pool.markDown(a, "checks")
        pool.markUp(a, "checks passed")
        self.assertEqual(a.effectiveWeight, 10.0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_goingDownStopsTheRamp(self) -> None:
        """
        A backend that leaves up while ramping stops ramping, and ramps
        afresh when it comes back.
        """
        pool, clock, (a, b) = makePool("9001 weight=10", "9002", slowStart=10.0)
        pool.markDown(a, "checks")
        pool.markUp(a, "checks passed")
        clock.advance(5)
        self.assertAlmostEqual(a.effectiveWeight, 5.5)
        pool.markDown(a, "checks")
        self.assertEqual(clock.getDelayedCalls(), [])
        pool.markUp(a, "checks passed")
        self.assertAlmostEqual(a.effectiveWeight, 1.0)

    def test_setWeightWhileRamping(self) -> None:
        """
        A new weight set while ramping is ramped to.
        """
        pool, clock, (a, b) = makePool("9001 weight=10", "9002", slowStart=10.0)
        pool.markDown(a, "checks")
        pool.markUp(a, "checks passed")
        clock.advance(5)
        pool.setWeight(a, 20)
        self.assertAlmostEqual(a.effectiveWeight, 11.0)
        clock.advance(5)
        self.assertEqual(a.effectiveWeight, 20.0)

    def test_roundRobinFollowsTheEffectiveWeight(self) -> None:
        """
        With the round robin balancer, a backend that just came back gets
        about a tenth of the share it will have at the end of the ramp.
        """
        pool, clock, (a, b) = makePool(
            "9001", "9002", balancer=RoundRobin(), slowStart=60.0
        )
        pool.markDown(a, "checks")
        pool.markUp(a, "checks passed")
        picks = [pool.pick(object()) for _ in range(110)]
        self.assertEqual(picks.count(a), 10)
        clock.advance(60)
        picks = [pool.pick(object()) for _ in range(100)]
        self.assertEqual(picks.count(a), 50)


@implementer(IMembershipObserver)
class MembershipRecorder:
    """
    Records what L{Pool.setBackends} tells its membership observers.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def backendAdded(self, backend: Backend) -> None:
        self.events.append(("added", backend.name))

    def backendRemoved(self, backend: Backend) -> None:
        self.events.append(("removed", backend.name))


def line(port: int, host: str = "127.0.0.1", **kwargs: Any) -> Backend:
    """
    A backend as a new server line (a DNS answer, an etcd value) gives it.
    """
    return Backend(host, port, **kwargs)


def idleConnection(pool: Pool, backend: Backend) -> UpstreamConnection:
    """
    Put an idle connection to C{backend} in C{pool}'s cache, as one that
    ended its exchange.
    """
    return putIdle(pool._connections[backend])


class MembershipTests(SynchronousTestCase):
    """
    L{Pool.setBackends}: backends join, stay and leave.
    """

    def test_observerProvidesTheInterface(self) -> None:
        """
        The test observer keeps the contract.
        """
        self.assertTrue(verifyObject(IMembershipObserver, MembershipRecorder()))

    def test_stayingBackendKeepsEverything(self) -> None:
        """
        A backend named again keeps its L{Backend} object, state, counters
        and connections; the new line's object is not used.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        fail(pool, a)
        pool.markDown(b, "checks failed")
        connections = pool._connections[a]
        pool.setBackends([line(9001), line(9002)], "same answer")
        self.assertEqual(pool.backends, (a, b))
        self.assertIs(pool._connections[a], connections)
        self.assertEqual((a.requests, a.failures, a.state), (1, 1, FAILED))
        self.assertIs(b.state, DOWN)

    def test_stayingBackendTakesTheNewSettings(self) -> None:
        """
        The weight, backup flag and per-server passive settings of the new
        line apply to the backend that stays, and the balancer is told.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        pool.setBackends(
            [line(9001, weight=3, maxFails=5, failTimeout=2.0), line(9002, backup=True)],
            "new weights",
        )
        self.assertEqual((a.weight, a.effectiveWeight), (3, 3.0))
        self.assertEqual((a.maxFails, a.failTimeout), (5, 2.0))
        self.assertTrue(b.backup)
        self.assertEqual(pool.eligible, (a,))
        self.assertEqual(recorder(pool).changes[-1], (("127.0.0.1:9001", 3.0),))

    def test_downInTheNewLine(self) -> None:
        """
        C{down} on the new line disables a staying backend, and its removal
        from the line enables it again; an operator's disable is not lifted
        by a line without C{down}.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        pool.setBackends([line(9001, down=True), line(9002)], "edit")
        self.assertIs(a.state, DISABLED)
        pool.setBackends([line(9001), line(9002)], "edit")
        self.assertIs(a.state, UP)
        pool.disable(b, "maintenance")
        pool.setBackends([line(9001), line(9002)], "edit")
        self.assertIs(b.state, DISABLED)

    def test_newBackendJoins(self) -> None:
        """
        A new backend gets its id, connections and state, is eligible, and
        the membership observers are told; the log says why it came.
        """
        pool, clock, (a,) = makePool("9001")
        observer = MembershipRecorder()
        pool.addMembershipObserver(observer)
        with capturedLogs() as events:
            pool.setBackends([line(9001), line(9002)], "DNS answer for app")
        (a2, b) = pool.backends
        self.assertIs(a2, a)
        self.assertTrue(b.id)
        self.assertNotEqual(b.id, a.id)
        self.assertIn(b, pool._connections)
        self.assertEqual(pool.eligible, (a, b))
        self.assertEqual(observer.events, [("added", "127.0.0.1:9002")])
        self.assertEqual((pool.backendsAdded, pool.backendsRemoved), (1, 0))
        self.assertIn(
            "backend 127.0.0.1:9002 of upstream app added (DNS answer for app)",
            [e["log_format"].format(**e) for e in events],
        )

    def test_balancerToldOnce(self) -> None:
        """
        However many backends join and leave, the balancer is told the new
        eligible set once.
        """
        pool, clock, backends = makePool("9001", "9002", "9003")
        before = len(recorder(pool).changes)
        pool.setBackends([line(9004), line(9005), line(9006)], "all new")
        self.assertEqual(len(recorder(pool).changes), before + 1)
        self.assertEqual(
            [name for name, _ in recorder(pool).changes[-1]],
            ["127.0.0.1:9004", "127.0.0.1:9005", "127.0.0.1:9006"],
        )

    def test_oneLogLineForAllThatJoinAndOneForAllThatLeave(self) -> None:
        """
        The backends a change adds are logged in one line, and those it
        drops at once in another; a busy one that drains is logged on its
        own when it is dropped later.
        """
        pool, clock, (a, b, c) = makePool("9001", "9002", "9003")
        pool.requestStarted(c, "r1")
        with capturedLogs() as events:
            pool.setBackends([line(9004), line(9005)], "all new")
        lines = [e["log_format"].format(**e) for e in events]
        self.assertIn(
            "backends 127.0.0.1:9004, 127.0.0.1:9005 of upstream app added (all new)",
            lines,
        )
        self.assertIn(
            "backends 127.0.0.1:9001, 127.0.0.1:9002 of upstream app removed (all new)",
            lines,
        )
        self.assertEqual(len([m for m in lines if " added (" in m or " removed (" in m]), 2)
        with capturedLogs() as events:
            pool.requestFinished(c, "r1", Outcome.SUCCESS, 0.1)
        self.assertIn(
            "backend 127.0.0.1:9003 of upstream app removed (all new)",
            [e["log_format"].format(**e) for e in events],
        )

    def test_idleBackendLeavesAtOnce(self) -> None:
        """
        A backend with nothing in flight that is not named again is dropped
        at once: out of L{Pool.backends}, its idle connections kept but no
        longer handed out, the observers told.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        observer = MembershipRecorder()
        pool.addMembershipObserver(observer)
        proto = idleConnection(pool, b)
        pool.setBackends([line(9001)], "gone from DNS")
        self.assertEqual(pool.backends, (a,))
        self.assertEqual(pool.eligible, (a,))
        self.assertNotIn(b, pool._connections)
        self.assertFalse(proto.transport.disconnecting)
        self.assertEqual(observer.events, [("removed", "127.0.0.1:9002")])
        self.assertFalse(pool.leaving(b))

    def test_busyBackendDrainsThenLeaves(self) -> None:
        """
        A backend with requests in flight that is not named again takes no
        new request (it drains, with the reason), keeps its connections
        until its last request finishes, and is dropped then.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        observer = MembershipRecorder()
        pool.addMembershipObserver(observer)
        pool.requestStarted(b, "r1")
        pool.requestStarted(b, "r2")
        pool.setBackends([line(9001)], "gone from DNS")
        self.assertIs(b.state, DRAINING)
        self.assertTrue(pool.leaving(b))
        self.assertIn("leaving the pool (gone from DNS)", b.stateReason)
        self.assertEqual(pool.backends, (a, b))
        self.assertEqual(pool.eligible, (a,))
        self.assertIs(pool.pick(object()), a)
        connections = pool._connections[b]
        self.assertFalse(connections.closed)
        pool.requestFinished(b, "r1", Outcome.SUCCESS, 0.1)
        self.assertEqual(pool.backends, (a, b))
        self.assertEqual(observer.events, [])
        self.assertEqual(pool.backendsRemoved, 0)
        pool.requestFinished(b, "r2", Outcome.SUCCESS, 0.1)
        self.assertEqual(pool.backendsRemoved, 1)
        self.assertEqual(pool.backends, (a,))
        self.assertNotIn(b, pool._connections)
        self.assertEqual(observer.events, [("removed", "127.0.0.1:9002")])
        self.assertEqual(b.responses, 2)

    def test_backendBackLaterGetsItsConnections(self) -> None:
        """
        A backend that left and was dropped joins again as a new backend,
        and its first request reuses an idle connection it left with.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        proto = idleConnection(pool, b)
        pool.setBackends([line(9001)], "gone")
        clock.advance(30)
        pool.setBackends([line(9001), line(9002)], "back")
        again = pool.backends[1]
        self.assertIsNot(again, b)
        self.assertEqual(pool.connection(again), (proto, None))

    def test_leftConnectionsExpire(self) -> None:
        """
        The idle connections of a backend that left are closed once idle
        for C{keepalive_timeout}, and one that joins after that opens new
        ones.
        """
        reactor = MemoryReactorClock()
        pool, clock, (a, b) = makePool("9001", "9002", clock=reactor, keepaliveTimeout=60.0)
        proto = idleConnection(pool, b)
        pool.setBackends([line(9001)], "gone")
        reactor.advance(60)
        self.assertTrue(proto.transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        pool.setBackends([line(9001), line(9002)], "back")
        reused, connecting = pool.connection(pool.backends[1])
        self.assertIsNone(reused)
        self.assertEqual(reactor.tcpClients[-1][:2], ("127.0.0.1", 9002))

    def test_leftConnectionsLimit(self) -> None:
        """
        No more than C{keepalive} idle connections of backends that left
        are kept: beyond, those of the backend that left first are closed.
        """
        pool, clock, (a, b, c) = makePool("9001", "9002", "9003", keepalive=2)
        fromB = [idleConnection(pool, b) for _ in range(2)]
        fromC = [idleConnection(pool, c)]
        pool.setBackends([line(9001), line(9003)], "b gone")
        pool.setBackends([line(9001)], "c gone")
        clock.advance(0)
        self.assertEqual([p.transport.disconnecting for p in fromB], [True, True])
        self.assertFalse(fromC[0].transport.disconnecting)

    def test_leftConnectionsOfAnotherName(self) -> None:
        """
        The connections of an C{https} backend found under one name are not
        handed to the same address found under another: the certificate
        was checked against the name.
        """
        reactor = MemoryReactorClock()
        pool, clock, (a,) = makePool("9001", clock=reactor)
        first = line(443, "127.0.0.2", scheme="https")
        first.origin = "one.example"
        pool.setBackends([first], "one")
        proto = idleConnection(pool, first)
        second = line(443, "127.0.0.2", scheme="https")
        second.origin = "two.example"
        pool.setBackends([], "gone")
        pool.setBackends([second], "two")
        reused, connecting = pool.connection(second)
        self.assertIsNone(reused)
        self.assertEqual(reactor.tcpClients[-1][:2], ("127.0.0.2", 443))
        self.assertFalse(proto.transport.disconnecting)

    def test_leavingBackendComesBack(self) -> None:
        """
        A backend that comes back before its requests have finished stays,
        in the state it had before it left, with its counters.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        pool.requestStarted(b, "r1")
        pool.setBackends([line(9001)], "gone")
        pool.setBackends([line(9001), line(9002)], "back")
        self.assertIs(b.state, UP)
        self.assertFalse(pool.leaving(b))
        self.assertEqual(pool.backends, (a, b))
        self.assertEqual(pool.eligible, (a, b))
        pool.requestFinished(b, "r1", Outcome.SUCCESS, 0.1)
        self.assertEqual(pool.backends, (a, b))
        self.assertEqual(b.requests, 1)
        # It never left: neither removed nor added.
        self.assertEqual((pool.backendsAdded, pool.backendsRemoved), (0, 0))

    def test_leavingBackendComesBackDown(self) -> None:
        """
        A leaving backend that comes back on a C{down} line goes from
        draining straight to disabled, not up on the way.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        pool.requestStarted(b, "r1")
        pool.setBackends([line(9001)], "gone")
        seen: list[Any] = []
        pool.addStateObserver(lambda backend, old, new, why: seen.append((old, new)))
        pool.setBackends([line(9001), line(9002, down=True)], "back, down")
        self.assertEqual(seen, [(DRAINING, DISABLED)])
        self.assertEqual(
            b.stateReason,
            f"back in the pool (back, down); disabled because: {DOWN_IN_CONFIGURATION}",
        )

    def test_leavingBackendDisabledByTheOperatorComesBack(self) -> None:
        """
        An operator's disable of a backend while it is leaving stays when
        it comes back.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        pool.requestStarted(b, "r1")
        pool.setBackends([line(9001)], "gone")
        pool.disable(b, "disabled by the operator")
        pool.setBackends([line(9001), line(9002)], "back")
        self.assertIs(b.state, DISABLED)
        self.assertEqual(pool.eligible, (a,))

    def test_operatorCannotEnableALeavingBackend(self) -> None:
        """
        L{Pool.enable} leaves a backend that is leaving the pool draining,
        and says so.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        pool.requestStarted(b, "r1")
        pool.setBackends([line(9001)], "gone")
        with capturedLogs() as events:
            pool.enable(b, "enabled by the operator")
        self.assertIs(b.state, DRAINING)
        self.assertIn("is leaving the pool", events[0]["log_format"])
        pool.requestFinished(b, "r1", Outcome.SUCCESS, 0.1)
        self.assertEqual(pool.backends, (a,))

    def test_operatorDrainOfALeavingBackend(self) -> None:
        """
        An operator's drain of a backend that is leaving fires once its
        requests finish, when it is dropped.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        pool.requestStarted(b, "r1")
        pool.setBackends([line(9001)], "gone")
        drained = pool.drain(b)
        self.assertNoResult(drained)
        pool.requestFinished(b, "r1", Outcome.SUCCESS, 0.1)
        self.assertIs(self.successResultOf(drained), True)
        self.assertEqual(pool.backends, (a,))

    def test_droppedBackendTimersCancelled(self) -> None:
        """
        A backend dropped while failed (passive) or slow-starting leaves no
        timer behind.
        """
        pool, clock, (a, b, c) = makePool("9001", "9002", "9003", slowStart=10.0)
        fail(pool, b)
        self.assertIs(b.state, FAILED)
        pool.setBackends([line(9001), line(9003), line(9004)], "churn")
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # 9004's ramp
        (d,) = [x for x in pool.backends if x.port == 9004]
        self.assertLess(d.effectiveWeight, 1.0)
        pool.setBackends([line(9001), line(9003)], "churn")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_newBackendNoRampIntoAnEmptyPool(self) -> None:
        """
        Backends that join a pool with no eligible backend take their whole
        weight at once: there is nobody to share the load with.
        """
        pool, clock, (a,) = makePool("9001", slowStart=10.0)
        pool.setBackends([], "empty answer")
        self.assertEqual(pool.backends, ())
        pool.setBackends([line(9002), line(9003)], "answer")
        self.assertEqual([b.effectiveWeight for b in pool.backends], [1.0, 1.0])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_orderAndDuplicates(self) -> None:
        """
        Members are in the order given (leaving ones last); the first of
        two lines with the same identity counts.  Identity is scheme, host
        and port: an C{https} line on the same address is another backend.
        """
        pool, clock, (a, b) = makePool("9001", "9002")
        pool.requestStarted(a, "r1")
        pool.setBackends(
            [line(9003, weight=2), line(9003, weight=5), line(9002),
             line(9002, scheme="https")],
            "reorder",
        )
        names = [x.url for x in pool.backends]
        self.assertEqual(
            names,
            [
                "http://127.0.0.1:9003",
                "http://127.0.0.1:9002",
                "https://127.0.0.1:9002",
                "http://127.0.0.1:9001",
            ],
        )
        self.assertEqual(pool.backends[0].weight, 2)
        pool.requestFinished(a, "r1", Outcome.SUCCESS, 0.1)

    def test_closeClosesEverything(self) -> None:
        """
        L{Pool.close} closes the connections of leaving backends too, and
        those kept of backends that left, and waits for them.
        """
        pool, clock, (a, b, c) = makePool("9001", "9002", "9003")
        pool.requestStarted(b, "r1")
        left = idleConnection(pool, c)
        pool.setBackends([line(9001)], "gone")
        connections = pool._connections[b]
        closing = pool.close()
        self.assertTrue(connections.closed)
        self.assertTrue(pool._connections[a].closed)
        self.assertTrue(left.transport.disconnected)
        self.assertNoResult(closing)
        left.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closing)

    def test_removeObserver(self) -> None:
        """
        An observer removed is no longer told.
        """
        pool, clock, (a,) = makePool("9001")
        observer = MembershipRecorder()
        pool.addMembershipObserver(observer)
        pool.removeMembershipObserver(observer)
        pool.setBackends([line(9002)], "x")
        self.assertEqual(observer.events, [])


#: How many backends gone may still be referenced by the dicts they were
#: deleted from: none on CPython; on PyPy, C{gc.get_referrers} finds the
#: last two to leave still referenced by the pool's and the health
#: checker's dicts, which no longer have them as keys.
_DELETED_KEYS = 0 if platform.python_implementation() == "CPython" else 3


class ChurnTests(SynchronousTestCase):
    """
    Backends that come and go for good, as the autoscaled instances a
    C{resolve} line or etcd finds do, leave nothing behind once gone.
    """

    def churn(self, name: str) -> tuple[Pool, HealthChecker, MemoryReactorClock, set[Backend]]:
        """
        Put C{name}'s pool through 300 changes, each bringing a new
        address and taking the oldest of three away: every backend gets
        requests (each change's still in flight at the next, so that the
        backend that leaves drains first) and idle connections, under slow
        start, C{max_conns} and active health checks.

        @return: the pool, its checker and clock, and the backends that
            are still alive (by weak references) after a collection,
            beyond the pool's members.
        """
        clock = MemoryReactorClock()
        pool = Pool(
            "app",
            [line(10000)],
            buildBalancer(name, REQUIRED_OPTIONS.get(name, {}), Random(7)),
            clock,
            slowStart=1.0,
            keepalive=2,
        )
        checker = HealthChecker(
            pool,
            HealthCheckConfig(path="/healthz", interval=0.05, timeout=0.04, rise=1, fall=1),
            reactor=clock,
            random=Random(1),
            probe=lambda backend: succeed(None),
        )
        checker.startService()
        self.addCleanup(checker.stopService)
        seen: weakref.WeakSet[Backend] = weakref.WeakSet()
        inFlight: list[tuple[Backend, Any]] = []
        for i in range(300):
            pool.setBackends(
                [line(10000 + j, maxConns=4) for j in range(max(0, i - 2), i + 1)],
                f"change {i}",
            )
            seen.update(pool.backends)
            for backend, request in inFlight:
                pool.requestFinished(backend, request, Outcome.SUCCESS, 0.001)
            inFlight = []
            for k in range(6):
                request = makeRequest(
                    client=f"10.0.{i % 250}.{k + 1}", headers={b"X-User": b"%d" % k}
                )
                backend = pool.pick(request)
                if backend is None:
                    continue
                pool.requestStarted(backend, request)
                inFlight.append((backend, request))
            for backend in pool.eligible:
                idleConnection(pool, backend)
            clock.advance(0.1)
        for backend, request in inFlight:
            pool.requestFinished(backend, request, Outcome.SUCCESS, 0.001)
        del backend, request, inFlight
        clock.advance(1)
        gc.collect()
        return pool, checker, clock, set(seen) - set(pool.backends)

    def test_goneBackendsAreFreed(self) -> None:
        """
        Whatever the balancer, the pool, its health checker and its timers
        keep only the members; a backend that is gone is freed, but for
        the few the hashing balancers remember on purpose (see
        L{lbproxy.balancers._hashing}), whose number is bounded.
        """
        for name in BUILTIN_NAMES:
            pool, checker, clock, gone = self.churn(name)
            self.assertEqual(len(pool.backends), 3, name)
            self.assertLessEqual(set(checker.checks), set(pool.backends), name)
            self.assertLessEqual(len(clock.getDelayedCalls()), 20, name)
            if name in ("ip_hash", "consistent_hash"):
                self.assertLessEqual(len(gone), 2 * 3 + 16 + _DELETED_KEYS, name)
            else:
                self.assertLessEqual(len(gone), _DELETED_KEYS, (name, gone))
