# -*- test-case-name: tests.test_config -*-
"""
The configuration: L{parseConfig} reads a site.ini into frozen objects; the
same objects can be built directly in Python.
"""

from lbproxy._config import (
    AdminConfig,
    ConfigError,
    DemoConfig,
    HealthCheckConfig,
    ProxyConfig,
    RouteConfig,
    RouteOverridesConfig,
    ServerConfig,
    SiteConfig,
    UpstreamConfig,
    VHostConfig,
    parseConfig,
    parseConfigText,
)
from lbproxy._values import parseDuration, parseSize

__all__ = [
    "AdminConfig",
    "ConfigError",
    "DemoConfig",
    "HealthCheckConfig",
    "ProxyConfig",
    "RouteConfig",
    "RouteOverridesConfig",
    "ServerConfig",
    "SiteConfig",
    "UpstreamConfig",
    "VHostConfig",
    "parseConfig",
    "parseConfigText",
    "parseDuration",
    "parseSize",
]
