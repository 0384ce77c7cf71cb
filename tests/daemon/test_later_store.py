"""
The coordinator and the central port with a store that answers later, as a
fleet's database does (knocker.daemon.fleet.ThreadedStore): the reply waits
for the lookup and the burn, a store that fails grants nothing, a client
that leaves meanwhile is not left holding a slot.
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from knocker.core import handshake as hs
from knocker.core.knockfile import KnockFileText
from knocker.daemon.central import DENIED_AT
from knocker.state.interface import StateError, secret_id
from tests.helpers.harness import Harness, enroll

LATER = ("client", "burn", "pending", "promote", "invitation", "invitation_attempt",
         "use_invitation")
"""What a fleet's store answers later: the knock path, and section 10's."""


class LaterStore:
    """
    The harness's store, the calls in L{LATER} answering through
    L{Deferred}s: at once (C{held=False}) or when the test fires them.
    """

    def __init__(self, store):
        self._store = store
        self.held = False
        self.waiting: list[tuple[Deferred, object]] = []
        self.broken = False

    def __getattr__(self, name):
        found = getattr(self._store, name)
        if name in LATER:
            return lambda *args: self._later(found, *args)
        return found

    def _later(self, function, *args):
        if self.broken:
            return fail(StateError("the database is gone"))
        if not self.held:
            return succeed(function(*args))
        d = Deferred()
        self.waiting.append((d, lambda: function(*args)))
        return d

    def release(self):
        """Answer the one call waiting (what it starts waits its turn)."""
        d, work = self.waiting.pop(0)
        d.callback(work())

    def prepare_offer(self, client, now):
        """As a fleet's store does: the whole drawing in its thread."""
        from knocker.enrol.renewal import prepare_offer

        return self._later(prepare_offer, self._store, self.book, client, now)


def later_harness(case, **config) -> tuple[Harness, LaterStore]:
    h = Harness(case, **config)
    later = LaterStore(h.store)
    h.server._store = later
    return h, later


