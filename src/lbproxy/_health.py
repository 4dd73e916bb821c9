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
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import (
    Request,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
    _DataLoss,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from lbproxy._backend import Backend, BackendState
from lbproxy._config import HealthCheckConfig
from lbproxy._pool import Pool

__all__ = [
    "BODY_LIMIT",
    "JITTER",
    "BackendCheck",
    "HTTPProbe",
    "HealthChecker",
    "ProbeFailed",
    "describeFailure",
]

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


def _describeStatus(ranges: tuple[tuple[int, int], ...]) -> str:
    return " ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def describeFailure(failure: Failure) -> str:
    """
    Say in a few words why a probe failed: C{"connection refused"},
    C{"status 500, expected 200-399"}, and the like.
    """
    error: Any = failure.value
    if isinstance(error, ProbeFailed):
        return error.detail
    if isinstance(
        error, (ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed)
    ):
        reasons = [
            r for r in error.reasons if not r.check(ConnectionDone, ConnectionLost)
        ]
        if not reasons:
            return "connection closed before a complete response"
        return "; ".join(describeFailure(r) for r in reasons)
    if isinstance(error, _DataLoss):
        return "connection closed before the end of the body"
    if isinstance(error, (_error.ConnectionRefusedError, ConnectionRefusedError)):
        return "connection refused"
    if isinstance(error, (_error.TCPTimedOutError, _error.TimeoutError)):
        return "connect timed out"
    if isinstance(error, CancelledError):
        return "cancelled"
    return f"{type(error).__name__}: {failure.getErrorMessage()}"


class _BodySearch(Protocol):
    """
    Read a response body until C{needle} shows up, C{limit} bytes were
    read, or the body ends.

    @ivar finished: fires with whether C{needle} was found, or fails with
        the reason the body broke off.
    """

    def __init__(self, needle: bytes, limit: int) -> None:
        self._needle = needle
        self._limit = limit
        self._buffer = b""
        self.truncated = False
        self.finished: Deferred[bool] = Deferred()

    def _finish(self, found: bool) -> None:
        if not self.finished.called:
            self.finished.callback(found)

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self._buffer += data[: self._limit - len(self._buffer)]
        if self._needle in self._buffer:
            self._finish(True)
        elif len(self._buffer) >= self._limit:
            self.truncated = True
            self._finish(False)

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finish(self._needle in self._buffer)
        else:
            self.finished.errback(reason)


class HTTPProbe:
    """
    The C{health_check} probe: a C{GET} of the check path over a new
    connection to the backend (TLS for C{https://} backends, through the
    pool's own endpoint), sent with C{Connection: close}.

    It passes when the status is one of C{health_status} and, with
    C{health_body} set, when the first L{BODY_LIMIT} bytes of the body
    contain it.  The body is not read otherwise.
    """

    def __init__(self, pool: Pool, config: HealthCheckConfig) -> None:
        self._pool = pool
        self._config = config
        self._needle = None if config.body is None else config.body.encode("utf-8")

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

    async def _probe(self, backend: Backend) -> str:
        proto = await self._pool.newConnection(backend)
        try:
            headers = Headers(
                {
                    b"host": [backend.name.encode("idna")],
                    b"user-agent": [USER_AGENT],
                }
            )
            request = Request(
                b"GET", self._config.path.encode("utf-8"), headers, None, False
            )
            response = await proto.request(request)
            code = response.code
            if not self._passes(code):
                raise ProbeFailed(
                    f"status {code}, expected {_describeStatus(self._config.status)}"
                )
            if self._needle is None:
                return f"status {code}"
            search = _BodySearch(self._needle, BODY_LIMIT)
            response.deliverBody(search)
            found = await search.finished
            if not found:
                where = f" in its first {BODY_LIMIT} bytes" if search.truncated else ""
                raise ProbeFailed(
                    f"status {code}, but the body does not contain "
                    f"{self._config.body!r}{where}"
                )
            return f"status {code}, body contains {self._config.body!r}"
        finally:
            await _close(proto)


async def _close(proto: Any) -> None:
    """
    Close a probe's connection at once, and wait until it is closed.

    @param proto: an L{lbproxy._pool._UpstreamProtocol}.
    """
    if proto.lost:
        return
    lost = proto.whenLost()
    proto.transport.abortConnection()
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
    @ivar lastResult: what the latest probe found, or L{None}.
    @ivar lastTime: the reactor time the latest probe ended, or L{None}.
    @ivar awaitingFirst: L{True} while a backend held down by
        C{health_mandatory} waits for its first passing probe.
    """

    def __init__(self) -> None:
        self.passes = 0
        self.failures = 0
        self.probes = 0
        self.skipped = 0
        self.lastResult: Optional[str] = None
        self.lastTime: Optional[float] = None
        self.awaitingFirst = False
        self.loop: Optional[LoopingCall] = None
        self.pending: Optional[IDelayedCall] = None
        self.inFlight: Optional[Deferred[Any]] = None


Probe = Callable[[Backend], "Deferred[str]"]


class HealthChecker(Service):
    """
    Probe every backend of a pool every C{health_interval}.

    Each backend has its own L{LoopingCall}.  When a probe is due it is run
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
        self.checks = {backend: BackendCheck() for backend in pool.backends}
        if config.mandatory:
            for backend in pool.backends:
                self.checks[backend].awaitingFirst = True
                pool.markDown(
                    backend,
                    "health_mandatory = yes: no health check has passed yet",
                )

    def startService(self) -> None:
        """
        Start a probe timer per backend; the first probes run within
        L{JITTER} times the interval.
        """
        Service.startService(self)
        for backend, check in self.checks.items():
            loop = LoopingCall(self._due, backend)
            loop.clock = self._reactor
            check.loop = loop
            loop.start(self.config.interval, now=True).addErrback(
                self._loopFailed, backend
            )

    def stopService(self) -> Deferred[Any]:
        """
        Stop the timers, and cancel the probes in flight.

        @return: a L{Deferred} that fires when every cancelled probe has
            closed its connection.
        """
        Service.stopService(self)
        waiting: list[Deferred[None]] = []
        for check in self.checks.values():
            if check.loop is not None and check.loop.running:
                check.loop.stop()
            check.loop = None
            if check.pending is not None:
                check.pending.cancel()
                check.pending = None
            inFlight = check.inFlight
            if inFlight is not None:
                done: Deferred[None] = Deferred()
                inFlight.addBoth(_fire, done)
                waiting.append(done)
                inFlight.cancel()
        return gatherResults(waiting)

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

        def expire() -> None:
            timedOut.append(True)
            probing.cancel()

        def finished(result: Any) -> None:
            if timer.active():
                timer.cancel()
            check.inFlight = None
            if not self.running:
                return
            check.lastTime = self._reactor.seconds()
            if isinstance(result, Failure):
                if timedOut:
                    detail = f"no answer within {timeout:g}s"
                else:
                    detail = describeFailure(result)
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
