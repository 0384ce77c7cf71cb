"""
Lockouts as the coordinator applies them (docs/spec.md section 5): what the
audit log says of each, what is saved for `knocker status` and restarts,
and the per-source bound on central connections.
"""

from twisted.trial.unittest import SynchronousTestCase

from knocker.core import handshake as hs
from knocker.core.tracker import GLOBAL
from tests.helpers.harness import Harness

BAD_SECRET = b"\x01" * 32


class AuditTests(SynchronousTestCase):
    def test_lockout_events_carry_scope_length_and_step(self):
        h = Harness(self, lockout=60)
        h.handshake(secret=BAD_SECRET, ip="198.51.100.1")
        h.clock.advance(61)
        h.handshake(secret=BAD_SECRET, ip="198.51.100.1")
        events = [(e["source"], e["scope"], e["seconds"], e["step"], e["reason"])
                  for e in h.audit.of("lockout")]
        self.assertEqual(events, [("198.51.100.1", "source", 60, 0, "denied"),
                                  ("198.51.100.1", "source", 120, 1, "denied")])

    def test_a_failed_knock_locks_the_server(self):
        h = Harness(self)
        line, proto, transport, _ = h.handshake()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        wrong = next(p for p in h.pool if p != h.files["alice"].knock(grant.index)[0])
        h.hit("192.0.2.10", wrong)
        event = h.audit.of("lockout")[-1]
        self.assertEqual((event["source"], event["scope"], event["reason"]),
                         (GLOBAL, "global", "wrong-port"))
        line, *_ = h.handshake(ip="203.0.113.50")
        self.assertEqual(line, b"LOCKED 60\n")


class SavedTests(SynchronousTestCase):
    def test_source_lockouts_are_saved_in_one_batch_a_second(self):
        h = Harness(self)
        for n in range(50):
            h.hit(f"198.51.100.{n}", h.pool[0])
        self.assertEqual(h.store.lockouts(h.clock.seconds()), {}, "not one write per failure")
        h.clock.advance(1)
        saved = h.store.lockouts(h.clock.seconds())
        self.assertEqual(len(saved), 50)
        self.assertEqual(saved["198.51.100.7"], h.clock.seconds() - 1 + 60)

    def test_ended_lockouts_do_not_pile_up_in_the_state(self):
        """
        A flood from ever new addresses, each locked out and saved: the
        state keeps what is in force, not every address ever seen.
        """
        h = Harness(self, **{"lockout-scope": "source", "lockout": 60})
        for hour in range(4):
            for n in range(500):
                h.hit(f"10.{hour}.{n // 250}.{n % 250 + 1}", h.pool[0])
            h.clock.advance(1.5)  # the batch is saved
            h.clock.advance(3600)  # and every one of them has ended
        rows = h.store._db.execute("SELECT count(*) FROM lockouts").fetchone()[0]
        self.assertLessEqual(rows, 500, "at most the last hour's batch")
        self.assertEqual(h.store.lockouts(h.clock.seconds()), {})

    def test_a_server_lockout_whose_save_failed_is_saved_later(self):
        """
        The server's lockout is saved at once (a fleet's other gateways
        learn of it from the save); a database that fails that save (a
        blip, a full queue) gets it again, whether the store raises at once
        or, as a fleet's does, answers later.
        """
        for later in (False, True):
            h = Harness(self, lockout=600)
            flaky = FailingFirstSave(h.store, later)
            h.server._store = flaky
            line, *_ = h.handshake()
            grant = hs.parse_reply(line.rstrip(b"\n"))
            wrong = next(p for p in h.pool if p != h.files["alice"].knock(grant.index)[0])
            h.hit("192.0.2.10", wrong)  # lockout-scope = knock: the server is locked
            self.assertEqual(flaky.failed, 1)
            self.assertNotIn(GLOBAL, h.store.lockouts(h.clock.seconds()))
            h.clock.advance(5)
            self.assertEqual(h.store.lockouts(h.clock.seconds()).get(GLOBAL),
                             h.clock.seconds() - 5 + 600, f"answers later: {later}")


