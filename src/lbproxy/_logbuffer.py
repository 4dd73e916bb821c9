# -*- test-case-name: tests.test_logbuffer -*-
"""
An access log written in batches, as nginx's C{access_log ... buffer=64k
flush=1s}.

One C{write()} system call per request is a blocking call on the reactor
thread for every line, and the most expensive part of logging a short
line.  A L{BufferedLog} keeps the lines in memory and writes them in one
call once they reach L{BufferedLog.size} bytes or L{BufferedLog.interval}
seconds after the first of them, whichever comes first; L{flush} and
L{close} write what is kept at once (lbproxy calls them when the log is
reopened on SIGUSR1, replaced on reload, and when the service stops).

The file is written with C{os.write} on its descriptor, not through
Python's buffered file objects: a write that fails (a full disk) then
leaves nothing half-buffered behind to be written twice later.  The
lines of a failed write are dropped and counted, and the failure is
logged once, not once per batch, until a write succeeds again.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any, Optional

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

#: The bytes kept before they are written (nginx's example C{buffer=64k}).
DEFAULT_SIZE = 64 * 1024

#: The seconds a line may wait to be written (nginx's C{flush=1s}).
DEFAULT_INTERVAL = 1.0


class BufferedLog:
    """
    A text log whose lines are written to a file in batches.

    @ivar name: what the log is called in error messages (its path).
    @ivar size: the bytes kept before they are written at once; 0 writes
        every line as it comes.
    @ivar interval: the most seconds a line is kept before it is written.
    @ivar lost: how many lines could not be written, in all.
    """

    _log = Logger()

    def __init__(
        self,
        file: IO[Any],
        reactor: Any,
        name: str,
        size: int = DEFAULT_SIZE,
        interval: float = DEFAULT_INTERVAL,
        closeFile: bool = True,
    ) -> None:
        """
        @param file: an open file; it is written through its descriptor
            (C{fileno()}).
        @param reactor: an L{IReactorTime} for the flush interval.
        @param name: see L{name}.
        @param size: see L{size}.
        @param interval: see L{interval}.
        @param closeFile: whether L{close} closes C{file} (not for
            standard output).
        """
        self._file = file
        self._fd = file.fileno()
        self._reactor = reactor
        self.name = name
        self.size = size
        self.interval = interval
        self._closeFile = closeFile
        self._pending: list[bytes] = []
        self._pendingBytes = 0
        self._call: Optional[IDelayedCall] = None
        self._failing = False
        self._lostSinceFailure = 0
        self.lost = 0
        self.closed = False

    @classmethod
    def open(cls, path: Optional[str], reactor: Any) -> Optional[BufferedLog]:
        """
        Open the access log named in the configuration: a path (appended
        to, in batches), C{"-"} for standard output, or L{None} for none.

        Standard output gets each line as it comes (C{size} 0): it is for
        a terminal or C{twistd -n} under a supervisor, where a line is
        wanted at once; a file is the choice when throughput matters.

        @raise OSError: when the file cannot be opened.
        """
        if path is None:
            return None
        if path == "-":
            # The real standard output: under twistd, sys.stdout is
            # redirected into the log, which would wrap every line.
            stdout = sys.__stdout__
            assert stdout is not None
            stdout.flush()
            return cls(stdout, reactor, "-", size=0, closeFile=False)
        return cls(open(path, "ab", buffering=0), reactor, path)

    def write(self, text: str) -> None:
        """
        Keep C{text} (one or more whole lines) to be written with the next
        batch; write the batch now if it has reached L{size}.
        """
        if self.closed:
            self.lost += text.count("\n")
            return
        data = text.encode("utf-8")
        self._pending.append(data)
        self._pendingBytes += len(data)
        if self._pendingBytes >= self.size:
            self.flush()
        elif self._call is None:
            self._call = self._reactor.callLater(self.interval, self._due)

    def _due(self) -> None:
        self._call = None
        self.flush()

    def flush(self) -> None:
        """
        Write every line kept, now.  A write that fails drops them (see
        L{lost}) and is logged, once until a write succeeds again; it is
        never raised to the caller.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        if not self._pending:
            return
        lines = self._pending
        data = b"".join(lines)
        self._pending = []
        self._pendingBytes = 0
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            # Lines wholly written before the failure are not counted.
            lost = data[len(data) - len(view) :].count(b"\n")
            self.lost += lost
            self._lostSinceFailure += lost
            if not self._failing:
                self._failing = True
                self._log.error(
                    "cannot write the access log {log}: {reason}; its lines "
                    "are dropped until it can be written again",
                    log=self.name,
                    reason=e.strerror or e,
                )
            return
        if self._failing:
            self._failing = False
            self._log.warn(
                "the access log {log} is written again; {lost} line(s) "
                "could not be written",
                log=self.name,
                lost=self._lostSinceFailure,
            )
            self._lostSinceFailure = 0

    def close(self) -> None:
        """
        Write every line kept, and close the file (unless it is standard
        output).  Lines written after this are dropped.
        """
        if self.closed:
            return
        self.flush()
        self.closed = True
        self.size = 0
        self._fd = -1
        if self._closeFile:
            self._file.close()
