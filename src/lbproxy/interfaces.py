# -*- test-case-name: tests.test_balancers -*-
"""
The public interfaces of lbproxy: what a balancer plugin provides, and what
it is given.
"""

from lbproxy._interfaces import IBackend, IBalancer, IBalancerFactory

__all__ = ["IBackend", "IBalancer", "IBalancerFactory"]
