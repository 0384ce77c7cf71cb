"""
A renewed file drawn on the reactor a batch a turn (knocker.daemon.renewals):
the daemon serves between the batches, the file is a valid portknock file
for the same pool, and a file drawn for a generation replaced meanwhile is
not offered.
"""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from knocker.admin.clients import generate_client
from knocker.core.knockfile import parse_knockfile
from knocker.daemon.renewals import BATCH, RenewalDraws
from knocker.files import read_private
from knocker.state.interface import secret_id
from tests.helpers.harness import Harness

KNOCKS = 5 * BATCH + 7  # six batches: one at once, five more turns


class Turns:
    """
    A reactor's turns, one at a time: what C{callLater(0, ...)} schedules
    during a turn runs in the next (a L{Clock} would run it at once).
    """

    def __init__(self):
        self.waiting = []

    def callLater(self, delay, f, *args):
        call = Clock().callLater(delay, f, *args)  # a DelayedCall, for cancel()
        self.waiting.append(call)
        return call

    def turn(self) -> None:
        waiting, self.waiting = self.waiting, []
        for call in waiting:
            if call.active():
                call.func(*call.args)


class RenewalDrawsTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness(self, knocks=KNOCKS)
        self.turns = Turns()
        self.draws = RenewalDraws(self.h.store, self.h.book, self.turns)

    def turns_until(self, drawn) -> tuple[int, object]:
        """Run the reactor's turns one by one until C{drawn} fires."""
        results = []
        drawn.addBoth(results.append)
        turns = 0
        while not results and turns < 1000:
            self.turns.turn()
            turns += 1
        self.assertTrue(results, "never drawn")
        return turns, results[0]

    def test_a_big_file_is_drawn_a_batch_a_turn(self):
        drawn = self.draws.offer("alice", 1_800_000_000)
        turns, (text, new) = self.turns_until(drawn)
        self.assertEqual(turns, 5, "one turn of the reactor for each batch after the first")
        self.assertTrue(new)
        kf = parse_knockfile(text, "offered")
        self.assertEqual((kf.client, kf.ports_per_knock, len(kf.knocks)), ("alice", 3, KNOCKS))
        self.assertTrue(set().union(*kf.knocks) <= set(self.h.pool))
        self.assertNotEqual(kf.secret, self.h.files["alice"].secret)
        self.assertEqual(self.h.store.pending("alice").secret_id, secret_id(kf.secret))
        self.assertEqual(read_private(self.h.book.pending_path("alice")), text)
        # offered again: the same file, at once
        self.assertEqual(self.draws.offer("alice", 1_800_000_001), (text, False))

    def test_a_small_file_at_once(self):
        out = os.path.join(self.h.dir, "bob.knock")
        generate_client(self.h.config, "bob", 9, 3, out)
        self.h.book.load()
        results = []
        self.draws.offer("bob", 1_800_000_000).addCallback(results.append)
        self.assertEqual(len(parse_knockfile(results[0][0], "offered").knocks), 9)

    def test_generated_again_meanwhile_offers_nothing(self):
        drawn = self.draws.offer("alice", 1_800_000_000)
        self.turns.turn()
        # knocker generate alice --force, from another process, mid-drawing
        generate_client(self.h.config, "alice", KNOCKS, 3,
                        os.path.join(self.h.dir, "alice-again.knock"), force=True)
        _, result = self.turns_until(drawn)
        self.assertIsNone(result)
        self.assertIsNone(self.h.store.pending("alice"))
        self.assertFalse(os.path.exists(self.h.book.pending_path("alice")), "no copy left")

    def test_revoked_meanwhile_keeps_nothing(self):
        drawn = self.draws.offer("alice", 1_800_000_000)
        self.turns.turn()
        self.h.store.revoke("alice")
        _, result = self.turns_until(drawn)
        self.assertIsNone(result)
        self.assertIsNone(self.h.store.pending("alice"))
        self.assertFalse(os.path.exists(self.h.book.pending_path("alice")), "no copy left")

    def test_stopping_while_the_file_is_written_keeps_nothing(self):
        from twisted.internet.defer import Deferred

        writing = []

        def blocking(f, *args):  # a thread still writing when the daemon stops
            writing.append(Deferred())
            return writing[-1].addCallback(lambda _: f(*args))

        draws = RenewalDraws(self.h.store, self.h.book, self.turns, blocking)
        drawn = draws.offer("alice", 1_800_000_000)
        while not writing:
            self.turns.turn()
        draws.stop()
        self.h.store.close()  # as the daemon's stop does, before the thread is done
        writing[0].callback(None)
        self.assertIsNone(self.successResultOf(drawn))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_an_offer_asked_while_drawing_gets_the_same_file(self):
        first = self.draws.offer("alice", 1_800_000_000)
        second = self.draws.offer("alice", 1_800_000_000)
        _, (text, new) = self.turns_until(first)
        self.assertTrue(new)
        self.assertEqual(self.successResultOf(second), (text, False))

    def test_stopping_abandons_the_drawing_quietly(self):
        drawn = self.draws.offer("alice", 1_800_000_000)
        self.draws.stop()
        self.assertIsNone(self.successResultOf(drawn))
        self.assertIsNone(self.h.store.pending("alice"))
        self.assertEqual(self.flushLoggedErrors(), [])


class OfferAfterOpenTests(SynchronousTestCase):
    """The coordinator's offer after OPEN, with a file drawn over turns."""

    def setUp(self):
        self.h = Harness(self, knocks=KNOCKS, renew_at=KNOCKS)

    def test_the_offer_follows_the_drawing(self):
        grant, transport = self.h.knock()
        self.assertEqual(transport.value(), b"OPEN\n", "drawing: no offer yet")
        self.h.clock.advance(0)
        self.assertTrue(transport.value().startswith(b"OPEN\nOFFER "))

    def test_the_sealed_file_goes_out_in_one_write(self):
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        from knocker.core import handshake as hs
        from knocker.enrol import keys
        from knocker.enrol.renewal import _raw

        line, proto, transport, _ = self.h.handshake()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        for port in self.h.files["alice"].knock(grant.index):
            self.h.hit("192.0.2.10", port)
        self.h.clock.advance(0)
        self.assertIn(b"\nOFFER ", transport.value())
        transport.clear()
        writes = []
        write = transport.write
        transport.write = lambda data: (writes.append(data), write(data))
        public = keys.b64(_raw(X25519PrivateKey.generate().public_key())).encode()
        proto.dataReceived(b"ACCEPT " + public + b"\n")
        self.assertEqual(len(writes), 1)
        lines = writes[0].split(b"\n")[:-1]
        count = int(lines[0].split()[1])
        self.assertGreater(count, 10)
        self.assertEqual(len(lines), 1 + count)
        self.assertTrue(all(each.startswith(b"DATA ") for each in lines[1:]))

    def test_no_offer_to_a_client_revoked_while_it_was_drawn(self):
        grant, transport = self.h.knock()
        self.h.server.revoke("alice")
        self.h.clock.advance(0)
        self.assertEqual(transport.value(), b"OPEN\n")
        self.assertEqual([e for e in self.h.audit.events if e["event"] == "renew-offer"], [])
