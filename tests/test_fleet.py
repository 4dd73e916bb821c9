"""
The fleet agrees, in one process: three pools, each fed by its own
L{EtcdSource} from the same etcd (L{tests.fakeetcd.FakeEtcd}), which
started at different moments and so saw different histories of the same
keys, end with the same backends, send each of 10,000 C{consistent_hash}
keys to the same backend, and honour each other's C{sticky} cookies.
tests/integration/test_fleet.py does the same with three processes and a
real etcd.
"""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from lbproxy._etcdsource import EtcdSource
from lbproxy._pool import Pool
from lbproxy.balancers import buildBalancer
from lbproxy.testing import makeRequest
from tests.fakeetcd import FakeEtcd

PREFIX = "/fleet/app/"


class _Keyed:
    """
    As much of a request as C{consistent_hash} with C{header:X-Key} reads.
    """

    def __init__(self, key: bytes) -> None:
        self.requestHeaders = Headers({b"X-Key": [key]})


class _Client:
    """
    As much of a request as C{ip_hash} reads.
    """

    def __init__(self, host: str) -> None:
        self.address = IPv4Address("TCP", host, 40000)

    def getClientAddress(self) -> IPv4Address:
        return self.address


class FleetTests(SynchronousTestCase):
    """
    Three instances' pools, built independently from one etcd.
    """

    def setUp(self):
        self.etcd = FakeEtcd()
        self.clock = Clock()
        self.instances = []

    def instance(self, balancer, options):
        """
        Start one instance's pool and source now.
        """
        http = StubTreq(self.etcd)
        pool = Pool("app", [], buildBalancer(balancer, options), MemoryReactorClock())
        source = EtcdSource(pool, ("http://127.0.0.1:2379",), PREFIX, self.clock, http)
        source.startService()
        self.addCleanup(source.stopService)
        self.instances.append(http)
        self.flush()
        return pool

    def flush(self):
        for http in self.instances:
            http.flush()

    def put(self, name, value):
        self.etcd.put((PREFIX + name).encode(), value.encode())
        self.flush()

    def delete(self, name):
        self.etcd.delete((PREFIX + name).encode())
        self.flush()

    def history(self, start):
        """
        Change the keys, starting the instances at different moments: the
        first sees every change, the second the latter half, the third
        only the result, in one read.
        """
        pools = [start()]
        for i in range(8):
            self.put(f"{i:02}", f"10.0.0.{i + 1}:8080 weight={1 + i % 3}")
        self.delete("03")
        self.put("05", "10.0.0.6:8080 weight=4")
        pools.append(start())
        self.put("08", "10.0.1.9:8080")
        self.delete("00")
        self.put("03", "10.0.0.4:8080")
        self.put("09", "10.0.1.10:8080 backup")
        self.delete("06")
        pools.append(start())
        names = [[(b.url, b.weight, b.backup) for b in p.backends] for p in pools]
        self.assertEqual(names[0], names[1])
        self.assertEqual(names[0], names[2])
        self.assertEqual(len(names[0]), 8)
        return pools

    def test_consistentHash(self):
        """
        Each of 10,000 keys goes to the same backend on every instance,
        and the keys spread over every primary backend.
        """
        pools = self.history(
            lambda: self.instance("consistent_hash", {"key": "header:X-Key"})
        )
        seen = set()
        for n in range(10000):
            request = _Keyed(b"user-%d" % n)
            urls = {pool.pick(request).url for pool in pools}
            self.assertEqual(len(urls), 1, n)
            seen |= urls
        self.assertEqual(
            sorted(seen),
            sorted(b.url for b in pools[0].backends if not b.backup),
        )

    def test_ipHashDependsOnHistory(self):
        """
        C{ip_hash}, by contrast, lays backends out in the order it first
        met them and remembers departed ones: instances with different
        histories of the same keys send many clients to different backends
        (which is why docs/fleet.rst recommends C{consistent_hash} with
        C{remote_addr} for a fleet).
        """
        pools = self.history(lambda: self.instance("ip_hash", {}))
        differ = 0
        for n in range(10000):
            client = _Client(f"10.{n // 256 % 256}.{n % 256}.1")
            if len({pool.pick(client).url for pool in pools}) > 1:
                differ += 1
        self.assertGreater(differ, 1000)

    def test_stickyCookie(self):
        """
        A sticky cookie that one instance sets is honoured by the others,
        with a shared C{balancer.secret}.
        """
        pools = self.history(lambda: self.instance("sticky", {"secret": "fleet"}))
        for _ in range(20):
            first = makeRequest()
            backend = pools[0].pick(first)
            pools[0].requestStarted(backend, first)
            [cookie] = first.cookies
            value = cookie.split(b";")[0].split(b"=", 1)[1]
            for pool in pools[1:]:
                again = makeRequest(cookies={b"lbproxy_sticky": value})
                self.assertEqual(pool.pick(again).url, backend.url)
