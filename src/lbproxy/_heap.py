# -*- test-case-name: tests.test_heap -*-
"""
Keep the garbage collector's full collections short.

CPython's cyclic garbage collector now and then walks every object the
process tracks: a full collection.  Once lbproxy has started, most of
those objects (modules, classes, functions, the configuration, pools and
virtual hosts) live as long as the process, and walking them finds
nothing.  With the backends of an upstream changing (a DNS answer, an
etcd event), connections and backends that lived for a while become
garbage often enough to set full collections off every few seconds; in
C{benchmarks/membership.py} each took 30 to 65 ms, during which no
request moved, which was the largest part of the p99.9 latency.

L{settle} collects once, then moves every object alive into the
permanent generation (C{gc.freeze}), which full collections skip: they
walk only what was made since, and took about 5 ms in the same
benchmark.  A reload (L{lbproxy.LoadBalancerService.reload}) settles
again, first taking the objects back (C{gc.unfreeze}) so that the old
configuration's cycles are collected rather than kept for good.

It changes the collector of the whole process, so it is for a process
lbproxy owns (C{twistd lbproxy}, a worker); an application that embeds
lbproxy decides for itself (L{lbproxy.LoadBalancerService.settleHeap}).
PyPy's collector has no permanent generation and needs none: there,
L{settle} does nothing.
"""

from __future__ import annotations

import gc
from typing import Any


def settle(collector: Any = gc) -> bool:
    """
    Collect every generation, then freeze what is left.

    @param collector: the C{gc} module (or one that looks like it).
    @return: whether anything was done (L{False} on a Python with no
        C{gc.freeze}, such as PyPy).
    """
    if not hasattr(collector, "freeze"):
        return False
    collector.unfreeze()
    collector.collect()
    collector.freeze()
    return True
