"""
What the operator does to a running daemon (docs/spec.md section 12):
revoking a client and lifting lockouts, at once and across a restart.
"""

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from knocker.core import handshake as hs
from knocker.core.tracker import GLOBAL
from tests.helpers.harness import Harness

IP = "192.0.2.10"

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

    def test_a_revoked_clients_open_doors_close_now(self):
        """
        Revoking a file that holds an open door closes it at once (not
        open-duration later), and a firewall restored after a flush does
        not get it back.
        """
        h = Harness(self, on_success="/bin/echo", on_close="/bin/true", open_duration=300)
        _, transport = h.knock()
        self.assertEqual(transport.value(), b"OPEN\n")
        self.assertTrue(h.server.revoke("alice"))
        self.assertEqual(h.runner.calls[-1][0], ["/bin/true", IP, "alice", "1"])
        self.assertEqual([e["ok"] for e in h.audit.of("close")], [True])
        self.assertEqual(h.store.pending_closes(), [])
        self.assertEqual(h.server.closes.open_doors(), [])
        self.assertEqual(h.server.reopen_doors(), 0)
        h.clock.advance(300)
        self.assertEqual(len(h.audit.of("close")), 1, "closed once")

    def test_a_door_another_client_holds_closes_with_it(self):
        """
        A door is an address: when another client's knock holds the same
        address open, the revoked client's close runs with that door's.
        """
        h = Harness(self, clients=("alice", "bob"), on_success="/bin/echo",
                    on_close="/bin/true", open_duration=300)
        h.knock("alice")
        h.clock.advance(10)
        h.knock("bob")
        h.server.revoke("alice")
        self.assertEqual(h.audit.of("close"), [], "bob holds the address open")
        self.assertEqual(h.server.closes.open_doors(), [(IP, "bob", 1)])
        h.clock.advance(300)
        self.assertEqual(sorted(e["client"] for e in h.audit.of("close")), ["alice", "bob"])

    def test_revoked_during_the_knock_opens_nothing(self):
        h = Harness(self, on_success="/bin/echo", on_close="/bin/true", open_duration=300)
        line, proto, transport, _ = h.handshake()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        transport.clear()
        h.server.revoke("alice")
        for port in h.files["alice"].knock(grant.index):
            h.hit(IP, port)
        self.assertEqual(transport.value(), b"FAIL revoked\n")
        self.assertEqual(h.runner.calls, [], "no on-success")
        self.assertEqual(h.audit.of("fail")[-1]["reason"], "revoked")
        self.assertEqual(h.store.pending_closes(), [])

    def test_a_knock_in_progress_ends_when_its_file_is_revoked(self):
        """
        At once, not when its window runs out: the server's one place is
        free for the others.  The client, which knocks every port it was
        granted before it reads the verdict, locks nobody out with the rest
        of its knock, whatever the scope; once that knock's window is over,
        a stray hit from its address counts again.
        """
        for scope in ("knock", "global", "source"):
            h = Harness(self, clients=("alice", "bob"), lockout_scope=scope)
            line, proto, transport, _ = h.handshake()
            grant = hs.parse_reply(line.rstrip(b"\n"))
            transport.clear()
            h.server.revoke("alice")
            self.assertEqual(transport.value(), b"FAIL revoked\n", scope)
            self.assertEqual([e["reason"] for e in h.audit.of("fail")], ["revoked"])
            self.assertEqual(h.server.tracker.slots(), [])
            # One address, one knock: another client behind it waits for the
            # window of the knock still being knocked there.
            line, *_ = h.handshake("bob")
            self.assertTrue(line.startswith(b"BUSY "), (scope, line))
            for port in h.files["alice"].knock(grant.index):
                h.hit(IP, port)
            self.assertEqual(h.server.tracker.lockouts(), {}, scope)
            line, *_ = h.handshake("bob", ip="192.0.2.30")
            self.assertTrue(line.startswith(b"GRANT "), (scope, line))
            for port in h.files["bob"].knock(hs.parse_reply(line.rstrip(b"\n")).index):
                h.hit("192.0.2.30", port)
            self.assertEqual(h.server.tracker.lockouts(), {}, scope)
            h.clock.advance(h.config.knock_window)
            h.hit(IP, h.files["alice"].knock(grant.index)[0])
            self.assertIn(GLOBAL if scope == "global" else IP, h.server.tracker.lockouts(), scope)

    def test_revoked_while_on_success_runs_closes_the_door_again(self):
        h = Harness(self, on_success="/bin/echo", on_close="/bin/true", open_duration=300)
        h.runner.hold = True
        _, transport = h.knock()
        self.assertEqual(h.runner.calls[-1][0], ["/bin/echo", IP, "alice", "1"])
        h.server.revoke("alice")
        h.runner.finish(0)  # on-success opened the door
        self.assertEqual(transport.value(), b"FAIL revoked\n")
        self.assertEqual(h.runner.calls[-1][0], ["/bin/true", IP, "alice", "1"])
        h.runner.finish(0)
        self.assertEqual(h.store.pending_closes(), [])
        self.assertEqual(h.server.closes.open_doors(), [])

    def test_a_client_that_hangs_up_while_on_success_runs_is_not_revoked(self):
        """
        The client leaves (timeout, Ctrl-C, a lost network) while on-success
        opens its door: the door stays open to its time; nothing says
        revoked, and no other door of the client is touched.
        """
        h = Harness(self, on_success="/bin/echo", on_close="/bin/true", open_duration=300)
        h.knock(ip="192.0.2.20")  # another door of alice, open
        h.runner.hold = True
        line, proto, _, _ = h.handshake()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        for port in h.files["alice"].knock(grant.index):
            h.hit(IP, port)
        self.assertEqual(h.runner.calls[-1][0], ["/bin/echo", IP, "alice", "2"])
        proto.connectionLost(Failure(ConnectionDone()))  # the client is gone
        h.runner.finish(0)
        self.assertEqual([e.get("reason") for e in h.audit.of("fail")], [])
        self.assertEqual(h.audit.of("close"), [])
        self.assertEqual(sorted(ip for ip, _, _ in h.server.closes.open_doors()),
                         ["192.0.2.10", "192.0.2.20"])

    def test_revoked_while_a_close_of_its_address_runs_opens_nothing(self):
        h = Harness(self, on_success="/bin/echo", on_close="/bin/true", open_duration=300)
        h.knock()
        h.runner.hold = True
        h.clock.advance(300)  # knock 1's close runs (held)
        _, transport = h.knock()  # knock 2 waits for it
        h.server.revoke("alice")
        h.runner.finish(0)  # the close ends: knock 2 must not open now
        self.assertEqual(transport.value(), b"FAIL revoked\n")
        self.assertNotIn(["/bin/echo", IP, "alice", "2"], [argv for argv, _ in h.runner.calls])

    def test_a_revocation_read_from_the_fleet_closes_doors_here(self):
        h = Harness(self, on_success="/bin/echo", on_close="/bin/true", open_duration=300)
        h.knock()
        state = h.store.client("alice")
        h.server.revocations_read({"alice": state.secret_id})
        self.assertEqual([e["ok"] for e in h.audit.of("close")], [True])
        h.server.revocations_read({"alice": state.secret_id})  # read again: nothing more
        self.assertEqual(len(h.audit.of("close")), 1)

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
