"""
lbproxy's built-in balancers, registered as plugins like any third party's.

Every module-level object here that provides
L{lbproxy.interfaces.IBalancerFactory} is found by
L{twisted.plugin.getPlugins}.
"""

from lbproxy.balancers._builtins import (
    consistentHash,
    ipHash,
    leastConn,
    peakEWMA,
    powerOfTwoChoices,
    roundRobin,
    sticky,
    weightedRandom,
)

__all__ = [
    "consistentHash",
    "ipHash",
    "leastConn",
    "peakEWMA",
    "powerOfTwoChoices",
    "roundRobin",
    "sticky",
    "weightedRandom",
]
