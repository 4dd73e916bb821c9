"""
Tests for L{lbproxy.balancers}: the plugin registry and every built-in
balancer.

Randomised balancers get a L{Random} with a fixed seed, so that every
tolerance below is checked against the same draws on every run.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from random import Random
from typing import Any, Callable, Iterable, Optional, Sequence
from urllib.parse import parse_qs

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel
from zope.interface.verify import verifyObject

import lbproxy.balancers
import lbproxy.interfaces
from lbproxy import Backend, Outcome, Pool
from lbproxy._interfaces import (
    IBackend,
    IBalancer,
    IBalancerFactory,
    IProxyRequest,
    ITunnelChannel,
)
from lbproxy.balancers import (
    BalancerNotFound,
    ConsistentHash,
    InvalidBalancerOptions,
    IPHash,
    LeastConn,
    PeakEWMA,
    PowerOfTwoChoices,
    RoundRobin,
    Sticky,
    WeightedRandom,
    buildBalancer,
    findBalancerFactories,
    findBalancerFactory,
)
from lbproxy.balancers._base import WeightedSampler
from lbproxy.balancers._builtins import BUILTINS
from lbproxy.config import ConfigError, parseConfigText

BUILTIN_NAMES = [
    "consistent_hash",
    "ewma",
    "ip_hash",
    "least_conn",
    "p2c",
    "random",
    "round_robin",
    "sticky",
]

#: The options each built-in needs to be built.
REQUIRED_OPTIONS = {"consistent_hash": {"key": "header:X-User"}}


def makeBackends(weights: Sequence[float], backup: int = 0) -> list[Backend]:
    """
    Backends with the given weights (then C{backup} backup servers), with
    ids C{"b0"}, C{"b1"}... as a pool would give them.
    """
    backends = []
    for i, weight in enumerate(list(weights) + [1] * backup):
        backend = Backend(f"10.1.0.{i + 1}", 8000 + i, weight=max(1, int(weight)))
        backend.effectiveWeight = float(weight)
        backend.backup = i >= len(weights)
        backend.id = f"b{i}"
        backends.append(backend)
    return backends


def makeRequest(
    client: Optional[str] = "192.0.2.10",
    headers: Optional[dict[bytes, bytes]] = None,
    cookies: Optional[dict[bytes, bytes]] = None,
    uri: bytes = b"/",
) -> Request:
    """
    A real L{twisted.web.server.Request} as the proxy sees it: from
    C{client} (an IPv4 or IPv6 address, or L{None} for a UNIX socket), with
    C{headers}, C{cookies} and C{uri}.
    """
    address: Any
    if client is None:
        address = UNIXAddress(b"/tmp/lbproxy.sock")
    elif ":" in client:
        address = IPv6Address("TCP", client, 40000)
    else:
        address = IPv4Address("TCP", client, 40000)
    channel = DummyChannel()
    channel.transport = DummyChannel.TCP(peer=address)
    request = Request(channel)
    request.method = b"GET"
    request.uri = uri
    request.path, _, query = uri.partition(b"?")
    request.args = parse_qs(query)
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    request.received_cookies = dict(cookies or {})
    return request


def drive(
    balancer: Any,
    count: int,
    request: Callable[[int], Any] = lambda i: None,
    latency: Callable[[Any], float] = lambda b: 0.01,
) -> Counter[Any]:
    """
    Send C{count} requests one after the other through C{balancer}: pick,
    start, finish.

    @return: how many each backend got.
    """
    seen: Counter[Any] = Counter()
    for i in range(count):
        req = request(i)
        backend = balancer.pick(req, frozenset())
        balancer.requestStarted(backend, req)
        balancer.requestFinished(backend, req, Outcome.SUCCESS, latency(backend))
        seen[backend] += 1
    return seen


def nginxRoundRobin(
    backends: Sequence[Any],
    current: dict[Any, float],
    exclude: Iterable[Any] = (),
) -> Optional[Any]:
    """
    nginx's C{ngx_http_upstream_get_peer} loop, walking every backend: the
    reference that L{RoundRobin} must agree with.
    """
    best = None
    total: float = 0
    for backend in backends:
        if backend in exclude:
            continue
        weight = backend.effectiveWeight
        current[backend] = current.get(backend, 0) + weight
        total += weight
        if best is None or current[backend] > current[best]:
            best = backend
    if best is not None:
        current[best] -= total
    return best


class AssertDistribution:
    """
    A mixin asserting that picks follow the weights.
    """

    def assertNear(
        self: Any, actual: float, expected: float, tolerance: float, msg: str = ""
    ) -> None:
        """
        C{actual} is C{expected} give or take C{tolerance}.
        """
        self.assertTrue(
            abs(actual - expected) <= tolerance,
            f"{actual!r} is not {expected!r} within {tolerance!r} {msg}",
        )

    def assertShares(
        self: Any,
        seen: Counter[Any],
        backends: Sequence[Backend],
        tolerance: float,
    ) -> None:
        """
        Each backend's share of the picks is its share of the weights, give
        or take C{tolerance} (an absolute fraction: 0.02 is two points).
        """
        total = sum(seen.values())
        weights = sum(b.effectiveWeight for b in backends)
        for backend in backends:
            expected = backend.effectiveWeight / weights
            actual = seen[backend] / total
            self.assertTrue(
                abs(actual - expected) <= tolerance,
                f"{backend.id}: share {actual:.4f}, expected {expected:.4f} "
                f"within {tolerance}",
            )


class RegistryTests(SynchronousTestCase):
    """
    The built-ins are plugins found by L{getPlugins}, like anyone's.
    """

    def test_builtinsFound(self) -> None:
        """
        L{getPlugins} finds every built-in in the C{twisted.plugins} dropin
        package, each providing L{IPlugin} and L{IBalancerFactory}.
        """
        found = {f.name: f for f in getPlugins(IBalancerFactory)}
        for name in BUILTIN_NAMES:
            self.assertIn(name, found)
            verifyObject(IPlugin, found[name])
            verifyObject(IBalancerFactory, found[name])
        self.assertEqual(sorted(f.name for f in BUILTINS), BUILTIN_NAMES)

    def test_dropinExposesBuiltins(self) -> None:
        """
        The dropin module holds the very factory objects of
        L{lbproxy.balancers._builtins}.
        """
        from twisted.plugins import lbproxy_balancers

        exposed = {
            id(value)
            for value in vars(lbproxy_balancers).values()
            if IBalancerFactory.providedBy(value)
        }
        self.assertEqual(exposed, {id(f) for f in BUILTINS})

    def test_findByName(self) -> None:
        """
        L{findBalancerFactory} returns the plugin with that name.
        """
        factory = findBalancerFactory("least_conn")
        self.assertEqual(factory.name, "least_conn")
        self.assertIsInstance(factory.buildBalancer({}, Random(0)), LeastConn)

    def test_unknownNameListsFound(self) -> None:
        """
        An unknown name raises L{BalancerNotFound}, whose message lists every
        name found.
        """
        error = self.assertRaises(BalancerNotFound, findBalancerFactory, "fastest")
        self.assertEqual(error.name, "fastest")
        self.assertEqual(error.available, sorted(findBalancerFactories()))
        for name in BUILTIN_NAMES:
            self.assertIn(name, str(error))

    def test_everyBuiltinBuilds(self) -> None:
        """
        Every built-in builds a fresh L{IBalancer} (each call a new one) that
        copes with no backends and with a pick without a request.
        """
        for name in BUILTIN_NAMES:
            options = REQUIRED_OPTIONS.get(name, {})
            balancer = buildBalancer(name, options, Random(1))
            verifyObject(IBalancer, balancer)
            self.assertIsNot(balancer, buildBalancer(name, options, Random(1)))
            balancer.backendsChanged(())
            self.assertIsNone(balancer.pick(None, frozenset()))
            backends = makeBackends([1, 1])
            balancer.backendsChanged(tuple(backends))
            self.assertIn(balancer.pick(None, frozenset()), backends)

    def test_unknownOption(self) -> None:
        """
        An option the balancer does not take raises
        L{InvalidBalancerOptions} naming it and the ones it takes.
        """
        error = self.assertRaises(
            InvalidBalancerOptions, buildBalancer, "sticky", {"cokie": "x"}
        )
        self.assertIn("balancer.cokie", str(error))
        self.assertIn("balancer.cookie", str(error))
        error = self.assertRaises(
            InvalidBalancerOptions, buildBalancer, "round_robin", {"key": "uri"}
        )
        self.assertIn("no options", str(error))

    def test_badOptionValues(self) -> None:
        """
        Bad option values raise L{InvalidBalancerOptions} saying what was
        expected.
        """
        cases = [
            ("consistent_hash", {}, "needs balancer.key"),
            ("consistent_hash", {"key": "header"}, "header:NAME"),
            ("consistent_hash", {"key": "header:"}, "header:NAME"),
            ("consistent_hash", {"key": "body:x"}, "remote_addr"),
            ("consistent_hash", {"key": "uri:x"}, "uri"),
            ("ewma", {"decay": "soon"}, "positive duration"),
            ("ewma", {"decay": "0s"}, "positive duration"),
            ("sticky", {"cookie": "my cookie"}, "cookie name"),
            ("sticky", {"cookie": ""}, "cookie name"),
            ("sticky", {"max_age": "-1"}, "positive duration"),
        ]
        for name, options, expected in cases:
            error = self.assertRaises(
                InvalidBalancerOptions, buildBalancer, name, options
            )
            self.assertIn(expected, str(error), (name, options))

    def test_goodOptionValues(self) -> None:
        """
        Valid options are used.
        """
        hashing = buildBalancer("consistent_hash", {"key": "Cookie:session"})
        request = makeRequest(cookies={b"session": b"abc"})
        self.assertEqual(hashing.keyOf(request), b"abc")  # type: ignore[attr-defined]
        ewma = buildBalancer("ewma", {"decay": "500ms"})
        self.assertEqual(ewma._decay, 0.5)  # type: ignore[attr-defined]
        sticky = buildBalancer("sticky", {"cookie": "route", "max_age": "1h"})
        self.assertEqual(sticky.cookieName, b"route")  # type: ignore[attr-defined]
        self.assertEqual(sticky._maxAge, b"3600")  # type: ignore[attr-defined]

    def test_publicNames(self) -> None:
        """
        L{lbproxy.interfaces} re-exports the interfaces themselves.
        """
        self.assertIs(lbproxy.interfaces.IBalancer, IBalancer)
        self.assertIs(lbproxy.interfaces.IBalancerFactory, IBalancerFactory)
        self.assertIs(lbproxy.interfaces.IBackend, IBackend)
        self.assertIs(lbproxy.interfaces.IProxyRequest, IProxyRequest)
        self.assertIs(lbproxy.interfaces.ITunnelChannel, ITunnelChannel)
        self.assertEqual(
            sorted(lbproxy.interfaces.__all__),
            ["IBackend", "IBalancer", "IBalancerFactory", "IProxyRequest", "ITunnelChannel"],
        )
        for name in lbproxy.balancers.__all__:
            self.assertTrue(hasattr(lbproxy.balancers, name), name)


class ConfigTests(SynchronousTestCase):
    """
    site.ini chooses a balancer by name and passes it the C{balancer.*} keys.
    """

    def _config(self, lines: str) -> str:
        return (
            "[lbproxy]\nlisten = tcp:0\n"
            "[upstream:app]\n"
            "servers =\n    127.0.0.1:9001\n    127.0.0.1:9002\n"
            + lines
            + "\n[vhost:app]\nserver_names = app.example\nupstream = app\n"
        )

    def test_selectsByName(self) -> None:
        """
        C{balancer = NAME} and C{balancer.KEY = VALUE} reach the upstream's
        configuration.
        """
        config = parseConfigText(
            self._config("balancer = consistent_hash\nbalancer.key = uri\n")
        )
        upstream = config.upstreams["app"]
        self.assertEqual(upstream.balancer, "consistent_hash")
        self.assertEqual(dict(upstream.balancerOptions), {"key": "uri"})

    def test_unknownName(self) -> None:
        """
        An unknown balancer name is a configuration error listing the names
        found.
        """
        error = self.assertRaises(
            ConfigError, parseConfigText, self._config("balancer = fastest\n")
        )
        message = str(error)
        self.assertIn("fastest", message)
        for name in BUILTIN_NAMES:
            self.assertIn(name, message)

    def test_badOptions(self) -> None:
        """
        Unknown or bad C{balancer.*} options are configuration errors.
        """
        error = self.assertRaises(
            ConfigError,
            parseConfigText,
            self._config("balancer = round_robin\nbalancer.key = uri\n"),
        )
        self.assertIn("balancer.key", str(error))
        error = self.assertRaises(
            ConfigError,
            parseConfigText,
            self._config("balancer = ewma\nbalancer.decay = never\n"),
        )
        self.assertIn("never", str(error))


def allBuiltins(random: Random) -> list[tuple[str, IBalancer]]:
    """
    One of each built-in, built through the registry.
    """
    return [
        (name, buildBalancer(name, REQUIRED_OPTIONS.get(name, {}), random))
        for name in BUILTIN_NAMES
    ]


class PoolTests(SynchronousTestCase):
    """
    Through a pool, a balancer sees only the eligible backends.
    """

    def test_libraryUserHandsBalancer(self) -> None:
        """
        A balancer object given to a L{Pool} is the one it uses, told the
        eligible backends at once.
        """
        balancer = LeastConn()
        backends = makeBackends([1, 1])
        pool = Pool("app", backends, balancer, MemoryReactorClock())
        self.assertIs(pool.balancer, balancer)
        self.assertEqual(balancer.backends, tuple(backends))
        self.assertIn(pool.pick(None), backends)

    def test_neverIneligible(self) -> None:
        """
        No built-in ever picks a backend that is down, failed, draining or
        disabled, nor a backup while a primary is up; backups come in only
        while no primary is up.
        """
        for name, balancer in allBuiltins(Random(3)):
            backends = makeBackends([1, 2, 3, 1], backup=1)
            primaries, backup = backends[:4], backends[4]
            pool = Pool("app", backends, balancer, MemoryReactorClock())
            pool.markDown(primaries[0], "test")
            pool.drain(primaries[1])
            pool.disable(primaries[2])
            for i in range(200):
                request = makeRequest(
                    client=f"10.9.{i}.1", headers={b"x-user": b"%d" % i}
                )
                self.assertIs(pool.pick(request), primaries[3], name)
            pool.markDown(primaries[3], "test")
            for i in range(50):
                request = makeRequest(
                    client=f"10.9.{i}.1", headers={b"x-user": b"%d" % i}
                )
                self.assertIs(pool.pick(request), backup, name)
            pool.markUp(primaries[0], "test")
            for i in range(50):
                request = makeRequest(
                    client=f"10.9.{i}.1", headers={b"x-user": b"%d" % i}
                )
                self.assertIs(pool.pick(request), primaries[0], name)
            pool.markDown(primaries[0], "test")
            pool.markDown(backup, "test")
            self.assertIsNone(pool.pick(makeRequest()), name)

    def test_excludeHonoured(self) -> None:
        """
        Every built-in honours C{exclude}: a retry never gets a backend
        already tried, and once every backend was tried there is none.
        """
        for name, balancer in allBuiltins(Random(4)):
            backends = makeBackends([1, 3, 2])
            balancer.backendsChanged(tuple(backends))
            for i in range(100):
                request = makeRequest(
                    client=f"10.8.{i}.1",
                    headers={b"x-user": b"%d" % i},
                    cookies={b"lbproxy_sticky": backends[i % 3].id.encode()},
                )
                tried: set[Backend] = set()
                for _ in range(3):
                    backend = balancer.pick(request, frozenset(tried))
                    self.assertIsNotNone(backend, name)
                    self.assertNotIn(backend, tried, name)
                    balancer.requestStarted(backend, request)
                    balancer.requestFinished(
                        backend, request, Outcome.CONNECT_FAILED, 0.001
                    )
                    tried.add(backend)
                self.assertIsNone(balancer.pick(request, frozenset(tried)), name)


class MembershipChangeTests(SynchronousTestCase):
    """
    Every built-in copes with a pool whose membership changes
    (L{Pool.setBackends}): a backend that left is never picked, one that
    joined is, and a request in flight to a backend that left ends
    cleanly.
    """

    def test_joinAndLeave(self) -> None:
        """
        Through many changes of membership, no built-in picks a backend
        that is not a member taking requests, every member gets picked,
        and requests started before their backend left finish without
        error.  (Members with nothing in flight are all picked, except by
        the hashing balancers, whose keys decide.)
        """
        for name, balancer in allBuiltins(Random(5)):
            pool = Pool("app", makeBackends([1, 2]), balancer, MemoryReactorClock())
            rng = Random(6)
            inFlight: list[tuple[Backend, Any]] = []
            for change in range(30):
                ports = sorted(rng.sample(range(20), rng.randint(1, 6)))
                pool.setBackends(
                    [Backend("10.2.0.1", 9000 + p, weight=1 + p % 3) for p in ports],
                    f"change {change}",
                )
                members = set(pool.eligible)
                self.assertEqual(
                    sorted(b.port for b in members), [9000 + p for p in ports], name
                )
                idle = {b for b in members if b.active == 0}
                seen = set()
                for i in range(60):
                    request = makeRequest(
                        client=f"10.7.{i}.1",
                        headers={b"x-user": b"%d" % i},
                        cookies={b"lbproxy_sticky": rng.choice(list(members)).id.encode()},
                    )
                    backend = pool.pick(request)
                    self.assertIn(backend, members, name)
                    seen.add(backend)
                    pool.requestStarted(backend, request)
                    if i % 10 == 0:
                        inFlight.append((backend, request))
                    else:
                        pool.requestFinished(backend, request, Outcome.SUCCESS, 0.01)
                if name not in ("consistent_hash", "ip_hash", "sticky"):
                    self.assertLessEqual(idle, seen, name)
                # Finish the oldest requests in flight, some after their
                # backend left.
                for backend, request in inFlight[:-3]:
                    pool.requestFinished(backend, request, Outcome.SUCCESS, 0.01)
                del inFlight[:-3]
            for backend, request in inFlight:
                pool.requestFinished(backend, request, Outcome.SUCCESS, 0.01)
            self.assertEqual(
                sorted(b.port for b in pool.backends),
                sorted(b.port for b in pool.eligible),
                name,
            )

    def test_consistentHashMovesOnlyTheLeaversKeys(self) -> None:
        """
        When a backend leaves the pool, only the keys it had move; when it
        joins again (a new L{Backend} object for the same address), they
        come back to it.
        """
        backends = [Backend("10.3.0.1", 9000 + i) for i in range(5)]
        pool = Pool(
            "app", backends, ConsistentHash("header:X-User"), MemoryReactorClock()
        )
        requests = [makeRequest(headers={b"x-user": b"%d" % i}) for i in range(2000)]
        before = [pool.pick(r).port for r in requests]
        pool.setBackends(backends[:2] + backends[3:], "one leaves")
        during = [pool.pick(r).port for r in requests]
        for old, new in zip(before, during):
            if old != 9002:
                self.assertEqual(old, new)
            else:
                self.assertNotEqual(new, 9002)
        pool.setBackends([Backend("10.3.0.1", 9000 + i) for i in range(5)], "back")
        self.assertEqual([pool.pick(r).port for r in requests], before)

    def test_ipHashPlaceKeptByAddress(self) -> None:
        """
        C{ip_hash} gives a backend that leaves and joins again (a new
        L{Backend} object for the same address) its old clients back.
        """
        backends = [Backend("10.3.0.1", 9000 + i) for i in range(4)]
        pool = Pool("app", backends, IPHash(), MemoryReactorClock())
        requests = [makeRequest(client=f"10.{i // 250}.{i % 250}.1") for i in range(500)]
        before = [pool.pick(r).port for r in requests]
        pool.setBackends(backends[:3], "one leaves")
        self.assertNotIn(9003, [pool.pick(r).port for r in requests])
        pool.setBackends([Backend("10.3.0.1", 9000 + i) for i in range(4)], "back")
        self.assertEqual([pool.pick(r).port for r in requests], before)

    def test_hashingMemoryBounded(self) -> None:
        """
        Under churn of ever new addresses, what the hashing balancers
        remember of backends that are gone stays bounded.
        """
        ipHash, ring = IPHash(), ConsistentHash("uri")
        for balancer in (ipHash, ring):
            for i in range(500):
                balancer.backendsChanged(
                    (Backend("10.4.0.1", 9000 + i), Backend("10.4.0.1", 20000 + i))
                )
                self.assertIsNotNone(balancer.pick(makeRequest(uri=b"/%d" % i)))
        self.assertLessEqual(len(ipHash._known), 2 * 2 + ipHash._SPARE + 2)
        self.assertLessEqual(len(ring._points), 2 * 2 + 16 + 2)


class RoundRobinTests(SynchronousTestCase, AssertDistribution):
    """
    L{RoundRobin} is nginx's smooth weighted round robin.
    """

    def test_nginxSequence(self) -> None:
        """
        Weights 5, 1, 1 give C{a a b a c a a}, over and over.
        """
        a, b, c = backends = makeBackends([5, 1, 1])
        balancer = RoundRobin()
        balancer.backendsChanged(tuple(backends))
        names: dict[Any, str] = {a: "a", b: "b", c: "c"}
        picked = "".join(names[balancer.pick(None)] for _ in range(21))
        self.assertEqual(picked, "aabacaa" * 3)

    def test_equalWeights(self) -> None:
        """
        Equal weights take turns in configuration order.
        """
        backends = makeBackends([1, 1, 1, 1])
        balancer = RoundRobin()
        balancer.backendsChanged(tuple(backends))
        self.assertEqual([balancer.pick(None) for _ in range(8)], backends * 2)

    def checkSameAsNginx(
        self, balancer: RoundRobin, weights: list[int], steps: list[tuple[str, int]]
    ) -> None:
        """
        Drive C{balancer} and nginx's loop through C{steps}: every pick must
        agree.
        """
        everyone = makeBackends(weights)
        eligible = list(everyone)
        balancer.backendsChanged(tuple(eligible))
        current: dict[Any, float] = {}
        for action, n in steps:
            if action == "pick":
                for _ in range(n % 5 + 1):
                    expected = nginxRoundRobin(eligible, current)
                    self.assertIs(balancer.pick(None, frozenset()), expected)
            elif action == "retry" and eligible:
                tried = frozenset(
                    eligible[i] for i in range(0, len(eligible), n % 3 + 2)
                )
                expected = nginxRoundRobin(eligible, current, tried)
                self.assertIs(balancer.pick(None, tried), expected)
            elif action == "change":
                backend = everyone[n % len(everyone)]
                if backend in eligible:
                    eligible.remove(backend)
                    current.pop(backend, None)
                else:
                    eligible = [b for b in everyone if b in eligible or b is backend]
                balancer.backendsChanged(tuple(eligible))
            elif action == "weight":
                backend = everyone[n % len(everyone)]
                backend.effectiveWeight = (n % 7 + 1) * 0.5
                balancer.backendsChanged(tuple(eligible))

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.integers(1, 6), min_size=1, max_size=12),
        st.lists(
            st.tuples(
                st.sampled_from(["pick", "retry", "change", "weight"]),
                st.integers(0, 1000),
            ),
            max_size=120,
        ),
    )
    def test_sameAsNginx(
        self, weights: list[int], steps: list[tuple[str, int]]
    ) -> None:
        """
        Whatever the weights, retries, changes of the eligible set and of
        the effective weights, L{RoundRobin} picks exactly what nginx's loop
        picks.
        """
        self.checkSameAsNginx(RoundRobin(), weights, steps)

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.integers(1, 40), min_size=1, max_size=40),
        st.lists(
            st.tuples(
                st.sampled_from(["pick", "pick", "retry", "change", "weight"]),
                st.integers(0, 1000),
            ),
            max_size=120,
        ),
    )
    def test_sameAsNginxBlocked(
        self, weights: list[int], steps: list[tuple[str, int]]
    ) -> None:
        """
        With many distinct weights, grouped in blocks, L{RoundRobin} still
        picks exactly what nginx's loop picks.
        """
        balancer = RoundRobin()
        balancer._BLOCKED = 2
        self.checkSameAsNginx(balancer, weights, steps)

    def test_blockedTies(self) -> None:
        """
        With blocks, a steeper class that draws level with a block's winner
        and comes first in configuration order wins at that very step, as
        in nginx.  (Seeded random pools of up to 30 backends, weights up to
        40: this found a block expiry one step too late.)
        """
        rng = Random(1)
        for _ in range(40):
            weights = [
                rng.randint(1, rng.choice([3, 10, 40]))
                for _ in range(rng.randint(3, 30))
            ]
            backends = makeBackends(weights)
            balancer = RoundRobin()
            balancer._BLOCKED = 2
            balancer.backendsChanged(tuple(backends))
            current: dict[Any, float] = {}
            for _ in range(300):
                expected = nginxRoundRobin(backends, current)
                self.assertIs(balancer.pick(None), expected, weights)

    def test_manyWeightsBlocked(self) -> None:
        """
        256 backends of 256 different weights are grouped in blocks, and
        over a whole period (the sum of the weights) each backend gets
        exactly its weight in picks, in nginx's order.
        """
        backends = makeBackends(list(range(1, 257)))
        balancer = RoundRobin()
        balancer.backendsChanged(tuple(backends))
        self.assertIsNotNone(balancer._blocks)
        current: dict[Any, float] = {}
        seen: Counter[Any] = Counter()
        for _ in range(sum(range(1, 257))):
            expected = nginxRoundRobin(backends, current)
            picked = balancer.pick(None)
            self.assertIs(picked, expected)
            seen[picked] += 1
        self.assertEqual(seen, {b: b.weight for b in backends})

    def test_rebaseKeepsSequence(self) -> None:
        """
        Folding the step counter into the bases (done every few thousand
        picks, to keep float weights precise) does not change the sequence.
        """
        backends = makeBackends([3, 1.5, 2, 2, 0.25])
        balancer = RoundRobin()
        balancer._REBASE = 7
        balancer.backendsChanged(tuple(backends))
        current: dict[Any, float] = {}
        for _ in range(500):
            self.assertIs(balancer.pick(None), nginxRoundRobin(backends, current))

    def test_stateSurvivesChanges(self) -> None:
        """
        Telling the balancer the same backends again (as slow start does on
        every step) continues the sequence rather than restarting it.
        """
        backends = makeBackends([1, 1, 1])
        balancer = RoundRobin()
        balancer.backendsChanged(tuple(backends))
        picks = []
        for _ in range(9):
            picks.append(balancer.pick(None))
            balancer.backendsChanged(tuple(backends))
        self.assertEqual(picks, backends * 3)

    def test_weights(self) -> None:
        """
        Over many picks each backend gets its share of the weights exactly.
        """
        backends = makeBackends([1, 2, 3, 4])
        balancer = RoundRobin()
        balancer.backendsChanged(tuple(backends))
        self.assertShares(drive(balancer, 10000), backends, 0.0001)

    def test_retrySkipsTried(self) -> None:
        """
        A retry gets the next backend in turn among those not tried, and
        when all were tried, none.
        """
        a, b, c = backends = makeBackends([1, 1, 1])
        balancer = RoundRobin()
        balancer.backendsChanged(tuple(backends))
        self.assertIs(balancer.pick(None), a)
        self.assertIs(balancer.pick(None, frozenset([b])), c)
        self.assertIsNone(balancer.pick(None, frozenset(backends)))
        self.assertIs(balancer.pick(None, frozenset([Backend("10.0.0.9", 1)])), b)


class LeastConnTests(SynchronousTestCase, AssertDistribution):
    """
    L{LeastConn} picks the fewest requests in flight relative to weight.
    """

    def test_weightsAtLowLoad(self) -> None:
        """
        One request at a time (everyone tied at zero), the round-robin
        tie-break follows the weights exactly.
        """
        backends = makeBackends([1, 2, 3, 4])
        balancer = LeastConn()
        balancer.backendsChanged(tuple(backends))
        self.assertShares(drive(balancer, 10000), backends, 0.001)

    def test_tiesRoundRobin(self) -> None:
        """
        Equal weights and equal loads take turns.
        """
        backends = makeBackends([1, 1, 1])
        balancer = LeastConn()
        balancer.backendsChanged(tuple(backends))
        self.assertEqual([balancer.pick(None) for _ in range(6)], backends * 2)

    def test_steersAwayFromBusy(self) -> None:
        """
        A backend holding many open requests gets no new one while the
        others have fewer.
        """
        busy, *others = backends = makeBackends([1, 1, 1])
        balancer = LeastConn()
        balancer.backendsChanged(tuple(backends))
        for _ in range(10):
            balancer.requestStarted(busy, None)
        seen = drive(balancer, 1000)
        self.assertEqual(seen[busy], 0)
        self.assertEqual(seen[others[0]], 500)

    def test_relativeToWeight(self) -> None:
        """
        Open requests count relative to weight: a backend of weight 3 with 2
        in flight beats one of weight 1 with 1 in flight.
        """
        heavy, light = backends = makeBackends([3, 1])
        balancer = LeastConn()
        balancer.backendsChanged(tuple(backends))
        for _ in range(2):
            balancer.requestStarted(heavy, None)
        balancer.requestStarted(light, None)
        self.assertIs(balancer.pick(None), heavy)
        balancer.requestStarted(heavy, None)
        balancer.requestStarted(light, None)  # 3/3 against 2/1
        self.assertIs(balancer.pick(None), heavy)

    def test_concurrentLoadFollowsWeights(self) -> None:
        """
        With many requests in flight at once, their numbers follow the
        weights.
        """
        backends = makeBackends([1, 3])
        balancer = LeastConn()
        balancer.backendsChanged(tuple(backends))
        for _ in range(400):
            balancer.requestStarted(balancer.pick(None), None)
        self.assertEqual(balancer.active, {backends[0]: 100, backends[1]: 300})

    def test_finishedAfterRemoval(self) -> None:
        """
        A request that ends after its backend left the eligible set is
        forgotten cleanly, and the heap of stale entries stays bounded.
        """
        a, b = backends = makeBackends([1, 1])
        balancer = LeastConn()
        balancer.backendsChanged(tuple(backends))
        balancer.requestStarted(a, None)
        balancer.backendsChanged((b,))
        balancer.requestFinished(a, None, Outcome.SUCCESS, 0.1)
        self.assertEqual(balancer.active, {})
        balancer.backendsChanged(tuple(backends))
        for _ in range(1000):
            balancer.requestStarted(b, None)
            balancer.requestFinished(b, None, Outcome.SUCCESS, 0.1)
        self.assertLessEqual(len(balancer._heap), 2 * 2 + 17)
        self.assertEqual(drive(balancer, 10), {a: 5, b: 5})


class RandomTests(SynchronousTestCase, AssertDistribution):
    """
    L{WeightedRandom} draws by weight.
    """

    def test_weights(self) -> None:
        """
        Shares follow the weights within two points over 20,000 draws.
        """
        backends = makeBackends([1, 2, 3, 4])
        balancer = WeightedRandom(Random(11))
        balancer.backendsChanged(tuple(backends))
        self.assertShares(drive(balancer, 20000), backends, 0.02)

    def test_fractionalWeights(self) -> None:
        """
        Fractional effective weights (slow start) count as they are.
        """
        backends = makeBackends([0.5, 2, 1.5])
        balancer = WeightedRandom(Random(12))
        balancer.backendsChanged(tuple(backends))
        self.assertShares(drive(balancer, 20000), backends, 0.02)

    def test_seeded(self) -> None:
        """
        The same seed gives the same picks.
        """
        backends = makeBackends([1, 2, 3])
        picks = []
        for _ in range(2):
            balancer = WeightedRandom(Random(5))
            balancer.backendsChanged(tuple(backends))
            picks.append([balancer.pick(None) for _ in range(50)])
        self.assertEqual(picks[0], picks[1])


class SamplerTests(SynchronousTestCase, AssertDistribution):
    """
    L{WeightedSampler} draws indexes by weight.
    """

    def test_drawOtherNeverFirst(self) -> None:
        """
        C{drawOther} never returns the first draw, and among the others
        follows the weights.
        """
        for weights in ([1, 1, 1, 1], [1, 2, 3, 4], [5, 0.5]):
            sampler = WeightedSampler(list("abcd"[: len(weights)]), weights)
            rng = Random(8)
            seen: Counter[int] = Counter()
            for _ in range(8000):
                other = sampler.drawOther(rng, 1)
                self.assertNotEqual(other, 1)
                seen[other] += 1
            rest = sum(weights) - weights[1]
            for i, weight in enumerate(weights):
                if i != 1:
                    self.assertNear(seen[i] / 8000, weight / rest, 0.03)

    def test_drawExcluding(self) -> None:
        """
        C{drawExcluding} never returns an excluded backend, and returns
        L{None} once every one is excluded.
        """
        sampler = WeightedSampler(list("abcd"), [100, 1, 1, 100])
        rng = Random(9)
        for _ in range(200):
            self.assertEqual(sampler.drawExcluding(rng, {"a", "c", "d"}), 1)
            self.assertIn(sampler.drawExcluding(rng, {"a", "d"}, 1), [2])
        self.assertIsNone(sampler.drawExcluding(rng, set("abcd")))
        self.assertIsNone(sampler.drawExcluding(rng, set("abd"), 2))


class PowerOfTwoChoicesTests(SynchronousTestCase, AssertDistribution):
    """
    L{PowerOfTwoChoices} takes the less loaded of two backends drawn by
    weight.
    """

    def test_weightsWhenIdle(self) -> None:
        """
        With nothing in flight, shares follow the weights within two points.
        """
        backends = makeBackends([1, 2, 3, 4])
        balancer = PowerOfTwoChoices(Random(21))
        balancer.backendsChanged(tuple(backends))
        self.assertShares(drive(balancer, 20000), backends, 0.02)

    def test_steersAwayFromBusy(self) -> None:
        """
        A backend holding many open requests loses every pair it is drawn
        into, so it gets nothing while the others are idle.
        """
        busy, *others = backends = makeBackends([1, 1, 1, 1, 1])
        balancer = PowerOfTwoChoices(Random(22))
        balancer.backendsChanged(tuple(backends))
        for _ in range(10):
            balancer.requestStarted(busy, None)
        seen = drive(balancer, 5000)
        self.assertEqual(seen[busy], 0)
        for backend in others:
            self.assertNear(seen[backend] / 5000, 0.25, 0.03)

    def test_twoBackendsNeverBusy(self) -> None:
        """
        With two backends the two draws are always both of them, so the
        busy one is never chosen.
        """
        busy, idle = backends = makeBackends([1, 1])
        balancer = PowerOfTwoChoices(Random(23))
        balancer.backendsChanged(tuple(backends))
        balancer.requestStarted(busy, None)
        self.assertEqual(drive(balancer, 500), {idle: 500})


class PeakEWMATests(SynchronousTestCase, AssertDistribution):
    """
    L{PeakEWMA} prefers the backend with the lower latency times load.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def _drive(
        self, balancer: PeakEWMA, count: int, latencies: dict[Any, float]
    ) -> Counter[Any]:
        seen: Counter[Any] = Counter()
        for _ in range(count):
            backend = balancer.pick(None)
            balancer.requestStarted(backend, None)
            self.clock.advance(latencies[backend])
            balancer.requestFinished(backend, None, Outcome.SUCCESS, latencies[backend])
            seen[backend] += 1
        return seen

    def test_weightsWhenEqual(self) -> None:
        """
        With equal latencies and nothing else in flight, shares follow the
        weights within two points.
        """
        backends = makeBackends([1, 2, 3, 4])
        balancer = PeakEWMA(Random(31), clock=lambda: 0.0)
        balancer.backendsChanged(tuple(backends))
        self.assertShares(drive(balancer, 20000), backends, 0.02)

    def test_avoidsSlow(self) -> None:
        """
        A backend 50 ms slower than its peer gets well under 15% of the
        requests.
        """
        fast, slow = backends = makeBackends([1, 1])
        balancer = PeakEWMA(Random(32), clock=self.clock.seconds)
        balancer.backendsChanged(tuple(backends))
        seen = self._drive(balancer, 1000, {fast: 0.002, slow: 0.052})
        self.assertLess(seen[slow], 150)
        self.assertGreater(seen[slow], 0)

    def test_peak(self) -> None:
        """
        One slow answer raises the estimate to it at once; fast answers
        then bring it down gradually.
        """
        (backend,) = makeBackends([1])
        balancer = PeakEWMA(Random(33), decay=10.0, clock=self.clock.seconds)
        balancer.backendsChanged((backend,))
        balancer.requestStarted(backend, None)
        balancer.requestFinished(backend, None, Outcome.SUCCESS, 0.010)
        self.assertEqual(balancer.estimate(backend), 0.010)
        balancer.requestFinished(backend, None, Outcome.SUCCESS, 0.500)
        self.assertEqual(balancer.estimate(backend), 0.500)
        self.clock.advance(1.0)
        balancer.requestFinished(backend, None, Outcome.SUCCESS, 0.010)
        estimate = balancer.estimate(backend)
        self.assertTrue(0.4 < estimate < 0.5, estimate)

    def test_decays(self) -> None:
        """
        While a slow backend gets no traffic its estimate decays towards
        zero, and the busy fast one keeps its own; so the slow one is tried
        again after a while, not at once and not never.
        """
        fast, slow = backends = makeBackends([1, 1])
        balancer = PeakEWMA(Random(34), decay=10.0, clock=self.clock.seconds)
        balancer.backendsChanged(tuple(backends))
        self._drive(balancer, 100, {fast: 0.002, slow: 0.5})
        before = balancer.estimate(slow)
        self.clock.advance(10.0)
        self.assertNear(balancer.estimate(slow), before / 2.718281828, 1e-6)
        start = self.clock.seconds()
        while balancer.pick(None) is fast:
            balancer.requestStarted(fast, None)
            self.clock.advance(0.1)
            balancer.requestFinished(fast, None, Outcome.SUCCESS, 0.002)
            self.assertLess(self.clock.seconds() - start, 120)
        self.assertGreater(self.clock.seconds() - start, 30)

    def test_failuresOnlyRaise(self) -> None:
        """
        A fast failure does not make a backend look fast; a slow one makes
        it look slow; a cancelled request says nothing.
        """
        (backend,) = makeBackends([1])
        balancer = PeakEWMA(Random(35), clock=self.clock.seconds)
        balancer.backendsChanged((backend,))
        balancer.requestFinished(backend, None, Outcome.SUCCESS, 0.100)
        balancer.requestFinished(backend, None, Outcome.CONNECT_FAILED, 0.001)
        self.assertEqual(balancer.estimate(backend), 0.100)
        balancer.requestFinished(backend, None, Outcome.CANCELLED, 9.0)
        self.assertEqual(balancer.estimate(backend), 0.100)
        balancer.requestFinished(backend, None, Outcome.TIMEOUT, 5.0)
        self.assertEqual(balancer.estimate(backend), 5.0)

    def test_newcomerPenalty(self) -> None:
        """
        A backend that has not answered yet is tried, but not flooded: once
        a request is in flight to it, it costs more than any measured one.
        """
        known, newcomer = makeBackends([1, 1])
        balancer = PeakEWMA(Random(36), clock=self.clock.seconds)
        balancer.backendsChanged((known,))
        balancer.requestFinished(known, None, Outcome.SUCCESS, 0.300)
        balancer.backendsChanged((known, newcomer))
        self.assertIs(balancer.pick(None), newcomer)
        balancer.requestStarted(newcomer, None)
        self.assertIs(balancer.pick(None), known)

    def test_loadCounts(self) -> None:
        """
        Requests in flight multiply the latency: with equal latencies, the
        backend with more in flight loses.
        """
        a, b = backends = makeBackends([1, 1])
        balancer = PeakEWMA(Random(37), clock=self.clock.seconds)
        balancer.backendsChanged(tuple(backends))
        for backend in backends:
            balancer.requestFinished(backend, None, Outcome.SUCCESS, 0.010)
        balancer.requestStarted(a, None)
        self.assertEqual({balancer.pick(None) for _ in range(50)}, {b})