class LaterStoreTests(SynchronousTestCase):

    def test_grant_through_deferreds(self):
        h, later = later_harness(self)
        line, proto, transport, nonce = h.handshake()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        self.assertEqual(grant, hs.Grant(1, 10, hs.grant_mac(h.files["alice"].secret, "alice",
                                                              nonce, 1)))
        self.assertEqual(h.store.client("alice").next_index, 2)

    def test_reply_waits_for_the_store(self):
        h, later = later_harness(self)
        later.held = True
        line, proto, transport, nonce = h.handshake()
        self.assertEqual(line, b"", "nothing before the state answered")
        later.release()  # the lookup
        later.release()  # the burn
        self.assertTrue(transport.value().startswith(b"GRANT 1 "))

    def test_store_gone_is_error_no_grant(self):
        h, later = later_harness(self)
        later.broken = True
        line, proto, transport, nonce = h.handshake()
        self.assertEqual(line, b"ERROR server-error\n")
        self.assertEqual(h.store.client("alice").next_index, 1)
        self.assertEqual(h.audit.of("error")[0]["reason"], "state")
        self.assertEqual(h.tracker_lockouts(), {}, "the server's fault locks nobody out")

    def test_other_gateway_burned_meanwhile(self):
        """
        Another gateway took the number read before the burn: this grant
        gets the next one, with that knock's ports.
        """
        h, later = later_harness(self)
        later.held = True
        line, proto, transport, nonce = h.handshake()
        later.release()  # the lookup read next = 1
        h.store.burn("alice")  # another gateway takes 1
        later.release()
        grant = hs.parse_reply(transport.value().rstrip(b"\n"))
        self.assertEqual(grant.index, 2)
        transport.clear()
        for port in h.files["alice"].knock(2):
            h.hit("192.0.2.10", port)
        self.assertEqual(h.audit.of("open")[0]["index"], 2)

    def test_generated_again_before_the_burn_grants_nothing(self):
        """
        C{knocker generate --force} commits between the lookup and the
        burn: the burn takes no number from the new counter, and no GRANT
        goes out MAC'd with the old secret.
        """
        h, later = later_harness(self)
        later.held = True
        line, proto, transport, nonce = h.handshake()
        later.release()  # the lookup: the old secret's counter
        h.store.register("alice", 5, bytes(32))  # generated again
        later.release()
        self.assertNotIn(b"GRANT", transport.value())
        self.assertEqual(h.store.client("alice").next_index, 1, "the new counter untouched")

    def test_book_changed_after_the_burn_grants_nothing(self):
        """
        The burn took a number of the proven secret, but the book holds
        another file by now: its ports are not the client's; no GRANT.
        """
        h, later = later_harness(self)
        later.held = True
        line, proto, transport, nonce = h.handshake()
        later.release()
        h.server._book.held_secret_id = lambda client: "another file"
        later.release()
        self.assertNotIn(b"GRANT", transport.value())
        self.assertEqual(h.audit.of("error")[0]["reason"], "client-file")

    def test_revoked_while_the_burn_is_in_the_database_grants_nothing(self):
        """
        A fleet: the revocation comes between the lookup and the burn's
        answer.  No GRANT (its slot would hold the server's place with no
        revocation left to end it), DENIED, and no lockout.
        """
        h, later = later_harness(self, clients=("alice", "bob"))
        later.held = True
        line, proto, transport, nonce = h.handshake()
        later.release()  # the lookup: not revoked yet
        h.server.revoke("alice")  # its own lookup waits behind the burn
        later.waiting.pop(1)[0].callback(h.store.client("alice"))  # the revoke's lookup first
        later.release()  # then the burn
        h.clock.advance(1)  # (a DENIED goes out at its fixed moment)
        self.assertEqual(transport.value(), b"DENIED\n")
        self.assertEqual(h.server.tracker.slots(), [])
        self.assertEqual((h.audit.of("denied")[-1]["reason"], h.audit.of("denied")[-1]["index"]),
                         ("revoked", 1), "the number spent is on record")
        self.assertEqual(h.tracker_lockouts(), {})

    def test_client_gone_before_the_lookup_answered_burns_nothing(self):
        h, later = later_harness(self)
        later.held = True
        line, proto, transport, nonce = h.handshake()
        proto.connectionLost(None)
        later.release()  # the lookup
        self.assertEqual(later.waiting, [], "no burn asked for")
        self.assertEqual(h.store.client("alice").next_index, 1)

    def test_client_left_while_burning(self):
        """
        A client that hangs up before the burn answers is not left with a
        slot that would time out and lock everyone out.
        """
        h, later = later_harness(self)
        later.held = True
        line, proto, transport, nonce = h.handshake()
        later.release()
        proto.connectionLost(None)
        later.release()
        self.assertEqual(h.audit.of("fail")[0]["reason"], "abandoned")
        h.clock.advance(60)
        self.assertEqual(h.tracker_lockouts(), {})
        self.assertEqual(h.store.client("alice").next_index, 2, "the number stays burned")

    def test_one_proof_a_connection(self):
        """
        A PROOF sent again while the state answers the first is dropped, as
        everything the client sends is until its answer is out (an
        immediate ERROR would tell when the judging ended): it is not
        judged again, so it burns no second number and starts no second
        lookup, and locks nobody out.
        """
        h, later = later_harness(self)
        later.held = True
        proto, transport = h.connect()
        proto.dataReceived(hs.format_hello("alice"))
        nonce = hs.parse_reply(transport.value().rstrip(b"\n")).nonce
        transport.clear()
        proof = hs.format_proof(hs.hello_mac(h.files["alice"].secret, "alice", nonce))
        proto.dataReceived(proof + proof)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(len(later.waiting), 1, "one lookup, for the first PROOF")
        while later.waiting:
            later.release()
        self.assertTrue(transport.value().startswith(b"GRANT 1 "), transport.value())
        self.assertEqual(h.store.client("alice").next_index, 2, "one number burned")
        proto.connectionLost(None)
        self.assertEqual(h.audit.of("fail")[-1]["reason"], "abandoned")
        h.clock.advance(60)
        self.assertEqual(h.tracker_lockouts(), {})

    def test_a_proof_flood_on_one_connection_costs_one_lookup(self):
        h, later = later_harness(self)
        later.held = True
        proto, transport = h.connect(ip="198.51.100.7")
        proto.dataReceived(hs.format_hello("alice"))
        proto.dataReceived(hs.format_proof("0" * 64) * 1000)
        self.assertEqual(len(later.waiting), 1)