class RestartTests(SynchronousTestCase):
    def test_one_log_line_for_the_lockouts_restored_at_a_restart(self):
        """
        After a flood the state may hold 100,000 lockouts: a restart says
        how many it restored in one line, not one line each.
        """
        from twisted.logger import capturedLogs

        h = Harness(self, **{"lockout-scope": "source"})
        for n in range(300):
            h.hit(f"198.51.100.{n % 250}" if n < 250 else f"203.0.113.{n - 249}", h.pool[0])
        h.clock.advance(1)  # saved
        with capturedLogs() as events:
            h.restart()
        lines = [e for e in events if "before the restart" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["count"], 300)
        self.assertEqual(len(h.tracker_lockouts()), 300)

    def test_the_restart_line_counts_what_is_held(self):
        """A saved lockout of an address never-lock now lists is not held, nor counted."""
        from twisted.logger import capturedLogs

        h = Harness(self, lockout_scope="source", never_lock="203.0.113.0/24")
        now = h.clock.seconds()
        h.store.save_lockouts({"198.51.100.1": now + 600, "203.0.113.5": now + 600})
        with capturedLogs() as events:
            h.restart()
        lines = [e for e in events if "before the restart" in e.get("log_format", "")]
        self.assertEqual([e["count"] for e in lines], [1])
        self.assertEqual(list(h.tracker_lockouts()), ["198.51.100.1"])


class RetryChainTests(SynchronousTestCase):
    def test_one_retry_at_a_time_however_often_the_save_fails(self):
        h = Harness(self, lockout=600)
        h.server._store = FailingFirstSave(h.store, later=False, failures=100)
        line, *_ = h.handshake()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        wrong = next(p for p in h.pool if p != h.files["alice"].knock(grant.index)[0])
        h.hit("192.0.2.10", wrong)  # the server is locked, its save fails
        for _ in range(3):  # started again meanwhile, failing each time
            h.server._save_global()
        retries = [call for call in h.clock.getDelayedCalls()
                   if getattr(call.func, "__name__", "") == "_save_global"]
        self.assertEqual(len(retries), 1)


class FailingFirstSave:
    """A store whose first save of a lockout fails."""

    def __init__(self, store, later: bool, failures: int = 1):
        self._store = store
        self._later = later
        self._failures = failures
        self.failed = 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def set_lockout(self, key, until):
        from twisted.internet import defer

        if self.failed < self._failures:
            self.failed += 1
            error = RuntimeError("database: 256 calls already waiting for it")
            if self._later:
                return defer.fail(error)
            raise error
        self._store.set_lockout(key, until)
        return defer.succeed(None) if self._later else None


class ConnectionBoundTests(SynchronousTestCase):
    def test_one_source_cannot_take_every_place(self):
        h = Harness(self, max_connections=20, max_connections_per_source=3)
        held = [h.connect(ip="198.51.100.9") for _ in range(3)]
        proto, transport = h.connect(ip="198.51.100.9")
        self.assertEqual(transport.value(), b"ERROR too-many-connections\n")
        line, *_ = h.handshake()  # someone else still gets in
        self.assertTrue(line.startswith(b"GRANT "))
        held[0][0].connectionLost(None)
        proto, transport = h.connect(ip="198.51.100.9")
        self.assertEqual(transport.value(), b"", "a place freed is a place again")

    def test_an_ipv6_prefix_is_one_source(self):
        h = Harness(self, max_connections_per_source=2)
        h.connect(ip="2001:db8:5:5::1")
        h.connect(ip="2001:db8:5:5::2")
        proto, transport = h.connect(ip="2001:db8:5:5::3")
        self.assertEqual(transport.value(), b"ERROR too-many-connections\n")
        proto, transport = h.connect(ip="2001:db8:5:6::1")
        self.assertEqual(transport.value(), b"")


