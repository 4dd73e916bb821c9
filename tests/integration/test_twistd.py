"""
C{twistd -n lbproxy} as a real process: checking a configuration, refusing
a bad one, streaming a large response in bounded memory, and a large
upload with C{request_buffering = no}.

Memory is the proxy process's own, read from C{/proc/PID/status}
(C{VmRSS} before, C{VmHWM}, the peak, after), which CPython and PyPy both
have on Linux, with nothing to install.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.filepath import FilePath
from twisted.python.log import msg
from twisted.trial.unittest import TestCase
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseDone,
    readBody,
)
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from lbproxy.testing import startServer

_TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

_SITE = """
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = off

[upstream:app]
servers = 127.0.0.1:{port}

[vhost:app]
default = yes
upstream = app
"""


def _twistd(*args):
    return getProcessOutputAndValue(
        _TWISTD[0], _TWISTD[1:] + list(args), env=_ENV, reactor=reactor
    )


@implementer(IPullProducer)
class _Zeros:
    """
    Writes C{size} bytes to a request, a chunk each time it is asked.
    """

    chunk = b"\0" * (256 * 1024)

    def __init__(self, request, size):
        self.request = request
        self.left = size

    def resumeProducing(self):
        if self.left <= 0:
            self.request.unregisterProducer()
            self.request.finish()
            return
        data = self.chunk[: self.left]
        self.left -= len(data)
        self.request.write(data)

    def stopProducing(self):
        self.left = 0


class _Big(Resource):
    isLeaf = True

    def __init__(self, size):
        Resource.__init__(self)
        self.size = size

    def render_GET(self, request):
        request.setHeader(b"content-length", b"%d" % self.size)
        request.registerProducer(_Zeros(request, self.size), False)
        return NOT_DONE_YET


class _Count(Protocol):
    def __init__(self):
        self.received = 0
        self.done = Deferred()

    def dataReceived(self, data):
        self.received += len(data)

    def connectionLost(self, reason):
        self.done.callback((self.received, reason))


class _Upload:
    """
    A request body of C{size} bytes made as it is read (a 1 MiB random
    block, again and again), hashed as it goes, with the time of its last
    read: a file for L{FileBodyProducer}.
    """

    block = os.urandom(1024 * 1024)

    def __init__(self, size):
        self.size = size
        self.position = 0
        self.sha = hashlib.sha256()
        self.lastRead = None

    def seek(self, offset, whence=0):
        self.position = self.size if whence == 2 else offset

    def tell(self):
        return self.position

    def read(self, n):
        start = self.position % len(self.block)
        n = min(n, self.size - self.position, len(self.block) - start)
        data = self.block[start : start + n]
        self.position += n
        self.sha.update(data)
        if data:
            self.lastRead = time.monotonic()
        return data

    def close(self):
        pass


class _Sink(Protocol):
    """
    A backend that reads one request with a C{Content-Length} body, hashes
    the body as it arrives (noting when its first bytes came), and answers
    with the hash.
    """

    def __init__(self, record):
        self.record = record
        self.head = b""
        self.left = None
        self.sha = hashlib.sha256()

    def dataReceived(self, data):
        if self.left is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", self.head[:end])
            self.left = int(length.group(1)) if length else 0
            data = self.head[end + 4 :]
        if data and "first" not in self.record:
            self.record["first"] = time.monotonic()
        self.sha.update(data[: self.left])
        self.left -= len(data)
        if self.left <= 0:
            digest = self.sha.hexdigest().encode("ascii")
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(digest), digest)
            )
            self.transport.loseConnection()


class _Proxy(ProcessProtocol):
    """
    A C{twistd -n lbproxy} process; C{listening} fires with its port.
    """

    def __init__(self):
        self.output = b""
        self.listening = Deferred()
        self.ended = Deferred()

    def outReceived(self, data):
        self.output += data
        match = re.search(rb"ProxySite starting on (\d+)", self.output)
        if match and not self.listening.called:
            self.listening.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.listening.called:
            self.listening.errback(reason)
        self.ended.callback(reason)


def _memory(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


class TwistdTests(TestCase):
    timeout = 120

    def writeConfig(self, text):
        path = FilePath(self.mktemp())
        path.setContent(text.encode("utf-8"))
        return path.path

    @inlineCallbacks
    def test_checkValid(self):
        """
        C{--check} on a valid file prints OK and exits 0.
        """
        path = self.writeConfig(_SITE.format(port=9))
        out, err, code = yield _twistd("-n", "lbproxy", "--config", path, "--check")
        self.assertEqual(code, 0, err)
        self.assertIn(b"OK", out)

    @inlineCallbacks
    def test_checkInvalid(self):
        """
        C{--check} on a bad file lists every error and exits 1.
        """
        path = self.writeConfig(
            _SITE.format(port=9) + "read_timeout = soon\n[vhost:other]\nupstream = nope\n"
        )
        out, err, code = yield _twistd("-n", "lbproxy", "--config", path, "--check")
        self.assertEqual(code, 1)
        self.assertIn(b"[vhost:app] read_timeout = 'soon': unknown key", err)
        self.assertIn(b"[upstream:nope]", err)
        self.assertNotIn(b"Traceback", out + err)

    @inlineCallbacks
    def test_badConfigNeverStarts(self):
        """
        Without C{--check}, a bad file stops twistd before anything listens.
        """
        path = self.writeConfig(_SITE.format(port=70000))
        out, err, code = yield _twistd(
            "-n", "--pidfile=", "lbproxy", "--config", path
        )
        self.assertEqual(code, 1)
        self.assertIn(b"port between 1 and 65535", out + err)
        self.assertNotIn(b"starting on", out + err)
        self.assertNotIn(b"Traceback", out + err)

    @inlineCallbacks
    def waitFor(self, condition, what, timeout=15.0):
        """
        Poll C{condition} (which may return a Deferred) until it is true,
        for at most C{timeout} seconds.
        """
        deadline = reactor.seconds() + timeout
        while True:
            result = yield maybeDeferred(condition)
            if result:
                return result
            if reactor.seconds() > deadline:
                self.fail(f"timed out waiting for {what}")
            yield deferLater(reactor, 0.05, lambda: None)

    def spawnProxy(self, path):
        proxy = _Proxy()
        process = reactor.spawnProcess(
            proxy,
            _TWISTD[0],
            _TWISTD + ["-n", "--pidfile=", "lbproxy", "--config", path],
            env=_ENV,
        )

        def stop():
            if process.pid is not None:
                process.signalProcess("TERM")
            return proxy.ended.addErrback(lambda f: f.trap(ProcessDone, ProcessTerminated))

        self.addCleanup(stop)
        return proxy, process

    @inlineCallbacks
    def test_reloadOnHangup(self):
        """
        SIGHUP makes twistd lbproxy read its file again: new requests go to
        the new backends; a file with errors is reported and the running
        configuration keeps serving.
        """
        from lbproxy._demo import DemoResource

        a = yield startServer(DemoResource("a"), reactor)
        self.addCleanup(a.stop)
        b = yield startServer(DemoResource("b"), reactor)
        self.addCleanup(b.stop)
        path = self.writeConfig(_SITE.format(port=a.port))
        proxy, process = self.spawnProxy(path)
        port = yield proxy.listening
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

        @inlineCallbacks
        def body():
            response = yield agent.request(b"GET", b"http://127.0.0.1:%d/" % port)
            return (yield readBody(response))

        self.assertEqual((yield body()), b"a\n")
        FilePath(path).setContent(_SITE.format(port=b.port).encode("utf-8"))
        process.signalProcess("HUP")
        yield self.waitFor(lambda: body().addCallback(lambda got: got == b"b\n"), "b")

        FilePath(path).setContent(b"[lbproxy]\nlisten = nowhere\n")
        process.signalProcess("HUP")
        yield self.waitFor(lambda: b"refused" in proxy.output, "the refusal in the log")
        self.assertIn(b"listen = 'nowhere'", proxy.output)
        self.assertEqual((yield body()), b"b\n")
        self.assertIsNotNone(process.pid)  # still running

    @inlineCallbacks
    def test_streamInBoundedMemory(self):
        """
        A 200 MB response streams through the proxy process while its memory
        grows by less than 50 MB.
        """
        size = 200 * 1024 * 1024
        backend = yield startServer(_Big(size), reactor)
        self.addCleanup(backend.stop)
        path = self.writeConfig(_SITE.format(port=backend.port))
        proxy, process = self.spawnProxy(path)
        port = yield proxy.listening
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, pool=pool)

        # Warm up: one small request, so that imports and first-use
        # allocations are not counted as growth.
        warm = yield agent.request(b"HEAD", b"http://127.0.0.1:%d/" % port)
        self.assertEqual(warm.code, 200)
        before = _memory(process.pid)["VmRSS"]

        response = yield agent.request(b"GET", b"http://127.0.0.1:%d/big" % port)
        self.assertEqual(response.code, 200)
        counter = _Count()
        response.deliverBody(counter)
        received, reason = yield counter.done
        self.assertEqual(received, size)
        reason.trap(ResponseDone)
        peak = _memory(process.pid)["VmHWM"]
        growth = peak - before
        msg(f"200 MB streamed: proxy RSS {before} before, peak {peak}, growth {growth} bytes")
        self.assertLess(growth, 50 * 1024 * 1024, f"grew by {growth} bytes")

    @inlineCallbacks
    def test_uploadInBoundedMemory(self):
        """
        With request_buffering = no, a 300 MB upload reaches the backend
        intact (sha256) while the proxy process grows by less than 64 MB,
        and the backend reads its first bytes before the client writes its
        last.
        """
        from twisted.internet.protocol import Factory

        size = 300 * 1024 * 1024
        record = {}
        factory = Factory.forProtocol(lambda: _Sink(record))
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        path = self.writeConfig(
            _SITE.format(port=listening.getHost().port).replace(
                "access_log = off\n", "access_log = off\nmax_body_size = 1g\n"
            ).replace(
                "[upstream:app]\n", "[upstream:app]\nrequest_buffering = no\n"
            )
        )
        proxy, process = self.spawnProxy(path)
        port = yield proxy.listening
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        url = b"http://127.0.0.1:%d/upload" % port

        # Warm up with a small upload, so that imports and first-use
        # allocations are not counted as growth.
        warm = _Upload(64 * 1024)
        response = yield agent.request(b"POST", url, bodyProducer=FileBodyProducer(warm))
        self.assertEqual((yield readBody(response)), warm.sha.hexdigest().encode("ascii"))
        before = _memory(process.pid)["VmRSS"]
        record.clear()

        upload = _Upload(size)
        started = time.monotonic()
        d = agent.request(
            b"POST", url, bodyProducer=FileBodyProducer(upload, readSize=256 * 1024)
        )
        d.addTimeout(240, reactor)
        response = yield d
        self.assertEqual(response.code, 200)
        digest = yield readBody(response)
        self.assertEqual(upload.position, size)
        self.assertEqual(digest, upload.sha.hexdigest().encode("ascii"))
        self.assertLess(record["first"], upload.lastRead)
        peak = _memory(process.pid)["VmHWM"]
        growth = peak - before
        msg(
            f"300 MB uploaded in {time.monotonic() - started:.1f} s: proxy RSS "
            f"{before} before, peak {peak}, growth {growth} bytes; backend's first "
            f"read {upload.lastRead - record['first']:.2f} s before the client's last"
        )
        self.assertLess(growth, 64 * 1024 * 1024, f"grew by {growth} bytes")

    test_uploadInBoundedMemory.timeout = 300  # type: ignore[attr-defined]
