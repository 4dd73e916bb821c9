# -*- test-case-name: tests.test_balancers -*-
"""
The plugin factories of lbproxy's built-in balancers.

The dropin C{twisted/plugins/lbproxy_balancers.py} exposes these objects, so
that they are found by L{twisted.plugin.getPlugins} like any third party's.
"""

from __future__ import annotations

from random import Random
from typing import Mapping

from lbproxy._interfaces import IBalancer
from lbproxy.balancers._base import (
    BalancerFactory,
    InvalidBalancerOptions,
    durationOption,
)
from lbproxy.balancers._hashing import ConsistentHash, IPHash
from lbproxy.balancers._leastconn import LeastConn
from lbproxy.balancers._random import PeakEWMA, PowerOfTwoChoices, WeightedRandom
from lbproxy.balancers._roundrobin import RoundRobin
from lbproxy.balancers._sticky import Sticky

_KEY_HELP = (
    "what to hash: header:NAME, cookie:NAME, query:NAME, uri or remote_addr (required)"
)


def _buildConsistentHash(options: Mapping[str, str], random: Random) -> IBalancer:
    if "key" not in options:
        raise InvalidBalancerOptions(
            "balancer 'consistent_hash' needs balancer.key: header:NAME, "
            "cookie:NAME, query:NAME, uri or remote_addr"
        )
    return ConsistentHash(options["key"])


def _buildEWMA(options: Mapping[str, str], random: Random) -> IBalancer:
    decay = durationOption("ewma", options, "decay", 10.0)
    assert decay is not None
    return PeakEWMA(random, decay=decay)


def _buildSticky(options: Mapping[str, str], random: Random) -> IBalancer:
    maxAge = durationOption("sticky", options, "max_age", None)
    secret = options.get("secret")
    return Sticky(
        options.get("cookie", "lbproxy_sticky").strip(),
        maxAge=None if maxAge is None else max(1, round(maxAge)),
        secret=None if secret is None else secret.strip().encode("utf-8"),
    )


roundRobin = BalancerFactory(
    "round_robin",
    "smooth weighted round robin, as nginx does it",
    lambda options, random: RoundRobin(),
)

leastConn = BalancerFactory(
    "least_conn",
    "fewest requests in flight relative to weight; ties by weighted round robin",
    lambda options, random: LeastConn(),
)

ipHash = BalancerFactory(
    "ip_hash",
    "the client's address picks the backend (IPv4 /24 or whole IPv6), as nginx",
    lambda options, random: IPHash(),
)

consistentHash = BalancerFactory(
    "consistent_hash",
    "ketama-style consistent hash ring on balancer.key, weighted",
    _buildConsistentHash,
    {"key": _KEY_HELP},
)

weightedRandom = BalancerFactory(
    "random",
    "a backend at random, in proportion to the weights",
    lambda options, random: WeightedRandom(random),
)

powerOfTwoChoices = BalancerFactory(
    "p2c",
    "power of two random choices on requests in flight relative to weight",
    lambda options, random: PowerOfTwoChoices(random),
)

peakEWMA = BalancerFactory(
    "ewma",
    "peak-EWMA latency times requests in flight, two random choices",
    _buildEWMA,
    {"decay": "how fast old latencies are forgotten, a duration (default 10s)"},
)

sticky = BalancerFactory(
    "sticky",
    "a cookie pins each client to a backend; round robin for the rest",
    _buildSticky,
    {
        "cookie": "the cookie's name (default lbproxy_sticky)",
        "max_age": "the cookie's lifetime, a duration (default: a session cookie)",
        "secret": "the key of the HMAC that names the backend in the cookie, the "
        "same on every instance (default: none, the backend's id)",
    },
)

BUILTINS = (
    roundRobin,
    leastConn,
    ipHash,
    consistentHash,
    weightedRandom,
    powerOfTwoChoices,
    peakEWMA,
    sticky,
)
