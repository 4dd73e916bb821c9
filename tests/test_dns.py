"""
Tests for L{lbproxy._dns}: C{resolve} and C{service=} server lines followed
through DNS, on a fake clock, against a real zone (Twisted's authority in
memory, L{lbproxy.testing.DNSZone}).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.names import dns
from twisted.names.error import DNSServerError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy._backend import Backend, BackendState, Outcome
from lbproxy._config import (
    ConfigError,
    HealthCheckConfig,
    parseConfigText,
    parseServer,
)
from lbproxy._connections import backendEndpoint
from lbproxy._dns import (
    RETRY_CAP,
    DNSBackends,
    initialBackends,
    systemServers,
)
from lbproxy._health import HTTPProbe
from lbproxy._interfaces import IMembershipObserver, IMembershipSource
from lbproxy._pool import Pool
from lbproxy._values import parseResolverAddress
from lbproxy.service import LoadBalancerService
from lbproxy.testing import DNSZone
from tests.test_server import _Transport

UP = BackendState.UP
DOWN = BackendState.DOWN
DRAINING = BackendState.DRAINING


@implementer(IMembershipObserver)
class Members:
    """
    Records the backends that join and leave a pool.
    """

    def __init__(self) -> None:
        self.added: list[str] = []
        self.removed: list[str] = []

    def backendAdded(self, backend: Backend) -> None:
        self.added.append(backend.name)

    def backendRemoved(self, backend: Backend) -> None:
        self.removed.append(backend.name)


class BreakableResolver:
    """
    A resolver that asks a L{DNSZone}, or fails every query while
    C{broken} is set (as a server that times out or fails would), and
    counts the queries.
    """

    def __init__(self, zone: DNSZone) -> None:
        self.zone = zone
        self.broken: Optional[Exception] = None
        self.brokenTypes: set[int] = {dns.A, dns.AAAA, dns.SRV}
        self.queries: list[tuple[str, int]] = []

    def _ask(self, kind: int, lookup: Any, name: str, timeout: Any) -> Deferred[Any]:
        self.queries.append((name, kind))
        if self.broken is not None and kind in self.brokenTypes:
            return fail(self.broken)
        result: Deferred[Any] = lookup(name, timeout)
        return result

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._ask(dns.A, self.zone.lookupAddress, name, timeout)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._ask(dns.AAAA, self.zone.lookupIPV6Address, name, timeout)

    def lookupService(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._ask(dns.SRV, self.zone.lookupService, name, timeout)


def makeSource(
    servers: str,
    zone: Optional[DNSZone] = None,
    resolveMin: float = 1.0,
    resolveMax: float = 300.0,
    clock: Optional[Clock] = None,
) -> tuple[DNSBackends, Pool, Clock, BreakableResolver]:
    """
    A pool of the server lines C{servers} (one per line) and the
    L{DNSBackends} that follows them, not started, on a fake clock (a
    new L{Clock} unless given one).
    """
    clock = clock if clock is not None else Clock()
    lines = [parseServer(text) for text in servers.strip().splitlines()]
    pool = Pool("app", initialBackends(lines), None, clock)
    resolver = BreakableResolver(zone if zone is not None else DNSZone())
    source = DNSBackends(pool, lines, resolver, clock, resolveMin, resolveMax)  # type: ignore[arg-type]
    return source, pool, clock, resolver


def start(source: DNSBackends, clock: Clock) -> None:
    """
    Start C{source} and let its first answers be applied: in the turn after
    the one that read them.
    """
    source.startService()
    clock.advance(0)


def names(pool: Pool) -> list[str]:
    return [b.name for b in pool.backends]


class ConfigTests(SynchronousTestCase):
    """
    The server line options C{resolve} and C{service=NAME}, the upstream
    keys C{resolve_min} and C{resolve_max}, and C{resolver}.
    """

    def test_resolveLine(self) -> None:
        server = parseServer("app.internal:8080 resolve weight=2 backup")
        self.assertEqual(
            (server.host, server.port, server.resolve, server.service, server.weight),
            ("app.internal", 8080, True, None, 2),
        )
        self.assertTrue(server.backup)

    def test_serviceLine(self) -> None:
        """
        A C{service=} line has port 0: the SRV records give the ports.
        """
        server = parseServer("https://app.internal service=HTTP resolve")
        self.assertEqual(
            (server.scheme, server.host, server.port, server.service),
            ("https", "app.internal", 0, "http"),
        )

    def test_badLines(self) -> None:
        """
        Each misuse is refused with what was expected.
        """
        for text, expected in [
            ("10.0.0.1:80 resolve", "a host name with resolve, not the IP address 10.0.0.1"),
            ("[::1]:80 resolve", "a host name with resolve, not the IP address ::1"),
            ("app service=http", "service=NAME together with resolve"),
            ("app:80 service=http resolve", "no port with service=NAME"),
            ("app service=http resolve weight=2", "no weight= with service=NAME"),
            ("app service=h_t resolve", "a service name such as http"),
            ("app service=-http resolve", "a service name such as http"),
            ("app service=0123 resolve", "a service name such as http"),
            ("app service=abcdefghijklmnop resolve", "a service name such as http"),
            ("app resolv", "did you mean 'resolve'?"),
        ]:
            with self.assertRaises(ValueError, msg=text) as caught:
                parseServer(text)
            self.assertIn(expected, str(caught.exception), text)

    def test_resolverAddresses(self) -> None:
        self.assertEqual(parseResolverAddress("127.0.0.1"), ("127.0.0.1", 53))
        self.assertEqual(parseResolverAddress("127.0.0.1:5353"), ("127.0.0.1", 5353))
        self.assertEqual(parseResolverAddress("[::1]:53"), ("::1", 53))
        self.assertEqual(parseResolverAddress("::1"), ("::1", 53))
        for bad in ("dns.example", "127.0.0.1:0", "127.0.0.1:99999", "[::1", "1.2.3"):
            self.assertRaises(ValueError, parseResolverAddress, bad)

    def _config(self, lbproxy: str = "", upstream: str = "") -> str:
        return (
            "[lbproxy]\nlisten = tcp:0\n" + lbproxy + "\n"
            "[upstream:app]\nservers =\n    app.internal:8080 resolve\n" + upstream + "\n"
            "[vhost:app]\ndefault = yes\nupstream = app\n"
        )

    def test_configKeys(self) -> None:
        config = parseConfigText(
            self._config(
                "resolver = 127.0.0.1:5353 [::1]", "resolve_min = 500ms\nresolve_max = 1m"
            ),
            "site.ini",
        )
        self.assertEqual(config.proxy.resolver, (("127.0.0.1", 5353), ("::1", 53)))
        upstream = config.upstreams["app"]
        self.assertEqual((upstream.resolveMin, upstream.resolveMax), (0.5, 60.0))
        self.assertTrue(upstream.servers[0].resolve)

    def test_defaults(self) -> None:
        config = parseConfigText(self._config(), "site.ini")
        self.assertEqual(config.proxy.resolver, ())
        upstream = config.upstreams["app"]
        self.assertEqual((upstream.resolveMin, upstream.resolveMax), (1.0, 300.0))

    def test_configErrorsAreOneLine(self) -> None:
        """
        A bad C{resolver}, a C{resolve_max} below C{resolve_min} and a
        C{resolve} on an IP address are each reported on one line naming
        the file, section and key.
        """
        for lbproxy, upstream, servers, expected in [
            ("resolver = dns.example", "", None, "resolver"),
            ("", "resolve_min = 10s\nresolve_max = 5s", None, "resolve_max"),
            ("", "", "10.0.0.1:80 resolve", "servers"),
        ]:
            text = self._config(lbproxy, upstream)
            if servers is not None:
                text = text.replace("app.internal:8080 resolve", servers)
            with self.assertRaises(ConfigError) as caught:
                parseConfigText(text, "site.ini")
            [error] = caught.exception.errors
            self.assertNotIn("\n", error)
            self.assertIn("site.ini", error)
            self.assertIn(expected, error)

    def test_systemServers(self) -> None:
        """
        The C{nameserver} lines of a resolv.conf, or 127.0.0.1 without any.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "# comment\nsearch example\nnameserver 10.0.0.53\n"
                "nameserver fe80::1%eth0\nnameserver bogus\n"
            )
        self.assertEqual(systemServers(path), [("10.0.0.53", 53), ("fe80::1", 53)])
        self.assertEqual(systemServers(path + ".missing"), [("127.0.0.1", 53)])