class GiveWayTests(SynchronousTestCase):
    """
    A full central port (every place held by a few sources) still takes a
    newcomer from a source holding fewer: the oldest connection of the
    busiest source that has not sent its PROOF, or was refused and is still
    closing, gives up its place.  (The harness's transports, like TLS,
    close only when the test says so.)
    """

    A, B, C = "198.51.100.1", "198.51.100.2", "203.0.113.7"

    def fill(self, h, *sources):
        held = []
        for ip in sources:
            held.append(h.connect(ip=ip))
        return held

    def test_a_few_idle_sources_cannot_shut_the_door(self):
        h = Harness(self, max_connections=4, max_connections_per_source=2)
        held = self.fill(h, self.A, self.A, self.B, self.B)
        held[0][0].dataReceived(hs.format_hello("alice"))  # CHALLENGE sent, no PROOF yet
        self.assertTrue(held[0][1].value().startswith(b"CHALLENGE "))
        held[0][1].clear()

        line, *_ = h.handshake(ip=self.C)
        self.assertTrue(line.startswith(b"GRANT "), line)
        self.assertEqual(held[0][1].value(), b"ERROR too-many-connections\n")
        self.assertTrue(held[0][1].disconnecting)
        self.assertEqual([t.value() for _, t in held[1:]], [b""] * 3, "only one gave way")
        self.assertEqual([(e["ip"], e["reason"]) for e in h.audit.of("error")],
                         [(self.A, "too-many-connections")])
        self.assertEqual(h.tracker_lockouts(), {}, "giving way is no failed attempt")

    def test_the_end_of_one_that_gave_way_frees_no_second_place(self):
        h = Harness(self, max_connections=4, max_connections_per_source=2)
        held = self.fill(h, self.A, self.A, self.B, self.B)
        h.connect(ip=self.C)
        held[0][0].connectionLost(None)  # its end, later
        self.assertEqual((h.central.connections, h.central.per_source),
                         (4, {self.A: 1, self.B: 2, self.C: 1}))
        proto, transport = h.connect(ip=self.A)  # A would hold 2, as B does: B gives way
        self.assertEqual(held[2][1].value(), b"ERROR too-many-connections\n")
        self.assertEqual((h.central.connections, h.central.per_source),
                         (4, {self.A: 2, self.B: 1, self.C: 1}))

    def test_a_source_as_busy_as_the_busiest_is_refused(self):
        h = Harness(self, max_connections=4, max_connections_per_source=3)
        held = self.fill(h, self.A, self.A, self.B, self.B)
        proto, transport = h.connect(ip=self.A)
        self.assertEqual(transport.value(), b"ERROR too-many-connections\n")
        self.assertEqual([t.value() for _, t in held], [b""] * 4)

    def test_the_busiest_source_gives_way_first(self):
        h = Harness(self, max_connections=4)
        held = self.fill(h, self.A, self.B, self.B, self.B)
        h.connect(ip=self.C)
        self.assertEqual([t.value() for _, t in held],
                         [b"", b"ERROR too-many-connections\n", b"", b""],
                         "B's oldest, though A's is older")

    def test_a_knock_under_way_never_gives_way(self):
        h = Harness(self, clients=("alice", "bob"), max_connections=2, max_concurrent=2)
        granted = [h.handshake("alice", ip=self.A), h.handshake("bob", ip=self.B)]
        for line, _, transport, _ in granted:
            self.assertTrue(line.startswith(b"GRANT "), line)
            transport.clear()
        proto, transport = h.connect(ip=self.C)
        self.assertEqual(transport.value(), b"ERROR too-many-connections\n")
        self.assertEqual([t.value() for _, _, t, _ in granted], [b"", b""])

    def test_refused_connections_still_closing_give_way(self):
        """
        Under TLS a refused connection's close waits for its peer (up to
        2 s): sources sending one bad line on every place would otherwise
        keep the door shut as well as idle ones do.  The one giving way had
        its answer already: no second line, no second audit event.
        """
        h = Harness(self, max_connections=4, max_connections_per_source=2)
        held = self.fill(h, self.A, self.A, self.B, self.B)
        for proto, transport in held:
            proto.dataReceived(b"garbage\n")
            self.assertEqual(transport.value(), b"ERROR malformed\n")
        line, *_ = h.handshake(ip=self.C)
        self.assertTrue(line.startswith(b"GRANT "), line)
        self.assertEqual(h.central.per_source, {self.A: 1, self.B: 2, self.C: 1},
                         "A's oldest gave way")
        self.assertEqual(h.central.lingering, 1, "left to close, counted")
        self.assertEqual(held[0][1].value(), b"ERROR malformed\n")
        self.assertEqual(len(h.audit.of("error")), 4)

    def test_an_idle_one_giving_way_closes_in_order_or_is_cut(self):
        """
        Under TLS an idle connection giving way gets its ERROR line in
        order, then is cut after the close's grace; past LINGER_MAX at
        once closing so, the next ones are cut at once.
        """
        from knocker.daemon import central

        self.patch(central, "LINGER_MAX", 1)
        h = Harness(self, max_connections=2)
        held = self.fill(h, self.A, self.B)
        h.connect(ip=self.C)
        h.connect(ip="203.0.113.8")
        (first, one), (second, two) = held
        self.assertEqual((one.value(), one.disconnecting, one.disconnected),
                         (b"ERROR too-many-connections\n", True, False))
        self.assertTrue(two.disconnected, "past LINGER_MAX: cut")
        h.clock.advance(central.CLOSE_GRACE)
        self.assertTrue(one.disconnected, "cut after the grace")
        first.connectionLost(None)
        second.connectionLost(None)
        self.assertEqual((h.central.lingering, h.central.connections), (0, 2))

    def test_an_enrolment_under_way_never_gives_way(self):
        """
        Cutting an enrolment short counts against its invitation, so a
        newcomer must not be able to do it.
        """
        from knocker.enrol import keys as k

        h = Harness(self, max_connections=1)
        now = h.clock.seconds()
        slot = h.store.add_invitation("carol", "crossover-clockwork-lantern", now + 3600, 3, now)
        enrolling, transport = h.connect(ip=self.A)
        pake = k.Pake(slot, "crossover-clockwork-lantern")
        enrolling.dataReceived(b"KNOCKER/1 ENROLL %d %s\n" % (slot, k.b64(pake.message).encode()))
        self.assertTrue(transport.value().startswith(b"ENROLLING "), transport.value())
        transport.clear()
        proto, refused = h.connect(ip=self.C)
        self.assertEqual(refused.value(), b"ERROR too-many-connections\n")
        self.assertEqual(transport.value(), b"", "the enrolment goes on")
        self.assertFalse(transport.disconnecting)

    def test_an_enrolment_line_refused_still_gives_way(self):
        """
        Any first line starting KNOCKER/1 ENROLL begins an enrolment; one
        refused at once is closing like any refusal, and under TLS its
        close waits for the peer: it must give way as a bad line does.
        """
        h = Harness(self, max_connections=2, max_connections_per_source=1)
        held = self.fill(h, self.A, self.B)
        for proto, transport in held:
            proto.dataReceived(b"KNOCKER/1 ENROLL x\n")
            self.assertTrue(transport.value().startswith(b"ERROR "), transport.value())
        line, *_ = h.handshake(ip=self.C)
        self.assertTrue(line.startswith(b"GRANT "), line)

    def test_refusals_closing_under_tls_are_bounded(self):
        """
        Refused connections whose close waits for the peer (TLS) are
        counted, and past LINGER_MAX cut at once, line and all, so a flood
        of refusals cannot pile up descriptors.
        """
        from knocker.daemon import central

        self.patch(central, "LINGER_MAX", 2)
        h = Harness(self, max_connections=1)
        h.connect(ip=self.A)
        refused = [h.connect(ip=self.A)[1] for _ in range(3)]
        self.assertEqual([(t.value(), t.disconnected) for t in refused],
                         [(b"ERROR too-many-connections\n", False)] * 2
                         + [(b"ERROR too-many-connections\n", True)])
        self.assertEqual(h.central.lingering, 2)
        h.clock.advance(central.CLOSE_GRACE)
        self.assertTrue(all(t.disconnected for t in refused), "cut after the grace")


