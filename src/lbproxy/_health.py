# -*- test-case-name: tests.test_health -*-
"""
Active health checks: every backend of a pool probed with an HTTP GET on a
timer, C{health_fall} consecutive failures taking it down and
C{health_rise} consecutive passes bringing it back.

The checker only counts; the state machine is the pool's (see
L{lbproxy._pool.Pool.markDown} and L{lbproxy._pool.Pool.markUp}).
"""

from __future__ import annotations

from random import Random
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet import error as _error
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    gatherResults,
    maybeDeferred,
)
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy._backend import Backend, BackendState
from lbproxy._client import ResponseHandler, ResponseHead, UpstreamConnection
from lbproxy._config import HealthCheckConfig
from lbproxy._interfaces import IMembershipObserver
from lbproxy._pool import Pool

#: The most a probe is delayed after it is due, as a share of
#: C{health_interval}, so that the probes of many backends (and of many
#: lbproxy processes) spread out instead of arriving together.
JITTER = 0.1

#: The most of a response body that is searched for C{health_body}.
BODY_LIMIT = 64 * 1024

#: The user agent of the probes.
USER_AGENT = b"lbproxy health check"


class ProbeFailed(Exception):
    """
    A probe got an answer, and the answer is a failure.

    @ivar detail: what was wrong, for the logs, a L{str}.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NoAnswer(Exception):
    """
    A probe got no complete answer: the connection broke before the end of
    the response.

    @ivar detail: what happened, for the logs, a L{str}.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ParseError(Exception):
    """
    The backend's answer to a probe is not valid HTTP/1.1.

    (The name is the one Twisted's client gave this failure, under which
    it appeared in the health check log lines until lbproxy probed with
    its own client.)
    """


def _describeStatus(ranges: tuple[tuple[int, int], ...]) -> str:
    return " ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def describeFailure(failure: Failure) -> str:
    """
    Say in a few words why a probe failed: C{"connection refused"},
    C{"status 500, expected 200-399"}, and the like.
    """
    error: Any = failure.value
    if isinstance(error, (ProbeFailed, NoAnswer)):
        return error.detail
    if isinstance(error, (_error.ConnectionRefusedError, ConnectionRefusedError)):
        return "connection refused"
    if isinstance(error, (_error.TCPTimedOutError, _error.TimeoutError)):
        return "connect timed out"
    if isinstance(error, CancelledError):
        return "cancelled"
    return f"{type(error).__name__}: {failure.getErrorMessage()}"


class _ProbeConnection(UpstreamConnection):
    """
    The connection of one probe: an L{UpstreamConnection} that remembers
    why it was lost, so that a probe that never got its answer can say why
    (a TLS handshake refused, say) rather than only that the connection
    closed.

    @ivar lostReason: the L{Failure} given to C{connectionLost}, or L{None}.
    """

    lostReason: Optional[Failure] = None

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lostReason = reason
        UpstreamConnection.connectionLost(self, reason)


class _ProbeAnswer(ResponseHandler):
    """
    Judge the response to a probe as it arrives.

    The status decides at once, unless C{body} is set: then the body is
    searched for it as it arrives, keeping at most C{limit} bytes, until
    it shows up, C{limit} bytes were read, or the body ends.

    @ivar result: fires with a short description of a passing answer, or
        fails with L{ProbeFailed} (a wrong answer), L{NoAnswer} or
        L{ParseError}.  Nothing after its result changes it.
    @ivar truncated: whether the body was cut off at C{limit} bytes.
    """

    def __init__(
        self,
        connection: _ProbeConnection,
        passes: Callable[[int], bool],
        expected: str,
        body: Optional[str],
        limit: int,
    ) -> None:
        self._connection = connection
        self._passes = passes
        self._expected = expected
        self._body = body
        self._needle = None if body is None else body.encode("utf-8")
        self._limit = limit
        self._code = 0
        self._seen = b""
        self.truncated = False
        self.result: Deferred[str] = Deferred()

    def _pass(self, description: str) -> None:
        if not self.result.called:
            self.result.callback(description)

    def _fail(self, error: Exception | Failure) -> None:
        if not self.result.called:
            self.result.errback(error)

    def _lacks(self) -> None:
        where = f" in its first {self._limit} bytes" if self.truncated else ""
        self._fail(
            ProbeFailed(
                f"status {self._code}, but the body does not contain "
                f"{self._body!r}{where}"
            )
        )

    def headReceived(self, head: ResponseHead) -> None:
        code = self._code = head.code
        if not self._passes(code):
            self._fail(ProbeFailed(f"status {code}, expected {self._expected}"))
        elif self._needle is None:
            self._pass(f"status {code}")

    def bodyReceived(self, data: bytes) -> None:
        if self.result.called or self._needle is None:
            return
        self._seen += data[: self._limit - len(self._seen)]
        if self._needle in self._seen:
            self._pass(f"status {self._code}, body contains {self._body!r}")
        elif len(self._seen) >= self._limit:
            self.truncated = True
            self._lacks()

    def bodyFinished(self, complete: bool, why: str) -> None:
        if self.result.called:
            return
        if not complete:
            self._fail(NoAnswer(why))
        else:
            # The search already passed if the needle were there.
            self._lacks()

    def failed(self, received: bool, invalid: bool, why: str) -> None:
        if invalid:
            self._fail(ParseError(why))
            return
        reason = self._connection.lostReason
        if reason is not None and not reason.check(ConnectionDone, ConnectionLost):
            self._fail(reason)
        else:
            self._fail(NoAnswer("connection closed before a complete response"))