class AddressTests(SynchronousTestCase):
    """
    A C{resolve} line becomes one backend per A and AAAA address, looked
    up again as TTLs say.
    """

    def setUp(self) -> None:
        self.zone = DNSZone()
        self.zone.setAddresses("app.test", ["127.0.0.3", "127.0.0.2", "::1"], ttl=30)

    def test_placeholderBeforeTheFirstAnswer(self) -> None:
        """
        Before its first lookup, a C{resolve} line is a placeholder: down,
        with the reason, never picked; other lines are themselves.
        """
        source, pool, clock, _ = makeSource("app.test:8080 resolve\n127.0.0.9:80")
        placeholder, static = pool.backends
        self.assertEqual(placeholder.name, "app.test:8080")
        self.assertIs(placeholder.state, DOWN)
        self.assertEqual(
            placeholder.stateReason,
            "app.test: no address yet (waiting for the first DNS answer)",
        )
        self.assertEqual(pool.eligible, (static,))

    def test_oneBackendPerAddress(self) -> None:
        """
        Once started, the line's backends are its addresses (IPv4 first,
        each family in order), on the line's port, with its settings; the
        placeholder is gone.
        """
        source, pool, clock, _ = makeSource(
            "https://app.test:8443 resolve weight=3 max_fails=2\n127.0.0.9:80", self.zone
        )
        start(source, clock)
        self.assertEqual(
            names(pool), ["127.0.0.2:8443", "127.0.0.3:8443", "[::1]:8443", "127.0.0.9:80"]
        )
        for backend in pool.backends[:3]:
            self.assertEqual(
                (backend.scheme, backend.weight, backend.maxFails, backend.origin),
                ("https", 3, 2, "app.test"),
            )
            self.assertIs(backend.state, UP)
        self.assertEqual(len(pool.eligible), 4)
        source.stopService()

    def test_lookedUpAgainAtTheTTL(self) -> None:
        """
        The next lookup comes when the TTL runs out, and a changed answer
        changes the pool without a reload: a backend that stays is the
        same object, a new one joins, one that left is dropped.
        """
        source, pool, clock, resolver = makeSource("app.test:80 resolve", self.zone)
        start(source, clock)
        self.addCleanup(source.stopService)
        members = Members()
        pool.addMembershipObserver(members)
        kept = pool.backends[0]
        kept.requests = 7
        self.zone.setAddresses("app.test", ["127.0.0.2", "127.0.0.4"], ttl=30)
        clock.advance(29.9)
        self.assertEqual(len(resolver.queries), 2)
        clock.advance(0.1)
        self.assertEqual(len(resolver.queries), 4)
        self.assertEqual(names(pool), ["127.0.0.2:80", "127.0.0.4:80"])
        self.assertIs(pool.backends[0], kept)
        self.assertEqual(kept.requests, 7)
        self.assertIn("127.0.0.4:80", members.added)
        self.assertEqual(sorted(members.removed), ["127.0.0.3:80", "[::1]:80"])

    def test_ttlClamped(self) -> None:
        """
        A TTL below C{resolve_min} waits C{resolve_min}; one above
        C{resolve_max} waits C{resolve_max}; the smallest TTL of the
        records counts.
        """
        for ttls, expected in [((0, 0), 2.0), ((5, 60), 5.0), ((3600, 7200), 100.0)]:
            zone = DNSZone()
            zone.setRecords(
                "app.test",
                [dns.Record_A("127.0.0.2", ttl=ttls[0]), dns.Record_A("127.0.0.3", ttl=ttls[1])],
            )
            source, pool, clock, resolver = makeSource(
                "app.test:80 resolve", zone, resolveMin=2.0, resolveMax=100.0
            )
            start(source, clock)
            self.assertEqual(len(resolver.queries), 2)
            clock.advance(expected - 0.01)
            self.assertEqual(len(resolver.queries), 2, ttls)
            clock.advance(0.01)
            self.assertEqual(len(resolver.queries), 4, ttls)
            source.stopService()

    def test_sameAnswerChangesNothing(self) -> None:
        """
        An answer with the same addresses, whatever their order, leaves the
        pool as it is: the balancer is not told again.
        """
        source, pool, clock, resolver = makeSource("app.test:80 resolve", self.zone)
        start(source, clock)
        self.addCleanup(source.stopService)
        calls = []
        original = pool.setBackends
        pool.setBackends = lambda *a: (calls.append(a), original(*a))  # type: ignore[method-assign]
        self.zone.setAddresses("app.test", ["::1", "127.0.0.2", "127.0.0.3"], ttl=30)
        clock.advance(30)
        clock.advance(30)
        self.assertEqual(len(resolver.queries), 6)
        self.assertEqual(calls, [])

    def test_removedBackendDrains(self) -> None:
        """
        A backend that leaves the answer while a request is in flight to
        it takes no new request, and is dropped when that one finishes.
        """
        source, pool, clock, _ = makeSource("app.test:80 resolve", self.zone)
        start(source, clock)
        self.addCleanup(source.stopService)
        leaving = pool.backendNamed("127.0.0.3:80")
        pool.requestStarted(leaving, "r1")
        self.zone.setAddresses("app.test", ["127.0.0.2"], ttl=30)
        clock.advance(30)
        self.assertIs(leaving.state, DRAINING)
        self.assertIn("leaving the pool (DNS answer for app.test", leaving.stateReason)
        self.assertEqual([b.name for b in pool.eligible], ["127.0.0.2:80"])
        pool.requestFinished(leaving, "r1", Outcome.SUCCESS, 0.01)
        self.assertEqual(names(pool), ["127.0.0.2:80"])

    def test_failedLookupKeepsTheLastAnswer(self) -> None:
        """
        A lookup that fails keeps the backends the line had, says so in
        the log, and is tried again after C{resolve_min}, doubled after
        each failure in a row up to L{RETRY_CAP}; the next good answer
        applies and the TTL counts again.
        """
        source, pool, clock, resolver = makeSource("app.test:80 resolve", self.zone)
        start(source, clock)
        self.addCleanup(source.stopService)
        before = pool.backends
        resolver.broken = DNSServerError("SERVFAIL")
        with capturedLogs() as events:
            clock.advance(30)
        self.assertEqual(pool.backends, before)
        self.assertIn("stay as they were", events[-1]["log_format"])
        times = []
        for _ in range(8):
            count = len(resolver.queries)
            waited = 0.0
            while len(resolver.queries) == count:
                clock.advance(0.5)
                waited += 0.5
            times.append(waited)
        self.assertEqual(times, [1.0, 2.0, 4.0, 8.0, 16.0, RETRY_CAP, RETRY_CAP, RETRY_CAP])
        self.assertEqual(pool.backends, before)
        resolver.broken = None
        self.zone.setAddresses("app.test", ["127.0.0.5"], ttl=10)
        clock.advance(RETRY_CAP)
        self.assertEqual(names(pool), ["127.0.0.5:80"])
        count = len(resolver.queries)
        clock.advance(10)
        self.assertEqual(len(resolver.queries), count + 2)

    def test_emptyAnswerKeepsTheLastAnswer(self) -> None:
        """
        A name that stops existing, or stops having addresses, does not
        empty the line: it counts as a failed lookup.
        """
        source, pool, clock, resolver = makeSource("app.test:80 resolve", self.zone)
        start(source, clock)
        self.addCleanup(source.stopService)
        before = pool.backends
        self.zone.setAddresses("app.test", [])
        with capturedLogs() as events:
            clock.advance(30)
        self.assertEqual(pool.backends, before)
        self.assertIn("no such name", events[-1]["why"])
        self.zone.setRecords("app.test", [dns.Record_TXT(b"hello")])
        with capturedLogs() as events:
            clock.advance(1)
        self.assertEqual(pool.backends, before)
        self.assertEqual(events[-1]["why"], "no A or AAAA record")

    def test_oneFamilyFails(self) -> None:
        """
        When the AAAA query fails but the A query answers, the new A
        addresses apply and the earlier AAAA ones stand in; the line is
        looked up again soon.
        """
        source, pool, clock, resolver = makeSource("app.test:80 resolve", self.zone)
        start(source, clock)
        self.addCleanup(source.stopService)
        resolver.broken = DNSServerError("SERVFAIL")
        resolver.brokenTypes = {dns.AAAA}
        self.zone.setAddresses("app.test", ["127.0.0.7", "::2"], ttl=30)
        with capturedLogs() as events:
            clock.advance(30)
        self.assertEqual(names(pool), ["127.0.0.7:80", "[::1]:80"])
        self.assertTrue([e for e in events if "partly failed" in e["log_format"]])
        resolver.broken = None
        clock.advance(1)
        self.assertEqual(names(pool), ["127.0.0.7:80", "[::2]:80"])

    def test_startUnresolvableThenItAppears(self) -> None:
        """
        A name that does not resolve at the start leaves its placeholder
        down, with the DNS error as its reason, until it resolves; then its
        backends take requests.
        """
        source, pool, clock, resolver = makeSource("new.test:80 resolve\n127.0.0.9:80", self.zone)
        start(source, clock)
        self.addCleanup(source.stopService)
        placeholder = pool.backends[0]
        self.assertTrue(placeholder.placeholder)
        self.assertEqual(
            placeholder.stateReason, "new.test: no address yet (DNS error: no such name)"
        )
        self.assertIs(placeholder.state, DOWN)
        self.assertIn("new.test:80 down (new.test: no address yet", pool.unavailableReason())
        resolver.broken = DNSServerError("SERVFAIL")
        clock.advance(1)
        self.assertIn("DNSServerError", pool.backends[0].stateReason)
        self.assertIs(pool.backends[0], placeholder)
        resolver.broken = None
        self.zone.setAddresses("new.test", ["127.0.0.8"])
        clock.advance(2)
        self.assertEqual(names(pool), ["127.0.0.8:80", "127.0.0.9:80"])
        self.assertEqual(len(pool.eligible), 2)

    def test_appliedInTheNextTurn(self) -> None:
        """
        An answer that changes the members is applied in the reactor's
        next turn, not in the one that read it; the answers of several
        lines that arrive in the same turn are applied once, with every
        line's reason.
        """
        self.zone.setAddresses("other.test", ["127.0.0.7"], ttl=30)
        source, pool, clock, _ = makeSource(
            "app.test:80 resolve\nother.test:81 resolve", self.zone
        )
        calls: list[str] = []
        setBackends = pool.setBackends

        def counted(backends: Any, reason: str) -> None:
            calls.append(reason)
            setBackends(backends, reason)

        pool.setBackends = counted  # type: ignore[method-assign]
        source.startService()
        self.addCleanup(source.stopService)
        self.assertEqual(names(pool), ["app.test:80", "other.test:81"])
        self.assertEqual(calls, [])
        clock.advance(0)
        self.assertEqual(
            names(pool), ["127.0.0.2:80", "127.0.0.3:80", "[::1]:80", "127.0.0.7:81"]
        )
        self.assertEqual(len(calls), 1)
        self.assertIn("DNS answer for app.test: 127.0.0.2:80", calls[0])
        self.assertIn("; DNS answer for other.test: 127.0.0.7:81", calls[0])

    def test_stopCancelsTheApplying(self) -> None:
        """
        An answer not yet applied when the service stops is not applied.
        """
        source, pool, clock, _ = makeSource("app.test:80 resolve", self.zone)
        source.startService()
        self.successResultOf(source.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(names(pool), ["app.test:80"])

    def test_stopCancelsTheNextLookup(self) -> None:
        """
        Stopping the service leaves no timer behind; an answer that
        arrives after the stop is ignored.
        """
        source, pool, clock, resolver = makeSource("app.test:80 resolve", self.zone)
        start(source, clock)
        self.successResultOf(source.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])

        pending: Deferred[Any] = Deferred()
        resolver.lookupAddress = lambda name, timeout=None: pending  # type: ignore[method-assign]
        source, pool, clock, _ = makeSource("app.test:80 resolve", self.zone)
        source.resolver = resolver  # type: ignore[assignment]
        start(source, clock)
        stopped = source.stopService()
        self.assertNoResult(stopped)
        pending.callback(([dns.RRHeader(b"app.test", dns.A, payload=dns.Record_A("127.0.0.6"))], [], []))
        self.successResultOf(stopped)
        self.assertTrue(pool.backends[0].placeholder)
        self.assertEqual(clock.getDelayedCalls(), [])


