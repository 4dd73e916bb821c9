"""
lbproxy: a reverse proxy and load balancer built on Twisted.

The stable API is re-exported here; everything in a module whose name
starts with an underscore is private.
"""

from lbproxy._backend import Backend, BackendState, Outcome
from lbproxy._config import ConfigError, SiteConfig, parseConfig, parseConfigText
from lbproxy._pool import Pool
from lbproxy._proxy import UpstreamResource
from lbproxy._site import ProxySite
from lbproxy._version import __version__
from lbproxy._vhost import VirtualHost, VirtualHostResource
from lbproxy.service import LoadBalancerService, buildPool

__all__ = [
    "Backend",
    "BackendState",
    "ConfigError",
    "LoadBalancerService",
    "Outcome",
    "Pool",
    "ProxySite",
    "SiteConfig",
    "UpstreamResource",
    "VirtualHost",
    "VirtualHostResource",
    "__version__",
    "buildPool",
    "parseConfig",
    "parseConfigText",
]
