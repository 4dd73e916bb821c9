# -*- test-case-name: tests.test_exports -*-
"""
The public interfaces of lbproxy: what a balancer plugin provides and what
it is given, and what forwarding needs of a client request.
"""

from lbproxy._interfaces import (
    IBackend,
    IBalancer,
    IBalancerFactory,
    IProxyRequest,
    ITunnelChannel,
)

__all__ = ["IBackend", "IBalancer", "IBalancerFactory", "IProxyRequest", "ITunnelChannel"]