class StatusTests(SynchronousTestCase):
    """
    L{DNSBackends.status}: what the admin snapshot shows of the lookups.
    """

    def test_provides(self) -> None:
        source, _, _, _ = makeSource("app.test:80 resolve")
        self.assertTrue(verifyObject(IMembershipSource, source))

    def test_lookupsAndLines(self) -> None:
        """
        The lookups that ended and those that failed, in total; each line
        with its addresses now, the time of its latest good answer, when
        it is looked up next, and why its latest lookup failed (until one
        succeeds).  A line without C{resolve} is not shown.
        """
        zone = DNSZone()
        zone.setAddresses("app.test", ["127.0.0.2", "127.0.0.3"], ttl=30)
        zone.setService("_http._tcp.svc.test", [(10, 1, 8001, "b.test")], ttl=60)
        zone.setAddresses("b.test", ["127.0.0.4", "127.0.0.5"], ttl=60)
        source, pool, clock, resolver = makeSource(
            "app.test:80 resolve\nsvc.test service=http resolve\n127.0.0.9:80", zone
        )
        clock.advance(100)
        self.assertEqual(
            source.status(),
            {
                "kind": "dns",
                "lookups": 0,
                "lookup_failures": 0,
                "lines": [
                    {"name": "app.test:80", "addresses": 0, "last_answer": None,
                     "next_lookup": None, "error": None},
                    {"name": "_http._tcp.svc.test", "addresses": 0, "last_answer": None,
                     "next_lookup": None, "error": None},
                ],
            },
        )
        start(source, clock)
        self.addCleanup(source.stopService)
        clock.advance(5)
        resolver.broken = DNSServerError("SERVFAIL")
        clock.advance(25)
        status = source.status()
        self.assertEqual((status["lookups"], status["lookup_failures"]), (3, 1))
        self.assertEqual(
            status["lines"],
            [
                {"name": "app.test:80", "addresses": 2, "last_answer": 100.0,
                 "next_lookup": 131.0, "error": "DNSServerError: SERVFAIL"},
                {"name": "_http._tcp.svc.test", "addresses": 2, "last_answer": 100.0,
                 "next_lookup": 160.0, "error": None},
            ],
        )
        resolver.broken = None
        clock.advance(1)
        status = source.status()
        self.assertEqual((status["lookups"], status["lookup_failures"]), (4, 1))
        self.assertEqual(
            (status["lines"][0]["last_answer"], status["lines"][0]["error"]), (131.0, None)
        )
        source.stopService()
        self.assertEqual([line["next_lookup"] for line in source.status()["lines"]], [None, None])