class IPHashTests(SynchronousTestCase, AssertDistribution):
    """
    L{IPHash} keeps a client on one backend, as nginx's C{ip_hash}.
    """

    def _mapping(self, balancer: IPHash, clients: Sequence[str]) -> dict[str, Any]:
        return {c: balancer.pick(makeRequest(client=c)) for c in clients}

    def _clients(self, count: int, seed: int = 41) -> list[str]:
        rng = Random(seed)
        return [
            f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.1"
            for _ in range(count)
        ]

    def test_clientStays(self) -> None:
        """
        A client gets the same backend on every request, and so does its
        whole /24.
        """
        backends = makeBackends([1, 1, 1, 1])
        balancer = IPHash()
        balancer.backendsChanged(tuple(backends))
        first = balancer.pick(makeRequest(client="198.51.100.7"))
        for i in range(100):
            request = makeRequest(client=f"198.51.100.{i}")
            self.assertIs(balancer.pick(request), first)
            balancer.requestStarted(first, request)
            balancer.requestFinished(first, request, Outcome.SUCCESS, 0.01)

    def test_nginxHash(self) -> None:
        """
        The backend is nginx's: 89, then C{hash * 113 + octet} modulo 6271
        over the first three octets, modulo the total weight.
        """
        backends = makeBackends([1, 1, 1, 1, 1, 1, 1])
        balancer = IPHash()
        balancer.backendsChanged(tuple(backends))
        # 89 * 113 + 203 = 10260, mod 6271: 3989
        # 3989 * 113 + 0 = 450757, mod 6271: 5516
        # 5516 * 113 + 113 = 623421, mod 6271: 2592; 2592 mod 7: 2
        self.assertIs(balancer.pick(makeRequest(client="203.0.113.99")), backends[2])

    def test_ipv6WholeAddress(self) -> None:
        """
        An IPv6 client is keyed by its whole address; an IPv4-mapped one by
        the IPv4 address's first three octets.
        """
        backends = makeBackends([1] * 16)
        balancer = IPHash()
        balancer.backendsChanged(tuple(backends))
        picked = {
            balancer.pick(makeRequest(client=f"2001:db8::{i:x}")) for i in range(64)
        }
        self.assertGreater(len(picked), 8)
        self.assertIs(
            balancer.pick(makeRequest(client="::ffff:198.51.100.7")),
            balancer.pick(makeRequest(client="198.51.100.200")),
        )

    def test_weights(self) -> None:
        """
        Over 20,000 random /24s, shares follow the weights within two
        points.
        """
        backends = makeBackends([1, 2, 3, 4])
        balancer = IPHash()
        balancer.backendsChanged(tuple(backends))
        mapping = self._mapping(balancer, self._clients(20000))
        self.assertShares(Counter(mapping.values()), backends, 0.02)

    def test_largeTotalWeight(self) -> None:
        """
        With a total weight beyond nginx's 6271 hash values, every backend
        still gets its share of clients, and clients still stay and move as
        with a small total.
        """
        backends = makeBackends([100, 200] * 40)
        balancer = IPHash()
        balancer.backendsChanged(tuple(backends))
        clients = self._clients(30000)
        mapping = self._mapping(balancer, clients)
        self.assertShares(Counter(mapping.values()), backends, 0.003)
        self.assertEqual(
            self._mapping(balancer, clients[:500]),
            {c: mapping[c] for c in clients[:500]},
        )
        gone = backends[7]
        balancer.backendsChanged(tuple(b for b in backends if b is not gone))
        after = self._mapping(balancer, clients)
        for client in clients:
            if mapping[client] is gone:
                self.assertIsNot(after[client], gone)
            else:
                self.assertIs(after[client], mapping[client])

    def test_downServerClientsMove(self) -> None:
        """
        When a backend leaves, only its clients move; when it comes back,
        they return.
        """
        backends = makeBackends([1, 1, 1, 1, 1])
        gone = backends[2]
        balancer = IPHash()
        balancer.backendsChanged(tuple(backends))
        clients = self._clients(3000)
        before = self._mapping(balancer, clients)
        balancer.backendsChanged(tuple(b for b in backends if b is not gone))
        after = self._mapping(balancer, clients)
        for client in clients:
            if before[client] is gone:
                self.assertIsNot(after[client], gone)
            else:
                self.assertIs(after[client], before[client])
        self.assertGreater(sum(1 for c in clients if before[c] is gone), 400)
        balancer.backendsChanged(tuple(backends))
        self.assertEqual(self._mapping(balancer, clients), before)

    def test_slowStart(self) -> None:
        """
        While a backend slow-starts, the fraction of its clients given by
        its effective weight comes back, always the same ones, more as it
        grows; nobody else's client moves to it.
        """
        backends = makeBackends([1, 1, 1, 1])
        ramping = backends[1]
        balancer = IPHash()
        balancer.backendsChanged(tuple(backends))
        clients = self._clients(4000)
        full = self._mapping(balancer, clients)
        own = [c for c in clients if full[c] is ramping]
        kept = []
        for share in (0.2, 0.5, 0.8):
            ramping.effectiveWeight = share
            balancer.backendsChanged(tuple(backends))
            mapping = self._mapping(balancer, clients)
            back = {c for c in own if mapping[c] is ramping}
            self.assertNear(len(back) / len(own), share, 0.1)
            for c in clients:
                if full[c] is not ramping:
                    self.assertIs(mapping[c], full[c])
            kept.append(back)
        self.assertTrue(kept[0] <= kept[1] <= kept[2])

    def test_noAddressRoundRobin(self) -> None:
        """
        A pick without a request, or from a UNIX socket client, goes round
        robin.
        """
        backends = makeBackends([1, 1])
        balancer = IPHash()
        balancer.backendsChanged(tuple(backends))
        self.assertEqual([balancer.pick(None) for _ in range(4)], backends * 2)
        unix = makeRequest(client=None)
        self.assertEqual([balancer.pick(unix) for _ in range(4)], backends * 2)

    def test_retryMovesOn(self) -> None:
        """
        A retry goes to another backend, the same one for the same client.
        """
        backends = makeBackends([1, 1, 1])
        balancer = IPHash()
        balancer.backendsChanged(tuple(backends))
        request = makeRequest(client="192.0.2.1")
        first = balancer.pick(request)
        second = balancer.pick(request, frozenset([first]))
        self.assertIsNot(second, first)
        self.assertIs(balancer.pick(request, frozenset([first])), second)


