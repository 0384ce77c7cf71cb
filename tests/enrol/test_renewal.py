"""
Renewal against the coordinator on a L{Clock} (the harness: real SQLite
state and book, in-memory transport): the pending -> current state
machine, repeated offers, confirmation by the new secret, the old secret
refused after it, crash recovery, tampering; then a hypothesis state
machine that cuts the exchange everywhere.
"""

import os

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from twisted.trial.unittest import TestCase

from knocker.core import handshake as hs
from knocker.enrol import keys as k
from knocker.enrol import renewal
from knocker.files import write_private
from knocker.state.interface import secret_id
from tests.enrol.renewing import RenewingClient, _Conn
from tests.helpers.harness import Harness


def _new_file() -> str:
    import random
    from datetime import datetime, timezone

    from knocker.core.knockgen import format_knockfile, generate

    return format_knockfile(generate("alice", tuple(range(20000, 20020)), 3, 3,
                                     random.Random(7), bytes(range(32, 64)),
                                     datetime(2026, 1, 1, tzinfo=timezone.utc)))


NEW_FILE = _new_file()


def renewing(testcase, knocks=9, **config):
    harness = Harness(testcase, knocks=knocks, **config)
    path = os.path.join(harness.dir, "client", "alice.knock")
    os.makedirs(os.path.dirname(path))
    write_private(path, open(os.path.join(harness.dir, "alice.knock")).read())
    return harness, RenewingClient(harness, path)