class ReloadTests(SynchronousTestCase):
    """
    A reload builds new pools; their DNS sources start from the answers of
    the ones they replace.
    """

    def test_carryOver(self) -> None:
        """
        The new pool has the old source's backends (new objects, with the
        new line's settings) before its first lookup; a line that is new
        waits for its answer.
        """
        zone = DNSZone()
        zone.setAddresses("app.test", ["127.0.0.2", "127.0.0.3"])
        old, oldPool, clock, _ = makeSource("app.test:80 resolve", zone)
        start(old, clock)
        old.stopService()
        new, pool, clock, resolver = makeSource(
            "app.test:80 resolve weight=4\nother.test:80 resolve", zone
        )
        new.carryOver(old)
        self.assertEqual(names(pool), ["127.0.0.2:80", "127.0.0.3:80", "other.test:80"])
        self.assertEqual([b.weight for b in pool.backends[:2]], [4, 4])
        self.assertFalse(set(pool.backends) & set(oldPool.backends))
        self.assertEqual(resolver.queries, [])
        # The answer carried over is as old as it was.
        self.assertEqual([line["last_answer"] for line in new.status()["lines"]], [0.0, None])


class ServiceTests(SynchronousTestCase):
    """
    A C{service=NAME} line follows the SRV records of C{_NAME._tcp.HOST}.
    """

    def setUp(self) -> None:
        self.zone = DNSZone()
        self.zone.setService(
            "_http._tcp.app.test",
            [
                (10, 5, 8001, "a.test"),
                (10, 1, 8002, "b.test"),
                (20, 0, 8003, "c.test"),
                (30, 1, 8004, "d.test"),
            ],
            ttl=40,
        )
        self.zone.setAddresses("a.test", ["127.0.0.2"], ttl=50)
        self.zone.setAddresses("b.test", ["127.0.0.3", "127.0.0.4"], ttl=20)
        self.zone.setAddresses("c.test", ["127.0.0.5"], ttl=50)
        self.zone.setAddresses("d.test", ["127.0.0.6"], ttl=50)

    def test_prioritiesWeightsPorts(self) -> None:
        """
        The lowest priority gives the primaries, the next the backups;
        each target's addresses on its port with its weight (0 counts as
        1); further priorities are not used.
        """
        source, pool, clock, _ = makeSource("app.test service=http resolve", self.zone)
        start(source, clock)
        self.addCleanup(source.stopService)
        got = [(b.name, b.weight, b.backup, b.origin) for b in pool.backends]
        self.assertEqual(
            got,
            [
                ("127.0.0.2:8001", 5, False, "app.test"),
                ("127.0.0.3:8002", 1, False, "app.test"),
                ("127.0.0.4:8002", 1, False, "app.test"),
                ("127.0.0.5:8003", 1, True, "app.test"),
            ],
        )
        self.assertEqual([b.port for b in pool.eligible], [8001, 8002, 8002])
        for backend in pool.eligible:
            pool.markDown(backend, "test")
        self.assertEqual([b.name for b in pool.eligible], ["127.0.0.5:8003"])

    def test_rotatedRecordsChangeNothing(self) -> None:
        """
        The same SRV records in another order (a server that rotates
        them, as BIND does by default) are the same answer: the pool is
        left as it is, its backends in the same order.
        """
        records = [(10, 1, 8001, "a.test"), (10, 1, 8002, "b.test"), (20, 0, 8003, "c.test")]
        self.zone.setService("_http._tcp.app.test", records, ttl=40)
        source, pool, clock, resolver = makeSource("app.test service=http resolve", self.zone)
        start(source, clock)
        self.addCleanup(source.stopService)
        before = names(pool)
        calls = []
        original = pool.setBackends
        pool.setBackends = lambda *a: (calls.append(a), original(*a))  # type: ignore[method-assign]
        for turn in (1, 2):
            self.zone.setService("_http._tcp.app.test", records[turn:] + records[:turn], ttl=40)
            clock.advance(20)
            clock.advance(0)
        self.assertEqual((calls, names(pool)), ([], before))

    def test_stopWhileAskingForSRV(self) -> None:
        """
        An SRV answer that arrives after the stop is not followed: its
        targets are not asked, and the stop is done with it.
        """
        source, pool, clock, resolver = makeSource("app.test service=http resolve", self.zone)
        pending: Deferred[Any] = Deferred()
        resolver.lookupService = lambda name, timeout=None: pending  # type: ignore[method-assign]
        source.startService()
        stopped = source.stopService()
        self.assertNoResult(stopped)
        self.zone.lookupService("_http._tcp.app.test").chainDeferred(pending)
        self.successResultOf(stopped)
        self.assertEqual(resolver.queries, [])
        self.assertTrue(pool.backends[0].placeholder)

    def test_ttlIsTheSmallestOfSRVAndTargets(self) -> None:
        """
        The line is looked up again when the first of its records (SRV or
        a target's address) expires.
        """
        source, pool, clock, resolver = makeSource("app.test service=http resolve", self.zone)
        start(source, clock)
        self.addCleanup(source.stopService)
        count = len(resolver.queries)
        clock.advance(19.9)
        self.assertEqual(len(resolver.queries), count)
        clock.advance(0.1)
        self.assertGreater(len(resolver.queries), count)
        self.assertEqual(resolver.queries[count], ("_http._tcp.app.test", dns.SRV))

    def test_changesFollowed(self) -> None:
        """
        A new target, a changed port and a target going away are applied;
        the backend that stays keeps its object.
        """
        source, pool, clock, _ = makeSource("app.test service=http resolve", self.zone)
        start(source, clock)
        self.addCleanup(source.stopService)
        kept = pool.backendNamed("127.0.0.2:8001")
        self.zone.setService(
            "_http._tcp.app.test", [(10, 5, 8001, "a.test"), (10, 2, 9002, "b.test")], ttl=40
        )
        clock.advance(20)
        self.assertEqual(
            names(pool), ["127.0.0.2:8001", "127.0.0.3:9002", "127.0.0.4:9002"]
        )
        self.assertIs(pool.backends[0], kept)
        self.assertEqual(pool.backends[1].weight, 2)

    def test_unresolvableTargetIsLeftOut(self) -> None:
        """
        A target without addresses is left out (and logged) while the
        others are used.
        """
        self.zone.setAddresses("b.test", [])
        source, pool, clock, _ = makeSource("app.test service=http resolve", self.zone)
        with capturedLogs() as events:
            start(source, clock)
        self.addCleanup(source.stopService)
        self.assertEqual(names(pool), ["127.0.0.2:8001", "127.0.0.5:8003"])
        [event] = [e for e in events if "problem" in e]
        self.assertIn("b.test: no such name", event["problem"])

    def test_noService(self) -> None:
        """
        No SRV records: a placeholder named after the SRV name, with the
        reason; a target of C{.} (the service is not offered) likewise.
        """
        source, pool, clock, _ = makeSource("app.test service=ldap resolve", self.zone)
        start(source, clock)
        self.addCleanup(source.stopService)
        [placeholder] = pool.backends
        self.assertEqual(
            placeholder.stateReason,
            "_ldap._tcp.app.test: no address yet (DNS error: no such name)",
        )
        self.zone.setService("_ldap._tcp.app.test", [(0, 0, 0, ".")])
        clock.advance(1)
        self.assertEqual(
            pool.backends[0].stateReason,
            "_ldap._tcp.app.test: no address yet (DNS error: no usable SRV record)",
        )

    def test_targetNotASCII(self) -> None:
        """
        A target whose name is not ASCII (a DNS label may hold any byte,
        and no such name can be asked) is left out, as one without
        addresses is; the other targets of the answer are used.  (It
        used to fail the whole lookup, with a UnicodeDecodeError as the
        reason.)
        """
        self.zone.setRecords(
            "_http._tcp.app.test",
            [dns.Record_SRV(10, 5, 8001, b"a.test"), dns.Record_SRV(10, 5, 8009, b"\xff.test")],
        )
        source, pool, clock, resolver = makeSource("app.test service=http resolve", self.zone)
        start(source, clock)
        self.addCleanup(source.stopService)
        self.assertEqual(names(pool), ["127.0.0.2:8001"])
        self.assertEqual(source.status()["lines"][0]["error"], None)

    def test_httpsPlaceholder(self) -> None:
        """
        The placeholder of an C{https} SRV line, before its first answer,
        is told the line's host for TLS, as its backends will be, not the
        SRV name (whose C{_} no TLS name may hold: the pool could not be
        made, and lbproxy did not start, with the documentation's own
        example line).
        """
        source, pool, clock, _ = makeSource("https://app.test service=https resolve", self.zone)
        [placeholder] = pool.backends
        self.assertEqual(placeholder.name, "_https._tcp.app.test:0")
        self.assertEqual(placeholder.origin, "app.test")
        config = parseConfigText(
            "[lbproxy]\nlisten = tcp:0\n"
            "[upstream:app]\nservers = https://api.internal service=https resolve\n"
            "[vhost:app]\ndefault = yes\nupstream = app\n",
            "site.ini",
        )
        service = LoadBalancerService(config, MemoryReactorClock())
        self.assertEqual(
            [b.name for b in service.pools["app"].backends], ["_https._tcp.api.internal:0"]
        )


