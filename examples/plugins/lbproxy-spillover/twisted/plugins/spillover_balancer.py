"""
The dropin that makes the C{spillover} balancer visible to lbproxy.

Twisted imports every module in every C{twisted/plugins/} directory on
C{sys.path} when lbproxy looks for balancers, and collects the module-level
objects that provide L{lbproxy.interfaces.IBalancerFactory}.  Keep this
module small: it is imported whenever anyone lists plugins.
"""

from lbproxy_spillover import spillover

__all__ = ["spillover"]
