"""
A fleet: three C{twistd lbproxy} processes fed by one real etcd (started
by the test on loopback), as docs/fleet.rst describes.  They converge on
the same backends within a second of a change, send a C{consistent_hash}
key to the same backend, and honour each other's C{sticky} cookies.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from lbproxy.testing import startServer
from tests.integration.etcdprocess import Etcd, NamedBackend, lbproxy, waitUntil

PREFIX = "/fleet/app/"

_CONFIG = """
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = off

[admin]
listen = tcp:0:interface=127.0.0.1

[upstream:hash]
servers_from = etcd
etcd_endpoints = {etcd}
etcd_prefix = {prefix}
balancer = consistent_hash
balancer.key = header:X-Key

[upstream:sticky]
servers_from = etcd
etcd_endpoints = {etcd}
etcd_prefix = {prefix}
balancer = sticky
balancer.secret = one secret for the whole fleet

[vhost:hash]
server_names = hash.test
default = yes
upstream = hash

[vhost:sticky]
server_names = sticky.test
upstream = sticky
"""


class FleetTests(TestCase):
    """
    Three lbproxy processes, one etcd, four backends.
    """

    timeout = 180

    @inlineCallbacks
    def setUp(self) -> Any:
        self.etcd = Etcd(self.mktemp())
        self.addCleanup(self.etcd.close)
        yield self.etcd.start()
        self.backends = []
        for name in (b"a", b"b", b"c", b"d"):
            server = yield startServer(NamedBackend(name), reactor)
            self.addCleanup(server.stop)
            self.backends.append(server)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        config = FilePath(self.mktemp())
        config.setContent(
            _CONFIG.format(etcd=self.etcd.url, prefix=PREFIX).encode("utf-8")
        )
        self.instances = []
        for number in range(3):
            process = lbproxy(f"lbproxy {number}", config.path)
            self.addCleanup(process.stop, "KILL")
            self.instances.append(process)
        self.proxies = []
        self.admins = []
        for process in self.instances:
            proxy = yield process.waitFor(rb"ProxySite starting on (\d+)")
            admin = yield process.waitFor(rb"\bSite starting on (\d+)")
            self.proxies.append(f"http://127.0.0.1:{int(proxy.group(1))}/")
            self.admins.append(f"http://127.0.0.1:{int(admin.group(1))}/api/upstreams/")

    def address(self, index: int) -> str:
        return f"127.0.0.1:{self.backends[index].port}"

    @inlineCallbacks
    def get(self, url: str, **kwargs: Any) -> Any:
        response = yield self.http.get(url, timeout=5, **kwargs)
        body = yield response.content()
        return response, body

    @inlineCallbacks
    def backendSets(self, upstream: str) -> Any:
        """
        What each instance's admin API says are the backends of
        C{upstream} that are up, with their weights.
        """
        answers = yield gatherResults(
            [self.get(admin + upstream) for admin in self.admins]
        )
        return [
            sorted(
                (b["name"], b["weight"])
                for b in json.loads(body)["backends"]
                if b["state"] == "up"
            )
            for _, body in answers
        ]

    @inlineCallbacks
    def converged(self, expected: list[tuple[str, int]], what: str) -> Any:
        """
        Wait until every instance shows C{expected} for both upstreams;
        fail unless that takes less than a second.
        """

        @inlineCallbacks
        def agree() -> Any:
            sets = yield self.backendSets("hash")
            sets += yield self.backendSets("sticky")
            return all(s == sorted(expected) for s in sets)

        took = yield waitUntil(agree, what, seconds=1.0, step=0.01)
        return took

    @inlineCallbacks
    def test_fleetAgrees(self) -> Any:
        """
        Keys put and deleted reach all three instances within a second;
        then a consistent-hash key goes to the same backend whichever
        instance it reaches, and a sticky cookie set by one instance is
        honoured by the others.
        """
        yield waitUntil(
            lambda: all(b"etcd /fleet/app/: read 0 key(s)" in p.output for p in self.instances),
            "every instance to read etcd",
            seconds=30,
        )
        for index in range(3):
            yield self.etcd.put(f"{PREFIX}{index}", self.address(index))
        yield self.converged(
            [(self.address(i), 1) for i in range(3)], "three backends everywhere"
        )
        yield self.etcd.put(f"{PREFIX}3", self.address(3) + " weight=2")
        yield self.converged(
            [(self.address(i), 1) for i in range(3)] + [(self.address(3), 2)],
            "the fourth backend everywhere",
        )
        yield self.etcd.delete(f"{PREFIX}1")
        yield self.etcd.put(f"{PREFIX}0", self.address(0) + " weight=3")
        expected = [(self.address(0), 3), (self.address(2), 1), (self.address(3), 2)]
        yield self.converged(expected, "a deletion and a new weight everywhere")

        for key in range(100):
            bodies = set()
            for proxy in self.proxies:
                response, body = yield self.get(
                    proxy, headers={"Host": "hash.test", "X-Key": f"user-{key}"}
                )
                self.assertEqual(response.code, 200)
                bodies.add(body)
            self.assertEqual(len(bodies), 1, f"key user-{key} went to {bodies}")

        first, body = yield self.get(self.proxies[0], headers={"Host": "sticky.test"})
        [cookie] = first.headers.getRawHeaders(b"set-cookie")
        self.assertTrue(cookie.startswith(b"lbproxy_sticky="))
        for port in (b"%d" % s.port for s in self.backends):
            self.assertNotIn(port, cookie)
        value = cookie.split(b";")[0]
        for proxy in self.proxies[1:] * 5:
            response, again = yield self.get(
                proxy, headers={"Host": "sticky.test", "Cookie": value.decode()}
            )
            self.assertEqual(again, body)
            self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
