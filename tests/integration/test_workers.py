"""
C{workers = 2} as real processes: the parent holds the socket, two
workers serve it, a dead worker is replaced, SIGTERM stops them all.
"""

from __future__ import annotations

import os
import re
import signal
import sys

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource

from lbproxy._workeradmin import ANSWER_TIMEOUT
from lbproxy.testing import startServer
from tests.integration.etcdprocess import Watched

_TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class _Named(Resource):
    isLeaf = True

    def __init__(self, name):
        Resource.__init__(self)
        self.name = name

    def render_GET(self, request):
        return self.name


class _Parent(Watched):
    """
    The workers' parent: its output (the workers write theirs to the same
    pipe), L{Deferred}s for patterns in it, and what it says of the
    workers.
    """

    def __init__(self):
        Watched.__init__(self, "lbproxy workers")

    def workers(self):
        """
        The latest pid of each worker number, from the parent's log.
        """
        found = {}
        for number, pid in re.findall(rb"worker (\d+) started, pid (\d+)", self.output):
            found[int(number)] = int(pid)
        return found

    def everyWorker(self):
        """
        The pid of every worker the parent's log named.
        """
        return {int(pid) for pid in re.findall(rb"worker \d+ started, pid (\d+)", self.output)}


def startWorkers(testCase, listen, backendPort, workers=2):
    """
    Run C{twistd -n lbproxy} with C{workers} workers listening on
    C{listen} (an endpoint description) and one upstream, C{backendPort}
    on 127.0.0.1, until C{testCase} ends: then SIGTERM to the parent, and
    SIGKILL to every worker its log named that is still running.

    @return: the parent's L{_Parent} and its process transport.
    """
    return startParent(
        testCase,
        f"[lbproxy]\nlisten = {listen}\n"
        f"access_log = off\nworkers = {workers}\n"
        f"[upstream:app]\nservers = 127.0.0.1:{backendPort}\n"
        "[vhost:app]\ndefault = yes\nupstream = app\n",
    )


def startParent(testCase, text):
    """
    Run C{twistd -n lbproxy} on the configuration C{text} until
    C{testCase} ends, as L{startWorkers} does.

    @return: the parent's L{_Parent} and its process transport.
    """
    path = FilePath(testCase.mktemp())
    path.setContent(text.encode())
    parent = _Parent()
    process = reactor.spawnProcess(
        parent,
        _TWISTD[0],
        _TWISTD + ["-n", "--pidfile=", "lbproxy", "--config", path.path],
        env=_ENV,
    )

    def stop():
        if process.pid is not None:
            process.signalProcess("TERM")
        for pid in parent.everyWorker():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        return parent.ended.addErrback(lambda f: f.trap(ProcessDone, ProcessTerminated))

    testCase.addCleanup(stop)
    return parent, process