class HTTPProbe:
    """
    The C{health_check} probe: a C{GET} of the check path over a new
    connection to the backend (TLS for C{https://} backends, through the
    pool's own endpoint), sent with C{Connection: close}.

    It passes when the status is one of C{health_status} and, with
    C{health_body} set, when the first L{BODY_LIMIT} bytes of the body
    contain it.  The body is not read otherwise.

    The probe speaks through lbproxy's own L{UpstreamConnection}, the
    client that forwards requests, rather than Twisted's public
    L{twisted.web.client.Agent}: with it the probe holds its connection,
    so that it can abort it the moment the answer is judged (a wrong
    status, the body searched far enough) and wait until it is closed (as
    L{HealthChecker.stopService} does); the body comes to the probe as it
    arrives, so at most L{BODY_LIMIT} bytes of it are ever kept; the
    connection is counted by the pool like every other; and a backend is
    judged by the same parsing of responses that requests to it will
    meet.  An C{Agent} hides its connection in its
    L{twisted.web.client.HTTPConnectionPool}, and buffers in memory
    whatever of a body arrives before the body is asked for.
    """

    def __init__(self, pool: Pool, config: HealthCheckConfig) -> None:
        self._pool = pool
        self._config = config

    def __call__(self, backend: Backend) -> Deferred[str]:
        """
        Probe C{backend}.

        @return: a L{Deferred} that fires with a short description of the
            passing answer, or fails (with L{ProbeFailed} when the backend
            answered wrongly).  Cancelling it closes the connection.
        """
        return Deferred.fromCoroutine(self._probe(backend))

    def _passes(self, code: int) -> bool:
        return any(lo <= code <= hi for lo, hi in self._config.status)

    def requestHead(self, backend: Backend) -> bytes:
        """
        The request a probe of C{backend} sends.

        @raise ValueError: when the check path cannot be sent as is.
        """
        path = self._config.path.encode("utf-8")
        if any(byte <= 0x20 or byte == 0x7F for byte in path):
            raise ValueError(f"invalid health check path {path!r}")
        return b"".join(
            [
                b"GET ",
                path,
                b" HTTP/1.1\r\nHost: ",
                backend.authority.encode("idna"),
                b"\r\nUser-Agent: ",
                USER_AGENT,
                b"\r\nConnection: close\r\n\r\n",
            ]
        )

    async def _probe(self, backend: Backend) -> str:
        head = self.requestHead(backend)
        connection = await self._pool.newConnection(backend, _ProbeConnection)
        assert isinstance(connection, _ProbeConnection)
        try:
            answer = _ProbeAnswer(
                connection,
                self._passes,
                _describeStatus(self._config.status),
                self._config.body,
                BODY_LIMIT,
            )
            connection.send(answer, b"GET", head)
            return await answer.result
        finally:
            await _close(connection)


async def _close(connection: UpstreamConnection) -> None:
    """
    Close a probe's connection at once (its response is judged, or the
    probe was cancelled), and wait until it is closed.
    """
    if connection.lost:
        return
    lost = connection.whenLost()
    connection.detach()
    await lost


def _fire(result: object, deferred: Deferred[None]) -> None:
    deferred.callback(None)


class BackendCheck:
    """
    The active-check record of one backend, for the checker and the status
    page.

    @ivar passes: consecutive passing probes.
    @ivar failures: consecutive failed probes.
    @ivar probes: probes run, in total.
    @ivar skipped: probes skipped because the previous one was still
        running when the next was due.
    @ivar passed: probes that passed, in total.
    @ivar failed: probes that failed (timed out included), in total.
    @ivar lastResult: what the latest probe found, or L{None}.
    @ivar lastPassed: whether the latest probe passed, or L{None} before
        the first one ends.
    @ivar lastLatency: the seconds the latest probe took, or L{None}.
    @ivar lastTime: the reactor time the latest probe ended, or L{None}.
    @ivar awaitingFirst: L{True} while a backend held down by
        C{health_mandatory} waits for its first passing probe.
    """

    def __init__(self) -> None:
        self.passes = 0
        self.failures = 0
        self.probes = 0
        self.skipped = 0
        self.passed = 0
        self.failed = 0
        self.lastResult: Optional[str] = None
        self.lastPassed: Optional[bool] = None
        self.lastLatency: Optional[float] = None
        self.lastTime: Optional[float] = None
        self.awaitingFirst = False
        self.loop: Optional[LoopingCall] = None
        self.pending: Optional[IDelayedCall] = None
        self.inFlight: Optional[Deferred[Any]] = None


