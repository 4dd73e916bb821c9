# -*- test-case-name: tests.test_admin -*-
"""
The C{[admin]} listener: its JSON API, to read the upstreams and their
backends and to drain, enable or re-weight a backend at run time; the
admin snapshot; and its HTML status page.

    - C{GET /}: the status page (L{lbproxy._statuspage}), drawn from the
      snapshot;
    - C{GET /api/status}: the admin snapshot, everything an operator looks
      at (see L{lbproxy._snapshot});
    - C{GET /metrics}: the same figures as Prometheus metrics (see
      L{lbproxy._metrics}), the one answer that is not JSON;
    - C{GET /api/upstreams}: every upstream with its backends;
    - C{GET /api/upstreams/NAME}: one upstream;
    - C{GET /api/upstreams/NAME/servers/HOST:PORT}: one backend;
    - C{PATCH /api/upstreams/NAME/servers/HOST:PORT} with a JSON object of
      C{"state"} (C{"drain"}, C{"down"} or C{"up"}) and/or C{"weight"}
      (a whole number from 1 to L{MAX_WEIGHT}): change one backend.

A change goes through the pool's own operations (L{Pool.drain},
L{Pool.disable}, L{Pool.enable}, L{Pool.setWeight}), so it is logged and
reaches the balancer as any other state change.  It lasts until the next
reload, which builds the pools again from the configuration file.

Written as one leaf L{Resource} that reads the whole path itself, rather
than as a tree of child resources: the last segment is a backend's
C{HOST:PORT} (C{[::1]:8080} for IPv6, percent-encoded or not), and every
answer, errors included, must be JSON.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Callable, Mapping, Optional
from urllib.parse import unquote

from twisted.logger import Logger
from twisted.web.resource import Resource

from lbproxy._backend import Backend, BackendState
from lbproxy._metrics import renderMetrics
from lbproxy._pool import Pool
from lbproxy._snapshot import backendStatus, upstreamStatus
from lbproxy._statuspage import StatusPage
from lbproxy._values import MAX_WEIGHT

__all__ = ["AdminResource", "backendStatus", "upstreamStatus"]

#: The header in which the parent of C{workers} names the client it asks a
#: worker for: its own address is all the worker sees.
FORWARDED_CLIENT = b"X-Forwarded-For"

#: The values of C{"state"} in a C{PATCH} body: drain (no new requests,
#: those in flight finish), take out for maintenance (the same, and active
#: checks skip it: HAProxy's C{maint}, a server line's C{down}), and back.
DRAIN = "drain"
DOWN = "down"
UP = "up"


class _Refusal(Exception):
    """
    A request the API refuses: its status code and the message of its JSON
    error body.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AdminResource(Resource):
    """
    Everything the C{[admin]} listener serves, at its root: the status
    page, C{/metrics} and the JSON API (see the module's docstring).

    @ivar token: the bearer token that C{PATCH} requests need, or L{None}
        when they need none; replaced on reload.
    @ivar snapshot: builds the admin snapshot (L{lbproxy._snapshot}), or
        L{None} when there is none to show (then C{/api/status} is 404).
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        pools: Callable[[], Mapping[str, Pool]],
        token: Optional[str] = None,
        snapshot: Optional[Callable[[], dict[str, Any]]] = None,
        *,
        reactor: Any = None,
        behindParent: bool = False,
    ) -> None:
        """
        @param pools: gives the running pools by upstream name (called for
            each request, so that a reload's new pools are the ones shown).
        @param token: see L{token}.
        @param snapshot: see L{snapshot}.
        @param reactor: the L{IReactorTime} the status page reads the time
            on; the global reactor when L{None}.
        @param behindParent: whether this is a worker's API, on the private
            socket its parent asks it on: the client its log lines name is
            then the one the parent names (L{FORWARDED_CLIENT}).
        """
        Resource.__init__(self)
        self.pools = pools
        self.token = token
        self.snapshot = snapshot
        self.behindParent = behindParent
        if reactor is None:
            from twisted.internet import reactor as _globalReactor

            reactor = _globalReactor
        self.statusPage = StatusPage(reactor)

    def render(self, request: Any) -> bytes:
        if (
            request.postpath == [b"metrics"]
            and request.method in (b"GET", b"HEAD")
            and self.snapshot is not None
        ):
            return renderMetrics(request, self.snapshot())
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        try:
            code, body = self._answer(request)
        except _Refusal as e:
            code, body = e.code, {"error": e.message}
            if e.code == 401:
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="lbproxy"')
        request.setResponseCode(code)
        if isinstance(body, bytes):
            return body
        return json.dumps(body, indent=2).encode("utf-8") + b"\n"

    def _answer(self, request: Any) -> tuple[int, Any]:
        segments = [unquote(s.decode("utf-8", "replace")) for s in request.postpath]
        if segments and segments[-1] == "":
            segments.pop()
        if segments == ["api", "status"] and self.snapshot is not None:
            self._onlyRead(request, b"GET, HEAD")
            return 200, self.snapshot()
        if segments == ["metrics"] and self.snapshot is not None:
            # (GET and HEAD are answered by render.)
            self._onlyRead(request, b"GET, HEAD")
        if not segments:
            self._onlyRead(request, b"GET, HEAD")
            if self.snapshot is not None:
                snapshot = self.snapshot()
            else:
                snapshot = {"upstreams": [upstreamStatus(p) for p in self.pools().values()]}
            return 200, self.statusPage.render(request, snapshot)
        if segments[:2] != ["api", "upstreams"] or len(segments) not in (2, 3, 5) or (
            len(segments) == 5 and segments[3] != "servers"
        ):
            raise _Refusal(404, "no such resource; see GET /api/upstreams")
        method = request.method
        if method == b"PATCH" and len(segments) == 5:
            self._authorize(request)
        else:
            self._onlyRead(
                request, b"GET, HEAD, PATCH" if len(segments) == 5 else b"GET, HEAD"
            )
        pools = self.pools()
        if len(segments) == 2:
            return 200, {"upstreams": [upstreamStatus(p) for p in pools.values()]}
        pool = pools.get(segments[2])
        if pool is None:
            raise _Refusal(404, f"no upstream named {segments[2]!r}")
        if len(segments) == 3:
            return 200, upstreamStatus(pool)
        try:
            backend = pool.backendNamed(segments[4])
        except KeyError:
            raise _Refusal(
                404, f"upstream {pool.name!r} has no server {segments[4]!r}"
            ) from None
        if method == b"PATCH":
            self._change(request, pool, backend)
        return 200, backendStatus(backend)

    def _onlyRead(self, request: Any, allow: bytes) -> None:
        """
        Refuse (405, saying the methods of C{allow}) any method but C{GET}
        and C{HEAD}.
        """
        method = request.method
        if method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", allow)
            raise _Refusal(405, f"method {method.decode('ascii', 'replace')} not allowed here")

    def _authorize(self, request: Any) -> None:
        authorize(request, self.token)

    def _change(self, request: Any, pool: Pool, backend: Backend) -> None:
        """
        Apply the body of a C{PATCH} to C{backend}, once all of it is
        checked.
        """
        expected = (
            'a JSON object with "state": "drain", "down" or "up" and/or "weight": '
            f"a whole number from 1 to {MAX_WEIGHT}"
        )
        try:
            body = json.loads(request.content.read().decode("utf-8"))
        except ValueError:
            raise _Refusal(400, f"the body is not JSON; expected {expected}") from None
        if not isinstance(body, dict) or not body or set(body) - {"state", "weight"}:
            raise _Refusal(400, f"expected {expected}")
        state = body.get("state")
        weight = body.get("weight")
        if "state" in body and state not in (DRAIN, DOWN, UP):
            raise _Refusal(400, f"bad state {state!r}; expected {expected}")
        if "weight" in body and (
            not isinstance(weight, int)
            or isinstance(weight, bool)
            or not 1 <= weight <= MAX_WEIGHT
        ):
            raise _Refusal(400, f"bad weight {weight!r}; expected {expected}")
        who = f"the admin API ({self._client(request)})"
        if weight is not None:
            self._log.info(
                "backend {backend} of upstream {upstream}: weight {old} -> {new} by {who}",
                backend=backend.name,
                upstream=pool.name,
                old=backend.weight,
                new=weight,
                who=who,
            )
            pool.setWeight(backend, weight)
        if state == DRAIN and backend.adminState is not BackendState.DRAINING:
            pool.drain(backend, f"drained through {who}")
        elif state == DOWN and backend.adminState is not BackendState.DISABLED:
            pool.disable(backend, f"disabled through {who}")
        elif state == UP:
            pool.enable(backend, f"enabled through {who}")

    def _client(self, request: Any) -> str:
        """
        Who asked for a change, for its log lines: the peer's address, or
        on a worker, the client its parent was asked by.
        """
        if self.behindParent:
            named = request.getHeader(FORWARDED_CLIENT)
            if named:
                return named.decode("ascii", "replace") + ", through the workers' parent"
        return clientHost(request)


def clientHost(request: Any) -> str:
    """
    The address of the peer that sent C{request}; C{local} for a UNIX
    socket's.
    """
    return getattr(request.getClientAddress(), "host", "local")


def authorize(request: Any, token: Optional[str]) -> None:
    """
    Refuse a change without the token (401) or with another (403),
    comparing in constant time; any request passes when C{token} is
    L{None}.

    @raise _Refusal: when refused.
    """
    if token is None:
        return
    header = request.getHeader(b"authorization")
    scheme, _, given = (header or b"").partition(b" ")
    if header is None or scheme.lower() != b"bearer":
        raise _Refusal(401, 'changes need "Authorization: Bearer TOKEN"')
    if not hmac.compare_digest(given.strip(), token.encode("utf-8")):
        raise _Refusal(403, "wrong token")
