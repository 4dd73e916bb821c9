"""
Whether objects are freed by reference counting alone.

An object left in a reference cycle when its connection ends is freed only
by CPython's cyclic garbage collector, whose collections grow more
frequent with every such object and stop the process while they run (see
"Garbage collector" in docs/performance.rst).  A test takes a weak
reference to the object, lets it go, and checks that it is gone while the
collector is off.
"""

from __future__ import annotations

import gc
import platform
from typing import TypeVar
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

T = TypeVar("T")


def withoutCollector(testCase: SynchronousTestCase) -> None:
    """
    Collect what is garbage now, then turn CPython's cyclic collector off
    until C{testCase} ends; skip C{testCase} on other Pythons, which free
    nothing by reference counting.
    """
    if platform.python_implementation() != "CPython":
        raise SkipTest("needs reference counting")
    gc.collect()
    gc.disable()
    testCase.addCleanup(gc.enable)


def liveOne(cls: type[T]) -> T:
    """
    The one object of class C{cls} (or a subclass) alive now: for a test
    that wants a weak reference to an object it cannot reach through any
    public attribute (such as a request's exchange, held only by the
    backend connection that Twisted's endpoint wraps).

    @raise AssertionError: when there is not exactly one.
    """
    found = [o for o in gc.get_objects() if isinstance(o, cls)]
    if len(found) != 1:
        raise AssertionError(f"{len(found)} live {cls.__name__} objects, not one")
    return found[0]