class OriginTests(SynchronousTestCase):
    """
    A backend found in DNS is told the name of its line: in C{Host} (when
    the client's is not passed on), in health probes, and in SNI.
    """

    def test_authority(self) -> None:
        backend = Backend("127.0.0.2", 8080)
        self.assertEqual(backend.authority, "127.0.0.2:8080")
        backend.origin = "app.internal"
        self.assertEqual(backend.authority, "app.internal:8080")
        self.assertEqual(backend.name, "127.0.0.2:8080")

    def test_probeHost(self) -> None:
        backend = Backend("127.0.0.2", 8080)
        backend.origin = "app.internal"
        pool = Pool("app", [backend], None, Clock())
        head = HTTPProbe(pool, HealthCheckConfig(path="/healthz")).requestHead(backend)
        self.assertIn(b"\r\nHost: app.internal:8080\r\n", head)

    def test_sniIsTheOrigin(self) -> None:
        """
        An C{https} backend found in DNS is reached at its address, with
        the line's name in SNI (unless C{tls_server_name} says otherwise).
        """
        backend = Backend("127.0.0.2", 8443, scheme="https")
        backend.origin = "app.internal"
        self.assertEqual(_helloFor(backend), ("127.0.0.2", 8443, "app.internal"))
        self.assertEqual(
            _helloFor(backend, tlsServerName="other.example"),
            ("127.0.0.2", 8443, "other.example"),
        )


    def test_nameOfTheLineThatKeepsIt(self) -> None:
        """
        Two lines whose names share an address give one backend, named
        after the first; when that name moves away, the backend stays
        through the second line and takes its name: in C{Host}, and over
        TLS in SNI, on the connections it opens from then on.
        """
        zone = DNSZone()
        zone.setAddresses("a.test", ["127.0.0.2"], ttl=30)
        zone.setAddresses("b.test", ["127.0.0.2"], ttl=30)
        reactor = MemoryReactorClock()
        source, pool, clock, _ = makeSource(
            "https://a.test:8443 resolve\nhttps://b.test:8443 resolve", zone, clock=reactor
        )
        start(source, clock)
        self.addCleanup(source.stopService)
        [shared] = pool.backends
        self.assertEqual(shared.authority, "a.test:8443")
        pool.connection(shared)
        zone.setAddresses("a.test", ["127.0.0.3"], ttl=30)
        clock.advance(30)
        clock.advance(0)
        self.assertIs(pool.backendNamed("127.0.0.2:8443"), shared)
        self.assertEqual(shared.authority, "b.test:8443")
        pool.connection(shared)
        hellos = []
        for host, _, factory, *_ in reactor.tcpClients:
            transport = _Transport()
            factory.buildProtocol(None).makeConnection(transport)
            hellos.append((host, _serverNameIn(transport.value())))
        self.assertEqual(hellos, [("127.0.0.2", "a.test"), ("127.0.0.2", "b.test")])


