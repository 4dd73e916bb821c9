# -*- test-case-name: tests.test_workeradmin -*-
"""
The C{[admin]} listener with C{workers} above 1.

Each worker holds its own pools, so its own backend states and counters.
The parent serves the C{[admin]} listener; each worker serves its own
admin API on a private UNIX socket that the parent chose (in a directory
only the user can enter, the socket itself mode 0600, no token), and the
parent asks them:

    - a C{GET} goes to every worker; their JSON answers are merged by
      L{mergeSnapshots} (counters summed, what differs between workers
      shown per worker, and a per-worker breakdown under C{"workers"});
    - a C{PATCH} (after the parent's own token check) is applied by every
      worker, and the parent answers what they answered, the first error
      if any;
    - a worker that is not running, or that does not answer within
      L{ANSWER_TIMEOUT} seconds, is reported as such in the answer; it
      never holds the request up longer than that.

The status page and the Prometheus collector render from a snapshot dict;
the merged snapshot is one such dict, so they render the whole of a
C{workers} lbproxy the same way they render one process.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.internet.defer import Deferred, DeferredList, TimeoutError, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from lbproxy._admin import FORWARDED_CLIENT, _Refusal, authorize, clientHost

#: The environment variable that tells a worker the path of the UNIX
#: socket its own admin API listens on.
WORKER_ADMIN = "LBPROXY_WORKER_ADMIN"

#: Seconds the parent waits for a worker's answer before it reports the
#: worker as not answering.
ANSWER_TIMEOUT = 2.0

#: Numbers that are not counted per worker and so are not summed: the
#: same in every worker (a configured weight), or a fact of each worker
#: (a latency, a time).  Those in L{LATEST} take the latest worker's value
#: instead; the others are shown per worker where they differ.
NOT_SUMMED = frozenset(
    {
        "version",
        "id",
        "pid",
        "weight",
        "effective_weight",
        "last_latency",
        "bounds",
        "not_after_timestamp",
        "time",
        "config_loaded",
        "since",
        "last_time",
        "revision",
        "keys",
        "rejected",
        "addresses",
        "last_answer",
        "next_lookup",
    }
)

#: Times at which something became true in each worker: the merged value
#: is the latest, by when it held in all of them (when the thing itself,
#: a backend's state say, is the same in every worker).
LATEST = frozenset({"time", "config_loaded", "since", "last_time", "last_answer"})

#: The key under which a value that differs between workers is given,
#: by worker number: C{{"per_worker": {"0": "up", "1": "down"}}}.
PER_WORKER = "per_worker"


def workerAdminSocket() -> Optional[str]:
    """
    The UNIX socket this process, a worker, serves its admin API on, or
    L{None} when it is no worker or its parent serves no C{[admin]}.
    """
    return os.environ.get(WORKER_ADMIN) or None


def unixDescription(path: str) -> str:
    """
    The server endpoint description of a private UNIX socket at C{path}:
    mode 0600, no lock file (the parent removes a dead worker's socket
    before it starts the next).
    """
    escaped = path.replace("\\", "\\\\").replace(":", "\\:")
    return f"unix:{escaped}:mode=600:lockfile=0"


@dataclass(frozen=True)
class WorkerAnswer:
    """
    What one worker answered to the parent, or why it did not.

    @ivar number: the worker's number (0 to C{workers} - 1).
    @ivar pid: its process id, or L{None} when it is not running.
    @ivar code: the status code of its answer, or L{None} without one.
    @ivar body: its answer's JSON, decoded (L{None} without one).
    @ivar error: why there is no answer (not running, no answer in time,
        an answer that is not JSON), or L{None}.
    """

    number: int
    pid: Optional[int]
    code: Optional[int] = None
    body: Any = None
    error: Optional[str] = None

    @property
    def answered(self) -> bool:
        """
        Whether the worker answered, with JSON.
        """
        return self.error is None


def _isNumber(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _perWorker(values: Sequence[tuple[int, Any]]) -> Any:
    """
    The one value all workers agree on, or the values by worker number.
    """
    first = values[0][1]
    if all(v == first for _, v in values[1:]):
        return first
    return {PER_WORKER: {str(n): v for n, v in values}}


def _named(values: Sequence[tuple[int, Any]]) -> bool:
    return all(
        isinstance(v, list) and all(isinstance(i, dict) and "name" in i for i in v)
        for _, v in values
    )


def _merge(key: Optional[str], values: Sequence[tuple[int, Any]]) -> Any:
    """
    Merge C{values}, the value of C{key} in each worker (with the worker's
    number), as L{mergeSnapshots} says.
    """
    if all(isinstance(v, dict) for _, v in values):
        keys: dict[str, None] = {}
        for _, v in values:
            keys.update(dict.fromkeys(v))
        return {
            k: _merge(k, [(n, v[k]) for n, v in values if k in v]) for k in keys
        }
    if _named(values) and any(v for _, v in values):
        names: dict[Any, None] = {}
        for _, v in values:
            names.update(dict.fromkeys(i["name"] for i in v))
        byName = [(n, {i["name"]: i for i in v}) for n, v in values]
        return [
            _merge(None, [(n, items[name]) for n, items in byName if name in items])
            for name in names
        ]
    if all(isinstance(v, list) for _, v in values) and len(
        {len(v) for _, v in values}
    ) == 1:
        # Histogram counts, or lists of like objects: item by item.
        return [
            _merge(key, [(n, v[i]) for n, v in values])
            for i in range(len(values[0][1]))
        ]
    if all(_isNumber(v) for _, v in values):
        if key in LATEST:
            return max(v for _, v in values)
        if key not in NOT_SUMMED:
            return sum(v for _, v in values)
    return _perWorker(values)


def mergeSnapshots(answers: Sequence[WorkerAnswer]) -> dict[str, Any]:
    """
    Merge the JSON answers of the workers to one request (C{GET
    /api/upstreams}, C{GET /api/status}, ...) into the answer of the whole
    lbproxy, of the same shape as one worker's, plus a per-worker
    breakdown.

    Objects are merged key by key; lists of objects with a C{"name"}
    (upstreams, backends, vhosts) name by name, and other lists of the same
    length item by item.  Numbers are summed (requests, responses,
    failures, active requests, histogram counts, ...), except those of
    L{NOT_SUMMED}: a time of L{LATEST} takes the latest worker's, and the
    others, as every other value (a state, a reason, an address), are
    given once when all workers agree, else by worker number as
    C{{"per_worker": {"0": VALUE, "1": VALUE}}}.

    The breakdown, C{"workers"}, lists each worker in order of number:
    C{{"worker": N, "pid": PID, "answered": true, "answer": {...}}} with
    its own answer, or C{{"worker": N, "pid": PID or null, "answered":
    false, "error": "..."}} for one that is not running or did not answer.

    @param answers: one per worker, in order of number.
    @return: the merged answer (of the workers that answered with a
        JSON object; only the breakdown when none did).
    """
    bodies = [
        (a.number, a.body) for a in answers if a.answered and isinstance(a.body, dict)
    ]
    merged: dict[str, Any] = _merge(None, bodies) if bodies else {}
    breakdown = []
    for a in answers:
        entry: dict[str, Any] = {"worker": a.number, "pid": a.pid, "answered": a.answered}
        if a.answered:
            entry["answer"] = a.body
        else:
            entry["error"] = a.error
        breakdown.append(entry)
    merged["workers"] = breakdown
    return merged


#: A backend's states, the worst first: when one state must stand for a
#: backend whose state differs between workers (L{singleValues}), the
#: worst of theirs.
STATE_ORDER = ("down", "failed", "disabled", "draining", "up")


def _oneOf(key: Optional[str], values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if key == "state":
        rank = {state: n for n, state in enumerate(STATE_ORDER)}
        return min(present, key=lambda state: rank.get(state, len(rank)))
    if key == "revision":
        # The etcd revision furthest behind: the one that says whether
        # every worker has the latest backends.
        return min(present)
    if all(isinstance(v, bool) for v in present):
        return all(present)
    if all(_isNumber(v) for v in present):
        return max(present)
    return singleValues(present[0], key)


def singleValues(snapshot: Any, key: Optional[str] = None) -> Any:
    """
    A merged snapshot (L{mergeSnapshots}) with one value wherever the
    workers' differ, for a renderer that shows one value per backend
    (C{/metrics}): a backend's C{state} is the worst of the workers' (in
    L{STATE_ORDER}: one that any worker finds down is down), an etcd
    C{revision} the lowest (the worker furthest behind), a yes-or-no
    holds when it holds in every worker (the latest health check passed,
    the latest reload was taken), a number is the highest (a weight, a
    latency), and anything else is the first worker's.
    """
    if isinstance(snapshot, dict):
        if set(snapshot) == {PER_WORKER}:
            return _oneOf(key, list(snapshot[PER_WORKER].values()))
        return {k: singleValues(v, k) for k, v in snapshot.items()}
    if isinstance(snapshot, list):
        return [singleValues(v, key) for v in snapshot]
    return snapshot


def combinedAnswer(
    method: bytes, answers: Sequence[WorkerAnswer]
) -> tuple[int, Any]:
    """
    The parent's answer, as a status code and a JSON-able body, to a
    request that each worker answered as C{answers} say.

    The first error a worker answered (a 404 for an unknown name, a 400
    for a bad body: every worker checks alike) is the answer.  Otherwise,
    the merged answer (L{mergeSnapshots}), which is a 502 when a worker
    did not answer a change (it was applied by the others only), or when
    no worker answered at all.
    """
    for a in answers:
        if a.answered and a.code != 200:
            return a.code or 502, a.body
    merged = mergeSnapshots(answers)
    missing = [a for a in answers if not a.answered]
    if not missing:
        return 200, merged
    reasons = "; ".join(f"worker {a.number}: {a.error}" for a in missing)
    if len(missing) == len(answers):
        return 502, {"error": f"no worker answered; {reasons}", **merged}
    if method == b"PATCH":
        done = ", ".join(str(a.number) for a in answers if a.answered)
        return 502, {"error": f"applied by worker(s) {done} only; {reasons}", **merged}
    return 200, merged


@implementer(IAgentEndpointFactory)
class _WorkerSockets:
    """
    Connects an L{Agent} to a worker's socket: the URI's host is
    C{worker-N}.
    """

    def __init__(self, reactor: Any, path: Callable[[int], str], timeout: float) -> None:
        self.reactor = reactor
        self.path = path
        self.timeout = timeout

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        number = int(uri.host.decode("ascii").rpartition("-")[2])
        return UNIXClientEndpoint(self.reactor, self.path(number), timeout=self.timeout)


class WorkerAdminClient:
    """
    Sends a request to the admin API of one worker, on its private UNIX
    socket, with Twisted's L{Agent}.
    """

    def __init__(
        self, reactor: Any, path: Callable[[int], str], timeout: float = ANSWER_TIMEOUT
    ) -> None:
        """
        @param path: gives the socket path of a worker by its number.
        @param timeout: seconds to connect.
        """
        self._agent = Agent.usingEndpointFactory(
            reactor,
            _WorkerSockets(reactor, path, timeout),
            pool=HTTPConnectionPool(reactor, persistent=False),
        )

    def request(
        self,
        number: int,
        method: bytes,
        path: bytes,
        body: Optional[bytes],
        client: str,
    ) -> Deferred[tuple[int, bytes]]:
        """
        Send C{method path} with C{body} to worker C{number}, on behalf of
        C{client} (the address the parent was asked from, given to the
        worker in L{FORWARDED_CLIENT}).

        @return: a L{Deferred} that fires with the status code and body of
            its answer (cancelling it gives up).
        """
        producer = None if body is None else FileBodyProducer(BytesIO(body))
        headers = Headers(
            {
                b"Content-Type": [b"application/json"],
                FORWARDED_CLIENT: [client.encode("ascii", "replace")],
            }
        )
        d = self._agent.request(
            method, b"http://worker-%d%s" % (number, path), headers, producer
        )

        def read(response: Any) -> Deferred[tuple[int, bytes]]:
            return readBody(response).addCallback(lambda data: (response.code, data))

        return d.addCallback(read)


#: Gives the status code and body of a worker's answer: the signature of
#: L{WorkerAdminClient.request}.
Fetch = Callable[[int, bytes, bytes, Optional[bytes], str], "Deferred[tuple[int, bytes]]"]

#: Renders a page (the status page, C{/metrics}) of the admin listener
#: for a request from a snapshot: gives its body, having set its headers.
Page = Callable[[Any, dict[str, Any]], bytes]

#: Where the workers' snapshots are read, to be merged for a L{Page}.
SNAPSHOT_PATH = b"/api/status"


class WorkersAdminResource(Resource):
    """
    The C{[admin]} listener's resource in the parent of C{workers}: it
    asks every worker and answers for all of them (see the module's
    docstring).

    @ivar token: the bearer token that C{PATCH} requests need, or L{None};
        replaced on reload.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        workers: Callable[[], Mapping[int, Optional[int]]],
        fetch: Fetch,
        reactor: Any,
        token: Optional[str] = None,
        timeout: float = ANSWER_TIMEOUT,
        pages: Optional[Mapping[bytes, Page]] = None,
    ) -> None:
        """
        @param workers: gives each worker's number and process id (L{None}
            while it is not running).
        @param fetch: sends a request to one worker (see
            L{WorkerAdminClient.request}).
        @param timeout: seconds a worker has to answer in full.
        @param pages: the pages rendered from the merged snapshot (the
            workers' C{GET /api/status}), by path; any other path is asked
            of the workers as it is.
        """
        Resource.__init__(self)
        self.workers = workers
        self.fetch = fetch
        self.reactor = reactor
        self.token = token
        self.timeout = timeout
        self.pages = dict(pages or {})

    def render(self, request: Any) -> Any:
        method = request.method
        try:
            if method == b"PATCH":
                authorize(request, self.token)
            elif method not in (b"GET", b"HEAD"):
                request.setHeader(b"Allow", b"GET, HEAD, PATCH")
                raise _Refusal(405, f"method {method.decode('ascii', 'replace')} not allowed here")
        except _Refusal as e:
            if e.code == 401:
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="lbproxy"')
            return jsonAnswer(request, e.code, {"error": e.message})
        body = request.content.read() if method == b"PATCH" else None
        asked = b"GET" if method == b"HEAD" else method
        page = self.pages.get(request.path) if asked == b"GET" else None
        gathered = self.ask(
            asked, SNAPSHOT_PATH if page else request.uri, body, clientHost(request)
        )
        finished: list[bool] = []
        request.notifyFinish().addBoth(finished.append)

        def answer(answers: list[WorkerAnswer]) -> None:
            if finished:
                return
            code, content = combinedAnswer(asked, answers)
            if page is not None and code == 200:
                request.write(page(request, content))
            else:
                request.write(jsonAnswer(request, code, content))
            request.finish()

        def failed(reason: Failure) -> None:
            self._log.failure("admin: answering for the workers", reason)
            if not finished:
                request.write(jsonAnswer(request, 500, {"error": "internal error"}))
                request.finish()

        gathered.addCallback(answer).addErrback(failed)
        return NOT_DONE_YET

    def ask(
        self, method: bytes, path: bytes, body: Optional[bytes], client: str
    ) -> Deferred[list[WorkerAnswer]]:
        """
        Send C{method path} (with C{body}) to every worker at once, on
        behalf of C{client}.

        @return: a L{Deferred} that fires, within L{timeout} seconds, with
            one L{WorkerAnswer} per worker, in order of number.
        """
        asked = []
        for number, pid in sorted(self.workers().items()):
            asked.append(self._askOne(number, pid, method, path, body, client))
        d: Deferred[Any] = DeferredList(asked)
        return d.addCallback(lambda results: [answer for _, answer in results])

    def _askOne(
        self,
        number: int,
        pid: Optional[int],
        method: bytes,
        path: bytes,
        body: Optional[bytes],
        client: str,
    ) -> Deferred[WorkerAnswer]:
        if pid is None:
            return succeed(WorkerAnswer(number, None, error="not running"))
        d = self.fetch(number, method, path, body, client)
        d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=_timedOut)

        def answered(result: tuple[int, bytes]) -> WorkerAnswer:
            code, data = result
            try:
                return WorkerAnswer(number, pid, code, json.loads(data.decode("utf-8")))
            except ValueError:
                return WorkerAnswer(number, pid, code, error=f"answered {code} without JSON")

        def failed(reason: Any) -> WorkerAnswer:
            if reason.check(TimeoutError):
                why = f"no answer within {self.timeout:g} s"
            else:
                why = f"no answer: {reason.getErrorMessage()}"
            self._log.warn(
                "admin: worker {number} (pid {pid}): {why}", number=number, pid=pid, why=why
            )
            return WorkerAnswer(number, pid, error=why)

        return d.addCallbacks(answered, failed)


def _timedOut(result: Any, timeout: float) -> Failure:
    """
    What a request to a worker cancelled by its timeout gives, whatever
    its cancellation gave (L{Agent} wraps it in its own errors).
    """
    return Failure(TimeoutError())


def jsonAnswer(request: Any, code: int, body: Any) -> bytes:
    """
    Set C{request}'s status code and headers for the JSON C{body}, and
    give the bytes to send (the admin API's form: indented, one newline
    at the end).
    """
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, indent=2).encode("utf-8") + b"\n"