class ServerCopyTests(SynchronousTestCase):
    """
    A registered client whose server copy cannot be used is the server's
    fault: ERROR server-error, logged with the path, and never a lockout.
    """

    def assert_server_error(self, h):
        line, *_ = h.handshake()
        self.assertEqual(line, b"ERROR server-error\n")
        self.assertEqual(h.tracker_lockouts(), {}, "no lockout")
        error = h.audit.of("error")[-1]
        self.assertEqual(error["reason"], "client-file")
        self.assertIn(h.book.path("alice"), error["detail"])
        self.assertEqual(h.audit.of("denied"), [])

    def test_missing_copy_after_a_restart(self):
        import os

        h = Harness(self)
        os.remove(h.book.path("alice"))
        h.book._headers.clear()  # as after a restart
        self.assert_server_error(h)

    def test_copy_others_can_read(self):
        import os

        h = Harness(self)
        os.chmod(h.book.path("alice"), 0o644)
        h.book._headers.clear()
        self.assert_server_error(h)

    def test_strangers_naming_the_client_are_within_the_audit_budget(self):
        """
        The copy is read before the proof is judged, so a stranger without
        the secret gets the same ERROR, as often as it likes: each goes
        through the audit log's budget (here spent), with no line of its
        own past it, in the audit log or the daemon's log.
        """
        import os

        from twisted.logger import capturedLogs

        h = Harness(self)
        os.chmod(h.book.path("alice"), 0o644)
        h.book._headers.clear()
        budgeted = []
        h.audit.server_error = lambda reason, **fields: budgeted.append(reason) and False
        with capturedLogs() as logged:
            for n in range(20):
                line, *_ = h.handshake(ip=f"198.51.100.{n + 1}", secret=BAD_SECRET)
                self.assertEqual(line, b"ERROR server-error\n")
        self.assertEqual(budgeted, ["client-file"] * 20)
        self.assertEqual(h.audit.of("error"), [], "no line past the budget")
        self.assertEqual([e for e in logged if "server's copy" in e.get("log_format", "")], [])
        self.assertEqual(h.tracker_lockouts(), {}, "the server's fault: no lockout")


