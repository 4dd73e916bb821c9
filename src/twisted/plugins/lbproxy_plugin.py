"""
The C{twistd lbproxy} dropin: one lazy line, so that C{twistd --help} does
not import lbproxy.
"""

from twisted.application.service import ServiceMaker

lbproxy = ServiceMaker(
    "lbproxy",
    "lbproxy.tap",
    "A reverse proxy and load balancer configured by an INI file.",
    "lbproxy",
)