Probe = Callable[[Backend], "Deferred[str]"]


@implementer(IMembershipObserver)
class HealthChecker(Service):
    """
    Probe every backend of a pool every C{health_interval}.

    Each backend has its own L{LoopingCall <twisted.internet.task.LoopingCall>}.  When a probe is due it is run
    after a random delay of up to L{JITTER} times the interval, so
    intervals between two probes of a backend lie between 90% and 110% of
    C{health_interval}.  A probe that is still running (or waiting for its
    delay) when the next one is due makes the next one be skipped, so that
    probes never pile up on a slow backend.  A probe that has not finished
    after C{health_timeout} is cancelled and counts as a failure.

    Disabled backends are not probed (their counts start again when they
    are enabled); draining ones are, so that enabling them puts them in
    the state their health says.

    With C{health_mandatory}, every backend is down from the moment the
    checker is built until its first probe passes.  Otherwise backends are
    up until C{health_fall} probes fail.

    Stopping the service stops the timers and cancels the probes in
    flight; their results are ignored.

    The checker follows the pool's membership (it is the pool's
    L{IMembershipObserver}): a backend that joins is probed from then on
    (down until its first pass with C{health_mandatory}), and one that is
    dropped stops being probed.  A placeholder (a C{resolve} line with no
    address yet) is not probed.

    @ivar pool: the L{Pool} whose backends are probed.
    @ivar config: the L{HealthCheckConfig}.
    @ivar checks: each backend's L{BackendCheck}.
    """

    _log = Logger()

    def __init__(
        self,
        pool: Pool,
        config: HealthCheckConfig,
        reactor: Any = None,
        random: Optional[Random] = None,
        probe: Optional[Probe] = None,
    ) -> None:
        """
        @param pool: the pool whose backends to probe.
        @param config: the upstream's health check settings.
        @param reactor: an L{IReactorTime} (and, for the default probe, the
            pool's reactor is used to connect); the global reactor when
            L{None}.
        @param random: the source of the jitter.
        @param probe: called with a backend, returns a L{Deferred} that fires
            on a pass and fails on a failure, and closes what it opened
            when cancelled; an L{HTTPProbe} when L{None}.
        """
        if reactor is None:
            from twisted.internet import reactor as _globalReactor

            reactor = _globalReactor
        self.pool = pool
        self.config = config
        self.name = f"health-check:{pool.name}"
        self._reactor = reactor
        self._random = random if random is not None else Random()
        self._probe: Probe = probe if probe is not None else HTTPProbe(pool, config)
        self.checks: dict[Backend, BackendCheck] = {}
        for backend in pool.backends:
            self._follow(backend)
        pool.addMembershipObserver(self)

    def _follow(self, backend: Backend) -> Optional[BackendCheck]:
        if backend.placeholder:
            # A name with no address yet: nothing to probe.
            return None
        check = self.checks[backend] = BackendCheck()
        if self.config.mandatory:
            check.awaitingFirst = True
            self.pool.markDown(
                backend, "health_mandatory = yes: no health check has passed yet"
            )
        return check

    def backendAdded(self, backend: Backend) -> None:
        """
        C{backend} joined the pool: probe it from now on.
        """
        check = self._follow(backend)
        if check is not None and self.running:
            self._startLoop(backend, check)

    def backendRemoved(self, backend: Backend) -> None:
        """
        C{backend} left the pool: stop probing it (a probe in flight is
        cancelled, its result ignored).
        """
        check = self.checks.pop(backend, None)
        if check is not None:
            self._stopCheck(check)

    def startService(self) -> None:
        """
        Start a probe timer per backend; the first probes run within
        L{JITTER} times the interval.
        """
        Service.startService(self)
        for backend, check in self.checks.items():
            self._startLoop(backend, check)

    def _startLoop(self, backend: Backend, check: BackendCheck) -> None:
        loop = LoopingCall(self._due, backend)
        loop.clock = self._reactor
        check.loop = loop
        loop.start(self.config.interval, now=True).addErrback(
            self._loopFailed, backend
        )

    def stopService(self) -> Deferred[Any]:
        """
        Stop the timers, and cancel the probes in flight.

        @return: a L{Deferred <twisted.internet.defer.Deferred>} that fires when every cancelled probe has
            closed its connection.
        """
        Service.stopService(self)
        waiting = [self._stopCheck(check) for check in self.checks.values()]
        return gatherResults([d for d in waiting if d is not None])

    def _stopCheck(self, check: BackendCheck) -> Optional[Deferred[None]]:
        """
        Stop the timer of C{check} and cancel its probe in flight.

        @return: L{None}, or a L{Deferred} that fires once the cancelled
            probe has closed its connection.
        """
        if check.loop is not None and check.loop.running:
            check.loop.stop()
        check.loop = None
        if check.pending is not None:
            check.pending.cancel()
            check.pending = None
        inFlight = check.inFlight
        if inFlight is None:
            return None
        done: Deferred[None] = Deferred()
        inFlight.addBoth(_fire, done)
        inFlight.cancel()
        return done

    def _loopFailed(self, failure: Failure, backend: Backend) -> None:
        self._log.failure(
            "health check timer of backend {backend} of upstream {upstream} stopped",
            failure,
            backend=backend.name,
            upstream=self.pool.name,
        )

    def _due(self, backend: Backend) -> None:
        """
        A probe of C{backend} is due: schedule it after the jitter, unless
        the previous one is still running.
        """
        check = self.checks[backend]
        if check.pending is not None or check.inFlight is not None:
            check.skipped += 1
            self._log.debug(
                "health check of backend {backend} of upstream {upstream} "
                "skipped: the previous one is still running",
                backend=backend.name,
                upstream=self.pool.name,
            )
            return
        if backend.adminState is BackendState.DISABLED:
            check.passes = check.failures = 0
            return
        delay = self._random.uniform(0.0, JITTER * self.config.interval)
        check.pending = self._reactor.callLater(delay, self._run, backend)

    def _run(self, backend: Backend) -> None:
        """
        Probe C{backend} now, with C{health_timeout}.
        """
        check = self.checks[backend]
        check.pending = None
        check.probes += 1
        timeout = self.config.timeout
        timedOut = []
        started = self._reactor.seconds()

        def expire() -> None:
            timedOut.append(True)
            probing.cancel()

        def finished(result: Any) -> None:
            if timer.active():
                timer.cancel()
            check.inFlight = None
            if not self.running or self.checks.get(backend) is not check:
                # Stopped, or the backend left the pool meanwhile.
                return
            now = check.lastTime = self._reactor.seconds()
            check.lastLatency = now - started
            if isinstance(result, Failure):
                if timedOut:
                    detail = f"no answer within {timeout:g}s"
                else:
                    detail = describeFailure(result)
                # The reason given, drop the traceback: an error thrown
                # into a probe's coroutine keeps, through its frames,
                # whatever called back with it (the delayed call of a
                # refused connect, and so the error itself), a cycle for
                # the collector.
                result.cleanFailure()
                self._failed(backend, check, detail)
            else:
                self._passed(backend, check, str(result))

        probing = maybeDeferred(self._probe, backend)
        check.inFlight = probing
        timer = self._reactor.callLater(timeout, expire)
        probing.addBoth(finished)

    def _passed(self, backend: Backend, check: BackendCheck, detail: str) -> None:
        check.failures = 0
        check.passes += 1
        check.passed += 1
        check.lastPassed = True
        check.lastResult = f"passed: {detail}"
        if not backend.checkedDown:
            return
        if check.awaitingFirst:
            reason = f"first passing health check: {detail}"
        elif check.passes >= self.config.rise:
            reason = (
                f"{check.passes} consecutive passing health checks, latest: {detail}"
            )
        else:
            self._log.info(
                "health check of backend {backend} of upstream {upstream} "
                "passed ({passes} of {rise} to come back): {detail}",
                backend=backend.name,
                upstream=self.pool.name,
                passes=check.passes,
                rise=self.config.rise,
                detail=detail,
            )
            return
        check.awaitingFirst = False
        self.pool.markUp(backend, reason)

    def _failed(self, backend: Backend, check: BackendCheck, detail: str) -> None:
        check.passes = 0
        check.failures += 1
        check.failed += 1
        check.lastPassed = False
        check.lastResult = f"failed: {detail}"
        if backend.checkedDown:
            self._log.debug(
                "health check of backend {backend} of upstream {upstream} "
                "failed again: {detail}",
                backend=backend.name,
                upstream=self.pool.name,
                detail=detail,
            )
            return
        if check.failures < self.config.fall:
            self._log.info(
                "health check of backend {backend} of upstream {upstream} "
                "failed ({failures} of {fall} to go down): {detail}",
                backend=backend.name,
                upstream=self.pool.name,
                failures=check.failures,
                fall=self.config.fall,
                detail=detail,
            )
            return
        self.pool.markDown(
            backend,
            f"{check.failures} consecutive failed health checks, latest: {detail}",
        )
