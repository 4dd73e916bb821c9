"""
lbproxy: a reverse proxy and load balancer built on Twisted.

The stable API is re-exported here; everything in a module whose name
starts with an underscore is private.  L{parseConfig}, L{parseConfigText},
L{SiteConfig} and L{ConfigError} are documented in L{lbproxy.config}, with
the classes of a configuration; L{lbproxy.interfaces}, L{lbproxy.balancers}
and L{lbproxy.testing} are public too.

The names are imported on first use (PEP 562): twistd imports lbproxy's
balancer dropins while it scans for plugins, before it installs the reactor
chosen with C{--reactor}, so importing this package must not import
L{twisted.web.proxy}, which installs the default reactor.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from lbproxy._version import __version__

if TYPE_CHECKING:
    from lbproxy._backend import Backend, BackendState, Outcome
    from lbproxy._config import ConfigError, SiteConfig, parseConfig, parseConfigText
    from lbproxy._gzip import GzipPolicy
    from lbproxy._health import HealthChecker
    from lbproxy._limits import (
        ConcurrencyLimiter,
        RateLimiter,
        RequestLimits,
        limitKeyFunction,
    )
    from lbproxy._pool import Pool
    from lbproxy._proxy import UpstreamResource
    from lbproxy._site import ProxySite
    from lbproxy._vhost import VirtualHost, VirtualHostResource
    from lbproxy.service import LoadBalancerService, buildPool

_EXPORTS = {
    "Backend": "lbproxy._backend",
    "BackendState": "lbproxy._backend",
    "Outcome": "lbproxy._backend",
    "ConfigError": "lbproxy._config",
    "SiteConfig": "lbproxy._config",
    "parseConfig": "lbproxy._config",
    "parseConfigText": "lbproxy._config",
    "GzipPolicy": "lbproxy._gzip",
    "HealthChecker": "lbproxy._health",
    "ConcurrencyLimiter": "lbproxy._limits",
    "RateLimiter": "lbproxy._limits",
    "RequestLimits": "lbproxy._limits",
    "limitKeyFunction": "lbproxy._limits",
    "Pool": "lbproxy._pool",
    "UpstreamResource": "lbproxy._proxy",
    "ProxySite": "lbproxy._site",
    "VirtualHost": "lbproxy._vhost",
    "VirtualHostResource": "lbproxy._vhost",
    "LoadBalancerService": "lbproxy.service",
    "buildPool": "lbproxy.service",
}

__all__ = [
    "Backend",
    "BackendState",
    "ConcurrencyLimiter",
    "ConfigError",
    "GzipPolicy",
    "HealthChecker",
    "LoadBalancerService",
    "Outcome",
    "Pool",
    "ProxySite",
    "RateLimiter",
    "RequestLimits",
    "SiteConfig",
    "UpstreamResource",
    "VirtualHost",
    "VirtualHostResource",
    "__version__",
    "buildPool",
    "limitKeyFunction",
    "parseConfig",
    "parseConfigText",
]


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'lbproxy' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