class DeniedLookupsTests(SynchronousTestCase):
    """
    DENIED goes out at a fixed moment after the PROOF, which hides the
    work behind it only while that work is shorter.  On a fleet's database
    each lookup is a round trip, so a wrong proof for a real client and a
    proof for an unknown one must wait for as many.
    """

    def lookups_before_denied(self, client: str) -> int:
        h, later = later_harness(self)
        later.held = True
        proto, transport = h.connect()
        proto.dataReceived(hs.format_hello(client))
        challenge = hs.parse_reply(transport.value().rstrip(b"\n"))
        transport.clear()
        proto.dataReceived(hs.format_proof(hs.hello_mac(b"\x01" * 32, client, challenge.nonce)))
        lookups = 0
        while later.waiting:
            later.release()
            lookups += 1
        h.clock.advance(DENIED_AT)
        self.assertEqual(transport.value(), b"DENIED\n")
        return lookups

    def test_a_real_client_and_a_stranger_wait_for_as_many_lookups(self):
        self.assertEqual(self.lookups_before_denied("alice"),
                         self.lookups_before_denied("mallory"))


class RenewalThroughDeferredsTests(SynchronousTestCase):
    """
    Section 10 on a store that answers later: the offer after OPEN, the
    CONFIRM, and a renewed file proving itself at its first handshake
    (the pending lookup and the promotion are Deferreds).
    """

    def renewing(self):
        from tests.enrol.test_renewal import renewing

        h, c = renewing(self)
        later = LaterStore(h.store)
        later.book = h.book
        h.server._store = later
        return h, c, later

    def pending_renewal(self):
        """A renewed file written by the client, its CONFIRM lost: pending."""
        h, c, later = self.renewing()
        for _ in range(5):
            c.knock()
        self.assertEqual(c.knock(cut="confirm-lost"), hs.Open())
        return h, c, later

    def test_offer_and_confirm(self):
        h, c, later = self.renewing()
        old = c.secret()
        for _ in range(6):
            self.assertEqual(c.knock(), hs.Open())
        self.assertEqual(c.renewed, 1)
        self.assertNotEqual(c.secret(), old)
        self.assertEqual([e["by"] for e in h.audit.of("renew-confirm")], ["confirm"])
        self.assertEqual(c.knock(c.previous()), hs.Denied(), "the old secret refused now")

    def test_pending_proven_by_the_next_knock(self):
        h, c, later = self.pending_renewal()
        new = c.secret()
        self.assertEqual(h.store.pending("alice").secret_id, secret_id(new))
        self.assertEqual(c.knock(c.previous(), cut="before-accept"), hs.Open(),
                         "the old file, still current")
        self.assertEqual(c.knock(), hs.Open(), "the new file proves itself")
        self.assertEqual(c.granted[-1], (new, 1))
        self.assertEqual([e["by"] for e in h.audit.of("renew-confirm")], ["proof"])
        self.assertIsNone(h.store.pending("alice"))

    def test_burn_after_promotion_names_the_new_secret(self):
        """The burn is tied to the secret just proven: the promoted one."""
        h, c, later = self.pending_renewal()
        burns = []
        real = h.store.burn
        h.store.burn = lambda client, wanted=None: burns.append(wanted) or real(client, wanted)
        self.assertEqual(c.knock(), hs.Open())
        self.assertEqual(burns, [secret_id(c.secret())])

    def test_proof_waits_for_the_pending_lookup(self):
        h, c, later = self.pending_renewal()
        later.held = True
        proto, transport = h.connect()
        machine = hs.ClientHandshake(KnockFileText(c.text(), "alice.knock"))
        proto.dataReceived(machine.hello().line)
        step = machine.receive(transport.value().rstrip(b"\n"))
        transport.clear()
        proto.dataReceived(step.line)
        for _ in range(4):  # the client, the pending row, the promotion, the client again
            self.assertEqual(transport.value(), b"")
            later.release()
        later.release()  # the burn
        grant = hs.parse_reply(transport.value().rstrip(b"\n"))
        self.assertEqual(grant.index, 1)
        self.assertEqual(h.store.client("alice").secret_id, secret_id(c.secret()))

    def test_pending_lookup_fails_grants_nothing(self):
        h, c, later = self.pending_renewal()

        def gone(client):
            raise StateError("the database is gone")

        h.store.pending = gone
        self.assertEqual(c.knock(), hs.Error("server-error"))
        self.assertEqual(h.tracker_lockouts(), {}, "the server's fault locks nobody out")
        self.flushLoggedErrors(StateError)


WORDS = "crossover-clockwork-lantern"


