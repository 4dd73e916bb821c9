"""
The public API is the private objects, re-exported: moving code between
private modules cannot quietly break it.
"""

from __future__ import annotations

import os
import re
import textwrap

from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

import lbproxy
from lbproxy import (
    _backend,
    _config,
    _gzip,
    _health,
    _limits,
    _pool,
    _proxy,
    _site,
    _vhost,
    service,
)


class ExportTests(SynchronousTestCase):
    def test_identity(self):
        pairs = [
            (lbproxy.Backend, _backend.Backend),
            (lbproxy.BackendState, _backend.BackendState),
            (lbproxy.Outcome, _backend.Outcome),
            (lbproxy.ConfigError, _config.ConfigError),
            (lbproxy.parseConfig, _config.parseConfig),
            (lbproxy.GzipPolicy, _gzip.GzipPolicy),
            (lbproxy.HealthChecker, _health.HealthChecker),
            (lbproxy.Pool, _pool.Pool),
            (lbproxy.RateLimiter, _limits.RateLimiter),
            (lbproxy.ConcurrencyLimiter, _limits.ConcurrencyLimiter),
            (lbproxy.RequestLimits, _limits.RequestLimits),
            (lbproxy.limitKeyFunction, _limits.limitKeyFunction),
            (lbproxy.UpstreamResource, _proxy.UpstreamResource),
            (lbproxy.ProxySite, _site.ProxySite),
            (lbproxy.VirtualHostResource, _vhost.VirtualHostResource),
            (lbproxy.LoadBalancerService, service.LoadBalancerService),
        ]
        for public, private in pairs:
            self.assertIs(public, private)

    def test_all(self):
        """
        C{__all__} lists exactly the lazily exported names.
        """
        for name in lbproxy.__all__:
            self.assertTrue(hasattr(lbproxy, name), name)
        self.assertEqual(
            sorted(lbproxy.__all__), sorted([*lbproxy._EXPORTS, "__version__"])
        )

    def test_testing(self):
        """
        L{lbproxy.testing}'s public names, for embedders and plugin authors,
        are exactly these, and each is there.
        """
        import lbproxy.testing

        self.assertEqual(
            sorted(lbproxy.testing.__all__),
            [
                "BackendConnection",
                "CLIENT_ADDRESS",
                "ClientConnection",
                "DNSZone",
                "LoopbackDNSServer",
                "LoopbackServer",
                "PendingConnection",
                "ProxyHarness",
                "RefusingPort",
                "makeRequest",
                "startDNSServer",
                "startServer",
            ],
        )
        for name in lbproxy.testing.__all__:
            self.assertTrue(hasattr(lbproxy.testing, name), name)


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: An import of a private module of lbproxy, or of a private name of it.
_PRIVATE_IMPORT = re.compile(
    r"^\s*(?:from\s+lbproxy(?:\.\w+)*\._\w+\s+import|import\s+lbproxy(?:\.\w+)*\._\w+"
    r"|from\s+lbproxy(?:\.\w+)*\s+import\s+\(?\s*_(?!_))",
    re.MULTILINE,
)


def _documentationFiles() -> list[str]:
    """
    Every page of the documentation, every Python file next to them and
    every example, and the README.
    """
    found = [os.path.join(_ROOT, "README.md")]
    for top in ("docs", "examples"):
        for directory, _, names in os.walk(os.path.join(_ROOT, top)):
            if "_build" in directory:
                continue
            found.extend(
                os.path.join(directory, name)
                for name in names
                if name.endswith((".rst", ".py", ".md"))
            )
    return sorted(found)


class DocumentationTests(SynchronousTestCase):
    """
    What the documentation shows users to write uses the public API only.
    """

    def test_privateImportFound(self):
        """
        The check below finds the imports of private modules and names.
        """
        for line, private in [
            ("from lbproxy._config import HealthCheckConfig", True),
            ("   import lbproxy._health", True),
            ("from lbproxy.balancers._base import BalancerBase", True),
            ("from lbproxy import _pool", True),
            ("from lbproxy import HealthChecker", False),
            ("from lbproxy.config import HealthCheckConfig", False),
            ("from lbproxy import __version__", False),
            ("``lbproxy._pool.Pool``, with the fields", False),
        ]:
            self.assertEqual(_PRIVATE_IMPORT.search(line) is not None, private, line)

    def test_noPrivateImports(self):
        """
        No page of the documentation, no example and not the README imports
        a private module of lbproxy.
        """
        files = _documentationFiles()
        self.assertIn(os.path.join(_ROOT, "docs", "howto", "health-checks.rst"), files)
        for path in files:
            with open(path, encoding="utf-8") as f:
                found = _PRIVATE_IMPORT.findall(f.read())
            self.assertEqual(found, [], path)

    def test_healthCheckerExample(self):
        """
        The health-check how-to's example of a checker for a pool built in
        Python runs as written, with public names.
        """
        with open(os.path.join(_ROOT, "docs", "howto", "health-checks.rst"), encoding="utf-8") as f:
            page = f.read()
        block = page[page.index("``HealthChecker`` to your service tree:") :]
        block = block[block.index(".. code-block:: python") :].split("\n\n")[1:3]
        code = textwrap.dedent("\n\n".join(block))
        reactor = MemoryReactorClock()
        pool = lbproxy.Pool("app", [lbproxy.Backend("127.0.0.1", 9001)], reactor=reactor)
        application = MultiService()
        namespace = {"pool": pool, "application": application}
        exec(compile(code, "health-checks.rst", "exec"), namespace)
        checker = namespace["checker"]
        self.assertIsInstance(checker, lbproxy.HealthChecker)
        self.assertIs(checker.pool, pool)
        self.assertEqual(checker.config.path, "/healthz")
        self.assertEqual(list(application), [checker])

    def test_reExportsDocumented(self):
        """
        A public name defined in a private module is not in that module's
        C{__all__}: pydoctor, which builds the API reference, documents a
        re-exported object in the public module only when the module that
        defines it does not export it itself (it would otherwise stay in
        the private module, which the reference leaves out).
        """
        import importlib

        for public in ["lbproxy", "lbproxy.config", "lbproxy.interfaces", "lbproxy.balancers"]:
            module = importlib.import_module(public)
            for name in module.__all__:
                value = getattr(module, name)
                home = getattr(value, "__module__", None)
                if not home or home == public or not any(
                    part.startswith("_") for part in home.split(".")
                ):
                    continue
                defining = importlib.import_module(home)
                self.assertNotIn(name, getattr(defining, "__all__", ()), (public, name, home))
