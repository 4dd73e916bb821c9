# -*- test-case-name: tests.test_workeradmin -*-
"""
Tests for L{lbproxy._workeradmin}: the merge of the workers' answers, and
the parent's C{[admin]} resource asking workers that are real
L{AdminResource}s in memory (each over its own pool), one of them slow or
not running.  The processes and their UNIX sockets are exercised in
L{tests.integration.test_workers}.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._admin import AdminResource, upstreamStatus
from lbproxy._backend import Backend, BackendState
from lbproxy._pool import Pool
from lbproxy._workeradmin import (
    ANSWER_TIMEOUT,
    PER_WORKER,
    STATE_ORDER,
    WorkerAnswer,
    WorkersAdminResource,
    combinedAnswer,
    mergeSnapshots,
    singleValues,
    unixDescription,
)
from lbproxy.balancers._roundrobin import RoundRobin
from lbproxy.config import parseConfigText
from lbproxy.service import LoadBalancerService


def _backend(name: str, **values: Any) -> dict[str, Any]:
    return {
        "name": name,
        "state": "up",
        "reason": None,
        "since": 100.0,
        "weight": 2,
        "effective_weight": 2,
        "backup": False,
        "active": 0,
        "requests": 0,
        "failures": 0,
        "last_latency": None,
        "response_time_histogram": {
            "bounds": [0.01, 0.1],
            "counts": [0, 0, 0],
            "count": 0,
            "sum": 0.0,
        },
        **values,
    }


def _snapshot(time: float, *backends: dict[str, Any], **values: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "time": time,
        "reloads": 1,
        "connections": 2,
        "upstreams": [{"name": "app", "retries": 1, "backends": list(backends)}],
        **values,
    }


class MergeTests(SynchronousTestCase):
    """
    L{mergeSnapshots} adds up what counts per worker and keeps the rest.
    """

    def test_counters(self) -> None:
        """
        Counters are summed, histogram counts bucket by bucket; weights,
        bounds, the version and the latency of each worker are not; a
        time is the latest worker's.
        """
        histogram = {"bounds": [0.01, 0.1], "counts": [1, 2, 0], "count": 3, "sum": 0.2}
        merged = mergeSnapshots(
            [
                WorkerAnswer(
                    0,
                    10,
                    200,
                    _snapshot(
                        5.0,
                        _backend("a", requests=3, active=1, response_time_histogram=histogram),
                    ),
                ),
                WorkerAnswer(
                    1,
                    11,
                    200,
                    _snapshot(
                        6.0,
                        _backend("a", requests=4, failures=2, since=150.0),
                        connections=5,
                    ),
                ),
            ]
        )
        self.assertEqual(
            (merged["version"], merged["time"], merged["reloads"], merged["connections"]),
            (1, 6.0, 2, 7),
        )
        (upstream,) = merged["upstreams"]
        self.assertEqual(upstream["retries"], 2)
        (backend,) = upstream["backends"]
        self.assertEqual(
            {k: backend[k] for k in ("requests", "active", "failures", "weight", "since")},
            {"requests": 7, "active": 1, "failures": 2, "weight": 2, "since": 150.0},
        )
        self.assertEqual(
            backend["response_time_histogram"],
            {"bounds": [0.01, 0.1], "counts": [1, 2, 0], "count": 3, "sum": 0.2},
        )

    def test_differences(self) -> None:
        """
        A state (or any value not summed) that differs between workers is
        given by worker number; one they agree on is given once.  A
        backend only one worker has (between two reloads) is listed, with
        that worker's figures.
        """
        merged = mergeSnapshots(
            [
                WorkerAnswer(0, 10, 200, _snapshot(1.0, _backend("a"), _backend("b"))),
                WorkerAnswer(
                    1,
                    11,
                    200,
                    _snapshot(
                        1.0,
                        _backend("a", state="down", reason="connection refused", last_latency=0.5),
                        _backend("c", requests=9),
                    ),
                ),
            ]
        )
        a, b, c = merged["upstreams"][0]["backends"]
        self.assertEqual(a["state"], {PER_WORKER: {"0": "up", "1": "down"}})
        self.assertEqual(a["reason"], {PER_WORKER: {"0": None, "1": "connection refused"}})
        self.assertEqual(a["last_latency"], {PER_WORKER: {"0": None, "1": 0.5}})
        self.assertEqual((a["weight"], a["backup"]), (2, False))
        self.assertEqual((b["name"], b["state"]), ("b", "up"))
        self.assertEqual((c["name"], c["requests"]), ("c", 9))

    def test_breakdown(self) -> None:
        """
        C{"workers"} lists every worker with its own answer, or why there
        is none; the merged figures are those of the workers that
        answered.
        """
        own = _snapshot(1.0, _backend("a", requests=3))
        merged = mergeSnapshots(
            [
                WorkerAnswer(0, 10, 200, own),
                WorkerAnswer(1, None, error="not running"),
                WorkerAnswer(2, 12, error="no answer within 2 s"),
            ]
        )
        self.assertEqual(merged["upstreams"][0]["backends"][0]["requests"], 3)
        self.assertEqual(
            merged["workers"],
            [
                {"worker": 0, "pid": 10, "answered": True, "answer": own},
                {"worker": 1, "pid": None, "answered": False, "error": "not running"},
                {"worker": 2, "pid": 12, "answered": False, "error": "no answer within 2 s"},
            ],
        )
        self.assertEqual(
            mergeSnapshots([WorkerAnswer(0, None, error="not running")]),
            {"workers": [{"worker": 0, "pid": None, "answered": False, "error": "not running"}]},
        )

    def test_combinedAnswer(self) -> None:
        """
        The first error a worker answered is the answer; a change that a
        worker did not answer, or a request no worker answered, is a 502
        that says so.
        """
        ok = WorkerAnswer(0, 10, 200, {"name": "a", "state": "draining"})
        refused = WorkerAnswer(1, 11, 404, {"error": "no upstream named 'x'"})
        silent = WorkerAnswer(1, 11, error="no answer within 2 s")
        self.assertEqual(
            combinedAnswer(b"GET", [ok, refused]), (404, {"error": "no upstream named 'x'"})
        )
        code, body = combinedAnswer(b"PATCH", [ok, silent])
        self.assertEqual(code, 502)
        self.assertEqual(
            body["error"], "applied by worker(s) 0 only; worker 1: no answer within 2 s"
        )
        self.assertEqual(body["state"], "draining")
        code, body = combinedAnswer(b"GET", [ok, silent])
        self.assertEqual((code, body["state"], len(body["workers"])), (200, "draining", 2))
        code, body = combinedAnswer(b"GET", [silent])
        self.assertEqual(
            (code, body["error"]), (502, "no worker answered; worker 1: no answer within 2 s")
        )

    def test_singleValues(self) -> None:
        """
        For C{/metrics}, one value stands for the workers' where they
        differ: the worst state, a yes-or-no true in every worker, the
        highest number, else the first worker's; the rest is unchanged.
        """
        merged = mergeSnapshots(
            [
                WorkerAnswer(
                    0,
                    10,
                    200,
                    _snapshot(
                        1.0,
                        _backend("a", state="draining", last_latency=0.2, reason="x"),
                        _backend("b", health={"last_passed": True, "passed": 1}),
                        last_reload_ok=True,
                    ),
                ),
                WorkerAnswer(
                    1,
                    11,
                    200,
                    _snapshot(
                        1.0,
                        _backend("a", state="down", last_latency=0.5, reason="y", requests=2),
                        _backend("b", health={"last_passed": False, "passed": 2}),
                        last_reload_ok=False,
                    ),
                ),
            ]
        )
        single = singleValues(merged)
        a, b = single["upstreams"][0]["backends"]
        self.assertEqual(
            (a["state"], a["last_latency"], a["reason"], a["requests"]), ("down", 0.5, "x", 2)
        )
        self.assertEqual(b["health"], {"last_passed": False, "passed": 3})
        self.assertIs(single["last_reload_ok"], False)
        self.assertEqual(singleValues({PER_WORKER: {"0": None, "1": None}}), None)
        self.assertEqual(
            [singleValues({"state": {PER_WORKER: {"0": s, "1": "up"}}})["state"] for s in STATE_ORDER],
            list(STATE_ORDER),
        )

    def test_sources(self) -> None:
        """
        The upstreams' sources: their counts are summed; the keys,
        addresses, revisions and next lookups are each worker's (shown
        per worker where they differ), a last answer is the latest; for
        C{/metrics} the revision is the lowest, the one furthest behind.
        """

        def source(revision: int, keys: int, answer: float) -> dict[str, Any]:
            return {
                "upstreams": [
                    {"name": "etcd", "backends_added": 2, "backends_removed": 1,
                     "source": {"kind": "etcd", "revision": revision, "keys": keys,
                                "rejected": 0, "reads": 1, "events": 3, "watching": True}},
                    {"name": "dns", "backends_added": 0, "backends_removed": 0,
                     "source": {"kind": "dns", "lookups": 5, "lookup_failures": 1,
                                "lines": [{"name": "app.test:80", "addresses": 2,
                                           "last_answer": answer, "next_lookup": 130.0,
                                           "error": None}]}},
                ]
            }

        merged = mergeSnapshots(
            [WorkerAnswer(0, 10, 200, source(7, 3, 100.0)), WorkerAnswer(1, 11, 200, source(6, 3, 101.0))]
        )
        etcd, dns = merged["upstreams"]
        self.assertEqual((etcd["backends_added"], etcd["backends_removed"]), (4, 2))
        self.assertEqual(
            etcd["source"],
            {"kind": "etcd", "revision": {PER_WORKER: {"0": 7, "1": 6}}, "keys": 3,
             "rejected": 0, "reads": 2, "events": 6, "watching": True},
        )
        self.assertEqual(
            dns["source"],
            {"kind": "dns", "lookups": 10, "lookup_failures": 2,
             "lines": [{"name": "app.test:80", "addresses": 2, "last_answer": 101.0,
                        "next_lookup": 130.0, "error": None}]},
        )
        self.assertEqual(singleValues(merged)["upstreams"][0]["source"]["revision"], 6)

    def test_unixDescription(self) -> None:
        """
        A worker's socket is private (mode 0600) and its path escaped.
        """
        self.assertEqual(
            unixDescription("/tmp/a:b/worker-0.sock"),
            "unix:/tmp/a\\:b/worker-0.sock:mode=600:lockfile=0",
        )


class _Worker:
    """
    One worker in memory: an L{AdminResource} (no token, as on its
    private socket) over its own pool.
    """

    def __init__(self, clock: Clock) -> None:
        self.a = Backend("127.0.0.1", 9001)
        self.b = Backend("127.0.0.1", 9002)
        self.pool = Pool("app", [self.a, self.b], RoundRobin(), clock)
        self.stub = StubTreq(
            AdminResource(
                lambda: {"app": self.pool},
                snapshot=lambda: {"version": 1, "upstreams": [upstreamStatus(self.pool)]},
                behindParent=True,
            )
        )
        self.asked: list[tuple[bytes, bytes, Optional[bytes]]] = []
        self.silent = False

    def fetch(
        self, method: bytes, path: bytes, body: Optional[bytes], client: str
    ) -> Deferred[tuple[int, bytes]]:
        self.asked.append((method, path, body))
        if self.silent:
            return Deferred()
        d = self.stub.request(
            method.decode(),
            "http://worker" + path.decode(),
            data=body,
            headers={b"X-Forwarded-For": [client.encode()]},
        )
        self.stub.flush()

        def read(response: Any) -> Any:
            return response.content().addCallback(lambda data: (response.code, data))

        return d.addCallback(read)


class ResourceTests(SynchronousTestCase):
    """
    L{WorkersAdminResource} asks each worker, waits for no worker longer
    than its timeout, and checks the token itself.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.workers = [_Worker(self.clock), _Worker(self.clock)]
        self.pids: dict[int, Optional[int]] = {0: 100, 1: 101}
        for worker in self.workers:
            self.addCleanup(worker.pool.close)
        self.resource = WorkersAdminResource(
            lambda: self.pids,
            lambda n, method, path, body, client: self.workers[n].fetch(
                method, path, body, client
            ),
            self.clock,
            "s3cret",
            pages={b"/": self.page},
        )
        self.stub = StubTreq(self.resource)

    def page(self, request: Any, snapshot: dict[str, Any]) -> bytes:
        """
        A page rendered from C{snapshot}: the snapshot itself.
        """
        request.setHeader(b"Content-Type", b"text/plain")
        return json.dumps(snapshot).encode()

    def request(
        self, method: str, path: str, body: Any = None, token: Optional[str] = "s3cret"
    ) -> Deferred[Any]:
        headers = {}
        if token is not None:
            headers[b"Authorization"] = [b"Bearer " + token.encode()]
        data = None if body is None else json.dumps(body).encode()
        d = self.stub.request(method, "http://127.0.0.1:9000" + path, headers=headers, data=data)
        self.stub.flush()
        return d

    def answer(self, d: Deferred[Any]) -> tuple[int, Any]:
        self.stub.flush()
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_get(self) -> None:
        """
        A C{GET} is asked of every worker, and answered with the merge of
        their answers.
        """
        self.workers[0].pool.requestStarted(self.workers[0].a, "r1")
        self.workers[1].pool.requestStarted(self.workers[1].a, "r2")
        self.workers[1].pool.requestStarted(self.workers[1].a, "r3")
        code, body = self.answer(self.request("GET", "/api/upstreams", token=None))
        self.assertEqual(code, 200)
        a, b = body["upstreams"][0]["backends"]
        self.assertEqual((a["active"], a["requests"], b["requests"]), (3, 3, 0))
        self.assertEqual([w["answered"] for w in body["workers"]], [True, True])
        self.assertEqual([w["pid"] for w in body["workers"]], [100, 101])
        self.assertEqual(
            [w.asked for w in self.workers], [[(b"GET", b"/api/upstreams", None)]] * 2
        )

    def test_patchEveryWorker(self) -> None:
        """
        A C{PATCH} with the token is applied by every worker; the answer
        is theirs, merged.
        """
        path = "/api/upstreams/app/servers/127.0.0.1:9001"
        code, body = self.answer(self.request("PATCH", path, {"state": "drain"}))
        self.assertEqual((code, body["state"]), (200, "draining"))
        for worker in self.workers:
            self.assertIs(worker.a.state, BackendState.DRAINING)
            self.assertIs(worker.b.state, BackendState.UP)

    def test_patchNamesTheClient(self) -> None:
        """
        Each worker's reason for a change names the client the parent was
        asked by, not the parent.
        """
        path = "/api/upstreams/app/servers/127.0.0.1:9001"
        self.answer(self.request("PATCH", path, {"state": "drain"}))
        for worker in self.workers:
            self.assertEqual(
                worker.a.stateReason,
                "drained through the admin API (127.0.0.1, through the workers' parent)",
            )

    def test_patchError(self) -> None:
        """
        The workers' refusal of a bad change is the answer.
        """
        path = "/api/upstreams/app/servers/127.0.0.1:9001"
        code, body = self.answer(self.request("PATCH", path, {"state": "sideways"}))
        self.assertEqual(code, 400)
        self.assertIn("bad state 'sideways'", body["error"])
        code, body = self.answer(self.request("GET", "/api/upstreams/nope"))
        self.assertEqual((code, body), (404, {"error": "no upstream named 'nope'"}))

    def test_token(self) -> None:
        """
        The parent checks the token: a change without it, or with another,
        is refused before any worker is asked; the token follows
        L{WorkersAdminResource.token}.
        """
        path = "/api/upstreams/app/servers/127.0.0.1:9001"
        d = self.request("PATCH", path, {"state": "drain"}, token=None)
        self.stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="lbproxy"']
        )
        self.assertEqual(self.answer(self.request("PATCH", path, {"state": "drain"}, "x"))[0], 403)
        self.assertEqual([w.asked for w in self.workers], [[], []])
        self.resource.token = "x"
        self.assertEqual(self.answer(self.request("PATCH", path, {"state": "drain"}, "x"))[0], 200)
        code, body = self.answer(self.request("POST", "/api/upstreams"))
        self.assertEqual((code, body), (405, {"error": "method POST not allowed here"}))

    def test_slowWorker(self) -> None:
        """
        A worker that does not answer holds the answer up for no longer
        than the timeout, and is reported as such; one that is not running
        is not asked.
        """
        self.workers[1].silent = True
        self.pids[2] = None
        self.workers.append(_Worker(self.clock))
        self.addCleanup(self.workers[2].pool.close)
        d = self.request("GET", "/api/upstreams")
        self.clock.advance(ANSWER_TIMEOUT - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        code, body = self.answer(d)
        self.assertEqual(code, 200)
        self.assertEqual(
            [(w["worker"], w["answered"], w.get("error")) for w in body["workers"]],
            [
                (0, True, None),
                (1, False, f"no answer within {ANSWER_TIMEOUT:g} s"),
                (2, False, "not running"),
            ],
        )
        self.assertEqual(self.workers[2].asked, [])
        self.assertEqual(len(body["upstreams"][0]["backends"]), 2)

    def test_page(self) -> None:
        """
        A page is rendered from the merged snapshot: the workers are asked
        for theirs (C{GET /api/status}).
        """
        self.workers[0].pool.requestStarted(self.workers[0].a, "r1")
        self.workers[1].pool.requestStarted(self.workers[1].a, "r2")
        d = self.request("GET", "/?part=status")
        self.stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(
            (response.code, response.headers.getRawHeaders(b"content-type")),
            (200, [b"text/plain"]),
        )
        snapshot = json.loads(self.successResultOf(response.content()))
        self.assertEqual(snapshot["upstreams"][0]["backends"][0]["requests"], 2)
        self.assertEqual(len(snapshot["workers"]), 2)
        self.assertEqual(
            [w.asked for w in self.workers], [[(b"GET", b"/api/status", None)]] * 2
        )


class RealSnapshotTests(SynchronousTestCase):
    """
    L{mergeSnapshots} over the snapshots of two real services (what
    C{GET /api/status} of two workers answers).
    """

    def test_twoServices(self) -> None:
        """
        Two services' snapshots merge into one of the same shape: every
        key there, counts summed, what they agree on kept as it is.
        """
        config = parseConfigText(
            "[lbproxy]\nlisten = tcp:0:interface=127.0.0.1\naccess_log = off\n"
            "[upstream:app]\nservers = 127.0.0.1:9001\n    127.0.0.1:9002 weight=3\n"
            "[vhost:app]\ndefault = yes\nupstream = app\n"
        )
        clock = Clock()
        clock.advance(1000)
        services = [LoadBalancerService(config, clock) for _ in range(2)]
        for n, service in enumerate(services):
            pool = service.pools["app"]
            for i in range(n + 1):
                pool.requestStarted(pool.backends[1], f"r{i}")
            self.addCleanup(pool.close)
        snapshots = [json.loads(json.dumps(s.snapshot())) for s in services]
        merged = mergeSnapshots(
            [WorkerAnswer(n, 100 + n, 200, s) for n, s in enumerate(snapshots)]
        )
        self.assertEqual(set(merged) - {"workers"}, set(snapshots[0]))
        first, second = merged["upstreams"][0]["backends"]
        self.assertEqual(set(first), set(snapshots[0]["upstreams"][0]["backends"][0]))
        self.assertEqual(
            (second["requests"], second["active"], second["weight"], second["state"]),
            (3, 3, 3, "up"),
        )
        self.assertEqual(merged["active_requests"], 3)
        self.assertEqual(merged["version"], snapshots[0]["version"])
        self.assertEqual(
            second["response_time_histogram"]["bounds"],
            snapshots[0]["upstreams"][0]["backends"][1]["response_time_histogram"]["bounds"],
        )