def _helloFor(backend: Backend, **options: Any) -> tuple[str, int, str]:
    """
    Connect to C{backend} through its endpoint (L{backendEndpoint}) on a
    memory reactor: where it connects, and the server name its TLS
    ClientHello sends.
    """
    reactor = MemoryReactorClock()
    endpoint = backendEndpoint(reactor, backend, 5.0, tlsVerify=False, **options)
    endpoint.connect(Factory.forProtocol(Protocol))
    [(host, port, factory, *_)] = reactor.tcpClients
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return host, port, _serverNameIn(transport.value())


def _serverNameIn(hello: bytes) -> str:
    """
    The host name of the server_name extension of a TLS ClientHello record.
    """
    position = 5 + 4 + 2 + 32  # record and handshake headers, version, random
    position += 1 + hello[position]  # session id
    position += 2 + int.from_bytes(hello[position : position + 2], "big")  # ciphers
    position += 1 + hello[position]  # compression methods
    end = position + 2 + int.from_bytes(hello[position : position + 2], "big")
    position += 2
    while position < end:
        kind = int.from_bytes(hello[position : position + 2], "big")
        length = int.from_bytes(hello[position + 2 : position + 4], "big")
        if kind == 0:  # server_name: list length, type, name length, name
            size = int.from_bytes(hello[position + 7 : position + 9], "big")
            return hello[position + 9 : position + 9 + size].decode("ascii")
        position += 4 + length
    raise AssertionError("no server_name in the ClientHello")


class ObserverTests(SynchronousTestCase):
    def test_members(self) -> None:
        self.assertTrue(verifyObject(IMembershipObserver, Members()))
