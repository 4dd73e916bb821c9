"""
Tests for L{lbproxy._limits}: the GCRA arithmetic against nginx's
documented examples, the bounded table, the concurrency counts, the keys,
and the limits of a vhost as a client sees them (in memory).
"""

from __future__ import annotations

import platform

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lbproxy._config import parseConfigText
from lbproxy._limits import (
    DEFAULT_MAX_KEYS,
    ConcurrencyLimiter,
    RateLimiter,
    RequestLimits,
    _Admitted,
    limitKeyFunction,
)
from lbproxy._vhost import FixedResource, VirtualHost, VirtualHostResource
from lbproxy.service import LoadBalancerService, buildLimits, limitSettings
from lbproxy.testing import ProxyHarness, makeRequest


def _passes(limiter, key, count):
    """
    Offer C{count} requests of C{key} at once.

    @return: the wait of each, L{None} for each refused.
    """
    return [limiter.acquire(key) for _ in range(count)]


class RateLimiterTests(SynchronousTestCase):
    """
    L{RateLimiter} lets through and refuses the requests nginx's
    C{limit_req} does, and gives the waits nginx gives without
    C{nodelay}.
    """

    def setUp(self):
        self.clock = Clock()

    def test_nginxDocumentationExample(self):
        """
        nginx's documentation: C{rate=1r/s}, C{burst=5}, "not more than 1
        request per second at an average, with bursts not exceeding 5
        requests".  Of 7 requests at once the first passes at once, the
        next 5 are within the burst, to be delayed by 1 to 5 seconds
        (what C{limit_delay = yes} holds them for), and the 7th is refused,
        to come back in 1 second.
        """
        limiter = RateLimiter(1.0, 5, self.clock)
        self.assertEqual(_passes(limiter, "a", 7), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, None])
        self.assertEqual(limiter.retryAfter("a"), 1.0)
        self.clock.advance(0.5)
        self.assertIsNone(limiter.acquire("a"))
        self.assertEqual(limiter.retryAfter("a"), 0.5)
        self.clock.advance(0.5)
        self.assertEqual(limiter.acquire("a"), 5.0)
        self.assertIsNone(limiter.acquire("a"))

    def test_nginxBlogBurstExample(self):
        """
        nginx's "Rate Limiting with NGINX": C{rate=10r/s}, C{burst=20}.  Of
        21 requests at once, all pass (with C{nodelay} at once; without,
        the first at once and the others one every 100 ms); the 22nd is
        refused; 100 ms later one slot is free again, and one more request
        passes.
        """
        limiter = RateLimiter(10.0, 20, self.clock)
        waits = _passes(limiter, "a", 22)
        self.assertEqual([round(w, 6) for w in waits[:21]], [n / 10 for n in range(21)])
        self.assertIsNone(waits[21])
        self.clock.advance(0.1)
        self.assertAlmostEqual(limiter.acquire("a"), 2.0)
        self.assertIsNone(limiter.acquire("a"))

    def test_noBurst(self):
        """
        Without a burst (nginx's default), a request sooner than C{1/rate}
        after the previous one passed is refused; one at C{1/rate} passes.
        """
        limiter = RateLimiter(4.0, 0, self.clock)
        self.assertEqual(_passes(limiter, "a", 2), [0.0, None])
        self.clock.advance(0.2)
        self.assertIsNone(limiter.acquire("a"))
        self.clock.advance(0.05)
        self.assertEqual(limiter.acquire("a"), 0.0)

    def test_refusedRequestsDoNotCount(self):
        """
        A refused request changes nothing: a client hammering the limit
        gets through again as soon as a client that stopped would.
        """
        limiter = RateLimiter(1.0, 0, self.clock)
        limiter.acquire("a")
        for _ in range(100):
            self.assertIsNone(limiter.acquire("a"))
        self.clock.advance(1.0)
        self.assertEqual(limiter.acquire("a"), 0.0)

    def test_averageRate(self):
        """
        A client sending twice the rate for 100 seconds gets the rate
        (plus its burst): 20/s with a burst of 5 lets through 2005 of 4000
        requests sent every 25 ms.
        """
        limiter = RateLimiter(20.0, 5, self.clock)
        passed = 0
        for _ in range(4000):
            if limiter.acquire("a") is not None:
                passed += 1
            self.clock.advance(0.025)
        self.assertIn(passed, (2005, 2006))

    def test_perMinute(self):
        """
        A rate per minute (C{30/m}, 0.5 per second) lets one request
        through every 2 seconds.
        """
        limiter = RateLimiter(30 / 60, 0, self.clock)
        self.assertEqual(_passes(limiter, "a", 2), [0.0, None])
        self.assertEqual(limiter.retryAfter("a"), 2.0)
        self.clock.advance(2.0)
        self.assertEqual(limiter.acquire("a"), 0.0)

    def test_keysAreIndependent(self):
        """
        One key over its rate does not hold back another.
        """
        limiter = RateLimiter(1.0, 0, self.clock)
        self.assertEqual(_passes(limiter, "a", 3), [0.0, None, None])
        self.assertEqual(_passes(limiter, "b", 2), [0.0, None])

    def test_idleKeysExpire(self):
        """
        A key whose TAT has passed is dropped from the table when new keys
        come (two at most for each), and the table shrinks back to the
        keys in use.
        """
        limiter = RateLimiter(1.0, 2, self.clock)
        for n in range(10):
            limiter.acquire(n)
        self.assertEqual(len(limiter), 10)
        self.clock.advance(1.0)
        limiter.acquire("new")
        self.assertEqual(len(limiter), 9)
        for n in range(4):
            limiter.acquire(f"new{n}")
        self.assertEqual(len(limiter), 5)
        self.assertEqual(limiter.retryAfter(0), 0.0)

    def test_busyKeyIsNotExpired(self):
        """
        A key whose TAT is still ahead (it used its burst) stays, with
        what it counted, however many new keys come.
        """
        limiter = RateLimiter(1.0, 3, self.clock)
        _passes(limiter, "busy", 4)
        self.clock.advance(1.5)
        for n in range(20):
            limiter.acquire(n)
        self.assertEqual(limiter.acquire("busy"), 2.5)
        self.assertIsNone(limiter.acquire("busy"))

    def test_capDropsLeastRecentlyUsed(self):
        """
        With the table full, a new key pushes out the key used least
        recently (not the oldest inserted), a refused request being a use:
        a client hammering its limit keeps its count.
        """
        limiter = RateLimiter(1.0, 0, self.clock, maxKeys=3)
        for key in ("a", "b", "c"):
            limiter.acquire(key)
        self.clock.advance(0.5)
        self.assertIsNone(limiter.acquire("a"))
        limiter.acquire("d")
        self.assertEqual(len(limiter), 3)
        # "a" was used after "b": "b" went, "a" is still counted.
        self.assertIsNone(limiter.acquire("a"))
        self.assertEqual(limiter.retryAfter("b"), 0.0)

    def test_millionKeysStayWithinTheCap(self):
        """
        1,000,000 distinct keys, one request each (a flood of made-up
        clients), never make the table hold more than its cap.
        """
        limiter = RateLimiter(1.0, 10, self.clock)
        acquire = limiter.acquire
        for n in range(1_000_000):
            acquire(b"%d" % n)
            if not n & 0xFFFF:
                self.assertLessEqual(len(limiter), DEFAULT_MAX_KEYS)
        self.assertEqual(len(limiter), DEFAULT_MAX_KEYS)

    def test_fullTableMemory(self):
        """
        A full table of the default cap (100,000 keys) holds less than
        32 MiB (33,554,432 bytes), measured with L{tracemalloc}, keys of
        the longest size kept whole (64 bytes; a longer header or cookie
        is kept as a 16-byte digest) included, while 10% more distinct
        keys than it holds come: about 300 bytes a key on CPython 3.11.
        """
        if platform.python_implementation() != "CPython":
            raise SkipTest("tracemalloc measures CPython's allocations")
        import tracemalloc

        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        limiter = RateLimiter(1.0, 10, self.clock)
        acquire = limiter.acquire
        for n in range(DEFAULT_MAX_KEYS * 11 // 10):
            acquire(b"%064d" % n)
        held = tracemalloc.get_traced_memory()[0] - before
        self.assertEqual(len(limiter), DEFAULT_MAX_KEYS)
        self.assertLess(held, 32 * 1024 * 1024)


class ConcurrencyLimiterTests(SynchronousTestCase):
    """
    L{ConcurrencyLimiter} counts the requests of each key in flight.
    """

    def test_counts(self):
        """
        A key is counted up to its limit and not beyond, and again once a
        request is released; a key with nothing in flight is not held.
        """
        limiter = ConcurrencyLimiter(2)
        self.assertTrue(limiter.acquire("a"))
        self.assertTrue(limiter.acquire("a"))
        self.assertFalse(limiter.acquire("a"))
        self.assertEqual(limiter.inFlight("a"), 2)
        self.assertTrue(limiter.acquire("b"))
        limiter.release("b")
        limiter.release("a")
        self.assertEqual(limiter.inFlight("a"), 1)
        limiter.release("a")
        self.assertEqual(len(limiter), 0)


class KeyFunctionTests(SynchronousTestCase):
    """
    L{limitKeyFunction} reads what C{limit_key} names from a request.
    """

    def test_remoteAddress(self):
        """
        C{remote_addr} is the client's IP address (the request's
        C{getClientAddress()}), C{"unix:"} for a UNIX socket's client.
        """
        key = limitKeyFunction("remote_addr")
        self.assertEqual(key(makeRequest(client="198.51.100.7")), "198.51.100.7")
        self.assertEqual(key(makeRequest(client=None)), "unix:")

    def test_headerAndCookie(self):
        """
        C{header:NAME} and C{cookie:NAME} are their values; a request
        without them, or with them empty, is not counted (L{None}); a
        value longer than 64 bytes is a 16-byte digest.
        """
        header = limitKeyFunction("header", "x-api-key")
        cookie = limitKeyFunction("cookie", "sid")
        request = makeRequest(headers={b"X-API-Key": b"k1"}, cookies={b"sid": b"s1"})
        self.assertEqual((header(request), cookie(request)), (b"k1", b"s1"))
        self.assertIsNone(header(makeRequest()))
        self.assertIsNone(cookie(makeRequest()))
        self.assertIsNone(header(makeRequest(headers={b"X-API-Key": b""})))
        long = makeRequest(headers={b"X-API-Key": b"k" * 65})
        self.assertEqual(len(header(long)), 16)
        self.assertNotEqual(header(long), header(makeRequest(headers={b"X-API-Key": b"k" * 66})))

    def test_unknownKind(self):
        """
        Another kind of key is a L{ValueError}.
        """
        self.assertRaises(ValueError, limitKeyFunction, "query", "x")


class _Holding(Resource):
    """
    Keeps the requests it renders unanswered, for requests in flight.
    """

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.requests = []

    def render(self, request):
        self.requests.append(request)
        return NOT_DONE_YET


_GET = b"GET / HTTP/1.1\r\nHost: app.example\r\n%s\r\n"


class VirtualHostLimitsTests(SynchronousTestCase):
    """
    The limits of a vhost, as its clients see them.
    """

    def harness(self, route=None, **limits):
        """
        A proxy whose one vhost has the L{RequestLimits} C{limits} make,
        its C{/} answered by C{route} (C{200 ok} by default).
        """
        harness = ProxyHarness(_Holding())
        self.addCleanup(harness.close)
        clock = harness.reactor
        keyKind = limits.pop("key", ("remote_addr", ""))
        rate = limits.pop("rate", None)
        conn = limits.pop("conn", None)
        self.limits = RequestLimits(
            limitKeyFunction(*keyKind),
            clock,
            rate=None if rate is None else RateLimiter(rate[0], rate[1], clock),
            conn=None if conn is None else ConcurrencyLimiter(conn),
            **limits,
        )
        vhost = VirtualHost(
            "app", ["app.example"], {b"/": route or FixedResource(200, b"ok")}, limits=self.limits
        )
        harness.site.resource = VirtualHostResource([vhost])
        return harness

    def get(self, client, headers=b""):
        client.clear()
        client.send(_GET % headers)
        return client.received()

    def test_overTheRate(self):
        """
        A client over its rate gets C{429 Too Many Requests} with
        C{Retry-After} (whole seconds, rounded up) and the short page,
        and its connection stays open; another client is served.
        """
        harness = self.harness(rate=(1 / 3, 1))
        client = harness.connect(IPv4Address("TCP", "192.0.2.1", 1000))
        other = harness.connect(IPv4Address("TCP", "192.0.2.2", 1000))
        self.assertTrue(self.get(client).startswith(b"HTTP/1.1 200 "))
        self.assertTrue(self.get(client).startswith(b"HTTP/1.1 200 "))
        harness.advance(0.5)
        refused = self.get(client)
        self.assertTrue(refused.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), refused)
        self.assertIn(b"\r\nRetry-After: 3\r\n", refused)
        self.assertIn(b"<h1>429 Too Many Requests</h1>", refused)
        self.assertFalse(client.closing)
        self.assertTrue(self.get(other).startswith(b"HTTP/1.1 200 "))
        self.assertEqual(self.limits.refusedRate, 1)
        harness.advance(2.5)
        self.assertTrue(self.get(client).startswith(b"HTTP/1.1 200 "))

    def test_headerKey(self):
        """
        With C{limit_key = header:NAME}, clients are told apart by that
        header, whatever their address; requests without it are not
        limited.
        """
        harness = self.harness(rate=(1.0, 0), key=("header", "x-api-key"))
        client = harness.connect()
        self.assertIn(b" 200 ", self.get(client, b"X-API-Key: one\r\n"))
        self.assertIn(b" 429 ", self.get(client, b"X-API-Key: one\r\n"))
        self.assertIn(b" 200 ", self.get(client, b"X-API-Key: two\r\n"))
        for _ in range(3):
            self.assertIn(b" 200 ", self.get(client))

    def test_delay(self):
        """
        With C{limit_delay = yes}, a request within the burst but above
        the rate is held back until it keeps to the rate, then answered.
        """
        harness = self.harness(rate=(2.0, 2), delay=True)
        client = harness.connect()
        self.assertIn(b" 200 ", self.get(client))
        self.assertEqual(self.get(client), b"")
        self.assertEqual(self.limits.delayed, 1)
        harness.advance(0.4)
        self.assertEqual(client.received(), b"")
        harness.advance(0.1)
        self.assertIn(b" 200 ", client.received())

    def test_delayedClientLeaves(self):
        """
        A client that leaves while its request is held back is forgotten:
        its timer is cancelled, and its place in flight given back.
        """
        route = _Holding()
        harness = self.harness(route=route, rate=(1.0, 1), delay=True, conn=5)
        first = harness.connect(IPv4Address("TCP", "192.0.2.1", 1000))
        second = harness.connect(IPv4Address("TCP", "192.0.2.1", 1001))
        first.send(_GET % b"")
        second.send(_GET % b"")
        self.assertEqual(len(route.requests), 1)
        self.assertEqual(len(self._held(harness)), 1)
        self.assertEqual(self.limits.conn.inFlight("192.0.2.1"), 2)
        second.disconnect()
        self.assertEqual(self.limits.conn.inFlight("192.0.2.1"), 1)
        self.assertEqual(self._held(harness), [])
        harness.advance(5)
        self.assertEqual(len(route.requests), 1)

    @staticmethod
    def _held(harness):
        """
        The timers of the requests held back, pending.
        """
        return [
            call
            for call in harness.reactor.getDelayedCalls()
            if isinstance(getattr(call.func, "__self__", None), _Admitted)
        ]

    def test_noDelay(self):
        """
        With C{limit_delay = no} (nginx's C{nodelay}), the requests within
        the burst are answered at once.
        """
        harness = self.harness(rate=(1.0, 3))
        client = harness.connect()
        for _ in range(4):
            self.assertIn(b" 200 ", self.get(client))
        self.assertIn(b" 429 ", self.get(client))

    def test_requestsInFlight(self):
        """
        With C{limit_conn}, a client with that many requests in flight
        gets 429 (without C{Retry-After}: no one knows when one ends);
        once one is finished, or its client has gone, the next passes.
        """
        route = _Holding()
        harness = self.harness(route=route, conn=2)
        clients = [harness.connect(IPv4Address("TCP", "192.0.2.1", p)) for p in range(3)]
        clients[0].send(_GET % b"")
        clients[1].send(_GET % b"")
        refused = self.get(clients[2])
        self.assertIn(b" 429 ", refused)
        self.assertNotIn(b"Retry-After", refused)
        self.assertEqual(self.limits.refusedConn, 1)
        other = harness.connect(IPv4Address("TCP", "192.0.2.9", 1))
        other.send(_GET % b"")
        self.assertEqual(len(route.requests), 3)

        route.requests[0].write(b"")
        route.requests[0].finish()
        clients[2].send(_GET % b"")
        self.assertEqual(len(route.requests), 4)
        late = harness.connect(IPv4Address("TCP", "192.0.2.1", 4))
        self.assertIn(b" 429 ", self.get(late))

        clients[1].disconnect()
        late.send(_GET % b"")
        self.assertEqual(len(route.requests), 5)
        self.assertEqual(self.limits.conn.inFlight("192.0.2.1"), 2)


