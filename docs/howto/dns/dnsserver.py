"""
The DNS server of the session: app.internal's A records are the addresses
in the file given (comma-separated), TTL 1, read again on SIGHUP.  Prints
its port, then serves on 127.0.0.1 until stopped.
"""

import signal
import sys

from twisted.internet import reactor

from lbproxy.testing import DNSZone, startDNSServer

path = sys.argv[1]
zone = DNSZone("internal", ttl=1)


def load(*ignored):
    with open(path) as f:
        zone.setAddresses("app.internal", f.read().strip().split(","), ttl=1)


load()
signal.signal(signal.SIGHUP, lambda *a: reactor.callFromThread(load))
server = startDNSServer(zone, reactor)
print(server.port, flush=True)
reactor.run()
