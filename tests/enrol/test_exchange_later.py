"""
An enrolment on the central port with a store that answers later (a
fleet's database, L{tests.daemon.test_later_store.LaterStore}), and a line
that comes before the state has answered: the exchange ends C{ERROR
out-of-turn}, and no try is spent on it unless it counts as a failed
attempt of its source (so one address cannot void an invitation without
being locked out).
"""

import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from knocker.enrol import keys as k
from tests.daemon.test_later_store import later_harness
from tests.helpers.harness import Harness

CODE = "acorn-acorn-acorn"
GUESS = "apple-apple-apple"
IP = "198.51.100.7"


class PipelinedEnrolTests(SynchronousTestCase):
    def setUp(self):
        self.h, self.later = later_harness(self)
        self.slot = self.h.store.add_invitation("alice", CODE, 1e12, 3, 0)
        self.later.held = True

    def enrol_then(self, line, answered_first=0):
        """
        ENROLL, C{answered_first} of the state's answers, then C{line}, then
        the rest of them; returns what the client was sent.
        """
        proto, transport = self.h.connect(IP)
        message = k.b64(k.Pake(self.slot, GUESS).message).encode("ascii")
        proto.dataReceived(b"KNOCKER/1 ENROLL %d %s\n" % (self.slot, message))
        for _ in range(answered_first):
            self.later.release()
        proto.dataReceived(line)
        while self.later.waiting:
            self.later.release()
        proto.connectionLost(None)
        return transport.value()

    def test_a_line_before_the_lookup_takes_no_try(self):
        for _ in range(3):
            self.assertEqual(self.enrol_then(b"X\n"), b"ERROR out-of-turn\n")
        found = self.h.store.invitation(self.slot)
        self.assertEqual((found.attempts, found.state(1)), (0, "open"))

    def test_a_line_while_the_try_is_taken_is_a_failed_attempt(self):
        """The reviewer's case: before, the try was spent and nobody locked out."""
        self.assertEqual(self.enrol_then(b"X\n", answered_first=1), b"ERROR out-of-turn\n")
        self.assertEqual(self.h.store.invitation(self.slot).attempts, 1)
        self.assertIn(IP, self.h.tracker_lockouts())
        self.assertEqual([(e["outcome"], e["attempts"]) for e in self.h.audit.of("enrol")],
                         [("dropped", 1)])
        self.assertTrue(self.enrol_then(b"").startswith(b"LOCKED "),
                        "the source's next try is refused before any is taken")
        self.assertEqual(self.h.store.invitation(self.slot).attempts, 1)

    def test_a_hang_up_while_the_try_is_taken_is_a_failed_attempt(self):
        proto, transport = self.h.connect(IP)
        message = k.b64(k.Pake(self.slot, GUESS).message).encode("ascii")
        proto.dataReceived(b"KNOCKER/1 ENROLL %d %s\n" % (self.slot, message))
        self.later.release()  # the lookup; the try is being taken
        proto.connectionLost(None)
        self.later.release()
        self.assertEqual(self.h.store.invitation(self.slot).attempts, 1)
        self.assertIn(IP, self.h.tracker_lockouts())


class TimeoutWhileWaitingTests(SynchronousTestCase):
    def test_the_state_answering_after_the_timeout_sends_nothing_more(self):
        """
        handshake-timeout while the state has not answered: ERROR
        handshake-timeout is the last line; the late answer writes
        nothing after it on the closing connection.
        """
        h, later = later_harness(self)
        slot = h.store.add_invitation("alice", CODE, 1e12, 3, 0)
        later.held = True
        proto, transport = h.connect(IP)
        message = k.b64(k.Pake(slot, GUESS).message).encode("ascii")
        proto.dataReceived(b"KNOCKER/1 ENROLL %d %s\n" % (slot, message))
        h.clock.advance(h.config.handshake_timeout)
        self.assertEqual(transport.value(), b"ERROR handshake-timeout\n")
        while later.waiting:
            later.release()
        self.assertEqual(transport.value(), b"ERROR handshake-timeout\n")


class StateErrorTests(SynchronousTestCase):
    """
    The state failing in the middle of an enrolment (SQLite busy past its
    timeout while a command holds the lock): the client hears ERROR
    server-error, the connection closes, and the daemon serves on.
    """

    def test_a_state_error_is_answered_server_error(self):
        h = Harness(self)
        slot = h.store.add_invitation("alice", CODE, 1e12, 3, 0)

        def busy(*args):
            raise sqlite3.OperationalError("database is locked")

        self.patch(h.store, "invitation_attempt", busy)
        proto, transport = h.connect(IP)
        message = k.b64(k.Pake(slot, GUESS).message).encode("ascii")
        proto.dataReceived(b"KNOCKER/1 ENROLL %d %s\n" % (slot, message))
        self.assertEqual(transport.value(), b"ERROR server-error\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        proto.connectionLost(None)
        self.assertEqual(h.store.invitation(slot).attempts, 0)
