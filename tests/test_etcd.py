"""
Tests for L{lbproxy._etcd}: the etcd v3 gateway client and the mirror of
a prefix, against L{tests.fakeetcd.FakeEtcd} through treq's C{StubTreq},
with a L{Clock} for time.  tests/integration/test_etcd_live.py runs the
same against a real etcd.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._etcd import (
    Compacted,
    EtcdClient,
    EtcdError,
    Event,
    LineSplitter,
    PrefixMirror,
    Unauthenticated,
    parseRange,
    parseWatchResponse,
    prefixEnd,
)
from tests.fakeetcd import FakeEtcd

A = "http://a.example:2379"
B = "http://b.example:2379"


class WireTests(SynchronousTestCase):
    """
    The gateway's JSON, read and written.
    """

    def test_prefixEnd(self):
        """
        The end of a prefix's range is the prefix with its last byte plus
        one, trailing 0xff dropped; every key for an empty prefix.
        """
        self.assertEqual(prefixEnd(b"/lb/"), b"/lb0")
        self.assertEqual(prefixEnd(b"a\xff\xff"), b"b")
        self.assertEqual(prefixEnd(b""), b"\0")
        self.assertEqual(prefixEnd(b"\xff"), b"\0")

    def test_parseRange(self):
        """
        A range response gives the header's revision and the keys; an empty
        one (no C{kvs}) gives no key.
        """
        body = (
            b'{"header":{"revision":"7"},"kvs":[{"key":"L2xiL2E=",'
            b'"value":"MTI3LjAuMC4xOjgw","mod_revision":"5"}],"count":"1"}'
        )
        self.assertEqual(parseRange(body), (7, {b"/lb/a": b"127.0.0.1:80"}))
        self.assertEqual(parseRange(b'{"header":{"revision":"3"}}'), (3, {}))

    def test_parseRangeBad(self):
        """
        Anything else is an L{EtcdError}: not JSON, an error, bad base64, a
        truncated answer.
        """
        for body in [
            b"<html>",
            b'{"error":"x","code":2}',
            b'{"header":{"revision":"1"},"kvs":[{"key":"***"}]}',
            b'{"header":{"revision":"1"},"more":true}',
            b"[]",
        ]:
            self.assertRaises(EtcdError, parseRange, body)

    def test_parseWatchResponse(self):
        """
        A watch line gives its events in order, PUT when the type is left
        out, DELETE without a value.
        """
        response = parseWatchResponse(
            b'{"result":{"header":{"revision":"9"},"events":['
            b'{"kv":{"key":"YQ==","value":"MQ==","mod_revision":"8"}},'
            b'{"type":"DELETE","kv":{"key":"Yg==","mod_revision":"9"}}]}}'
        )
        self.assertFalse(response.created)
        self.assertEqual(response.revision, 9)
        self.assertEqual(
            response.events, (Event(b"a", b"1", 8), Event(b"b", None, 9))
        )
        created = parseWatchResponse(b'{"result":{"header":{"revision":"3"},"created":true}}')
        self.assertTrue(created.created)

    def test_parseWatchCompacted(self):
        """
        A cancellation for compaction is L{Compacted} with etcd's oldest
        revision; any other cancellation or an error is an L{EtcdError}.
        """
        with self.assertRaises(Compacted) as caught:
            parseWatchResponse(
                b'{"result":{"header":{},"canceled":true,"compact_revision":"12"}}'
            )
        self.assertEqual(caught.exception.revision, 12)
        for line in [
            b'{"result":{"canceled":true}}',
            b'{"error":{"grpc_code":14,"message":"unavailable"}}',
            b'{"result":{"events":[{"type":"EXPLODE","kv":{"key":"YQ=="}}]}}',
            b"nonsense",
        ]:
            self.assertRaises(EtcdError, parseWatchResponse, line)

    def test_parseNotWhatEtcdSends(self):
        """
        JSON that etcd never sends is an L{EtcdError} too, not another
        exception (the mirror's log and status then said "OverflowError:
        cannot convert float infinity to integer" or "TypeError: 'int'
        object is not iterable"): a number that is infinite, keys or
        events that are not a list, JSON nested deeper than the parser
        goes.
        """
        for body in [
            b'{"header":{"revision":Infinity}}',
            b'{"header":{"revision":"1"},"kvs":5}',
            b'{"result":{"header":{},"compact_revision":-Infinity}}',
            b'{"result":{"header":{"revision":"1"},"events":true}}',
            b"[" * 100000 + b"]" * 100000,
        ]:
            self.assertRaises(EtcdError, parseRange, body)
            self.assertRaises(EtcdError, parseWatchResponse, body)

    def test_lineSplitter(self):
        """
        Lines come out whole, however the bytes are cut; an overlong line
        is an error rather than an ever-growing buffer.
        """
        splitter = LineSplitter(maxLine=10)
        self.assertEqual(splitter.feed(b'{"a"'), [])
        self.assertEqual(splitter.feed(b':1}\n\n{"b":2}\n{'), [b'{"a":1}', b'{"b":2}'])
        self.assertEqual(splitter.feed(b"}\n"), [b"{}"])
        self.assertRaises(EtcdError, splitter.feed, b"x" * 11)


class ClientTests(SynchronousTestCase):
    """
    L{EtcdClient} against the fake gateway.
    """

    def setUp(self):
        self.etcd = FakeEtcd()
        self.http = StubTreq(self.etcd)
        self.clock = Clock()
        self.client = EtcdClient([A, B], self.clock, self.http)

    def test_range(self):
        """
        C{range} reads every key under the prefix and no other.
        """
        self.etcd.put(b"/lb/a", b"127.0.0.1:8001")
        self.etcd.put(b"/lb/b", b"127.0.0.1:8002")
        self.etcd.put(b"/lbx", b"127.0.0.1:8003")
        d = self.client.range(b"/lb/")
        self.http.flush()
        self.assertEqual(
            self.successResultOf(d),
            (4, {b"/lb/a": b"127.0.0.1:8001", b"/lb/b": b"127.0.0.1:8002"}),
        )

    def test_rangeNextEndpoint(self):
        """
        When the first endpoint fails, the next one is tried, and it is
        where the next call starts.
        """
        self.etcd.refuse.add("a.example")
        d = self.client.range(b"/lb/")
        self.http.flush()
        self.assertEqual(self.successResultOf(d), (1, {}))
        self.assertEqual(self.client.endpoint, B)
        self.assertEqual([r[0] for r in self.etcd.requests], ["a.example", "b.example"])

    def test_rangeEveryEndpointFails(self):
        """
        When every endpoint fails, the error names what each did.
        """
        self.etcd.refuse.update({"a.example", "b.example"})
        d = self.client.range(b"/lb/")
        self.http.flush()
        failure = self.failureResultOf(d, EtcdError)
        self.assertEqual(
            str(failure.value), f"{A}: HTTP 503 from {A}; {B}: HTTP 503 from {B}"
        )

    def test_rangeTimeout(self):
        """
        An endpoint that does not answer within the timeout counts as
        failed, and the next is tried.
        """
        client = EtcdClient([A, B], self.clock, _Silent(self.http, "a.example"), timeout=2)
        d = client.range(b"/lb/")
        self.assertNoResult(d)
        self.clock.advance(2)
        self.http.flush()
        self.assertEqual(self.successResultOf(d), (1, {}))
        self.assertEqual(client.endpoint, B)

    def test_watch(self):
        """
        C{watch} reports the creation, then each change as it happens,
        from the start revision on.
        """
        self.etcd.put(b"/lb/a", b"1")
        seen = []
        d = self.client.watch(b"/lb/", 2, seen.append)
        self.http.flush()
        self.etcd.put(b"/lb/b", b"2")
        self.etcd.put(b"/other", b"3")
        self.etcd.delete(b"/lb/a")
        self.http.flush()
        self.assertNoResult(d)
        self.assertEqual(
            [(r.created, r.events) for r in seen],
            [
                (True, ()),
                (False, (Event(b"/lb/a", b"1", 2),)),
                (False, (Event(b"/lb/b", b"2", 3),)),
                (False, (Event(b"/lb/a", None, 5),)),
            ],
        )
        (request,) = [r for r in self.etcd.requests if r[1] == b"/v3/watch"]
        self.assertTrue(request[2]["create_request"]["progress_notify"])
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.http.flush()
        self.assertEqual(self.etcd.watches, [])

    def test_watchEnds(self):
        """
        A watch stream that ends is a failure saying so.
        """
        d = self.client.watch(b"/lb/", 2, lambda r: None)
        self.http.flush()
        self.etcd.dropWatches()
        self.http.flush()
        failure = self.failureResultOf(d, EtcdError)
        self.assertEqual(str(failure.value), f"{A} ended the watch stream")

    def test_watchGarbage(self):
        """
        A line that is not a watch response ends the watch with an
        L{EtcdError}, and the stream is closed.
        """
        d = self.client.watch(b"/lb/", 2, lambda r: None)
        self.http.flush()
        self.etcd.garble()
        self.http.flush()
        failure = self.failureResultOf(d, EtcdError)
        self.assertIn("a watch message is not JSON", str(failure.value))
        self.assertEqual(self.etcd.watches, [])

    def test_watchRefused(self):
        """
        A watch answered with an HTTP error fails with an L{EtcdError}
        naming the status and the endpoint.
        """
        self.etcd.refuse.add("a.example")
        d = self.client.watch(b"/lb/", 2, lambda r: None)
        self.http.flush()
        self.assertEqual(str(self.failureResultOf(d, EtcdError).value), f"HTTP 503 from {A}")

    def test_watchCompacted(self):
        """
        A watch from a compacted revision fails with L{Compacted}.
        """
        self.etcd.put(b"/lb/a", b"1")
        self.etcd.put(b"/lb/a", b"2")
        self.etcd.compact(3)
        d = self.client.watch(b"/lb/", 2, lambda r: None)
        self.http.flush()
        self.assertEqual(self.failureResultOf(d, Compacted).value.revision, 3)


class AuthTests(SynchronousTestCase):
    """
    L{EtcdClient} with credentials, against the fake gateway with auth
    enabled.
    """

    def setUp(self):
        self.etcd = FakeEtcd()
        self.etcd.users["lbproxy"] = "s3cret"
        self.etcd.put(b"/lb/a", b"127.0.0.1:8001")
        self.http = StubTreq(self.etcd)
        self.clock = Clock()

    def client(self, password="s3cret"):
        return EtcdClient([A, B], self.clock, self.http, credentials=("lbproxy", password))

    def paths(self):
        return [(host, path) for host, path, _ in self.etcd.requests]

    def test_authenticatesFirst(self):
        """
        The first call asks for a token and sends it; later calls send the
        same token without asking again.
        """
        client = self.client()
        for _ in range(2):
            d = client.range(b"/lb/")
            self.http.flush()
            self.assertEqual(self.successResultOf(d)[1], {b"/lb/a": b"127.0.0.1:8001"})
        self.assertEqual(
            self.paths(),
            [("a.example", b"/v3/auth/authenticate"), ("a.example", b"/v3/kv/range"),
             ("a.example", b"/v3/kv/range")],
        )
        self.assertEqual(
            self.etcd.requests[0][2], {"name": "lbproxy", "password": "s3cret"}
        )

    def test_expiredToken(self):
        """
        A token etcd no longer knows (HTTP 401) is replaced: the client
        authenticates again and repeats the call, once.
        """
        client = self.client()
        d = client.range(b"/lb/")
        self.http.flush()
        self.successResultOf(d)
        self.etcd.expireTokens()
        d = client.range(b"/lb/")
        self.http.flush()
        self.assertEqual(self.successResultOf(d)[1], {b"/lb/a": b"127.0.0.1:8001"})
        self.assertEqual(
            [path for _, path in self.paths()],
            [b"/v3/auth/authenticate", b"/v3/kv/range", b"/v3/kv/range",
             b"/v3/auth/authenticate", b"/v3/kv/range"],
        )

    def test_watchWithToken(self):
        """
        A watch is sent with the token too.
        """
        client = self.client()
        responses: list[Any] = []
        client.watch(b"/lb/", 2, responses.append)
        self.http.flush()
        self.assertEqual(len(self.etcd.watches), 1)
        self.assertTrue(responses[0].created)

    def test_watchExpiredToken(self):
        """
        A watch whose token etcd no longer knows ends with
        L{Unauthenticated} (the gateway streams the refusal), and the next
        call authenticates again.
        """
        client = self.client()
        d = client.range(b"/lb/")
        self.http.flush()
        self.successResultOf(d)
        self.etcd.expireTokens()
        watching = client.watch(b"/lb/", 2, lambda response: None)
        self.http.flush()
        self.assertIn("invalid auth token", str(self.failureResultOf(watching, Unauthenticated).value))
        responses: list[Any] = []
        client.watch(b"/lb/", 2, responses.append)
        self.http.flush()
        self.assertTrue(responses[0].created)
        self.assertEqual(
            [path for _, path in self.paths()][-3:],
            [b"/v3/watch", b"/v3/auth/authenticate", b"/v3/watch"],
        )

    def test_refusedPassword(self):
        """
        A password etcd refuses fails the call on every endpoint with an
        error that names the user and says what etcd said, but not the
        password.
        """
        d = self.client("wrong").range(b"/lb/")
        self.http.flush()
        error = str(self.failureResultOf(d, EtcdError).value)
        refused = ("etcd refused to authenticate user 'lbproxy': HTTP 400: etcdserver: "
                   "authentication failed, invalid user ID or password")
        self.assertEqual(error, f"{A}: {refused}; {B}: {refused}")
        self.assertNotIn("wrong", error)

    def test_noCredentials(self):
        """
        Without credentials, a cluster with auth enabled refuses the call,
        and the error says with what status.
        """
        d = EtcdClient([A], self.clock, self.http).range(b"/lb/")
        self.http.flush()
        self.assertEqual(
            str(self.failureResultOf(d, EtcdError).value),
            f"{A}: HTTP 400 from {A}: etcdserver: user name is empty",
        )


class _Silent:
    """
    An HTTP client whose requests to one host are never answered.
    """

    def __init__(self, http, host):
        self.http = http
        self.host = host

    def post(self, url, **kwargs):
        if self.host in url:
            return Deferred()
        return self.http.post(url, **kwargs)


class MirrorTests(SynchronousTestCase):
    """
    L{PrefixMirror}: a full read, then the watch, resumed after a loss and
    restarted from a full read after compaction.
    """

    def setUp(self):
        self.etcd = FakeEtcd()
        self.http = StubTreq(self.etcd)
        self.clock = Clock()
        self.client = EtcdClient([A, B], self.clock, self.http)
        self.changes = []
        self.mirror = PrefixMirror(
            self.client, b"/lb/", lambda v, why: self.changes.append((v, why)), self.clock
        )
        self.addCleanup(self.mirror.stop)

    def watchStarts(self):
        return [
            (r[0], int(r[2]["create_request"]["start_revision"]))
            for r in self.etcd.requests
            if r[1] == b"/v3/watch"
        ]

    def test_readThenWatch(self):
        """
        The mirror reads the prefix, tells its copy, then applies each
        watch response in order and tells the new copy.
        """
        self.etcd.put(b"/lb/a", b"1")
        self.mirror.start()
        self.http.flush()
        self.assertEqual(self.changes, [({b"/lb/a": b"1"}, "etcd read at revision 2")])
        self.assertEqual(self.watchStarts(), [("a.example", 3)])
        self.etcd.put(b"/lb/b", b"2")
        self.etcd.delete(b"/lb/a")
        self.http.flush()
        self.assertEqual(
            self.changes[1:],
            [
                ({b"/lb/a": b"1", b"/lb/b": b"2"}, "etcd revision 3: put /lb/b"),
                ({b"/lb/b": b"2"}, "etcd revision 4: deleted /lb/a"),
            ],
        )
        self.assertEqual(self.mirror.revision, 4)

    def test_transaction(self):
        """
        Every event of a transaction has the same revision, and all are
        applied: keys put together, and a prefix deleted at once
        (C{etcdctl del --prefix}), also when they arrive on a resumed
        watch.
        """
        self.mirror.start()
        self.http.flush()
        self.etcd.txn([(b"/lb/a", b"1"), (b"/lb/b", b"2")])
        self.http.flush()
        self.assertEqual(self.mirror.values, {b"/lb/a": b"1", b"/lb/b": b"2"})
        self.etcd.txn([(b"/lb/a", None), (b"/lb/b", None)])
        self.http.flush()
        self.assertEqual(self.mirror.values, {})
        with capturedLogs():
            self.etcd.dropWatches()
            self.http.flush()
        self.etcd.txn([(b"/lb/c", b"3"), (b"/lb/d", b"4")])
        self.clock.advance(0)
        self.http.flush()
        self.assertEqual(self.mirror.values, {b"/lb/c": b"3", b"/lb/d": b"4"})
        self.assertEqual(
            [why for _, why in self.changes],
            [
                "etcd read at revision 1",
                "etcd revision 2: put /lb/a, put /lb/b",
                "etcd revision 3: deleted /lb/a, deleted /lb/b",
                "etcd revision 4: put /lb/c, put /lb/d",
            ],
        )

    def test_resume(self):
        """
        A lost watch is started again on the next endpoint from the
        revision after the last change applied, so the changes made
        meanwhile arrive once each.
        """
        self.mirror.start()
        self.http.flush()
        self.etcd.put(b"/lb/a", b"1")
        self.http.flush()
        self.etcd.refuse.add("b.example")
        with capturedLogs() as logs:
            self.etcd.dropWatches()
            self.http.flush()
        self.clock.advance(0)
        self.etcd.put(b"/lb/b", b"2")
        self.etcd.delete(b"/lb/a")
        # b.example refuses at once; back to a.example after a backoff.
        self.assertEqual(self.watchStarts(), [("a.example", 2), ("b.example", 3)])
        self.http.flush()
        self.clock.advance(PrefixMirror.initialDelay)
        self.http.flush()
        self.assertEqual(
            self.watchStarts(),
            [("a.example", 2), ("b.example", 3), ("a.example", 3)],
        )
        self.assertEqual(
            [why for _, why in self.changes],
            [
                "etcd read at revision 1",
                "etcd revision 2: put /lb/a",
                "etcd revision 4: put /lb/b, deleted /lb/a",
            ],
        )
        self.assertEqual(self.changes[-1][0], {b"/lb/b": b"2"})
        self.assertIn(
            "etcd /lb/: the watch at http://a.example:2379 failed: "
            "http://a.example:2379 ended the watch stream; trying "
            "http://b.example:2379 in 0s, from revision 3",
            [e["log_format"].format(**e) for e in logs],
        )

    def counts(self):
        mirror = self.mirror
        return (mirror.watching, mirror.reads, mirror.events, mirror.failures, mirror.error)

    def test_counts(self):
        """
        The mirror says whether its watch is open, and counts its reads,
        the events it applied and the reads and watches that failed,
        with why the latest failed until one works again.
        """
        self.assertEqual(self.counts(), (False, 0, 0, 0, None))
        self.mirror.start()
        self.http.flush()
        self.assertEqual(self.counts(), (True, 1, 0, 0, None))
        self.etcd.put(b"/lb/a", b"1")
        self.etcd.put(b"/lb/b", b"1")
        self.etcd.delete(b"/lb/a")
        self.http.flush()
        self.assertEqual(self.counts(), (True, 1, 3, 0, None))
        self.etcd.refuse.add("b.example")
        self.etcd.dropWatches()
        self.http.flush()
        self.clock.advance(0)
        self.http.flush()
        self.assertEqual(
            self.counts(),
            (False, 1, 3, 2, "HTTP 503 from http://b.example:2379"),
        )
        self.clock.advance(PrefixMirror.initialDelay)
        self.http.flush()
        self.assertEqual(self.counts(), (True, 1, 3, 2, None))
        self.mirror.stop()
        self.assertFalse(self.mirror.watching)

    def test_backoff(self):
        """
        While every endpoint fails, the retries wait longer each round, up
        to L{PrefixMirror.maxDelay}; a success starts over.
        """
        self.etcd.refuse.update({"a.example", "b.example"})
        self.mirror.start()
        self.http.flush()
        def reads():
            return sum(1 for r in self.etcd.requests if r[1] == b"/v3/kv/range")
        self.assertEqual(reads(), 2)
        delays = []
        for _ in range(10):
            (retry,) = self.clock.getDelayedCalls()
            delay = retry.getTime() - self.clock.seconds()
            delays.append(round(delay, 6))
            self.clock.advance(delay)
            self.http.flush()
        self.assertEqual(reads(), 22)
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0])
        self.etcd.refuse.clear()
        self.clock.advance(10)
        self.http.flush()
        self.assertEqual(len(self.changes), 1)

    def test_backoffWhenWatchesDropAtOnce(self):
        """
        Watches that etcd creates and that end at once count as failures
        in a row: the retries back off as for refused ones.  A watch that
        lasted L{PrefixMirror.maxDelay} starts a new row.
        """
        self.mirror.start()
        self.http.flush()
        delays = []
        with capturedLogs():
            for _ in range(6):
                self.etcd.dropWatches()
                self.http.flush()
                (retry,) = self.clock.getDelayedCalls()
                delay = retry.getTime() - self.clock.seconds()
                delays.append(round(delay, 6))
                self.clock.advance(delay)
                self.http.flush()
            self.assertEqual(delays, [0.0, 0.1, 0.1, 0.2, 0.2, 0.4])
            self.assertTrue(self.mirror.watching)
            self.clock.advance(PrefixMirror.maxDelay)
            self.etcd.dropWatches()
            self.http.flush()
        (retry,) = self.clock.getDelayedCalls()
        self.assertEqual(retry.getTime(), self.clock.seconds())

    def test_compacted(self):
        """
        When the revisions the watch needs were compacted, the mirror reads
        the whole prefix again and watches on from there.
        """
        self.etcd.put(b"/lb/a", b"1")
        self.mirror.start()
        self.http.flush()
        self.etcd.refuse.update({"a.example", "b.example"})
        self.etcd.dropWatches()
        self.http.flush()
        self.etcd.put(b"/lb/b", b"2")
        self.etcd.delete(b"/lb/a")
        self.etcd.compact(self.etcd.revision)
        self.etcd.refuse.clear()
        self.clock.advance(PrefixMirror.initialDelay)
        self.http.flush()
        self.assertEqual(
            [why for _, why in self.changes],
            ["etcd read at revision 2", "etcd read at revision 4"],
        )
        self.assertEqual(self.changes[-1][0], {b"/lb/b": b"2"})
        self.assertEqual(self.watchStarts()[-1], ("b.example", 5))

    def test_idle(self):
        """
        A watch that sends nothing for L{PrefixMirror.idleTimeout} is taken
        as lost and started again; progress notifications keep it alive
        and move the revision on.
        """
        self.mirror.start()
        self.http.flush()
        self.etcd.revision += 5
        self.clock.advance(PrefixMirror.idleTimeout - 1)
        self.etcd.progress()
        self.http.flush()
        self.assertEqual(self.mirror.revision, 6)
        self.clock.advance(PrefixMirror.idleTimeout - 1)
        self.assertEqual(len(self.watchStarts()), 1)
        with capturedLogs() as logs:
            self.clock.advance(1)
        self.assertEqual(
            [e["log_format"].format(**e) for e in logs],
            [
                "etcd /lb/: the watch at http://a.example:2379 failed: it sent "
                "nothing for 660s; trying http://b.example:2379 in 0s, from revision 7"
            ],
        )
        self.http.flush()
        self.assertEqual(self.watchStarts(), [("a.example", 2), ("b.example", 7)])

    def test_stopWhileReading(self):
        """
        L{PrefixMirror.stop} while the first read is in flight cancels it:
        no copy is told, and no retry follows.
        """
        client = EtcdClient([A], self.clock, _Silent(self.http, "a.example"))
        mirror = PrefixMirror(client, b"/lb/", lambda v, why: self.changes.append(v), self.clock)
        mirror.start()
        mirror.stop()
        self.clock.advance(100)
        self.assertEqual((self.changes, self.clock.getDelayedCalls()), ([], []))

    def test_stopWhileWaiting(self):
        """
        L{PrefixMirror.stop} during the backoff cancels the retry.
        """
        self.etcd.refuse.update({"a.example", "b.example"})
        self.mirror.start()
        self.http.flush()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.mirror.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop(self):
        """
        L{PrefixMirror.stop} cancels the watch and any retry.
        """
        self.mirror.start()
        self.http.flush()
        self.mirror.stop()
        self.http.flush()
        self.assertEqual(self.etcd.watches, [])
        self.clock.advance(100)
        self.http.flush()
        self.assertEqual(len(self.watchStarts()), 1)

    def test_listenerFails(self):
        """
        Should the mirror's listener raise, on the read's copy or on a
        watch event's, the failure is logged and the mirror goes on
        following the prefix from the revision it reached, so the next
        change tells the whole copy.
        """
        told = []

        def changed(values, why):
            told.append(why)
            if len(told) < 3:
                raise RuntimeError("a fault of the listener's")

        mirror = PrefixMirror(self.client, b"/lb/", changed, self.clock)
        self.addCleanup(mirror.stop)
        self.etcd.put(b"/lb/a", b"1")
        with capturedLogs() as logs:
            mirror.start()
            self.http.flush()
            self.etcd.put(b"/lb/b", b"2")
            self.http.flush()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(
            [e["log_format"].format(**e) for e in logs if "log_failure" in e],
            [
                "etcd /lb/: applying the copy at revision 2 failed (etcd read at "
                "revision 2); following the prefix still",
                "etcd /lb/: applying the copy at revision 3 failed (etcd revision "
                "3: put /lb/b); following the prefix still",
            ],
        )
        self.assertEqual((mirror.watching, mirror.failures), (True, 0))
        self.etcd.put(b"/lb/c", b"3")
        self.http.flush()
        self.assertEqual(told[-1], "etcd revision 4: put /lb/c")
        self.assertEqual(self.watchStarts(), [("a.example", 3)])
