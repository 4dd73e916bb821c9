"""
The public API is the private objects, re-exported: moving code between
private modules cannot quietly break it.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

import lbproxy
from lbproxy import _backend, _config, _gzip, _pool, _proxy, _site, _vhost, service


class ExportTests(SynchronousTestCase):
    def test_identity(self):
        pairs = [
            (lbproxy.Backend, _backend.Backend),
            (lbproxy.BackendState, _backend.BackendState),
            (lbproxy.Outcome, _backend.Outcome),
            (lbproxy.ConfigError, _config.ConfigError),
            (lbproxy.parseConfig, _config.parseConfig),
            (lbproxy.GzipPolicy, _gzip.GzipPolicy),
            (lbproxy.Pool, _pool.Pool),
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
                "LoopbackServer",
                "PendingConnection",
                "ProxyHarness",
                "makeRequest",
                "startServer",
            ],
        )
        for name in lbproxy.testing.__all__:
            self.assertTrue(hasattr(lbproxy.testing, name), name)