class ConsistentHashTests(SynchronousTestCase, AssertDistribution):
    """
    L{ConsistentHash} is a ketama-style ring.
    """

    KEYS = [b"user-%d" % i for i in range(10000)]

    def _mapping(self, balancer: ConsistentHash) -> dict[bytes, Any]:
        return {
            key: balancer.pick(makeRequest(headers={b"x-user": key}))
            for key in self.KEYS
        }

    def test_addingFifthMovesFifth(self) -> None:
        """
        Adding a fifth backend to four moves 20% ± 5% of 10,000 keys, all
        of them to the new backend.
        """
        backends = makeBackends([1] * 5)
        balancer = ConsistentHash("header:X-User")
        balancer.backendsChanged(tuple(backends[:4]))
        before = self._mapping(balancer)
        balancer.backendsChanged(tuple(backends))
        after = self._mapping(balancer)
        moved = [key for key in self.KEYS if before[key] is not after[key]]
        self.assertNear(len(moved) / len(self.KEYS), 0.20, 0.05)
        self.assertEqual({after[key] for key in moved}, {backends[4]})

    def test_removingMovesOnlyItsKeys(self) -> None:
        """
        Removing a backend moves exactly the keys it had.
        """
        backends = makeBackends([1] * 5)
        balancer = ConsistentHash("header:X-User")
        balancer.backendsChanged(tuple(backends))
        before = self._mapping(balancer)
        gone = backends[1]
        balancer.backendsChanged(tuple(b for b in backends if b is not gone))
        after = self._mapping(balancer)
        for key in self.KEYS:
            if before[key] is gone:
                self.assertIsNot(after[key], gone)
            else:
                self.assertIs(after[key], before[key])

    def test_weights(self) -> None:
        """
        Points are proportional to weight: over 10,000 keys shares follow
        the weights within three points.
        """
        backends = makeBackends([1, 2, 3, 4])
        balancer = ConsistentHash("header:X-User")
        balancer.backendsChanged(tuple(backends))
        self.assertShares(Counter(self._mapping(balancer).values()), backends, 0.03)

    def test_pointsCapped(self) -> None:
        """
        However large the weights, the ring holds at most C{MAX_POINTS}
        points, shared in proportion to the weights.
        """
        backends = makeBackends([5, 10, 20] * 100)
        balancer = ConsistentHash("uri")
        balancer.backendsChanged(tuple(backends))
        self.assertLessEqual(len(balancer._hashes), ConsistentHash.MAX_POINTS)
        self.assertGreater(len(balancer._hashes), ConsistentHash.MAX_POINTS * 0.99)
        points = Counter(balancer._owners)
        for light, heavy in zip(backends[0::3], backends[2::3]):
            self.assertNear(points[heavy] / points[light], 4.0, 0.1)

    def test_keyKinds(self) -> None:
        """
        The key comes from a header, a cookie, a query argument, the URI or
        the client's address; the same key always gets the same backend.
        """
        backends = makeBackends([1] * 8)
        cases = [
            ("header:X-User", lambda v: makeRequest(headers={b"x-user": v})),
            ("cookie:sid", lambda v: makeRequest(cookies={b"sid": v})),
            ("query:id", lambda v: makeRequest(uri=b"/p?id=" + v)),
            ("uri", lambda v: makeRequest(uri=b"/items/" + v)),
            (
                "remote_addr",
                lambda v: makeRequest(client="10.0.%d.%d" % divmod(int(v), 250)),
            ),
        ]
        for spec, build in cases:
            balancer = ConsistentHash(spec)
            balancer.backendsChanged(tuple(backends))
            values = [b"%d" % i for i in range(200)]
            picks = [balancer.pick(build(v)) for v in values]
            self.assertEqual(picks, [balancer.pick(build(v)) for v in values], spec)
            self.assertGreater(len(set(picks)), 5, spec)

    def test_missingKeyRoundRobin(self) -> None:
        """
        A request without the key (or no request) goes round robin.
        """
        backends = makeBackends([1, 1, 1])
        balancer = ConsistentHash("header:X-User")
        balancer.backendsChanged(tuple(backends))
        self.assertEqual([balancer.pick(makeRequest()) for _ in range(6)], backends * 2)
        self.assertEqual([balancer.pick(None) for _ in range(3)], backends)

    def test_retryWalksRing(self) -> None:
        """
        A retry takes the next backend along the ring, the same one every
        time for the same key.
        """
        backends = makeBackends([1, 1, 1, 1])
        balancer = ConsistentHash("uri")
        balancer.backendsChanged(tuple(backends))
        request = makeRequest(uri=b"/x")
        first = balancer.pick(request)
        second = balancer.pick(request, frozenset([first]))
        self.assertIsNot(second, first)
        self.assertIs(balancer.pick(request, frozenset([first])), second)
        # Had the first not been there, its keys would have gone to the
        # second, as on the ring.
        balancer.backendsChanged(tuple(b for b in backends if b is not first))
        self.assertIs(balancer.pick(request), second)


