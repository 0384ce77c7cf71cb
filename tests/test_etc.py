"""
The shipped example configurations parse and document every key.
"""

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from knocker.core.config import CLIENT_KEYS, load_client_config
from knocker.core.serverconfig import SERVER_KEYS, load_server_config

ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc")


def documented(path):
    with open(path) as handle:
        return set(re.findall(r"^#? ?([a-z][a-z0-9-]*) = ", handle.read(), re.M))


class ExampleConfigTests(SynchronousTestCase):
    def test_server_example(self):
        path = os.path.join(ETC, "knockserver.conf")
        config = load_server_config(path)
        self.assertEqual((config.pool_size, config.lockout, config.lockout_scope), (100, 60.0, "knock"))
        # It is the installation's file (docs/deploy.md): these keys are set
        # for it; every other value shown is the default.
        installed = {
            "central": "tcp:7000:interface=0.0.0.0",
            "interface": "0.0.0.0",
            "state_dir": "/var/lib/knocker",
            "audit_log": "/var/log/knocker/audit.log",
            "on_success": "/etc/knocker/scripts/nft-open",
            "on_close": "/etc/knocker/scripts/nft-close",
            "on_check": "/etc/knocker/scripts/nft-check",
        }
        self.assertEqual({key: getattr(config, key) for key in installed}, installed)
        self.assertEqual(config, load_server_config(None).replace(**installed),
                         "the example shows the defaults")
        with open(path) as handle:
            text = handle.read()
        self.assertEqual(text.count("\n# Built-in default:"), len(installed))
        self.assertEqual(set(SERVER_KEYS) - documented(path), set())

    def test_client_example(self):
        path = os.path.join(ETC, "knockclient.conf")
        config = load_client_config(path)
        self.assertEqual(config.server, "tcp:host=127.0.0.1:port=7000")
        self.assertEqual(set(CLIENT_KEYS) - documented(path), set())
