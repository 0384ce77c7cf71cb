"""
What the operator does to a running daemon (docs/spec.md section 12):
revoking a client and lifting lockouts, at once and across a restart.
"""

from twisted.trial.unittest import SynchronousTestCase

from knocker.core.tracker import GLOBAL
from tests.helpers.harness import Harness

BAD_SECRET = b"\x01" * 32


class RevokeTests(SynchronousTestCase):
    def test_revoked_client_is_denied_at_its_next_hello(self):
        h = Harness(self, clients=("alice", "bob"))
        self.assertTrue(h.server.revoke("alice"))
        line, *_ = h.handshake("alice")
        self.assertEqual(line, b"DENIED\n")
        self.assertEqual(h.audit.of("denied")[-1]["reason"], "revoked")
        line, *_ = h.handshake("bob", ip="192.0.2.11")
        self.assertTrue(line.startswith(b"GRANT "), line)

    def test_revocation_survives_a_restart(self):
        h = Harness(self)
        h.server.revoke("alice")
        h.restart()
        line, *_ = h.handshake("alice")
        self.assertEqual(line, b"DENIED\n")

    def test_a_new_file_is_not_revoked(self):
        h = Harness(self)
        h.server.revoke("alice")
        from knocker.admin.clients import generate_client
        from knocker.core.knockfile import parse_knockfile
        from knocker.files import read_private

        out = h.dir + "/alice-new.knock"
        generate_client(h.config, "alice", 5, 3, out, force=True)
        h.files["alice"] = parse_knockfile(read_private(out), out)
        h.restart()  # the daemon reads the new server copy
        line, *_ = h.handshake("alice")
        self.assertTrue(line.startswith(b"GRANT "), line)

    def test_unknown_client(self):
        h = Harness(self)
        self.assertFalse(h.server.revoke("mallory"))


class LiftTests(SynchronousTestCase):
    def test_lifted_source_gets_a_challenge_again(self):
        h = Harness(self, lockout=600)
        h.handshake(secret=BAD_SECRET, ip="198.51.100.1")
        line, *_ = h.handshake(ip="198.51.100.1")
        self.assertEqual(line, b"LOCKED 600\n")
        self.assertEqual(h.server.lift("198.51.100.1"), ["198.51.100.1"])
        line, *_ = h.handshake(ip="198.51.100.1")
        self.assertTrue(line.startswith(b"GRANT "), line)

    def test_lifted_lockouts_do_not_come_back_after_a_restart(self):
        h = Harness(self, lockout=600, lockout_scope="global")
        h.handshake(secret=BAD_SECRET, ip="198.51.100.1")
        h.clock.advance(1)  # the source lockouts' batch is saved
        self.assertIn(GLOBAL, h.store.lockouts(h.clock.seconds()))
        self.assertEqual(sorted(h.server.lift()), [GLOBAL])
        h.restart()
        self.assertEqual(h.tracker_lockouts(), {})
