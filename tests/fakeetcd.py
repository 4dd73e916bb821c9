"""
An in-memory stand-in for the JSON gateway of an etcd 3.4 member, for the
unit tests of L{lbproxy._etcd} through treq's C{StubTreq}: the same paths,
the same JSON (base64 keys and values, numbers as strings, fields that are
0 left out, one watch response per line).  The integration tests run the
real etcd.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Optional

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class FakeEtcd(Resource):
    """
    One etcd member's key space and gateway.

    @ivar revision: the store's revision.
    @ivar history: C{(revision, key, value or None)} of every change.
    @ivar compacted: revisions below this one are gone.
    @ivar refuse: host names (as the client's URLs spell them) whose
        requests get a 503, as from a member that is not ready.
    @ivar watches: the open watch requests with their C{(start, end)}.
    @ivar requests: C{(host, path, body)} of every request, in order.
    @ivar users: user names and passwords; auth is enabled when there is
        one: every call but C{/v3/auth/authenticate} then needs a token.
    @ivar tokens: the tokens given and not expired.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.revision = 1
        self.values: dict[bytes, tuple[bytes, int]] = {}
        self.history: list[tuple[int, bytes, Optional[bytes]]] = []
        self.compacted = 0
        self.refuse: set[str] = set()
        self.watches: list[tuple[Any, bytes, bytes]] = []
        self.requests: list[tuple[str, bytes, dict[str, Any]]] = []
        self.users: dict[str, str] = {}
        self.tokens: set[str] = set()
        self._given = 0

    def expireTokens(self) -> None:
        """
        Forget every token given, as a member does when they time out or
        it restarts.
        """
        self.tokens.clear()

    def _refused(self, request: Any, code: int, grpcCode: int, message: str) -> bytes:
        request.setResponseCode(code)
        return json.dumps({"error": message, "code": grpcCode, "message": message}).encode()

    def header(self) -> dict[str, Any]:
        return {"cluster_id": "1", "member_id": "2", "revision": str(self.revision)}

    def put(self, key: bytes, value: bytes) -> None:
        self.revision += 1
        self.values[key] = (value, self.revision)
        self.history.append((self.revision, key, value))
        self.notify([self.history[-1]])

    def delete(self, key: bytes) -> None:
        self.revision += 1
        self.values.pop(key, None)
        self.history.append((self.revision, key, None))
        self.notify([self.history[-1]])

    def txn(self, changes: list[tuple[bytes, Optional[bytes]]]) -> None:
        """
        Put (or, for a value of L{None}, delete) several keys in one
        transaction: at one revision, their events in one watch response,
        as etcd gives them.
        """
        self.revision += 1
        batch = []
        for key, value in changes:
            if value is None:
                self.values.pop(key, None)
            else:
                self.values[key] = (value, self.revision)
            batch.append((self.revision, key, value))
        self.history.extend(batch)
        self.notify(batch)

    def compact(self, revision: int) -> None:
        self.compacted = revision

    def event(self, change: tuple[int, bytes, Optional[bytes]]) -> dict[str, Any]:
        revision, key, value = change
        if value is None:
            return {"type": "DELETE", "kv": {"key": _b64(key), "mod_revision": str(revision)}}
        return {
            "kv": {"key": _b64(key), "value": _b64(value), "mod_revision": str(revision)}
        }

    def notify(self, changes: list[tuple[int, bytes, Optional[bytes]]]) -> None:
        for request, start, end in list(self.watches):
            events = [self.event(c) for c in changes if start <= c[1] < end]
            if events:
                self.send(request, {"header": self.header(), "events": events})

    def progress(self) -> None:
        """
        Send every watch a progress notification.
        """
        for request, _, _ in self.watches:
            self.send(request, {"header": self.header()})

    def send(self, request: Any, result: dict[str, Any]) -> None:
        request.write(json.dumps({"result": result}).encode() + b"\n")

    def garble(self) -> None:
        """
        Send every watch a line that is not JSON.
        """
        for request, _, _ in self.watches:
            request.write(b"<html>oops</html>\n")

    def dropWatches(self) -> None:
        """
        End every watch stream, as a member that goes away does.
        """
        watches, self.watches = self.watches, []
        for request, _, _ in watches:
            request.finish()

    def render_POST(self, request: Any) -> Any:
        host = request.getRequestHostname().decode()
        body = json.loads(request.content.read())
        self.requests.append((host, request.path, body))
        if host in self.refuse:
            request.setResponseCode(503)
            return b"not ready"
        if request.path == b"/v3/auth/authenticate":
            if not self.users or self.users.get(body.get("name")) != body.get("password"):
                return self._refused(
                    request, 400, 3,
                    "etcdserver: authentication failed, invalid user ID or password",
                )
            self._given += 1
            token = f"token.{self._given}"
            self.tokens.add(token)
            return json.dumps({"header": self.header(), "token": token}).encode()
        if self.users:
            token = request.getHeader("authorization")
            if token is None:
                return self._refused(request, 400, 3, "etcdserver: user name is empty")
            if token not in self.tokens:
                if request.path == b"/v3/watch":
                    # A stream that says so, as etcd 3.4's gateway sends.
                    self.send(
                        request,
                        {
                            "header": self.header(),
                            "created": True,
                            "canceled": True,
                            "cancel_reason": "rpc error: code = Unauthenticated "
                            "desc = etcdserver: invalid auth token",
                        },
                    )
                    request.finish()
                    return NOT_DONE_YET
                return self._refused(request, 401, 16, "etcdserver: invalid auth token")
        if request.path == b"/v3/kv/range":
            start = base64.b64decode(body["key"])
            end = base64.b64decode(body["range_end"])
            kvs = [
                {"key": _b64(k), "value": _b64(v), "mod_revision": str(r)}
                for k, (v, r) in sorted(self.values.items())
                if start <= k < end
            ]
            answer: dict[str, Any] = {"header": self.header()}
            if kvs:
                answer["kvs"] = kvs
                answer["count"] = str(len(kvs))
            return json.dumps(answer).encode()
        if request.path == b"/v3/watch":
            create = body["create_request"]
            start = base64.b64decode(create["key"])
            end = base64.b64decode(create["range_end"])
            since = int(create.get("start_revision", 0)) or self.revision + 1
            self.send(request, {"header": self.header(), "created": True})
            if since < self.compacted:
                header = {k: v for k, v in self.header().items() if k != "revision"}
                self.send(
                    request,
                    {
                        "header": header,
                        "canceled": True,
                        "compact_revision": str(self.compacted),
                    },
                )
                request.finish()
                return NOT_DONE_YET
            missed = [
                self.event(c)
                for c in self.history
                if c[0] >= since and start <= c[1] < end
            ]
            if missed:
                self.send(request, {"header": self.header(), "events": missed})
            entry = (request, start, end)
            self.watches.append(entry)
            request.notifyFinish().addBoth(
                lambda _: entry in self.watches and self.watches.remove(entry)
            )
            return NOT_DONE_YET
        request.setResponseCode(404)
        return b'{"error":"Not Found","code":5}'
