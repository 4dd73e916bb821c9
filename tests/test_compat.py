"""
Tests for L{lbproxy._compat}: the one module that touches Twisted's private
names, and checks them when it is imported.
"""

from __future__ import annotations

import importlib
import sys

from twisted.copyright import version as twistedVersion
from twisted.internet.abstract import FileDescriptor
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._compat import checkPrivateNames, nothingBuffered


class _Reactor:
    def addWriter(self, writer):
        pass

    def removeWriter(self, writer):
        pass


class _Transport(FileDescriptor):
    """
    A transport whose socket takes C{take} bytes a write.
    """

    take = 0

    def writeSomeData(self, data):
        return min(self.take, len(data))


def _initWithoutCount(self, reactor=None):
    """
    L{FileDescriptor.__init__} of a Twisted that no longer has
    C{_tempDataLen}.
    """
    self.reactor = reactor
    self._tempDataBuffer = []


def _writeElsewhere(self, data):
    """
    L{FileDescriptor.write} of a Twisted that buffers without counting in
    C{_tempDataLen}.
    """
    self._tempDataBuffer.append(data)
    self.startWriting()


class NothingBufferedTests(SynchronousTestCase):
    def test_cycle(self):
        """
        A transport has nothing buffered until it is written to, and again
        once its socket took everything, not when it took only some.
        """
        transport = _Transport(_Reactor())
        transport.connected = True
        self.assertTrue(nothingBuffered(transport))
        transport.write(b"abc")
        self.assertFalse(nothingBuffered(transport))
        transport.take = 2
        transport.doWrite()
        self.assertFalse(nothingBuffered(transport))
        transport.write(b"d")
        transport.doWrite()
        self.assertTrue(nothingBuffered(transport))


class CheckTests(SynchronousTestCase):
    def test_installedTwisted(self):
        """
        The installed Twisted has every private name used.
        """
        checkPrivateNames()

    def assertFailsClearly(self):
        e = self.assertRaises(ImportError, checkPrivateNames)
        self.assertIn(twistedVersion, str(e))
        self.assertIn("FileDescriptor._tempDataLen", str(e))

    def test_nameMissing(self):
        """
        A Twisted without C{_tempDataLen} fails the check with an
        L{ImportError} that names the name and Twisted's version.
        """
        self.patch(FileDescriptor, "__init__", _initWithoutCount)
        self.assertFailsClearly()

    def test_meaningChanged(self):
        """
        A Twisted where C{_tempDataLen} no longer counts what C{write}
        buffers fails the check too.
        """
        self.patch(FileDescriptor, "write", _writeElsewhere)
        self.assertFailsClearly()

    def test_importFails(self):
        """
        The check runs when the module is imported: with a name missing,
        importing it raises the L{ImportError}.
        """
        original = sys.modules.pop("lbproxy._compat")
        self.addCleanup(sys.modules.__setitem__, "lbproxy._compat", original)
        self.patch(FileDescriptor, "__init__", _initWithoutCount)
        e = self.assertRaises(ImportError, importlib.import_module, "lbproxy._compat")
        self.assertIn(twistedVersion, str(e))
        self.assertNotIn("lbproxy._compat", sys.modules)
