"""
Twisted's stock L{twisted.web.proxy.ReverseProxyResource}, for the
benchmark's baseline row.

    python benchmarks/stock_proxy.py LISTEN_PORT BACKEND_PORT
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from twisted.internet import reactor
    from twisted.web.proxy import ReverseProxyResource
    from twisted.web.server import Site

    listenPort, backendPort = int(argv[1]), int(argv[2])
    site = Site(ReverseProxyResource("127.0.0.1", backendPort, b""))
    site.log = lambda request: None  # type: ignore[method-assign]
    reactor.listenTCP(listenPort, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv)
