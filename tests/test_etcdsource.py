"""
Tests for L{lbproxy._etcdsource}: an upstream's backends following the
server lines under an etcd prefix, against L{tests.fakeetcd.FakeEtcd}
through treq's C{StubTreq}; and its place in L{LoadBalancerService}.
"""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lbproxy._backend import BackendState
from lbproxy._config import ServerConfig, parseConfigText
from lbproxy._etcdsource import EtcdSource
from lbproxy._interfaces import IMembershipSource
from lbproxy._pool import Pool
from lbproxy.service import LoadBalancerService
from tests.fakeetcd import FakeEtcd

PREFIX = "/lbproxy/upstreams/app/"


def _logged(logs):
    return [e["log_format"].format(**e) for e in logs]


class EtcdSourceTests(SynchronousTestCase):
    """
    L{EtcdSource} sets its pool's backends from the keys under its prefix.
    """

    def setUp(self):
        self.etcd = FakeEtcd()
        self.http = StubTreq(self.etcd)
        self.clock = Clock()
        self.pool = Pool("app", [], reactor=MemoryReactorClock())
        self.source = EtcdSource(
            self.pool, ("http://127.0.0.1:2379",), PREFIX, self.clock, self.http
        )
        self.addCleanup(self.source.stopService)

    def put(self, name, value):
        self.etcd.put((PREFIX + name).encode(), value.encode())
        self.http.flush()

    def delete(self, name):
        self.etcd.delete((PREFIX + name).encode())
        self.http.flush()

    def members(self):
        return [(b.name, b.weight, b.state.value) for b in self.pool.backends]

    def test_emptyUntilRead(self):
        """
        The pool has no backend (and picks none) until etcd is read; then
        it has one per key, in key order.
        """
        self.assertEqual(self.members(), [])
        self.assertIsNone(self.pool.pick(None))
        self.etcd.put(b"/lbproxy/upstreams/app/b", b"127.0.0.1:8002 weight=3")
        self.etcd.put(b"/lbproxy/upstreams/app/a", b"127.0.0.1:8001")
        self.etcd.put(b"/lbproxy/upstreams/other/c", b"127.0.0.1:8003")
        self.source.startService()
        self.http.flush()
        self.assertEqual(
            self.members(), [("127.0.0.1:8001", 1, "up"), ("127.0.0.1:8002", 3, "up")]
        )
        self.assertEqual(
            self.source.servers,
            (ServerConfig("127.0.0.1", 8001), ServerConfig("127.0.0.1", 8002, weight=3)),
        )

    def test_changesKeepState(self):
        """
        A put adds a backend or changes one that stays (the same object,
        counters and all); a delete drains the backend until its requests
        in flight finish, then drops it.
        """
        self.source.startService()
        self.http.flush()
        self.put("a", "127.0.0.1:8001")
        self.put("b", "127.0.0.1:8002")
        a, b = self.pool.backends
        self.pool.requestStarted(a, None)
        self.pool.requestStarted(b, None)
        self.put("a", "127.0.0.1:8001 weight=5")
        self.assertIs(self.pool.backends[0], a)
        self.assertEqual((a.weight, a.requests), (5, 1))
        self.delete("b")
        self.assertEqual(b.state, BackendState.DRAINING)
        self.assertEqual(self.pool.eligible, (a,))
        self.pool.requestFinished(b, None, _success(), 0.01)
        self.assertEqual(self.members(), [("127.0.0.1:8001", 5, "up")])

    def test_operatorChanges(self):
        """
        A weight set at run time (the admin API's PATCH) lasts until the
        next change under the prefix, which applies every server line
        again; a drain by the operator stays.
        """
        self.source.startService()
        self.http.flush()
        self.put("a", "127.0.0.1:8001")
        self.put("b", "127.0.0.1:8002")
        a, b = self.pool.backends
        self.pool.setWeight(a, 9)
        self.pool.drain(b)
        self.put("c", "127.0.0.1:8003")
        self.assertEqual(a.weight, 1)
        self.assertEqual(b.state, BackendState.DRAINING)

    def test_badValueSkipped(self):
        """
        A value that is not a server line is logged once and not applied: a
        new key adds nothing, a key with a good value keeps it.
        """
        self.source.startService()
        self.http.flush()
        self.put("a", "127.0.0.1:8001")
        with capturedLogs() as logs:
            self.put("b", "not a server line")
            self.put("a", "127.0.0.1:99999")
            self.put("c", "127.0.0.1:8003")
        self.assertEqual(self.members(), [("127.0.0.1:8001", 1, "up"), ("127.0.0.1:8003", 1, "up")])
        errors = [line for line in _logged(logs) if "is not a server line" in line]
        self.assertEqual(
            errors,
            [
                "upstream app: etcd key /lbproxy/upstreams/app/b = 'not a server line' "
                "is not a server line, skipped (no backend for it): expected "
                "[http://|https://]HOST:PORT followed by any of weight=N, backup, "
                "down, max_fails=N, fail_timeout=T, max_conns=N, resolve, "
                "service=NAME, got 'a'",
                "upstream app: etcd key /lbproxy/upstreams/app/a = '127.0.0.1:99999' "
                "is not a server line, skipped (its last good value stays): expected "
                "a port between 1 and 65535 in [http://|https://]HOST:PORT followed "
                "by any of weight=N, backup, down, max_fails=N, fail_timeout=T, "
                "max_conns=N, resolve, service=NAME",
            ],
        )
        self.put("b", "127.0.0.1:8002 backup")
        self.assertEqual(
            [b.name for b in self.pool.backends],
            ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"],
        )
        self.assertTrue(self.pool.backends[1].backup)

    def test_valuesAPoolCannotUse(self):
        """
        A value that parses as a server line but that a pool cannot use is
        skipped as any bad value is, and the changes after it apply: a
        C{service=} line (its backend would be on port 0: SRV records are
        for the configuration file's servers), a C{resolve} line (whose name
        nothing would look up again), a weight too large to be held (it
        raised OverflowError at each change, so that no later change
        applied), an C{https} host name no certificate check takes (it
        raised when the backend's connections were set up).  One address
        written two ways is one backend.
        """
        self.source.startService()
        self.http.flush()
        with capturedLogs() as logs:
            self.put("a", "app.internal service=http resolve")
            self.put("a2", "app.internal:8001 resolve")
            self.put("b", "127.0.0.1:8002 weight=1" + "0" * 400)
            self.put("b2", "https://my_app:8443")
            self.put("c", "[::1]:8003")
            self.put("d", "[0:0::1]:8003 weight=2")
        self.assertEqual(self.members(), [("[::1]:8003", 1, "up")])
        self.assertEqual(self.source.status()["rejected"], 4)
        errors = [line for line in _logged(logs) if "is not a server line" in line]
        self.assertEqual(len(errors), 4)
        for error in errors[:2]:
            self.assertIn(
                "expected HOST:PORT; resolve and service=NAME are for the servers "
                "key of the configuration file",
                error,
            )
        self.assertIn("expected a weight of at most 1000000", errors[2])
        self.assertIn("= 'https://my_app:8443' is not a server line", errors[3])
        self.assertIn("expected a host name a certificate can be checked against (", errors[3])
        self.assertEqual(self.source.mirror.failures, 0)

    def test_longValuesShortened(self):
        """
        A log line shows the first 200 characters of a long key, value or
        error, and how long it is: whoever writes to etcd chooses them, up
        to 1.5 MB each.
        """
        self.source.startService()
        self.http.flush()
        with capturedLogs() as logs:
            self.put("k" * 300, "x" * 100000)
        (line,) = [line for line in _logged(logs) if "is not a server line" in line]
        self.assertIn(
            f"etcd key {PREFIX}{'k' * (200 - len(PREFIX))}... ({len(PREFIX) + 300} characters) = "
            f"'{'x' * 200}'... (100000 characters) is not a server line",
            line,
        )
        self.assertLess(len(line), 1000)

    def test_certificateNameSettings(self):
        """
        An C{https} host name no certificate check takes is used when the
        upstream checks no certificate (C{tls_verify = no}), or checks
        them against its C{tls_server_name}.
        """
        for settings in [{"tlsVerify": False}, {"tlsServerName": "app.internal"}]:
            pool = Pool("app", [], reactor=MemoryReactorClock(), **settings)
            source = EtcdSource(
                pool, ("http://127.0.0.1:2379",), PREFIX, self.clock, self.http, **settings
            )
            source.startService()
            self.addCleanup(source.stopService)
            self.http.flush()
            self.put("a", "https://my_app:8443")
            self.assertEqual([b.name for b in pool.backends], ["my_app:8443"], settings)
            self.assertEqual(source.status()["rejected"], 0)

    def test_status(self):
        """
        L{EtcdSource.status}: its prefix, the endpoint in use, the
        revision, whether it watches, its mirror's counts, the keys under
        the prefix and those not a server line.
        """
        self.assertTrue(verifyObject(IMembershipSource, self.source))
        self.source.startService()
        self.http.flush()
        self.put("a", "127.0.0.1:8001")
        self.put("b", "not a server line")
        self.assertEqual(
            self.source.status(),
            {
                "kind": "etcd",
                "prefix": PREFIX,
                "endpoint": "http://127.0.0.1:2379",
                "revision": 3,
                "watching": True,
                "reads": 1,
                "events": 2,
                "failures": 0,
                "keys": 2,
                "rejected": 1,
                "error": None,
            },
        )
        self.put("b", "127.0.0.1:8002")
        self.assertEqual(self.source.status()["rejected"], 0)

    def test_sameAddressTwice(self):
        """
        Two keys naming one address give one backend, the first key's; the
        other is logged.
        """
        self.source.startService()
        self.http.flush()
        with capturedLogs() as logs:
            self.put("b", "127.0.0.1:8001 weight=2")
            self.put("a", "127.0.0.1:8001 weight=7")
        self.assertEqual(self.members(), [("127.0.0.1:8001", 7, "up")])
        self.assertIn(
            "upstream app: etcd keys /lbproxy/upstreams/app/a and "
            "/lbproxy/upstreams/app/b both name 127.0.0.1:8001; "
            "/lbproxy/upstreams/app/a counts",
            _logged(logs),
        )

    def test_stop(self):
        """
        Stopping the source stops the watch; the pool keeps its backends.
        """
        self.source.startService()
        self.http.flush()
        self.put("a", "127.0.0.1:8001")
        self.source.stopService()
        self.http.flush()
        self.assertEqual(self.etcd.watches, [])
        self.put("b", "127.0.0.1:8002")
        self.assertEqual(self.members(), [("127.0.0.1:8001", 1, "up")])


