"""
The coordinator and the central-port protocol over StringTransport, with a
fake clock, a fake action runner and an in-memory audit log.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from knocker.core import handshake as hs
from knocker.core.sources import normalise_ip
from tests.helpers.harness import Harness, a_decoy

IP = "192.0.2.10"


def reply(transport):
    return hs.parse_reply(transport.value().rstrip(b"\n"))


class HandshakeTests(SynchronousTestCase):
    def test_challenge_is_fresh_hex_per_connection(self):
        h = Harness(self)
        nonces = set()
        for _ in range(3):
            proto, transport = h.connect()
            proto.dataReceived(b"KNOCKER/1 HELLO alice\r\n")
            challenge = reply(transport)
            self.assertIsInstance(challenge, hs.Challenge)
            nonces.add(challenge.nonce)
        self.assertEqual(len(nonces), 3)

    def test_grant_carries_server_hmac_and_burns(self):
        h = Harness(self)
        line, proto, transport, nonce = h.handshake()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        secret = h.files["alice"].secret
        self.assertEqual(grant, hs.Grant(1, 10, hs.grant_mac(secret, "alice", nonce, 1)))
        self.assertEqual(h.store.client("alice").next_index, 2)
        self.assertFalse(transport.disconnecting, "the connection waits for the verdict")
        self.assertEqual(h.audit.of("grant")[0]["index"], 1)

    def test_wrong_proof_and_unknown_client_get_identical_denied(self):
        h = Harness(self, lockout_scope="source")
        bad, _, t1, _ = h.handshake(secret=b"\x00" * 32, ip="192.0.2.1")
        unknown, _, t2, _ = h.handshake(client="mallory", secret=b"\x00" * 32, ip="192.0.2.2")
        self.assertEqual(bad, b"DENIED\n")
        self.assertEqual(unknown, bad)
        self.assertTrue(t1.disconnecting and t2.disconnecting)
        self.assertEqual([e["reason"] for e in h.audit.of("denied")], ["bad-proof", "unknown-client"])
        self.assertEqual([e["ip"] for e in h.audit.of("lockout")], ["192.0.2.1", "192.0.2.2"])
        self.assertEqual(h.store.client("alice").next_index, 1, "a denial burns nothing")

    def test_denied_locks_everyone_out_in_global_scope(self):
        h = Harness(self, lockout_scope="global")
        h.handshake(secret=b"\x01" * 32, ip="198.51.100.1")
        line, *_ = h.handshake()
        self.assertEqual(line, b"LOCKED 60\n")
        h.clock.advance(60)
        line, *_ = h.handshake()
        self.assertTrue(line.startswith(b"GRANT 1 "))

    def test_exhausted(self):
        h = Harness(self, knocks=2, renew_at=0)  # a file that is never renewed
        for _ in range(2):
            grant, transport = h.knock()
            self.assertEqual(transport.value(), b"OPEN\n")
        line, *_ = h.handshake()
        self.assertEqual(line, b"EXHAUSTED\n")

    def test_busy_while_another_slot_is_open(self):
        h = Harness(self, clients=("alice", "bob"))
        h.handshake("alice", ip="192.0.2.1")
        h.clock.advance(4)
        line, *_ = h.handshake("bob", ip="192.0.2.2")
        self.assertEqual(line, b"BUSY 6\n")
        self.assertEqual(h.store.client("bob").next_index, 1, "BUSY burns nothing")

    def test_max_concurrent_allows_parallel_slots(self):
        h = Harness(self, clients=("alice", "bob"), max_concurrent=2, lockout_scope="source")
        a, ta = h.knock("alice", ip="192.0.2.1")
        b, tb = h.knock("bob", ip="192.0.2.2")
        self.assertEqual((ta.value(), tb.value()), (b"OPEN\n", b"OPEN\n"))


class BadLineTests(SynchronousTestCase):
    def assertError(self, data, reason):
        h = Harness(self)
        proto, transport = h.connect()
        proto.dataReceived(data)
        self.assertEqual(transport.value().split(b"\n")[-2], b"ERROR " + reason)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.audit.of("error")[0]["reason"], reason.decode())
        self.assertEqual(h.audit.of("lockout"), [], "garbage is not a failed knock")

    def test_malformed(self):
        self.assertError(b"HELLO alice\n", b"malformed")

    def test_binary_garbage(self):
        self.assertError(b"\x00\xff\xfe garbage\n", b"malformed")

    def test_bad_client_id(self):
        self.assertError(b"KNOCKER/1 HELLO Alice!\n", b"bad-client-id")

    def test_line_too_long(self):
        self.assertError(b"A" * 600, b"line-too-long")

    def test_line_too_long_with_newline(self):
        self.assertError(b"KNOCKER/1 HELLO " + b"a" * 600 + b"\n", b"line-too-long")

    def test_proof_before_hello(self):
        self.assertError(b"PROOF " + b"0" * 64 + b"\n", b"out-of-turn")

    def test_second_hello(self):
        self.assertError(b"KNOCKER/1 HELLO alice\nKNOCKER/1 HELLO alice\n", b"out-of-turn")

    def test_uppercase_proof(self):
        self.assertError(b"KNOCKER/1 HELLO alice\nPROOF " + b"A" * 64 + b"\n", b"bad-proof")

    def test_handshake_timeout(self):
        h = Harness(self, handshake_timeout=5)
        proto, transport = h.connect()
        proto.dataReceived(b"KNOCKER/1 HELLO alice\n")
        h.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        h.clock.advance(0.1)
        self.assertTrue(transport.value().endswith(b"ERROR handshake-timeout\n"))
        self.assertTrue(transport.disconnecting)

    def test_line_after_grant(self):
        h = Harness(self)
        line, proto, transport, _ = h.handshake()
        transport.clear()
        proto.dataReceived(b"PROOF " + b"0" * 64 + b"\n")
        self.assertEqual(transport.value(), b"ERROR unexpected-line\n")

    def test_line_after_grant_gives_the_knock_up(self):
        """
        A stray line after GRANT ends the connection with ERROR and no
        verdict: its knock ends as abandoned, as a hang-up does, so no door
        opens without an OPEN and the slot does not time out into a
        lockout of everyone (lockout-scope = knock).
        """
        h = Harness(self)
        line, proto, transport, _ = h.handshake()
        proto.dataReceived(b"garbage\n")
        self.assertEqual(h.audit.of("fail")[-1]["reason"], "abandoned")
        for port in h.files["alice"].knock(1):  # before the connection is gone
            h.hit(IP, port)
        self.assertEqual(h.runner.calls, [], "no door for the knock given up")
        proto.connectionLost(None)
        self.assertEqual(len(h.audit.of("fail")), 1, "given up once")
        h2 = Harness(self)
        line, proto, transport, _ = h2.handshake()
        proto.dataReceived(b"garbage\n")
        proto.connectionLost(None)
        h2.clock.advance(h2.config.knock_window + 1)
        self.assertEqual(h2.tracker_lockouts(), {})

    def test_the_rest_of_the_proofs_read_is_dropped(self):
        """
        Bytes after the PROOF in the same read (a stray newline) are
        dropped, as docs/protocol.md says, whether the state answers at
        once (SQLite) or later (a fleet): not taken as a line after GRANT,
        which would give the knock up.
        """
        h = Harness(self)
        proto, transport = h.connect(IP)
        proto.dataReceived(hs.format_hello("alice"))
        challenge = hs.parse_reply(transport.value().rstrip(b"\n"))
        transport.clear()
        proof = hs.format_proof(hs.hello_mac(h.files["alice"].secret, "alice", challenge.nonce))
        proto.dataReceived(proof + b"\n" + b"x" * 600)  # an empty line, an over-long part
        self.assertEqual(transport.value().count(b"\n"), 1, transport.value())
        grant = hs.parse_reply(transport.value().rstrip(b"\n"))
        self.assertIsInstance(grant, hs.Grant)
        self.assertEqual(h.audit.of("fail"), [])
        transport.clear()
        for port in h.files["alice"].knock(grant.index):
            h.hit(IP, port)
        self.assertEqual(transport.value(), b"OPEN\n")

    def test_connection_bound(self):
        h = Harness(self, max_connections=2)
        h.connect()
        h.connect()
        proto, transport = h.connect()
        self.assertEqual(transport.value(), b"ERROR too-many-connections\n")
        self.assertTrue(transport.disconnecting)


class VerdictTests(SynchronousTestCase):
    def test_right_knock_runs_script_then_open(self):
        h = Harness(self)
        grant, transport = h.knock()
        self.assertEqual(transport.value(), b"OPEN\n")
        self.assertTrue(transport.disconnecting)
        [(argv, env)] = h.runner.calls
        self.assertEqual(argv[-3:], [IP, "alice", "1"])
        self.assertEqual(
            {k: env[k] for k in ("KNOCKER_CLIENT_IP", "KNOCKER_CLIENT", "KNOCKER_INDEX")},
            {"KNOCKER_CLIENT_IP": IP, "KNOCKER_CLIENT": "alice", "KNOCKER_INDEX": "1"},
        )
        self.assertEqual([e["event"] for e in h.audit.events if e["event"] != "hit"],
                         ["grant", "script", "open"])
        self.assertEqual([e["outcome"] for e in h.audit.of("hit")],
                         ["progress", "progress", "complete"])

    def test_open_only_after_script_exits(self):
        h = Harness(self)
        h.runner.hold = True
        grant, transport = h.knock()
        self.assertEqual(transport.value(), b"")
        h.runner.finish(0)
        self.assertEqual(transport.value(), b"OPEN\n")

    def test_script_failure_is_action_failed(self):
        h = Harness(self)
        h.runner.exit_code = 3
        grant, transport = h.knock()
        self.assertEqual(transport.value(), b"FAIL action-failed\n")
        self.assertEqual(h.audit.of("fail")[0]["reason"], "action-failed")

    def test_wrong_port_fail_then_locked(self):
        h = Harness(self)
        grant, transport = h.knock(ports=[a_decoy(h)])
        self.assertEqual(transport.value(), b"FAIL wrong-port\n")
        self.assertEqual(h.runner.calls, [])
        line, *_ = h.handshake()
        self.assertEqual(line, b"LOCKED 60\n")
        self.assertEqual(h.audit.of("lockout")[0]["reason"], "wrong-port")

    def test_a_knock_under_way_when_the_daemon_stops(self):
        """
        Stopping mid-knock: the client is told (ERROR shutting-down, a
        SERVER_ERROR to it, not a silent close), the audit log ends the
        grant with a fail line, and no program runs.
        """
        h = Harness(self)
        line, proto, transport, _ = h.handshake()
        transport.clear()
        h.hit(IP, h.files["alice"].knock(1)[0])
        h.server.stop()
        self.assertEqual(transport.value(), b"ERROR shutting-down\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.audit.of("fail")[-1]["reason"], "shutting-down")
        self.assertEqual(h.runner.calls, [])
        proto.connectionLost(None)  # the close that follows: nothing more
        self.assertEqual(len(h.audit.of("fail")), 1)

    def test_a_knock_whose_program_runs_gets_its_verdict_after_a_stop(self):
        h = Harness(self)
        h.runner.hold = True
        grant, transport = h.knock()
        h.server.stop()
        self.assertEqual(transport.value(), b"")
        h.runner.finish(0)
        self.assertEqual(transport.value(), b"OPEN\n")
        self.assertEqual(h.audit.of("fail"), [])

    def test_timeout(self):
        h = Harness(self, knock_window=5)
        line, proto, transport, _ = h.handshake()
        transport.clear()
        h.hit(IP, h.files["alice"].knock(1)[0])
        h.clock.advance(5)
        self.assertEqual(transport.value(), b"FAIL timeout\n")

    def test_someone_elses_hit_ends_slot_locked_out_in_global_scope(self):
        h = Harness(self, lockout_scope="global")
        line, proto, transport, _ = h.handshake()
        transport.clear()
        h.hit("203.0.113.9", h.files["alice"].knock(1)[0])
        self.assertEqual(transport.value(), b"FAIL locked-out\n")

    def test_someone_elses_hit_spares_the_knock_by_default(self):
        """
        Under the default scope (knock), a stray hit from a scanner locks
        out the scanner only; the granted client's knock goes on and opens.
        """
        h = Harness(self)
        line, proto, transport, _ = h.handshake()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        transport.clear()
        h.hit("203.0.113.9", h.files["alice"].knock(grant.index)[0])
        for port in h.files["alice"].knock(grant.index):
            h.hit("192.0.2.10", port)
        self.assertEqual(transport.value(), b"OPEN\n")
        self.assertEqual(list(h.tracker_lockouts()), ["203.0.113.9"])

    def test_used_number_never_again(self):
        h = Harness(self)
        first, _ = h.knock()
        second, _ = h.knock()
        self.assertEqual((first.index, second.index), (1, 2))
        h.restart()
        third, _ = h.knock()
        self.assertEqual(third.index, 3)

    def test_number_burned_even_when_knock_fails(self):
        h = Harness(self, lockout=1)
        first, _ = h.knock(ports=[a_decoy(h)])
        h.clock.advance(1)
        second, _ = h.knock()
        self.assertEqual((first.index, second.index), (1, 2))

    def test_replay_of_a_used_knock_is_refused(self):
        h = Harness(self)
        grant, _ = h.knock()
        ports = h.files["alice"].knock(grant.index)
        for port in ports:
            h.hit(IP, port)
        self.assertEqual([e["outcome"] for e in h.audit.of("hit")][-3:],
                         ["no-slot", "locked", "locked"])
        self.assertEqual(len(h.runner.calls), 1)

    def test_client_hangs_up_mid_knock(self):
        h = Harness(self)
        line, proto, transport, _ = h.handshake()
        proto.connectionLost(None)
        self.assertEqual(h.audit.of("fail")[0]["reason"], "abandoned")
        line, *_ = h.handshake()
        self.assertTrue(line.startswith(b"GRANT 2 "))

    def test_v4_mapped_address_counts_as_v4(self):
        h = Harness(self)
        line, proto, transport, _ = h.handshake(ip="::ffff:192.0.2.10")
        transport.clear()
        for port in h.files["alice"].knock(1):
            h.hit(IP, port)
        self.assertEqual(transport.value(), b"OPEN\n")
        self.assertEqual(h.audit.of("grant")[0]["ip"], IP)

    def test_normalise_ip(self):
        self.assertEqual(normalise_ip("::ffff:10.1.2.3"), "10.1.2.3")
        self.assertEqual(normalise_ip("2001:DB8::1"), "2001:db8::1")
        self.assertEqual(normalise_ip("192.0.2.1"), "192.0.2.1")


class CloseTests(SynchronousTestCase):
    def test_on_close_runs_open_duration_after_on_success(self):
        h = Harness(self, on_close="/bin/true", open_duration=300)
        h.runner.hold = True
        h.knock()
        h.clock.advance(5)  # on-success still running: no close yet, whatever the clock
        h.runner.finish(0)
        h.clock.advance(299)
        self.assertEqual([argv[-3:] for argv, _ in h.runner.calls], [[IP, "alice", "1"]])
        h.clock.advance(1)
        self.assertEqual(h.runner.calls[1][0], ["/bin/true", IP, "alice", "1"])

    def test_an_audit_that_fails_on_the_script_line_still_gives_the_verdict(self):
        """
        Recording on-success's result raised: the verdict comes all the
        same, so the door's close is scheduled and the knock's slot is
        freed (before, the close waited for the next stop and every later
        knock was BUSY).
        """
        h = Harness(self, on_close="/bin/true", open_duration=300)
        record = h.audit.record
        failing = [True]

        def record_once_failing(event, **fields):
            if event == "script" and failing:
                failing.pop()
                raise RuntimeError("an audit listener broke")
            return record(event, **fields)

        h.audit.record = record_once_failing
        grant, transport = h.knock()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(transport.value(), b"OPEN\n")
        h.clock.advance(300)
        self.assertEqual([argv[0] for argv, _ in h.runner.calls][-1], "/bin/true",
                         "the door was closed at its time")
        grant, transport = h.knock()
        self.assertIsInstance(grant, hs.Grant)

    def test_failed_close_is_kept_and_retried(self):
        h = Harness(self, on_close="/bin/true", open_duration=10)
        h.knock()
        h.runner.exit_code = 1
        h.clock.advance(10)
        self.assertEqual(len(h.runner.calls), 2)
        self.assertEqual(len(h.store.pending_closes()), 1, "a failed close stays pending")
        h.runner.exit_code = 0
        h.clock.advance(60)
        self.assertEqual(len(h.runner.calls), 3)
        self.assertEqual(h.store.pending_closes(), [])
        self.assertEqual([e["ok"] for e in h.audit.of("close")], [False, True])

    def test_a_restart_closes_open_doors_at_once(self):
        """
        The state keeps the close; a restart runs it at once rather than at
        its time (fail-closed: the client knocks again).
        """
        h = Harness(self, on_close="/bin/true", open_duration=300, script_timeout=10)
        h.knock()
        self.assertEqual(len(h.store.pending_closes()), 1)
        h.clock.advance(100)
        h.restart()
        self.assertEqual(len(h.runner.calls), 1, "nothing runs inside restore()")
        h.clock.advance(0)
        self.assertEqual(h.runner.calls[1][0], ["/bin/true", IP, "alice", "1"])
        self.assertEqual(h.store.pending_closes(), [])
        self.assertEqual(h.audit.of("close")[0]["index"], 1)

    def test_the_close_recorded_allows_for_script_timeout(self):
        """
        The close is recorded with the latest time it may be due:
        open-duration plus script-timeout after the knock.
        """
        h = Harness(self, on_close="/bin/true", open_duration=300, script_timeout=10)
        before = h.server._wall.now()
        h.knock()
        [pending] = h.store.pending_closes()
        self.assertEqual(pending.due, before + 310)

    def test_source_lockout_survives_restart(self):
        h = Harness(self)
        h.handshake(secret=b"\x01" * 32)
        h.clock.advance(10)
        h.restart()
        line, *_ = h.handshake()
        self.assertEqual(line, b"LOCKED 50\n")

    def test_lockout_survives_restart(self):
        h = Harness(self, lockout_scope="global")
        h.hit("203.0.113.9", h.pool[0])
        h.clock.advance(10)
        h.restart()
        line, *_ = h.handshake()
        self.assertEqual(line, b"LOCKED 50\n")


class LiveClientFileTests(SynchronousTestCase):
    def test_new_client_without_restart(self):
        from knocker.admin.clients import generate_client
        from knocker.core.knockfile import parse_knockfile
        from knocker.files import read_private

        h = Harness(self)
        out = h.dir + "/carol.knock"
        generate_client(h.config, "carol", 3, 3, out)
        h.files["carol"] = parse_knockfile(read_private(out), out)
        grant, transport = h.knock("carol", ip="192.0.2.30")
        self.assertEqual((grant.index, transport.value()), (1, b"OPEN\n"))

    def test_regenerated_file_replaces_the_old_one(self):
        """
        A file regenerated under a running daemon starts at knock 1 with its
        new secret; the old file is denied (its knocks are not reissued).
        """
        from knocker.admin.clients import ClientExists, generate_client
        from knocker.core.knockfile import parse_knockfile
        from knocker.files import read_private

        h = Harness(self, lockout_scope="source")
        h.knock()
        h.knock()
        out = h.dir + "/alice2.knock"
        self.assertRaises(ClientExists, generate_client, h.config, "alice", 5, 3, out)
        generate_client(h.config, "alice", 5, 3, out, force=True)
        old = h.files["alice"]
        line, *_ = h.handshake(secret=old.secret, ip="192.0.2.40")
        self.assertEqual(line, b"DENIED\n")
        h.files["alice"] = parse_knockfile(read_private(out), out)
        grant, transport = h.knock(ip="192.0.2.41")
        self.assertEqual((grant.index, transport.value()), (1, b"OPEN\n"))
        self.assertNotEqual(h.files["alice"].knock(1), old.knock(1))


class BookTests(SynchronousTestCase):
    def test_knocks_read_in_order_out_of_order_and_after_a_change(self):
        """
        The book finds each granted line whether or not it follows the last
        one read, and never serves a line from a file that has changed.
        """
        from knocker.admin.clients import generate_client
        from knocker.core.knockfile import parse_knockfile
        from knocker.files import read_private

        h = Harness(self, knocks=50)
        kf = h.files["alice"]
        for index in (1, 2, 3, 10, 4, 50, 49):
            self.assertEqual(h.book.knock("alice", index), kf.knock(index))
        out = h.dir + "/again.knock"
        generate_client(h.config, "alice", 50, 3, out, force=True)
        fresh = parse_knockfile(read_private(out), out)
        state = h.store.client("alice")
        h.book.secret("alice", state.secret_id)
        self.assertEqual(h.book.knock("alice", 50), fresh.knock(50))
        self.assertEqual(h.book.knock("alice", 1), fresh.knock(1))


class ReadAheadTests(SynchronousTestCase):
    """
    After a verdict the book reads the client's next knock, so that granting
    it costs a stat; a file changed in any way since is read again (and
    refused, if it must be).
    """

    def counting_opens(self):
        import knocker.state.book as book

        opened = []
        real = book.open_private

        def counted(path):
            opened.append(path)
            return real(path)

        self.patch(book, "open_private", counted)
        return opened

    def test_the_next_knock_is_read_after_the_verdict(self):
        h = Harness(self, knocks=10)
        grant, transport = h.knock()
        self.assertEqual((grant.index, transport.value()), (1, b"OPEN\n"))
        opened = self.counting_opens()
        self.assertEqual(h.book.knock("alice", 2), h.files["alice"].knock(2))
        self.assertEqual(opened, [])
        # Taken once: asked again, it is read from the file.
        self.assertEqual(h.book.knock("alice", 2), h.files["alice"].knock(2))
        self.assertEqual(len(opened), 1)

    def test_another_knock_than_the_one_read_ahead_is_read(self):
        h = Harness(self, knocks=10)
        h.book.read_ahead("alice", 2)
        opened = self.counting_opens()
        self.assertEqual(h.book.knock("alice", 5), h.files["alice"].knock(5))
        self.assertEqual(len(opened), 1)

    def test_a_file_opened_to_others_since_is_refused(self):
        from knocker.core.knockfile import KnockFileError

        h = Harness(self, knocks=10)
        h.book.read_ahead("alice", 2)
        os.chmod(h.book.path("alice"), 0o644)
        with self.assertRaises(KnockFileError) as caught:
            h.book.knock("alice", 2)
        self.assertIn("open to group or others", str(caught.exception))

    def test_a_file_rewritten_since_is_read_again(self):
        from knocker.files import read_private, write_private

        h = Harness(self, knocks=10)
        h.book.read_ahead("alice", 2)
        path = h.book.path("alice")
        text = read_private(path)
        line = next(line for line in text.splitlines() if line.startswith("2 "))
        ports = line.split()[1].split(",")
        swapped = "2 " + ",".join(reversed(ports))
        write_private(path, text.replace(line, swapped))
        self.assertEqual(h.book.knock("alice", 2),
                         tuple(int(port) for port in reversed(ports)))

    def test_a_knock_the_file_lacks_is_left_to_the_grant_to_refuse(self):
        from knocker.core.knockfile import KnockFileError

        h = Harness(self, knocks=3)
        h.book.read_ahead("alice", 4)  # past the end: nothing kept, nothing raised
        with self.assertRaises(KnockFileError) as caught:
            h.book.knock("alice", 4)
        self.assertIn("no knock number 4", str(caught.exception))


class StoreFailureTests(SynchronousTestCase):
    def test_a_failing_state_gives_error_not_a_dropped_connection(self):
        h = Harness(self)

        def broken(client, secret_id=None):
            raise OSError("disk I/O error")

        h.store.burn = broken
        line, proto, transport, _ = h.handshake()
        self.assertEqual(line, b"ERROR server-error\n")
        self.assertTrue(transport.disconnecting)
        self.flushLoggedErrors(OSError)