class DeniedTimingTests(SynchronousTestCase):
    def test_every_denied_goes_out_at_the_same_delay_after_the_proof(self):
        from knocker.daemon.central import DENIED_AT

        h = Harness(self, lockout_scope="source")
        for client, ip in (("alice", "198.51.100.1"), ("mallory", "198.51.100.2")):
            proto, transport = h.connect(ip=ip)
            proto.dataReceived(hs.format_hello(client))
            nonce = hs.parse_reply(transport.value().rstrip(b"\n")).nonce
            transport.clear()
            proto.dataReceived(hs.format_proof(hs.hello_mac(BAD_SECRET, client, nonce)))
            h.clock.advance(DENIED_AT * 0.99)
            self.assertEqual(transport.value(), b"", f"{client}: not before the delay")
            h.clock.advance(DENIED_AT * 0.02)
            self.assertEqual(transport.value(), b"DENIED\n", client)

    def proof_then(self, h, client, ip, then):
        proto, transport = h.connect(ip=ip)
        proto.dataReceived(hs.format_hello(client))
        nonce = hs.parse_reply(transport.value().rstrip(b"\n")).nonce
        transport.clear()
        proto.dataReceived(hs.format_proof(hs.hello_mac(BAD_SECRET, client, nonce)) + then)
        return proto, transport

    def test_what_follows_the_proof_cannot_hasten_the_denied(self):
        """
        A line too long, or a second PROOF, in the packet that held the
        PROOF: nothing before the fixed moment, then DENIED alone, for a
        real client as for an unknown one (before, a long tail had ERROR
        line-too-long at once, the time of the judging on the wire).
        """
        from knocker.daemon.central import DENIED_AT

        h = Harness(self, lockout="0")
        for tail in (b"y" * 600, b"PROOF " + b"0" * 64 + b"\n", b"x\n" + b"y" * 600):
            for client in ("alice", "mallory"):
                proto, transport = self.proof_then(h, client, "198.51.100.1", tail)
                self.assertEqual(transport.value(), b"", (client, tail[:8]))
                self.assertFalse(transport.disconnecting)
                proto.dataReceived(b"z" * 600)  # later packets too
                h.clock.advance(DENIED_AT * 0.99)
                self.assertEqual(transport.value(), b"", (client, tail[:8]))
                h.clock.advance(DENIED_AT * 0.02)
                self.assertEqual(transport.value(), b"DENIED\n", (client, tail[:8]))
                self.assertTrue(transport.disconnecting)

    def test_a_stopping_port_sends_a_waiting_denied_at_once(self):
        """When the port stops listening (the daemon stops) the reactor may
        not turn again: a DENIED waiting for its moment goes now."""
        h = Harness(self, lockout="0")
        proto, transport = self.proof_then(h, "mallory", "198.51.100.1", b"")
        self.assertEqual(transport.value(), b"")
        h.central.stopFactory()
        self.assertEqual(transport.value(), b"DENIED\n")
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(proto._send_at, [call.func for call in h.clock.getDelayedCalls()],
                         "nothing left waiting")

    def test_a_fin_after_the_proof_waits_for_the_denied(self):
        """
        The client half-closes right after its PROOF: the connection stays
        until the DENIED goes out at its moment, then ends; a FIN at any
        other time ends it at once, as before.
        """
        from twisted.internet.interfaces import IHalfCloseableProtocol

        from knocker.daemon.central import DENIED_AT

        h = Harness(self, lockout="0")
        for client in ("alice", "mallory"):
            proto, transport = self.proof_then(h, client, "198.51.100.1", b"")
            self.assertTrue(IHalfCloseableProtocol.providedBy(proto))
            proto.readConnectionLost()
            self.assertFalse(transport.disconnecting, client)
            h.clock.advance(DENIED_AT * 1.01)
            self.assertEqual(transport.value(), b"DENIED\n", client)
            self.assertTrue(transport.disconnecting)
        proto, transport = h.connect(ip="198.51.100.1")
        proto.dataReceived(hs.format_hello("alice"))
        proto.readConnectionLost()
        self.assertTrue(transport.disconnecting, "a FIN before the PROOF ends it")
