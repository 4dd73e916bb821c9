# -*- test-case-name: tests.test_service -*-
"""
The built-in sample backend of C{[demo:NAME]} sections.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Site


class DemoResource(Resource):
    """
    A backend that answers every request with its own name, so that the
    balancing can be watched with curl.  C{/healthz} answers C{ok}.

    A plain-text answer is C{NAME\\n}; with C{?format=json} it is a JSON
    object with the name, method, path and the forwarding headers it saw.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        Resource.__init__(self)
        self.name = name
        self.requests = 0

    def render(self, request: Any) -> bytes:
        self.requests += 1
        request.setHeader(b"x-demo-backend", self.name.encode("utf-8"))
        if request.path == b"/healthz":
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"ok\n"
        if request.args.get(b"format") == [b"json"]:
            request.setHeader(b"content-type", b"application/json")
            seen = {
                "backend": self.name,
                "method": request.method.decode("ascii", "replace"),
                "uri": request.uri.decode("ascii", "replace"),
                "headers": {
                    name.decode("latin-1").lower(): [v.decode("latin-1") for v in values]
                    for name, values in request.requestHeaders.getAllRawHeaders()
                },
            }
            return json.dumps(seen, indent=2).encode("utf-8") + b"\n"
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self.name.encode("utf-8") + b"\n"


class DemoSite(Site):
    """
    The L{Site} of a C{[demo:NAME]} backend: quiet, no access log.

    @ivar resource: its L{DemoResource}.
    """

    noisy = False

    def __init__(self, name: str) -> None:
        Site.__init__(self, DemoResource(name))

    def log(self, request: Any) -> None:
        pass