class PendingToCurrentTests(TestCase):
    def test_no_offer_before_renew_at(self):
        h, c = renewing(self)
        for _ in range(5):
            self.assertEqual(c.knock(), hs.Open())
        self.assertEqual(h.audit.of("renew-offer"), [])
        self.assertIsNone(h.store.pending("alice"))

    def test_the_last_knock_is_offered_a_renewal(self):
        """
        A file whose every offer was cut is still offered one on its last
        knock, and the new file then knocks where the old one would be
        EXHAUSTED.  A single-use file stays single-use unless renew-at is
        set: a third of one knock is none.
        """
        for renew_at, offered in ((None, 0), (1, 1)):
            h, c = renewing(self, knocks=1, **({} if renew_at is None else {"renew_at": renew_at}))
            self.assertEqual(c.knock(), hs.Open())
            self.assertEqual((c.renewed, len(h.audit.of("renew-offer"))), (offered, offered))
            self.assertEqual(c.knock(), hs.Open() if offered else hs.Exhausted())

        h, c = renewing(self, knocks=9)  # due from 3 left: knocks 6, 7, 8, 9
        for _ in range(5):
            self.assertEqual(c.knock(), hs.Open())
        for _ in range(3):
            self.assertEqual(c.knock(cut="before-accept"), hs.Open())
        self.assertEqual((c.renewed, len(h.audit.of("renew-offer"))), (0, 3))
        self.assertEqual(c.knock(), hs.Open())  # the ninth and last
        self.assertEqual([e["left"] for e in h.audit.of("renew-offer")], [3, 2, 1, 0])
        self.assertEqual(c.renewed, 1)
        self.assertEqual(c.knock(), hs.Open(), "the new file knocks")
        self.assertEqual(c.knock(c.previous()), hs.Denied(), "the old one is replaced")

    def test_an_open_reads_the_state_again_only_when_a_renewal_may_be_due(self):
        """
        Whether a renewal is due is known at the GRANT: until it is, the
        OPEN and the close after it wait for no state read.
        """
        h, c = renewing(self)  # 9 knocks: due from 3 left, after knock 6
        reads = []
        real = h.store.client
        self.patch(h.store, "client", lambda client: reads.append(client) or real(client))
        for _ in range(5):
            self.assertEqual(c.knock(), hs.Open())
        self.assertEqual(len(reads), 5)  # each PROOF's, nothing at OPEN
        self.assertEqual(c.knock(), hs.Open())
        self.assertGreater(len(reads), 6)  # knock 6: its PROOF's, then the OPEN's, ...
        self.assertEqual(len(h.audit.of("renew-offer")), 1)

    def test_a_thief_of_the_old_file_takes_the_renewal(self):
        """
        docs/protocol.md: no man in the middle needed.  A copy of the file
        knocked from elsewhere down to renew-at takes the offer; the
        owner's file is DENIED after, and the audit names the thief's
        address.  With renew-at = 0 nothing is offered.
        """
        from tests.enrol.renewing import RenewingClient

        for renew_at, taken in ((None, True), (0, False)):
            with self.subTest(renew_at=renew_at):
                h, owner = renewing(self, **({} if renew_at is None else {"renew_at": renew_at}))
                stolen = os.path.join(h.dir, "thief.knock")
                write_private(stolen, owner.text())
                thief = RenewingClient(h, stolen, ip="198.51.100.66")
                for _ in range(6):
                    self.assertEqual(thief.knock(), hs.Open())
                self.assertEqual(thief.renewed, 1 if taken else 0)
                self.assertEqual(owner.knock(), hs.Denied() if taken else hs.Open())
                if taken:
                    self.assertEqual([(e["ip"], e["by"]) for e in h.audit.of("renew-confirm")],
                                     [("198.51.100.66", "confirm")])
                    self.assertEqual([e["ip"] for e in h.audit.of("renew-offer")],
                                     ["198.51.100.66"])

    def test_a_knock_with_the_replaced_file_is_denied_without_a_lockout(self):
        """
        Two knocks of the client's own at once, the second with the file
        as read before the first renewed it: DENIED (audited
        C{superseded}), but no failed attempt, so no lockout of the
        client's address, or, whatever the lockout scope, of the server.
        """
        for scope in ("source", "global", "knock"):
            with self.subTest(scope=scope):
                h, c = renewing(self, lockout_scope=scope)
                for _ in range(6):
                    self.assertEqual(c.knock(), hs.Open())
                self.assertEqual(c.renewed, 1)
                self.assertEqual(c.knock(c.previous()), hs.Denied())
                self.assertEqual(h.audit.of("denied")[-1]["reason"], "superseded")
                self.assertEqual(h.tracker_lockouts(), {})
                self.assertEqual(c.knock(), hs.Open(), "the new file knocks at once")
                stranger = os.path.join(h.dir, "stranger.knock")
                write_private(stranger, c.text().replace(c.secret().hex(), "ab" * 32))
                self.assertEqual(c.knock(stranger), hs.Denied(), "any other secret")
                self.assertEqual(h.audit.of("denied")[-1]["reason"], "bad-proof")
                self.assertNotEqual(h.tracker_lockouts(), {}, "is a failed attempt")

    def test_the_replaced_file_is_superseded_only_for_a_while(self):
        """
        Not a lasting pass from lockouts for whoever holds the old file
        (FILE.prev stays on disk): past SUPERSEDED_GRACE, or once the
        client's file is replaced again (generate --force), the old file's
        proof is a bad proof, a failed attempt, like any other.
        """
        from knocker.admin.clients import generate_client
        from knocker.daemon.coordinator import SUPERSEDED_GRACE

        for later in ("grace", "regenerated"):
            with self.subTest(later=later):
                h, c = renewing(self)
                for _ in range(6):
                    c.knock()
                self.assertEqual(c.renewed, 1)
                if later == "grace":
                    h.clock.advance(SUPERSEDED_GRACE + 1)
                else:
                    generate_client(h.config, "alice", 5, 3, os.path.join(h.dir, "again.knock"),
                                    force=True)
                self.assertEqual(c.knock(c.previous()), hs.Denied())
                self.assertEqual(h.audit.of("denied")[-1]["reason"], "bad-proof")
                self.assertNotEqual(h.tracker_lockouts(), {})

    def test_superseded_while_the_promotion_is_answered(self):
        """
        A fleet's database commits the promotion and answers later; the
        client's other knock may be judged in between, against the new
        file already.  Its proof with the old file is superseded then too.
        """
        from twisted.internet.defer import Deferred

        h, c = renewing(self)
        real, answers = h.store.promote, []

        def committed_answered_later(client, wanted_id):
            answers.append((Deferred(), real(client, wanted_id)))
            return answers[-1][0]

        self.patch(h.store, "promote", committed_answered_later)
        for _ in range(6):
            c.knock()
        self.assertEqual(len(answers), 1, "the renewal's CONFIRM promoted it")
        self.assertEqual(c.knock(c.previous()), hs.Denied())
        self.assertEqual(h.audit.of("denied")[-1]["reason"], "superseded")
        self.assertEqual(h.tracker_lockouts(), {})

    def test_a_renewal_proven_by_a_knock_supersedes_too(self):
        """The CONFIRM lost, the new file's first PROOF promotes it: the same."""
        h, c = renewing(self)
        for _ in range(5):
            c.knock()
        c.knock(cut="confirm-lost")
        self.assertIsNotNone(h.store.pending("alice"))
        old = c.previous()
        self.assertEqual(c.knock(), hs.Open())
        self.assertEqual([e["by"] for e in h.audit.of("renew-confirm")], ["proof"])
        self.assertEqual(c.knock(old), hs.Denied())
        self.assertEqual(h.audit.of("denied")[-1]["reason"], "superseded")
        self.assertEqual(h.tracker_lockouts(), {})

    def test_offer_then_explicit_confirmation(self):
        h, c = renewing(self)
        old = c.secret()
        for _ in range(6):
            self.assertEqual(c.knock(), hs.Open())
        self.assertEqual(c.renewed, 1)
        self.assertEqual([e["left"] for e in h.audit.of("renew-offer")], [3])
        new = c.secret()
        self.assertNotEqual(new, old)
        self.assertEqual(c.secret(c.previous()), old, "the old file kept as FILE.prev")
        self.assertEqual(os.stat(c.path).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(c.previous()).st_mode & 0o777, 0o600)
        self.assertEqual([e["by"] for e in h.audit.of("renew-confirm")], ["confirm"])
        self.assertIsNone(h.store.pending("alice"))
        self.assertEqual(h.store.client("alice").secret_id, secret_id(new))
        self.assertEqual(c.knock(c.previous()), hs.Denied(), "the old secret refused now")
        h.clock.advance(3600)
        self.assertEqual(c.knock(), hs.Open())
        self.assertEqual(c.granted[-1], (new, 1), "new numbers from 1 under the new secret")

    def test_confirmation_lost_then_proven_by_the_next_knock(self):
        h, c = renewing(self)
        old = c.secret()
        for _ in range(5):
            c.knock()
        self.assertEqual(c.knock(cut="confirm-lost"), hs.Open())
        new = c.secret()
        self.assertNotEqual(new, old, "written before confirming")
        pending = h.store.pending("alice")
        self.assertEqual(pending.secret_id, secret_id(new), "pending until proven")
        self.assertEqual(h.store.client("alice").secret_id, secret_id(old))
        self.assertEqual(c.knock(), hs.Open())
        self.assertEqual(c.granted[-1], (new, 1))
        self.assertEqual([e["by"] for e in h.audit.of("renew-confirm")], ["proof"])
        self.assertIsNone(h.store.pending("alice"))
        self.assertEqual(c.knock(c.previous()), hs.Denied(), "the old secret refused now")

    def test_both_secrets_work_while_pending(self):
        h, c = renewing(self)
        for _ in range(5):
            c.knock()
        c.knock(cut="confirm-lost")
        self.assertEqual(c.knock(c.previous(), cut="before-accept"), hs.Open(),
                         "the old one, still current")
        self.assertEqual(c.granted[-1][1], 7)
        self.assertEqual(c.knock(), hs.Open(), "the new one, proving itself")

    def test_repeated_offers_resend_the_same_generation(self):
        h, c = renewing(self)
        for _ in range(5):
            c.knock()
        c.knock(cut="before-accept")
        first = h.store.pending("alice")
        self.assertIsNotNone(first)
        c.knock(cut="mid-file")
        c.knock(cut="confirm-lost")
        self.assertEqual(h.store.pending("alice"), first)
        self.assertEqual(secret_id(c.secret()), first.secret_id)
        self.assertEqual([e["new"] for e in h.audit.of("renew-offer")], [True, False, False])

    def test_pending_survives_a_restart(self):
        h, c = renewing(self)
        for _ in range(5):
            c.knock()
        c.knock(cut="confirm-lost")
        h.restart()
        self.assertEqual(c.knock(), hs.Open())
        self.assertEqual(len(h.audit.of("renew-confirm")), 1)

    def test_crash_between_state_and_file_promotion(self):
        """
        The state promoted, the server's copy not yet renamed: the book
        finishes the promotion at the next handshake.
        """
        h, c = renewing(self)
        for _ in range(5):
            c.knock()
        c.knock(cut="confirm-lost")
        self.assertTrue(h.store.promote("alice", secret_id(c.secret())))
        h.restart()
        self.assertEqual(c.knock(), hs.Open())
        self.assertEqual(c.granted[-1], (c.secret(), 1))
        self.assertFalse(os.path.exists(h.book.pending_path("alice")))

    def test_exhausted_without_renewing(self):
        h, c = renewing(self, renew_at=0)
        for _ in range(9):
            self.assertEqual(c.knock(), hs.Open())
        self.assertEqual(c.knock(), hs.Exhausted())
        self.assertEqual(h.audit.of("renew-offer"), [])

    def test_a_client_that_never_takes_the_offer(self):
        h, c = renewing(self)
        for _ in range(9):
            self.assertEqual(c.knock(cut="before-accept"), hs.Open())
        self.assertEqual(c.knock(), hs.Exhausted())
        # Offered at every knock from renew-at down, the last one included.
        self.assertEqual([e["left"] for e in h.audit.of("renew-offer")], [3, 2, 1, 0])

    def test_garbage_instead_of_accept(self):
        h, c = renewing(self)
        for _ in range(5):
            c.knock()
        line, proto, transport, nonce = h.handshake()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        transport.clear()
        for port in h.files["alice"].knock(grant.index):
            h.hit("192.0.2.10", port)
        self.assertTrue(transport.value().startswith(b"OPEN\nOFFER "))
        transport.clear()
        proto.dataReceived(b"ACCEPT nonsense\n")
        self.assertEqual(transport.value(), b"ERROR malformed\n")
        self.assertTrue(transport.disconnecting)

    def test_a_failing_renewal_leaves_a_plain_open(self):
        h, c = renewing(self)
        for _ in range(5):
            c.knock()

        def broken(client):
            raise OSError("disk on fire")

        h.store.pending = broken
        line, proto, transport, nonce = h.handshake()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        transport.clear()
        for port in h.files["alice"].knock(grant.index):
            h.hit("192.0.2.10", port)
        self.assertEqual(transport.value(), b"OPEN\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_offer_unanswered_is_closed(self):
        h, proto, transport = self.offered(handshake_timeout=2)
        self.assertFalse(transport.disconnecting)
        h.clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def offered(self, **config):
        """A knock that ends in OPEN and an OFFER: the harness, protocol, transport."""
        h, c = renewing(self, **config)
        for _ in range(5):
            c.knock()
        line, proto, transport, nonce = h.handshake()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        for port in h.files["alice"].knock(grant.index):
            h.hit("192.0.2.10", port)
        self.assertIn(b"OFFER", transport.value())
        transport.clear()
        return h, proto, transport

    def test_a_renewal_whose_client_stops_reading_is_cut(self):
        """
        A close waits for what is written to go out; a client that stops
        reading would hold its place (a granted knock never gives way) for
        ever.  Past the exchange's time the connection is cut.
        """
        from knocker.daemon.central import CLOSE_GRACE

        h, proto, transport = self.offered(handshake_timeout=2)
        h.clock.advance(2)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        h.clock.advance(CLOSE_GRACE)
        self.assertTrue(transport.disconnected, "cut")

    def test_an_over_long_line_ends_the_renewal(self):
        """
        After OPEN the knock's rules are done, but a line past the limit
        still gets ERROR and a close: no buffer grows with what is sent.
        """
        h, proto, transport = self.offered()
        proto.dataReceived(b"A" * (hs.MAX_LINE + 100))
        self.assertEqual(transport.value(), b"ERROR line-too-long\n")
        self.assertTrue(transport.disconnecting)
        proto.dataReceived(b"B" * 65536)
        self.assertEqual(proto._buffer, b"", "nothing more kept")


class RevokedWhileRenewingTests(TestCase):
    """
    A revocation names the file current when it is made; a renewal pending
    then must not bring the client back.
    """

    def revoke_before_confirm(self, revoke):
        """
        Knock down to renew-at, take the offer, and C{revoke()} just before
        the CONFIRM goes out; returns the harness, the client, the old
        secret and the path of a copy of the renewed file.
        """
        h, c = renewing(self)
        old = c.secret()
        for _ in range(5):
            c.knock()
        renewed = os.path.join(h.dir, "renewed.knock")
        original = _Conn.send

        def send(conn, line):
            if line.startswith(b"CONFIRM "):
                write_private(renewed, h.book.pending_text("alice"))
                revoke(h)
            return original(conn, line)

        self.patch(_Conn, "send", send)
        self.assertEqual(c.knock(), hs.Open(), "the OPEN stands")
        return h, c, old, renewed

    def test_revoked_between_offer_and_confirm(self):
        h, c, old, renewed = self.revoke_before_confirm(
            lambda h: self.assertTrue(h.server.revoke("alice")))
        self.assertEqual(len(c.refused), 1)
        self.assertIn("refused it at CONFIRM (this client is revoked)", c.refused[0])
        self.assertEqual(h.audit.of("renew-confirm"), [])
        self.assertEqual([(e["client"], e["reason"]) for e in h.audit.of("renew-refused")],
                         [("alice", "revoked")])
        self.assertIsNone(h.store.pending("alice"))
        self.assertEqual(h.store.client("alice").secret_id, secret_id(old))
        self.assertEqual(c.knock(renewed), hs.Denied(), "the renewed file")
        c.ip = "192.0.2.11"  # the first source is locked out now
        self.assertEqual(c.knock(c.previous()), hs.Denied(), "the revoked one")
        self.assertEqual([e["reason"] for e in h.audit.of("denied")], ["revoked", "revoked"])

    def test_revoked_elsewhere_between_offer_and_confirm(self):
        """
        Revoked in the state by another gateway of a fleet, before this
        daemon has heard of it: the state refuses the promotion.
        """
        h, c, old, renewed = self.revoke_before_confirm(lambda h: h.store.revoke("alice"))
        self.assertEqual(h.audit.of("renew-confirm"), [])
        self.assertIsNone(h.store.pending("alice"))
        self.assertEqual(c.knock(renewed), hs.Denied(), "the renewed file")
        h.server.revocations_read(h.store.revoked())
        c.ip = "192.0.2.11"
        self.assertEqual(c.knock(c.previous()), hs.Denied(), "the revoked one")

    def test_revoked_while_the_confirmation_is_lost(self):
        h, c = renewing(self)
        for _ in range(5):
            c.knock()
        c.knock(cut="confirm-lost")
        self.assertIsNotNone(h.store.pending("alice"))
        self.assertTrue(h.server.revoke("alice"))
        self.assertEqual(c.knock(), hs.Denied(), "the renewed file proves nothing now")
        c.ip = "192.0.2.11"
        self.assertEqual(c.knock(c.previous()), hs.Denied())
        self.assertEqual(h.audit.of("renew-confirm"), [])


class RenewalCryptoTests(TestCase):
    def exchange(self, old_secret, client_secret=None):
        server = renewal.RenewServer("alice", old_secret, "ab" * 32, NEW_FILE)
        offer = server.start()[0].line.rstrip(b"\n")
        private = renewal.X25519PrivateKey.generate()
        public = renewal._raw(private.public_key())
        sends = server.receive(b"ACCEPT " + k.b64(public).encode())
        sealed = k.unb64("".join(s.line[5:].decode().strip() for s in sends[1:]))
        server_public = k.unb64(offer[6:].decode())
        key = renewal.renewal_key(private.exchange(
            renewal.X25519PublicKey.from_public_bytes(server_public)),
            client_secret or old_secret, "alice", "ab" * 32, server_public, public)
        return key, sealed, sends

    def test_round_trip(self):
        key, sealed, sends = self.exchange(bytes(32))
        self.assertEqual(k.unseal(key, sealed, renewal.associated("alice")), NEW_FILE.encode())
        self.assertFalse(sends[-1].close, "the client's CONFIRM may follow")

    def test_confirm_needs_the_new_secret(self):
        from knocker.core.knockfile import parse_header

        new_secret = parse_header(NEW_FILE, "x").secret
        for secret, done, reply, promoted in (
                (bytes(32), True, b"ERROR bad-proof\n", []),
                (new_secret, True, b"CONFIRMED\n", [secret_id(new_secret)]),
                (new_secret, False, b"ERROR server-error\n", [secret_id(new_secret)])):
            calls = []

            def promote(wanted_id, done=done, calls=calls):
                calls.append(wanted_id)
                return done

            server = renewal.RenewServer("alice", bytes(32), "ab" * 32, NEW_FILE, promote)
            server.start()
            public = renewal._raw(renewal.X25519PrivateKey.generate().public_key())
            server.receive(b"ACCEPT " + k.b64(public).encode())
            mac = renewal.confirm_mac(secret, "alice", "ab" * 32)
            sends = server.receive(b"CONFIRM " + mac.encode())
            self.assertEqual([s.line for s in sends], [reply])
            self.assertTrue(sends[0].close)
            self.assertEqual(calls, promoted)

    def test_file_too_large_not_sent(self):
        from unittest import mock

        server = renewal.RenewServer("alice", bytes(32), "ab" * 32, NEW_FILE)
        server.start()
        public = renewal._raw(renewal.X25519PrivateKey.generate().public_key())
        with mock.patch.object(k, "MAX_DATA_LINES", 1):
            sends = server.receive(b"ACCEPT " + k.b64(public).encode())
        self.assertEqual([s.line for s in sends], [b"ERROR server-error\n"])

    def test_endless_renewal_refused(self):
        from knocker.client.knock import run_blocking
        from knocker.core.knockfile import KnockFileText

        class Endless:
            reads = 0

            def send(self, line):
                pass

            async def readline(self, timeout):
                self.reads += 1
                return b"RENEWAL %d" % (k.MAX_DATA_LINES + 1) if self.reads == 1 else b"DATA AAAA"

        conn = Endless()
        offer = b"OFFER " + k.b64(renewal._raw(
            renewal.X25519PrivateKey.generate().public_key())).encode()
        with self.assertRaises(k.VerifyError) as caught:
            run_blocking(renewal.take_offer(conn, offer, None, KnockFileText(NEW_FILE, "x"),
                                            "ab" * 32, 5.0))
        self.assertIn("more than", str(caught.exception))
        self.assertEqual(conn.reads, 1)

    def test_without_the_old_secret_nothing(self):
        """
        A man in the middle of the X25519 exchange who lacks the current
        secret derives another key: the AEAD refuses.
        """
        key, sealed, _ = self.exchange(bytes(32), client_secret=bytes([1]) * 32)
        self.assertRaises(k.VerifyError, k.unseal, key, sealed, renewal.associated("alice"))

    def test_tampered_ciphertext_refused(self):
        key, sealed, _ = self.exchange(bytes(32))
        for n in (0, len(sealed) // 2, len(sealed) - 1):
            bad = bytearray(sealed)
            bad[n] ^= 0x40
            self.assertRaises(k.VerifyError, k.unseal, key, bytes(bad),
                              renewal.associated("alice"))

    def offered(self):
        """
        A client knocked until its file is due for renewal, then once more
        by hand up to the server's OFFER: C{(client, its file's text, the
        OFFER line, proto, transport, nonce)}, the offer not yet taken.
        """
        h, c = renewing(self)
        for _ in range(5):
            c.knock()
        before = c.text()
        line, proto, transport, nonce = h.handshake(secret=c.secret())
        grant = hs.parse_reply(line.rstrip(b"\n"))
        transport.clear()
        for port in h.files["alice"].knock(grant.index):
            h.hit("192.0.2.10", port)
        lines = transport.value().split(b"\n")
        transport.clear()
        return c, before, lines[1], proto, transport, nonce

    def test_a_file_replaced_during_the_knock_is_left_alone(self):
        """
        Two knocks at once with one file: the first to be renewed replaces
        it; the other's renewal, sealed for the secret it knocked with,
        must not overwrite the new file (nor make it FILE.prev).
        """
        c, before, offer, proto, transport, nonce = self.offered()
        from knocker.client.knock import run_blocking
        from knocker.core.knockfile import KnockFileText
        from tests.enrol.renewing import _Config, _Conn

        replaced = before.replace(c.secret().hex(), "5a" * 32)
        self.assertNotEqual(replaced, before)
        write_private(c.path, replaced)  # renewed meanwhile by the other knock
        conn = _Conn(proto, transport, None, lambda line: line)
        with self.assertRaises(ValueError) as caught:
            run_blocking(renewal.take_offer(conn, offer, _Config(c.path),
                                            KnockFileText(before, c.path), nonce, 5.0))
        self.assertIn("changed during the knock", str(caught.exception))
        self.assertEqual(c.text(), replaced, "the other knock's file stays")
        self.assertIsNone(c.previous())

    def test_tampered_offer_leaves_the_file(self):
        c, before, offer, proto, transport, nonce = self.offered()
        from knocker.client.knock import run_blocking
        from knocker.core.knockfile import KnockFileText
        from tests.enrol.renewing import _Config, _Conn

        tampered = []

        def flip(line):
            if line.startswith(b"DATA ") and not tampered:
                line = line[:15] + (b"B" if line[15:16] != b"B" else b"C") + line[16:]
                tampered.append(line)
            return line

        conn = _Conn(proto, transport, None, flip)
        kf = KnockFileText(before, c.path)
        with self.assertRaises(k.VerifyError) as caught:
            run_blocking(renewal.take_offer(conn, offer, _Config(c.path), kf, nonce, 5.0))
        self.assertIn("does not verify", str(caught.exception))
        self.assertEqual(c.text(), before, "the current file untouched")
        self.assertIsNone(c.previous())
        self.assertEqual(len(tampered), 1)


CUTS = st.sampled_from([None, None, "before-accept", "after-accept", "mid-file",
                        "before-write", "between-writes", "confirm-lost"])


class RenewalMachine(RuleBasedStateMachine):
    """
    Knocks with renewals cut at every step, server restarts (and a crash
    mid-promotion); the client always knocks OPEN with its file, as
    C{knocker knock} does (it never falls back to the previous one), until
    EXHAUSTED at worst, and no (secret, number) is granted twice.
    """

    case = None

    def __init__(self):
        super().__init__()
        self.harness, self.client = renewing(self.case, knocks=6)
        self.exhausted = False

    @rule(cut=CUTS)
    def knock(self, cut):
        if self.exhausted:
            return
        verdict = self.client.knock(cut=cut)
        if verdict == hs.Exhausted():
            self.exhausted = True
            return
        assert verdict == hs.Open(), verdict
        event(f"renewed {min(self.client.renewed, 3)}+ times")

    @rule()
    def restart(self):
        self.harness.restart()

    @rule()
    def crash_mid_promotion(self):
        pending = self.harness.store.pending("alice")
        if pending is not None and secret_id(self.client.secret()) == pending.secret_id:
            self.harness.store.promote("alice", pending.secret_id)
            self.harness.restart()

    @invariant()
    def never_granted_twice(self):
        granted = self.client.granted
        assert len(set(granted)) == len(granted), granted

    @invariant()
    def file_is_private(self):
        assert os.stat(self.client.path).st_mode & 0o777 == 0o600


class RenewalMachineTests(TestCase):
    timeout = 600

    def test_renewals_cut_everywhere(self):
        RenewalMachine.case = self
        run = RenewalMachine.TestCase
        run.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
        run("runTest").runTest()