def _success():
    from lbproxy._backend import Outcome

    return Outcome.SUCCESS


_CONFIG = """\
[lbproxy]
listen = tcp:0:interface=127.0.0.1
[upstream:app]
servers_from = etcd
etcd_endpoints = http://127.0.0.1:1 http://127.0.0.1:2
[upstream:static]
servers = 127.0.0.1:9001
[vhost:app]
default = yes
upstream = app
"""


class ServiceTests(SynchronousTestCase):
    """
    A L{LoadBalancerService} has one L{EtcdSource} per upstream with
    C{servers_from = etcd}, a child of it, replaced on reload.
    """

    def test_sources(self):
        """
        Each upstream with C{servers_from = etcd} gets a source for its
        pool, with the default prefix; it starts with no backend.
        """
        service = LoadBalancerService(parseConfigText(_CONFIG), MemoryReactorClock())
        self.assertEqual(sorted(service.sources), ["app"])
        source = service.sources["app"]
        self.assertIs(source.pool, service.pools["app"])
        self.assertIs(source.parent, service)
        self.assertEqual(source.prefix, PREFIX)
        self.assertEqual(
            source.mirror.client.endpoints, ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        )
        self.assertEqual(service.pools["app"].backends, ())

    def test_snapshot(self):
        """
        The service's snapshot shows each upstream's source (L{None} for
        fixed servers), and the backends that joined and left its pool.
        """
        service = LoadBalancerService(parseConfigText(_CONFIG), MemoryReactorClock())
        changed = service.sources["app"].mirror.changed
        changed({b"/k/a": b"127.0.0.1:8001", b"/k/b": b"127.0.0.1:8002"}, "test")
        changed({b"/k/b": b"127.0.0.1:8002"}, "test")
        app, static = service.snapshot()["upstreams"]
        self.assertEqual(app["source"]["kind"], "etcd")
        self.assertEqual(app["source"]["endpoint"], "http://127.0.0.1:1")
        self.assertEqual((app["backends_added"], app["backends_removed"]), (2, 1))
        self.assertIsNone(static["source"])
        self.assertEqual((static["backends_added"], static["backends_removed"]), (0, 0))

    def test_healthChecksFollow(self):
        """
        With C{health_check}, the backends the source adds are probed and
        those it removes are no longer.
        """
        config = parseConfigText(_CONFIG.replace("[upstream:static]", "health_check = /hz\n[upstream:static]"))
        service = LoadBalancerService(config, MemoryReactorClock())
        checker = service.healthCheckers["app"]
        changed = service.sources["app"].mirror.changed
        changed({b"/k/a": b"127.0.0.1:8001", b"/k/b": b"127.0.0.1:8002"}, "test")
        self.assertEqual(
            sorted(b.name for b in checker.checks), ["127.0.0.1:8001", "127.0.0.1:8002"]
        )
        changed({b"/k/b": b"127.0.0.1:8002"}, "test")
        self.assertEqual([b.name for b in checker.checks], ["127.0.0.1:8002"])

    def test_reloadKeepsBackends(self):
        """
        After a reload the new pool starts with the servers the old source
        had applied, and a new source follows the prefix; the old source is
        no longer a child.  A new prefix starts empty.
        """
        service = LoadBalancerService(parseConfigText(_CONFIG), MemoryReactorClock())
        old = service.sources["app"]
        old.servers = (ServerConfig("127.0.0.1", 8001, weight=2),)
        service.reload(parseConfigText(_CONFIG))
        new = service.sources["app"]
        self.assertIsNot(new, old)
        self.assertIsNone(old.parent)
        self.assertIs(new.parent, service)
        self.assertEqual(
            [(b.name, b.weight) for b in service.pools["app"].backends],
            [("127.0.0.1:8001", 2)],
        )
        service.reload(
            parseConfigText(_CONFIG.replace("servers_from", "etcd_prefix = /x/\nservers_from"))
        )
        self.assertEqual(service.pools["app"].backends, ())

    def test_reloadKeepsLastGoodValues(self):
        """
        A key's last good value stays in force across a reload: when the
        new source first reads the prefix and finds the key's value bad,
        the key keeps its backend, as it would have without the reload.
        """
        service = LoadBalancerService(parseConfigText(_CONFIG), MemoryReactorClock())
        good = {b"/k/a": b"127.0.0.1:8001", b"/k/b": b"127.0.0.1:8002"}
        service.sources["app"].mirror.changed(good, "test")
        service.reload(parseConfigText(_CONFIG))
        bad = {b"/k/a": b"127.0.0.1:8001", b"/k/b": b"not a server line"}
        with capturedLogs() as logs:
            service.sources["app"].mirror.changed(bad, "etcd read at revision 9")
        self.assertEqual(
            [b.name for b in service.pools["app"].backends],
            ["127.0.0.1:8001", "127.0.0.1:8002"],
        )
        self.assertIn("its last good value stays", " ".join(_logged(logs)))