class ServiceLimitsTests(SynchronousTestCase):
    """
    The limits built from the configuration.
    """

    _CONFIG = (
        "[lbproxy]\nlisten = tcp:0:interface=127.0.0.1\naccess_log = off\n"
        "workers = {workers}\n"
        "[upstream:app]\nservers = 127.0.0.1:1\n"
        "[vhost:app]\ndefault = yes\nupstream = app\n{limits}"
    )

    def config(self, limits, workers=1):
        return parseConfigText(self._CONFIG.format(limits=limits, workers=workers))

    def test_dividedBetweenWorkers(self):
        """
        With C{workers = 4}, each worker enforces a quarter of
        C{limit_rate} and C{limit_burst} by default
        (C{limit_per_worker = divide}), the whole with C{each};
        C{limit_conn} is per worker either way.
        """
        clock = Clock()
        (vhost,) = self.config("limit_rate = 20/s\nlimit_burst = 40\nlimit_conn = 3\n", 4).vhosts
        limits = buildLimits(limitSettings(vhost, 4), clock)
        self.assertEqual(limits.rate.interval, 1 / 5)
        self.assertEqual(limits.rate.tolerance, 10 * (1 / 5))
        self.assertEqual(limits.conn.limit, 3)
        (vhost,) = self.config("limit_rate = 20/s\nlimit_burst = 40\nlimit_per_worker = each\n", 4).vhosts
        limits = buildLimits(limitSettings(vhost, 4), clock)
        self.assertEqual(limits.rate.interval, 1 / 20)
        self.assertEqual(limits.rate.tolerance, 40 / 20)
        self.assertIsNone(limits.conn)

    def test_noLimits(self):
        """
        A vhost without C{limit_rate} or C{limit_conn} has no limits.
        """
        (vhost,) = self.config("").vhosts
        self.assertIsNone(limitSettings(vhost))
        service = LoadBalancerService(self.config(""), Clock())
        self.assertIsNone(service.resource.vhosts[0].limits)

    def test_snapshot(self):
        """
        The admin snapshot gives, for each vhost, L{None} without limits,
        else what its limits refused, held back and hold.
        """
        clock = Clock()
        service = LoadBalancerService(self.config("limit_rate = 1/s\nlimit_conn = 2\n"), clock)
        limits = service.resource.vhosts[0].limits
        limits.rate.acquire("192.0.2.1")
        limits.refusedRate = 3
        (vhost,) = service.snapshot()["vhosts"]
        self.assertEqual(
            vhost["limits"],
            {"refused_rate": 3, "refused_conn": 0, "delayed": 0, "clients": 1, "in_flight": 0},
        )
        service = LoadBalancerService(self.config(""), clock)
        self.assertIsNone(service.snapshot()["vhosts"][0]["limits"])

    def test_reloadKeepsLimits(self):
        """
        A reload that leaves a vhost's limits as they were keeps what they
        counted; one that changes them starts afresh.
        """
        clock = Clock()
        service = LoadBalancerService(self.config("limit_rate = 1/s\n"), clock)
        limits = service.resource.vhosts[0].limits
        limits.rate.acquire("192.0.2.1")
        service.reload(self.config("limit_rate = 1/s\n"))
        self.assertIs(service.resource.vhosts[0].limits, limits)
        service.reload(self.config("limit_rate = 2/s\n"))
        self.assertIsNot(service.resource.vhosts[0].limits, limits)
        self.assertEqual(service.resource.vhosts[0].limits.rate.interval, 0.5)