class StickyTests(SynchronousTestCase, AssertDistribution):
    """
    L{Sticky} pins a client to a backend with a cookie.
    """

    def _exchange(self, balancer: Any, request: Request) -> Any:
        backend = balancer.pick(request, frozenset())
        balancer.requestStarted(backend, request)
        balancer.requestFinished(backend, request, Outcome.SUCCESS, 0.01)
        return backend

    def _setCookie(
        self, request: Request, name: bytes = b"lbproxy_sticky"
    ) -> list[bytes]:
        return [c for c in request.cookies if c.startswith(name + b"=")]

    def _cookieValue(self, request: Request, name: bytes = b"lbproxy_sticky") -> bytes:
        [cookie] = self._setCookie(request, name)
        return cookie.split(b";")[0].split(b"=", 1)[1]

    def test_firstResponseSetsCookie(self) -> None:
        """
        The first response carries one cookie naming the backend by its id,
        not its address; it is HttpOnly, for the whole site.
        """
        backends = makeBackends([1, 1])
        balancer = Sticky()
        balancer.backendsChanged(tuple(backends))
        request = makeRequest()
        backend = self._exchange(balancer, request)
        [cookie] = self._setCookie(request)
        self.assertEqual(self._cookieValue(request), backend.id.encode())
        self.assertNotIn(backend.host.encode(), cookie)
        self.assertIn(b"Path=/", cookie)
        self.assertIn(b"HttpOnly", cookie)
        self.assertNotIn(b"Secure", cookie)
        secure = makeRequest()
        secure.setHost(b"app.example", 443, ssl=True)
        self._exchange(balancer, secure)
        self.assertIn(b"Secure", self._setCookie(secure)[0])

    def test_holdsAcross20Requests(self) -> None:
        """
        20 requests carrying the cookie all go to its backend, and need no
        new cookie.
        """
        backends = makeBackends([1, 1, 1])
        pool = Pool("app", backends, Sticky(), MemoryReactorClock())
        first = makeRequest()
        pinned = self._exchange(pool, first)
        value = self._cookieValue(first)
        for _ in range(20):
            request = makeRequest(cookies={b"lbproxy_sticky": value})
            self.assertIs(self._exchange(pool, request), pinned)
            self.assertEqual(self._setCookie(request), [])

    def test_repinsWhenBackendDies(self) -> None:
        """
        When the pinned backend goes down, the client is balanced elsewhere
        and pinned there; it stays there even once the old one is back.
        """
        backends = makeBackends([1, 1, 1])
        pool = Pool("app", backends, Sticky(), MemoryReactorClock())
        first = makeRequest()
        pinned = self._exchange(pool, first)
        pool.markDown(pinned, "test")
        request = makeRequest(cookies={b"lbproxy_sticky": self._cookieValue(first)})
        moved = self._exchange(pool, request)
        self.assertIsNot(moved, pinned)
        value = self._cookieValue(request)
        self.assertEqual(value, moved.id.encode())
        pool.markUp(pinned, "test")
        for _ in range(20):
            later = makeRequest(cookies={b"lbproxy_sticky": value})
            self.assertIs(self._exchange(pool, later), moved)

    def test_retryReplacesCookie(self) -> None:
        """
        When the first backend fails and the request is retried on another,
        the response carries one cookie, for the second.
        """
        backends = makeBackends([1, 1])
        balancer = Sticky()
        balancer.backendsChanged(tuple(backends))
        request = makeRequest()
        request.addCookie(b"other", b"kept")
        first = balancer.pick(request, frozenset())
        balancer.requestStarted(first, request)
        balancer.requestFinished(first, request, Outcome.CONNECT_FAILED, 0.01)
        second: Any = balancer.pick(request, frozenset([first]))
        balancer.requestStarted(second, request)
        self.assertIsNot(second, first)
        self.assertEqual(self._cookieValue(request), second.id.encode())
        self.assertEqual(self._setCookie(request, b"other"), [b"other=kept"])

    def test_unknownCookieRebalanced(self) -> None:
        """
        A cookie naming no eligible backend (stale or forged) is ignored and
        replaced.
        """
        backends = makeBackends([1, 1])
        balancer = Sticky(cookie="route")
        balancer.backendsChanged(tuple(backends))
        request = makeRequest(cookies={b"route": b"10.1.0.1:8000"})
        backend = self._exchange(balancer, request)
        self.assertEqual(self._cookieValue(request, b"route"), backend.id.encode())

    def test_unpinnedFollowWeights(self) -> None:
        """
        Requests without a cookie are balanced by weight (round robin).
        """
        backends = makeBackends([1, 2, 3, 4])
        balancer = Sticky()
        balancer.backendsChanged(tuple(backends))
        seen = drive(balancer, 10000, lambda i: makeRequest())
        self.assertShares(seen, backends, 0.001)

    def test_secret(self) -> None:
        """
        With C{balancer.secret} the cookie holds an HMAC-SHA256 of the
        backend's URL keyed with the secret, not its id nor its address;
        a balancer of another pool (another lbproxy instance) built with
        the same secret and the same servers honours it, one with another
        secret does not.
        """
        def instance(secret: str) -> Pool:
            balancer = buildBalancer("sticky", {"secret": secret})
            return Pool("app", makeBackends([1, 1, 1]), balancer, MemoryReactorClock())

        first, second, other = instance("s3cret"), instance(" s3cret "), instance("else")
        request = makeRequest()
        backend = self._exchange(first, request)
        value = self._cookieValue(request)
        expected = hmac.new(b"s3cret", backend.url.encode(), hashlib.sha256).hexdigest()
        self.assertEqual(value, expected[:32].encode())
        self.assertNotIn(backend.host.encode(), value)
        self.assertNotEqual(value, backend.id.encode())
        for _ in range(10):
            again = makeRequest(cookies={b"lbproxy_sticky": value})
            self.assertEqual(self._exchange(second, again).url, backend.url)
            self.assertEqual(self._setCookie(again), [])
        elsewhere = makeRequest(cookies={b"lbproxy_sticky": value})
        self._exchange(other, elsewhere)
        self.assertNotEqual(self._cookieValue(elsewhere), value)

    def test_withoutSecretSameOnEveryInstance(self) -> None:
        """
        Without a secret the cookie holds the backend's id, which depends
        only on the upstream's name and the backend's URL: another pool of
        the same name and servers honours it.
        """
        first = Pool("app", makeBackends([1, 1]), Sticky(), MemoryReactorClock())
        second = Pool("app", makeBackends([1, 1]), Sticky(), MemoryReactorClock())
        request = makeRequest()
        backend = self._exchange(first, request)
        value = self._cookieValue(request)
        self.assertEqual(value, backend.id.encode())
        again = makeRequest(cookies={b"lbproxy_sticky": value})
        self.assertEqual(self._exchange(second, again).url, backend.url)

    def test_emptySecret(self) -> None:
        """
        An empty C{balancer.secret} is refused.
        """
        error = self.assertRaises(
            InvalidBalancerOptions, buildBalancer, "sticky", {"secret": "  "}
        )
        self.assertIn("balancer.secret is empty", str(error))

    def test_maxAge(self) -> None:
        """
        C{max_age} gives the cookie a C{Max-Age}.
        """
        backends = makeBackends([1])
        balancer = Sticky(maxAge=600)
        balancer.backendsChanged(tuple(backends))
        request = makeRequest()
        self._exchange(balancer, request)
        self.assertIn(b"Max-Age=600", self._setCookie(request)[0])
