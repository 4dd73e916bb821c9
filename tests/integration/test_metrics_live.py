# -*- test-case-name: tests.integration.test_metrics_live -*-
"""
Prometheus metrics of a running lbproxy on real sockets: requests sent
through it to real backends on 127.0.0.1, then C{/metrics} of its
C{[admin]} listener fetched and read with C{prometheus_client}'s parser.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

from lbproxy import LoadBalancerService, parseConfigText
from lbproxy.testing import RefusingPort, startServer

#: The paths the backends answer, and with what status.
_STATUSES = {b"/ok": 200, b"/moved": 301, b"/missing": 404, b"/broken": 500}


class StatusBackend(Resource):
    """
    Answers each path of L{_STATUSES} with its status, saying which
    backend it is in C{X-Backend}.
    """

    isLeaf = True

    def __init__(self, name: bytes) -> None:
        Resource.__init__(self)
        self.name = name

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(_STATUSES[request.path])
        request.setHeader(b"X-Backend", self.name)
        return b"from " + self.name + b"\n"


_CONFIG = """
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = off

[upstream:app]
servers =
    127.0.0.1:{a}
    127.0.0.1:{b}
    127.0.0.1:{dead}
max_fails = 1
fail_timeout = 60s

[vhost:app]
server_names = app.test
default = yes
upstream = app

[admin]
listen = tcp:0:interface=127.0.0.1
"""


class MetricsLiveTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=pool))
        ports = {}
        for name in (b"a", b"b"):
            server = yield startServer(StatusBackend(name), reactor)
            self.addCleanup(server.stop)
            ports[name.decode()] = server.port
        dead = RefusingPort()
        self.addCleanup(dead.close)
        ports["dead"] = dead.port
        self.ports = ports
        config = parseConfigText(_CONFIG.format(**ports), "metrics.ini")
        self.service = LoadBalancerService(config, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        proxy, admin = yield self.service.whenListening()
        self.url = "http://127.0.0.1:%d" % (proxy.getHost().port,)
        self.admin = "http://127.0.0.1:%d" % (admin.getHost().port,)

    @inlineCallbacks
    def test_countersEqualRequestsSent(self) -> Any:
        """
        After N requests of each status, the counters by vhost and status
        class, by backend and status class, and the histograms' counts
        equal what the backends answered; the refused backend shows one
        failure and one retry, and is in the failed state.
        """
        paths = [b"/ok"] * 11 + [b"/moved"] * 5 + [b"/missing"] * 7 + [b"/broken"] * 6
        byClass: Counter[str] = Counter()
        byBackend: Counter[tuple[str, str]] = Counter()
        for index in range(len(paths)):
            path = paths[(index * 7) % len(paths)]  # mixed, every one once
            response = yield self.client.get(
                self.url + path.decode(), headers={b"Host": [b"app.test"]},
                allow_redirects=False,
            )
            yield response.content()
            codeClass = f"{response.code // 100}xx"
            self.assertEqual(response.code, _STATUSES[path])
            (backend,) = response.headers.getRawHeaders(b"x-backend")
            byClass[codeClass] += 1
            byBackend[backend.decode(), codeClass] += 1
        self.assertEqual(sum(byClass.values()), len(paths))
        self.assertEqual({b for b, _ in byBackend}, {"a", "b"})

        response = yield self.client.get(self.admin + "/metrics")
        self.assertEqual(response.code, 200)
        text = yield response.text("utf-8")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

        def value(metric: str, **labels: str) -> float:
            return samples[metric, tuple(sorted(labels.items()))]

        for codeClass in ("1xx", "2xx", "3xx", "4xx", "5xx"):
            self.assertEqual(
                value("lbproxy_requests_total", vhost="app", code_class=codeClass),
                byClass[codeClass],
            )
        self.assertEqual(
            value("lbproxy_request_duration_seconds_count", vhost="app"), len(paths)
        )
        self.assertEqual(
            value("lbproxy_request_duration_seconds_bucket", vhost="app", le="+Inf"),
            len(paths),
        )
        for name in ("a", "b"):
            which = dict(upstream="app", backend=f"127.0.0.1:{self.ports[name]}")
            answered = sum(n for (b, _), n in byBackend.items() if b == name)
            self.assertEqual(value("lbproxy_upstream_requests_total", **which), answered)
            for codeClass in ("2xx", "3xx", "4xx", "5xx"):
                self.assertEqual(
                    value("lbproxy_upstream_responses_total", code_class=codeClass, **which),
                    byBackend[name, codeClass],
                )
            self.assertEqual(
                value("lbproxy_upstream_response_seconds_count", **which), answered
            )
            self.assertEqual(value("lbproxy_upstream_failures_total", **which), 0)
            self.assertEqual(value("lbproxy_backend_state", state="up", **which), 1)
        dead = dict(upstream="app", backend=f"127.0.0.1:{self.ports['dead']}")
        self.assertEqual(value("lbproxy_upstream_requests_total", **dead), 1)
        self.assertEqual(value("lbproxy_upstream_failures_total", **dead), 1)
        self.assertEqual(value("lbproxy_upstream_response_seconds_count", **dead), 0)
        self.assertEqual(value("lbproxy_backend_state", state="failed", **dead), 1)
        self.assertEqual(value("lbproxy_backend_state", state="up", **dead), 0)
        self.assertEqual(value("lbproxy_retries_total", upstream="app"), 1)
        self.assertEqual(value("lbproxy_active_requests", **dead), 0)
        self.assertEqual(value("lbproxy_reloads_total"), 0)