class EnrolThroughDeferredsTests(SynchronousTestCase):
    """
    An enrolment on the central port when the invitation's lookups, its
    try, its use and the server's copy all answer later.
    """

    def setUp(self):
        self.h, self.later = later_harness(self)
        now = self.h.clock.seconds()
        self.slot = self.h.store.add_invitation("alice", WORDS, now + 3600, 3, now)

    def enroll(self, words=WORDS):
        return enroll(self.h, self.slot, words)

    def test_enrolled(self):
        from knocker.enrol.client import Outcome

        result = self.enroll()
        self.assertEqual(result.outcome, Outcome.ENROLLED)
        self.assertEqual(result.text, self.h.book.text("alice"))
        self.assertTrue(self.h.store.invitation(self.slot).used)

    def test_wrong_code_counts(self):
        from knocker.enrol.client import Outcome

        self.assertEqual(self.enroll("acorn-admiral").outcome, Outcome.WRONG_CODE)
        self.assertEqual(self.h.store.invitation(self.slot).attempts, 1)

    def start(self, ip="192.0.2.10"):
        """A connection that has sent its ENROLL line."""
        from knocker.enrol import keys as k

        proto, transport = self.h.connect(ip)
        pake = k.Pake(self.slot, WORDS)
        proto.dataReceived(b"KNOCKER/1 ENROLL %d %s\n" % (self.slot, k.b64(pake.message).encode()))
        return proto, transport

    def test_reply_waits_and_an_early_line_ends_it(self):
        self.later.held = True
        proto, transport = self.start()
        self.assertEqual(transport.value(), b"")
        self.later.release()  # the invitation
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b"CONFIRM 00\n")
        self.assertEqual(transport.value(), b"ERROR out-of-turn\n")
        self.assertTrue(transport.disconnecting)
        self.later.release()  # the try: counted, its answer dropped
        self.assertEqual(transport.value(), b"ERROR out-of-turn\n")
        self.assertEqual(self.h.store.invitation(self.slot).attempts, 1)

    def test_parallel_enrolls_get_at_most_the_tries(self):
        """
        Ten ENROLLs at once, each reading the invitation before any takes a
        try: only TRIES get ENROLLING (one guess each), the rest REFUSED
        void, and no try is counted past the last.
        """
        from knocker.enrol.server import TRIES

        self.later.held = True
        connections = [self.start(f"192.0.2.{20 + n}") for n in range(10)]
        while self.later.waiting:
            self.later.release()
        replies = [transport.value() for proto, transport in connections]
        enrolling = [reply for reply in replies if reply.startswith(b"ENROLLING ")]
        self.assertEqual(len(enrolling), TRIES)
        self.assertEqual(replies.count(b"REFUSED void\n"), 10 - TRIES)
        self.assertEqual(self.h.store.invitation(self.slot).attempts, TRIES)

    def test_a_hang_up_while_the_invitation_is_used_is_no_delivery(self):
        """
        The right CONFIRM came, and the client left while the state marked
        the invitation used: it is spent, and the audit log says the file
        was lost, not sent.
        """
        from knocker.enrol import keys as k

        proto, transport = self.h.connect("192.0.2.10")
        pake = k.Pake(self.slot, WORDS)
        proto.dataReceived(b"KNOCKER/1 ENROLL %d %s\n" % (self.slot, k.b64(pake.message).encode()))
        theirs = k.unb64(transport.value().split()[1].decode())
        keys = pake.finish(pake.message, theirs, theirs)
        self.later.held = True
        proto.dataReceived(b"CONFIRM " + keys.client_mac().encode() + b"\n")
        self.assertEqual(len(self.later.waiting), 1, "the use, in the state")
        proto.connectionLost(None)
        self.later.release()
        self.assertTrue(self.h.store.invitation(self.slot).used)
        self.assertNotIn(b"ENROLLED", transport.value())
        self.assertEqual([e["outcome"] for e in self.h.audit.of("enrol")], ["lost"])

    def test_one_enrolment_at_a_time_from_a_source(self):
        """
        Three ENROLLs at once from one address, each before any try is
        taken: the first goes on, the others get ERROR busy and take no
        try, so one address cannot void the invitation in one round trip.
        """
        self.later.held = True
        first, *others = [self.start("198.51.100.7") for _ in range(3)]
        self.assertEqual([transport.value() for _, transport in others], [b"ERROR busy\n"] * 2)
        while self.later.waiting:
            self.later.release()
        self.assertTrue(first[1].value().startswith(b"ENROLLING "))
        self.assertEqual(self.h.store.invitation(self.slot).attempts, 1)
        another = self.start("198.51.100.8")  # another source is not held back
        while self.later.waiting:
            self.later.release()
        self.assertTrue(another[1].value().startswith(b"ENROLLING "))

    def test_a_source_enrols_again_once_its_exchange_has_ended(self):
        proto, transport = self.start("198.51.100.7")
        self.assertTrue(transport.value().startswith(b"ENROLLING "))
        proto.connectionLost(None)  # a try spent: a failed attempt, and a lockout
        self.h.server.lift()
        again, transport = self.start("198.51.100.7")
        self.assertTrue(transport.value().startswith(b"ENROLLING "), transport.value())

    def test_hang_up_after_enrolling_is_a_failed_attempt(self):
        proto, transport = self.start()
        self.assertTrue(transport.value().startswith(b"ENROLLING "))
        self.h.clock.advance(self.h.server.config.handshake_timeout + 1)
        self.assertIn(b"ERROR", transport.value())
        proto.connectionLost(None)
        self.assertEqual([e["outcome"] for e in self.h.audit.of("enrol")], ["dropped"])
        self.assertNotEqual(self.h.tracker_lockouts(), {}, "the source locked out")

    def test_store_gone_is_error(self):
        self.later.broken = True
        proto, transport = self.start()
        self.assertEqual(transport.value(), b"ERROR server-error\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(StateError)), 1)


class LaterCloseTests(SynchronousTestCase):
    """
    The record of a close before on-success, off the reactor: on-success
    waits for it, and does not run at all if it fails (fail closed).
    """

    def knock_to_completion(self, h):
        line, proto, transport, nonce = h.handshake()
        for port in h.files["alice"].knock(1):
            h.hit("192.0.2.10", port)
        return transport

    def test_on_success_waits_for_the_record(self):
        h, later = later_harness(self, on_close="/bin/true", open_duration=300)
        recorded = []
        real = h.store.add_close

        def add_close(*args):
            d = Deferred()
            recorded.append((d, args))
            return d

        later.add_close = add_close
        h.server.closes._store = later
        transport = self.knock_to_completion(h)
        self.assertEqual(h.runner.calls, [], "no on-success before the close is recorded")
        d, args = recorded.pop()
        d.callback(real(*args))
        self.assertEqual(len(h.runner.calls), 1)
        self.assertTrue(transport.value().endswith(b"OPEN\n"))
        self.assertEqual(len(h.store.pending_closes()), 1)

    def test_record_failed_no_on_success(self):
        h, later = later_harness(self, on_close="/bin/true", open_duration=300)
        later.add_close = lambda *args: fail(StateError("the database is gone"))
        h.server.closes._store = later
        transport = self.knock_to_completion(h)
        self.assertEqual(h.runner.calls, [], "fail closed: no door without its close")
        self.assertIn(b"FAIL action-failed", transport.value())
        self.assertEqual(h.audit.of("error")[-1]["reason"], "state")
        h.clock.advance(1000)
        self.assertEqual(h.runner.calls, [])


class LaterDeniedTimingTests(SynchronousTestCase):
    """
    On a fleet the judging of a PROOF waits for the database: a FIN or a
    line too long sent meanwhile must not end the connection then (its
    time would say whether the lookups were done, and so how long they
    took); the DENIED goes out at its moment, whatever the client did.
    """

    def proof(self, released):
        h, later = later_harness(self, lockout="0")
        later.held = True
        proto, transport = h.connect(ip="198.51.100.1")
        proto.dataReceived(hs.format_hello("alice"))
        nonce = hs.parse_reply(transport.value().rstrip(b"\n")).nonce
        transport.clear()
        proto.dataReceived(hs.format_proof(hs.hello_mac(b"\x01" * 32, "alice", nonce)))
        for _ in range(released):
            later.release()
        return h, later, proto, transport

    def test_nothing_the_client_does_during_the_lookups_is_answered_sooner(self):
        for act in (lambda proto: proto.readConnectionLost(),
                    lambda proto: proto.dataReceived(b"y" * 600),
                    lambda proto: proto.dataReceived(b"PROOF " + b"0" * 64 + b"\n")):
            for released in (0, 1):
                h, later, proto, transport = self.proof(released)
                act(proto)
                self.assertEqual((transport.value(), transport.disconnecting), (b"", False),
                                 released)
                while later.waiting:
                    later.release()
                h.clock.advance(DENIED_AT)
                self.assertEqual(transport.value(), b"DENIED\n")
                self.assertTrue(transport.disconnecting)

    def test_a_fin_during_the_lookups_of_a_grant_ends_it_after_the_grant(self):
        h, later = later_harness(self)
        later.held = True
        proto, transport = h.connect(ip="198.51.100.1")
        proto.dataReceived(hs.format_hello("alice"))
        nonce = hs.parse_reply(transport.value().rstrip(b"\n")).nonce
        transport.clear()
        proto.dataReceived(hs.format_proof(hs.hello_mac(h.files["alice"].secret, "alice", nonce)))
        proto.readConnectionLost()
        self.assertFalse(transport.disconnecting)
        while later.waiting:
            later.release()
        self.assertTrue(transport.value().startswith(b"GRANT "))
        self.assertTrue(transport.disconnecting, "the FIN ends it once the GRANT is out")


class StateDownFloodTests(SynchronousTestCase):
    """
    While the database does not answer, anyone's PROOF gets ERROR
    server-error, and nothing locks them out: the audit log and the daemon
    log stay within the budget for protocol errors.
    """

    def test_a_flood_of_proofs_while_the_database_is_down(self):
        import json

        from twisted.internet.error import ConnectionDone
        from twisted.logger import globalLogPublisher
        from twisted.python.failure import Failure

        from knocker.daemon.audit import AuditLog
        from knocker.daemon.central import DENIED_AT

        h, later = later_harness(self)
        path = self.mktemp()
        audit = AuditLog(path, h.clock, wall=h.clock.seconds, min_free_mib=0, hit_rate=100)
        h.server._audit = audit
        logged = []
        observer = lambda event: logged.append(event) if event.get("log_level") and \
            event["log_level"].name == "error" else None  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        later.broken = True
        sent = 0
        for _ in range(20):  # 20 rounds of 8 sources x 8 connections: 1280 PROOFs, 0.4 s
            connections = []
            for source in range(8):
                for n in range(8):
                    proto, transport = h.connect(f"203.0.113.{source + 1}", 40000 + n)
                    proto.dataReceived(hs.format_hello("nobody"))
                    transport.clear()
                    proto.dataReceived(hs.format_proof("0" * 64))
                    connections.append((proto, transport))
            h.clock.advance(DENIED_AT)
            for proto, transport in connections:
                self.assertEqual(transport.value(), b"ERROR server-error\n")
                proto.connectionLost(Failure(ConnectionDone()))
                sent += 1
        h.clock.advance(10)
        audit.close()
        with open(path) as f:
            events = [json.loads(line) for line in f]
        lines = [e for e in events if e["event"] == "error" and e["reason"] == "state"]
        counted = sum(e["outcomes"].get("state", 0) for e in events if e["event"] == "errors")
        self.assertLessEqual(len(lines), 150, "100 at once, 100 a second after")
        self.assertEqual(len(lines) + counted, sent, "every one written or counted")
        self.assertEqual(len(logged), len(lines), "the daemon log follows the audit log")
        self.assertEqual(h.tracker_lockouts(), {})

    def test_a_damaged_client_row_logs_within_the_budget(self):
        """
        The SQLite state raising on a PROOF's lookup (a row edited by hand):
        each PROOF naming that client is ERROR server-error, and its
        traceback goes to the log within the budget, not once a PROOF.
        """
        import sqlite3

        from twisted.internet.error import ConnectionDone
        from twisted.logger import globalLogPublisher
        from twisted.python.failure import Failure

        from knocker.daemon.audit import AuditLog
        from knocker.daemon.central import DENIED_AT
        from tests.helpers.harness import Harness

        h = Harness(self)
        h.server._audit = AuditLog(self.mktemp(), h.clock, wall=h.clock.seconds,
                                   min_free_mib=0, hit_rate=20)
        db = sqlite3.connect(h.store.path)
        db.execute("UPDATE clients SET knocks = 'x' WHERE id = 'alice'")
        db.commit()
        db.close()
        tracebacks = []
        observer = lambda event: tracebacks.append(event) if event.get("log_failure") \
            else None  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        for n in range(300):
            proto, transport = h.connect("203.0.113.7", 41000 + n % 8)
            proto.dataReceived(hs.format_hello("alice"))
            transport.clear()
            proto.dataReceived(hs.format_proof("0" * 64))
            h.clock.advance(DENIED_AT)
            self.assertEqual(transport.value(), b"ERROR server-error\n")
            proto.connectionLost(Failure(ConnectionDone()))
        self.flushLoggedErrors()
        self.assertTrue(tracebacks, "the first ones are logged, with their traceback")
        self.assertLessEqual(len(tracebacks), 20 + 20 * 300 * DENIED_AT + 1)
        self.assertIn("table clients", str(tracebacks[0]["log_failure"].value))
