"""
lbproxy's built-in balancers, registered as plugins like any third party's.
"""

from lbproxy.balancers._base import BalancerFactory
from lbproxy.balancers._roundrobin import RoundRobin

roundRobin = BalancerFactory(
    "round_robin",
    "smooth weighted round robin, as nginx does it",
    lambda options, random: RoundRobin(),
)
