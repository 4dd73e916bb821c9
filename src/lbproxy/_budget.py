# -*- test-case-name: tests.test_caps -*-
"""
The retry budget of an upstream (C{retry_budget}): retries on the next
backend are allowed only while they stay under a share of the upstream's
requests over the last ten seconds, as Finagle's C{RetryBudget} and
Envoy's C{retry_budget} do, so that an outage cannot multiply the load by
C{next_upstream_tries}.
"""

from __future__ import annotations

#: The window the budget looks back over, in seconds, as buckets of one
#: second each.
WINDOW = 10

#: Retries always allowed within the window, whatever the share says, so
#: that a quiet upstream can still retry (Finagle's C{minRetriesPerSec}
#: of 10 per second is for a whole service; one upstream gets 1 per
#: second).
MIN_RETRIES = 10


class RetryBudget:
    """
    Counts an upstream's requests and retries in a ring of L{WINDOW}
    one-second buckets, and says whether one more retry fits.

    The ring moves with the clock lazily, when a count is made or asked
    for: no timer runs, and a request costs an integer division, a
    comparison and two additions.  Running totals over the ring make
    L{allows} O(1).

    A retry fits while the retries of the window stay within
    C{max(MIN_RETRIES, share × requests)}; requests are the client
    requests (first attempts), retries the later attempts on another
    backend.

    @ivar share: the share of requests that may be retried, 0.0 to 1.0.
    @ivar requests: client requests counted within the window.
    @ivar retries: retries counted within the window.
    @ivar refused: retries refused, in total.
    """

    __slots__ = (
        "share",
        "minRetries",
        "requests",
        "retries",
        "refused",
        "_second",
        "_requestRing",
        "_retryRing",
    )

    def __init__(self, share: float, minRetries: int = MIN_RETRIES) -> None:
        """
        @param share: see L{share}.
        @param minRetries: retries allowed within the window whatever the
            share (L{MIN_RETRIES}).
        """
        self.share = share
        self.minRetries = minRetries
        self.requests = 0
        self.retries = 0
        self.refused = 0
        self._second = 0
        self._requestRing = [0] * WINDOW
        self._retryRing = [0] * WINDOW

    def _advance(self, second: int) -> None:
        """
        Move the ring on to C{second}: the buckets of the seconds that
        went by leave the window, and are emptied for the new ones.
        """
        gone = min(second - self._second, WINDOW)
        if gone <= 0:
            # The clock went back (a test's, or a system clock set back):
            # keep counting in the current bucket.
            return
        requests, retries = self._requestRing, self._retryRing
        for step in range(1, gone + 1):
            index = (self._second + step) % WINDOW
            self.requests -= requests[index]
            self.retries -= retries[index]
            requests[index] = retries[index] = 0
        self._second = second

    def request(self, now: float) -> None:
        """
        Count a client request made at reactor time C{now}.
        """
        second = int(now)
        if second != self._second:
            self._advance(second)
        self._requestRing[self._second % WINDOW] += 1
        self.requests += 1

    def allows(self, now: float) -> bool:
        """
        Whether a retry at reactor time C{now} fits in the budget; if it
        does, it is counted, else it is counted as refused.
        """
        second = int(now)
        if second != self._second:
            self._advance(second)
        if self.retries >= max(self.minRetries, self.share * self.requests):
            self.refused += 1
            return False
        self._retryRing[self._second % WINDOW] += 1
        self.retries += 1
        return True