@inlineCallbacks
def workersPort(parent, workers=2, seconds=30.0):
    """
    The port that the C{workers} workers of C{parent} serve, once each has
    said so: the parent opens the socket (C{tcp:0} or C{haproxy:tcp:0}:
    any free port) without a word, and each worker logs the port of the
    socket it adopts (C{ProxySite starting on PORT}, or C{ProxySite
    (PROXY) starting on PORT}).

    @return: a L{Deferred} firing with the port, or failing after
        C{seconds} or when the parent ends first.
    """
    line = rb"ProxySite (?:\(PROXY\) )?starting on (\d+)\n"
    match = yield parent.waitFor(rb"(?s)" + rb".*".join([line] * workers), seconds)
    ports = {int(port) for port in match.groups()}
    if len(ports) != 1:
        raise AssertionError(f"the workers listen on different ports: {sorted(ports)}")
    return ports.pop()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class WorkersTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def waitFor(self, condition, what, seconds=30.0):
        for _ in range(int(seconds / 0.1)):
            if condition():
                return
            yield deferLater(reactor, 0.1, lambda: None)
        self.fail(f"timed out waiting for {what}")

    @inlineCallbacks
    def whenListening(self, parent):
        """
        Wait until both workers of C{parent} have started and listen.
        """
        yield self.waitFor(lambda: len(parent.workers()) == 2, "two workers")
        yield self.waitFor(
            lambda: parent.output.count(b"Starting factory <lbproxy._site.ProxySite") >= 2,
            "two workers listening",
        )

    @inlineCallbacks
    def test_workers(self):
        """
        Two workers serve the parent's socket; one that is killed is
        started again; SIGTERM to the parent ends every process.
        """
        backend = yield startServer(_Hello(), reactor)
        self.addCleanup(backend.stop)
        parent, process = startWorkers(self, "tcp:0:interface=127.0.0.1", backend.port)
        yield self.whenListening(parent)
        port = yield workersPort(parent)
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        for _ in range(4):
            response = yield agent.request(b"GET", b"http://127.0.0.1:%d/" % port)
            body = yield readBody(response)
            self.assertEqual((response.code, body), (200, b"hello"))

        first = parent.workers()[0]
        os.kill(first, signal.SIGKILL)
        yield self.waitFor(
            lambda: parent.workers().get(0, first) != first, "worker 0 restarted"
        )
        self.assertIn(b"worker 0 ended", parent.output)
        for _ in range(4):
            response = yield agent.request(b"GET", b"http://127.0.0.1:%d/" % port)
            body = yield readBody(response)
            self.assertEqual((response.code, body), (200, b"hello"))

        process.signalProcess("TERM")
        yield parent.ended.addErrback(lambda f: f.trap(ProcessDone, ProcessTerminated))
        for pid in parent.workers().values():
            yield self.waitFor(lambda pid=pid: not _alive(pid), f"worker {pid} to end", 10)

    @inlineCallbacks
    def test_signalWhileStarting(self):
        """
        A SIGHUP and a SIGUSR1 passed on to workers that are still
        starting (before their handlers are in place) wait until the
        workers can handle them: no worker is ended by them, and each
        reloads once.
        """
        backend = yield startServer(_Hello(), reactor)
        self.addCleanup(backend.stop)
        parent, process = startWorkers(self, "tcp:0:interface=127.0.0.1", backend.port)
        # At once: the workers are still importing Python modules.  (The
        # parent's own start, twistd and lbproxy imported, took over 8 s on
        # a loaded machine: the default bound, as whenListening has.)
        yield self.waitFor(lambda: len(parent.workers()) == 2, "two workers")
        self.assertNotIn(b"ProxySite", parent.output)
        process.signalProcess(signal.SIGUSR1)
        process.signalProcess(signal.SIGHUP)
        yield self.waitFor(
            lambda: parent.output.count(b"WorkerService#info] reloaded ") >= 2,
            "both workers to reload",
        )
        self.assertNotIn(b"ended", parent.output)
        self.assertEqual(parent.output.count(b"WorkerService#info] reloaded "), 2)
        self.assertEqual(len(parent.workers()), 2)

    @inlineCallbacks
    def metrics(self, client, admin):
        """
        GET C{/metrics} from the admin listener C{admin}, parsed by
        C{prometheus_client}.

        @return: the value of each sample, by name and labels.
        """
        response = yield client.get(admin + "/metrics")
        self.assertEqual(response.code, 200)
        text = (yield response.content()).decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    @inlineCallbacks
    def test_admin(self):
        """
        The parent serves C{[admin]}: a C{GET} adds up both workers'
        figures, with a breakdown by worker, and so does C{/metrics}; a C{PATCH} drains a backend in
        both, so that no worker sends it new requests; a worker that does
        not answer (stopped by SIGSTOP) is reported within the timeout.
        Each worker's own admin socket is private.
        """
        backends = {}
        for name in (b"a", b"b"):
            server = yield startServer(_Named(name), reactor)
            self.addCleanup(server.stop)
            backends[name] = server.port
        parent, process = startParent(
            self,
            "[lbproxy]\nlisten = tcp:0:interface=127.0.0.1\n"
            "access_log = off\nworkers = 2\n"
            "[upstream:app]\nservers =\n"
            f"    127.0.0.1:{backends[b'a']}\n    127.0.0.1:{backends[b'b']}\n"
            "[vhost:app]\ndefault = yes\nupstream = app\n"
            "[admin]\nlisten = tcp:0:interface=127.0.0.1\ntoken = t0k\n",
        )
        yield self.whenListening(parent)
        port = yield workersPort(parent)
        # The parent serves [admin] itself: Twisted's line for its port
        # (the workers' private admin sockets are named by their path).
        match = yield parent.waitFor(rb"\[-\] Site starting on (\d+)\n", 30)
        adminPort = int(match.group(1))
        client = treq.client.HTTPClient(
            Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        )
        admin = f"http://127.0.0.1:{adminPort}"
        answers = {}

        @inlineCallbacks
        def get(path):
            response = yield client.get(admin + path)
            answers[path] = (response.code, (yield response.json()))

        def bothAnswered():
            code, body = answers.get("/api/upstreams", (None, {}))
            return code == 200 and [w["answered"] for w in body["workers"]] == [True, True]

        for _ in range(100):
            yield get("/api/upstreams")
            if bothAnswered():
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(bothAnswered(), answers)

        sent = 20
        for _ in range(sent):
            response = yield client.get(f"http://127.0.0.1:{port}/")
            self.assertEqual(response.code, 200)
            yield response.content()
        yield get("/api/upstreams")
        code, body = answers["/api/upstreams"]
        (upstream,) = body["upstreams"]
        self.assertEqual(sum(b["requests"] for b in upstream["backends"]), sent)
        self.assertEqual(
            sum(
                b["requests"]
                for w in body["workers"]
                for b in w["answer"]["upstreams"][0]["backends"]
            ),
            sent,
        )
        self.assertEqual(
            sorted(w["pid"] for w in body["workers"]), sorted(parent.workers().values())
        )
        metrics = yield self.metrics(client, admin)
        self.assertEqual(
            sum(v for (name, _), v in metrics.items() if name == "lbproxy_upstream_requests_total"),
            sent,
        )
        # The status page is drawn from the merged snapshot: both backends,
        # and a row per worker, answering.
        response = yield client.get(admin + "/")
        page = (yield response.content()).decode()
        self.assertEqual(response.code, 200)
        for backendPort in backends.values():
            self.assertIn(f'<span class="addr">127.0.0.1:{backendPort}</span>', page)
        self.assertEqual(page.count("answering</span>"), 2)
        self.assertNotIn("not answering", page)

        # Private: the directory 0700, each socket 0600.
        directory = None
        for pid in parent.workers().values():
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(
                    item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item
                )
            socketPath = env[b"LBPROXY_WORKER_ADMIN"].decode()
            self.assertEqual(os.stat(socketPath).st_mode & 0o777, 0o600)
            directory = os.path.dirname(socketPath)
            self.assertEqual(os.stat(directory).st_mode & 0o777, 0o700)

        path = f"/api/upstreams/app/servers/127.0.0.1:{backends[b'a']}"
        response = yield client.patch(admin + path, json={"state": "drain"})
        self.assertEqual(response.code, 401)
        yield response.content()
        response = yield client.patch(
            admin + path, json={"state": "drain"}, headers={b"Authorization": [b"Bearer t0k"]}
        )
        body = yield response.json()
        self.assertEqual((response.code, body["state"]), (200, "draining"))
        self.assertEqual([w["answer"]["state"] for w in body["workers"]], ["draining"] * 2)
        # Each worker names the client, not its parent.
        self.assertEqual(
            [w["answer"]["reason"] for w in body["workers"]],
            ["drained through the admin API (127.0.0.1, through the workers' parent)"] * 2,
        )
        for _ in range(10):
            response = yield client.get(f"http://127.0.0.1:{port}/")
            self.assertEqual((yield response.content()), b"b")
        metrics = yield self.metrics(client, admin)
        drained = ("backend", f"127.0.0.1:{backends[b'a']}"), ("state", "draining")
        self.assertEqual(
            [
                v
                for (name, labels), v in metrics.items()
                if name == "lbproxy_backend_state" and set(drained) <= set(labels)
            ],
            [1.0],
        )
        yield get("/api/upstreams/app")
        code, upstream = answers["/api/upstreams/app"]
        self.assertEqual(
            [(b["name"], b["state"]) for b in upstream["backends"]],
            [
                (f"127.0.0.1:{backends[b'a']}", "draining"),
                (f"127.0.0.1:{backends[b'b']}", "up"),
            ],
        )

        stopped = parent.workers()[1]
        os.kill(stopped, signal.SIGSTOP)
        try:
            started = reactor.seconds()
            yield get("/api/upstreams")
            took = reactor.seconds() - started
        finally:
            os.kill(stopped, signal.SIGCONT)
        code, body = answers["/api/upstreams"]
        self.assertEqual(code, 200)
        self.assertEqual(
            [(w["worker"], w["answered"], w.get("error")) for w in body["workers"]],
            [(0, True, None), (1, False, f"no answer within {ANSWER_TIMEOUT:g} s")],
        )
        self.assertLess(took, ANSWER_TIMEOUT + 3)

        process.signalProcess("TERM")
        yield parent.ended.addErrback(lambda f: f.trap(ProcessDone, ProcessTerminated))
        self.assertFalse(os.path.exists(directory))
