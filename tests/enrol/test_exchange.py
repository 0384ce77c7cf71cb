"""
The enrolment exchange without sockets: the client's coroutine
(L{knocker.enrol.client.enroll}) against the server's state machine
(L{knocker.enrol.server.EnrolServer}) over an in-memory line pipe, with a
L{MemoryStore}; and the key schedule by itself.
"""

import random
from datetime import datetime, timezone
from unittest import TestCase

from knocker.client.knock import run_blocking
from knocker.core.knockgen import format_knockfile, generate
from knocker.core.tracker import Refusal
from knocker.enrol import keys as k
from knocker.enrol.client import Outcome, enroll
from knocker.enrol.server import TRIES, EnrolServer
from knocker.state.memory import MemoryStore

FILE = format_knockfile(generate("alice", tuple(range(20000, 20010)), 3, 2, random.Random(7),
                                 b"\xab" * 32, datetime(2026, 12, 1, tzinfo=timezone.utc)))
WORDS = "crossover-clockwork-lantern"


class Tracker:
    def __init__(self):
        self.locked = 0
        self.failures = []

    def refusal(self, ip):
        return Refusal("locked", self.locked) if self.locked else None

    def source_of(self, ip):
        return ip

    def failed_attempt(self, ip, reason):
        self.failures.append((ip, reason))


class Audit:
    def __init__(self):
        self.events = []

    def record(self, event, **fields):
        self.events.append((event, fields))

    def locked(self, **fields):
        self.record("locked", **fields)
        return True

    def enrol_refused(self, **fields):
        self.record("enrol", **fields)
        return True

    def outcomes(self):
        return [fields["outcome"] for event, fields in self.events if event == "enrol"]


class Pipe:
    """
    A driver whose connection feeds lines to a fresh L{EnrolServer};
    C{tamper(n, line)} may change the n-th server line on its way.
    """

    def __init__(self, case, tamper=None, cut_after=None):
        self.case = case
        self.tamper = tamper or (lambda n, line: line)
        self.cut_after = cut_after
        self.sent = []

    def now(self):
        return 0.0

    async def connect(self, endpoint, timeout):
        return _Conn(self, self.case.server())


class _Conn:
    peer_host = "127.0.0.1"

    def __init__(self, pipe, server):
        self.pipe = pipe
        self.server = server
        self.queue = []
        self.closed = False

    def send(self, line):
        assert line.endswith(b"\n")
        for send in self.server.receive(line[:-1]):
            n = len(self.pipe.sent)
            self.pipe.sent.append(send.line)
            if self.pipe.cut_after is not None and n >= self.pipe.cut_after:
                self.closed = True
                return
            self.queue.append(self.pipe.tamper(n, send.line))
            if send.close:
                self.closed = True

    async def readline(self, timeout):
        if self.queue:
            return self.queue.pop(0).rstrip(b"\n")
        return None

    def close(self):
        pass


class ExchangeTests(TestCase):
    def setUp(self):
        self.store = MemoryStore()
        self.tracker = Tracker()
        self.audit = Audit()
        self.now = 1000.0
        self.slot = self.store.add_invitation("alice", WORDS, 2000.0, TRIES, self.now)

    def server(self):
        return EnrolServer("192.0.2.7", self.store, lambda client: FILE, self.audit, self.tracker,
                           lambda: self.now)

    def enroll(self, words=WORDS, slot=None, **pipe):
        return run_blocking(enroll(Pipe(self, **pipe), "tcp:x:1", slot or self.slot, words))

    def test_right_code_gets_the_file(self):
        result = self.enroll()
        self.assertIs(result.outcome, Outcome.ENROLLED, result.message())
        self.assertEqual(result.text, FILE)
        self.assertEqual(self.store.invitation(self.slot).state(self.now), "used")
        self.assertEqual(self.audit.outcomes(), ["ok"])
        self.assertEqual(self.tracker.failures, [])

    def test_one_deadline_for_the_whole_exchange(self):
        """
        Each line within what is left of C{timeout}, not a fresh C{timeout}
        each: a server dripping its DATA lines (a man in the middle of plain
        TCP may announce the most there may be) cannot hold the command.
        """
        class Dripping(Pipe):
            t = 0.0

            def now(self):
                return self.t

            async def connect(self, endpoint, timeout):
                conn = await super().connect(endpoint, timeout)
                readline, pipe = conn.readline, self

                async def slowly(timeout):
                    self.case.assertGreater(timeout, 0)
                    pipe.t += 8.0  # each line takes 8 s to come
                    return await readline(timeout)
                conn.readline = slowly
                return conn

        pipe = Dripping(self)
        result = run_blocking(enroll(pipe, "tcp:x:1", self.slot, WORDS, timeout=12.0))
        self.assertIs(result.outcome, Outcome.NO_ANSWER, result.message())
        self.assertIn("did not finish within 12s", result.message())
        self.assertEqual(pipe.t, 16.0, "two lines read, the third never waited for")

    def test_a_big_announced_count_buys_no_time(self):
        """
        ENROLLED's count of DATA lines is under no MAC: a man in the middle
        announcing the most there may be, then silent, must not stretch the
        wait (the deadline grows only with the bytes that come).
        """
        waits = []

        class Announcing(Pipe):
            async def connect(self, endpoint, timeout):
                conn = await super().connect(endpoint, timeout)
                readline = conn.readline

                async def watched(timeout):
                    waits.append(timeout)
                    return await readline(timeout)
                conn.readline = watched
                return conn

        def inflate(n, line):
            if line.startswith(b"ENROLLED "):
                return line.rsplit(b" ", 1)[0] + b" 65536\n"
            return line

        result = run_blocking(enroll(Announcing(self, tamper=inflate), "tcp:x:1", self.slot,
                                     WORDS, timeout=30.0))
        self.assertIs(result.outcome, Outcome.NO_ANSWER, result.message())
        self.assertLessEqual(max(waits), 30.0, waits)

    def test_used_code_refused(self):
        self.enroll()
        self.assertIs(self.enroll().outcome, Outcome.USED)
        self.assertEqual(self.audit.outcomes(), ["ok", "used"])
        self.assertEqual(self.tracker.failures, [], "a stale code is no attack")

    def test_expired_code_refused(self):
        self.now = 2000.0
        self.assertIs(self.enroll().outcome, Outcome.EXPIRED)
        self.assertEqual(self.store.invitation(self.slot).attempts, 0)

    def test_unknown_slot_refused_and_counted(self):
        self.assertIs(self.enroll(slot=9).outcome, Outcome.UNKNOWN)
        self.assertEqual(self.tracker.failures, [("192.0.2.7", "denied")])

    def test_wrong_code_three_times_then_void(self):
        for attempt in range(1, TRIES + 1):
            result = self.enroll(words="crossover-clover-lantern")
            self.assertIs(result.outcome, Outcome.WRONG_CODE)
            self.assertEqual(self.store.invitation(self.slot).attempts, attempt)
        self.assertEqual(len(self.tracker.failures), TRIES, "each a failed attempt of its source")
        self.assertIs(self.enroll().outcome, Outcome.VOID, "even the right code, now")
        self.assertEqual(self.audit.outcomes(),
                         ["wrong-code", "wrong-code", "void", "wrong-code", "void"])

    def test_third_try_may_be_right(self):
        self.enroll(words="crossover-clover-lantern")
        self.enroll(words="crossover-clover-lantern")
        self.assertIs(self.enroll().outcome, Outcome.ENROLLED)

    def test_locked_source(self):
        self.tracker.locked = 42
        result = self.enroll()
        self.assertIs(result.outcome, Outcome.LOCKED)
        self.assertIn("42", result.detail)
        self.assertEqual(self.store.invitation(self.slot).attempts, 0, "no try taken")

    def test_cut_after_the_servers_message_costs_a_try(self):
        result = self.enroll(cut_after=0)
        self.assertIs(result.outcome, Outcome.NO_ANSWER)
        invitation = self.store.invitation(self.slot)
        self.assertEqual((invitation.attempts, invitation.state(self.now)), (1, "open"))
        self.assertIs(self.enroll().outcome, Outcome.ENROLLED)

    def test_unreadable_file_leaves_the_invitation_unused(self):
        def gone(client):
            raise OSError("the server's copy is gone")

        server = EnrolServer("192.0.2.7", self.store, gone, self.audit, self.tracker,
                             lambda: self.now)
        self.server = lambda: server
        result = self.enroll()
        self.assertIs(result.outcome, Outcome.SERVER_ERROR)
        self.assertEqual(self.store.invitation(self.slot).state(self.now), "open",
                         "not used: the file was read before the invitation was")
        del self.server
        self.assertIs(self.enroll().outcome, Outcome.ENROLLED)

    def test_dropped_after_enrolling_is_a_failed_attempt(self):
        """
        After ENROLLING, anything but CONFIRM spends the try on a guess the
        server never checked: a hang-up, a stray line, or a line that is
        not even well formed (empty, a bare CR, not ASCII, two spaces).
        """
        cuts = ("hang-up", b"HELLO", b"", b"\r", b"\xff", b"A  B")
        for cut in cuts:
            with self.subTest(cut=cut):
                # a fresh invitation each: three spent tries void one
                self.slot = self.store.add_invitation("alice", WORDS, 2000.0, TRIES, self.now)
                server = self.server()
                sends = server.receive(b"KNOCKER/1 ENROLL %d %s" % (
                    self.slot, k.b64(k.Pake(self.slot, WORDS).message).encode()))
                self.assertTrue(sends[0].line.startswith(b"ENROLLING "))
                if cut != "hang-up":
                    self.assertTrue(server.receive(cut)[0].line.startswith(b"ERROR "))
                server.connection_lost()
                self.assertEqual(self.tracker.failures[-1], ("192.0.2.7", "denied"))
        self.assertEqual(len(self.tracker.failures), len(cuts), "once each")
        self.assertEqual(self.audit.outcomes(), ["dropped"] * len(cuts))

    def test_a_file_lost_on_the_way_says_the_code_is_spent(self):
        """
        The server spends the invitation as it sends ENROLLED and the file
        (a code works once): a connection cut during the file leaves the
        user told that a new invitation is needed, not to try again; a cut
        before ENROLLED says nothing of the kind.
        """
        result = self.enroll(cut_after=2)  # ENROLLING and ENROLLED pass, DATA is lost
        self.assertIs(result.outcome, Outcome.NO_ANSWER)
        self.assertIn("the invitation is spent: ask for a new one", result.detail)
        self.assertIs(self.enroll().outcome, Outcome.USED)
        self.slot = self.store.add_invitation("alice", WORDS, 2000.0, TRIES, self.now)
        lost = self.enroll(cut_after=1)  # ENROLLED is lost: spent, the client cannot know
        self.assertIs(lost.outcome, Outcome.NO_ANSWER)
        self.assertIn("the invitation may be spent", lost.detail)
        self.assertIs(self.enroll().outcome, Outcome.USED)
        self.slot = self.store.add_invitation("alice", WORDS, 2000.0, TRIES, self.now)
        slow = self.enroll(tamper=lambda n, line: b"ERROR server-error" if n == 1 else line)
        self.assertIs(slow.outcome, Outcome.SERVER_ERROR)  # a fleet's database too slow
        self.assertIn("the invitation may be spent", slow.detail)
        self.slot = self.store.add_invitation("alice", WORDS, 2000.0, TRIES, self.now)
        before = self.enroll(cut_after=0)  # ENROLLING is lost: no CONFIRM sent
        self.assertIs(before.outcome, Outcome.NO_ANSWER)
        self.assertNotIn("spent", before.detail)

    def test_lost_after_confirm_or_before_enrolling_is_not_counted(self):
        self.server().connection_lost()
        server = self.server()
        self.server = lambda: server
        self.assertIs(self.enroll().outcome, Outcome.ENROLLED)
        server.connection_lost()
        self.assertEqual(self.tracker.failures, [])

    def test_expired_between_the_try_and_confirm(self):
        def later(n, line):
            if line.startswith(b"ENROLLING "):
                self.now = 2000.0  # the invitation expires while the client answers
            return line

        self.assertIs(self.enroll(tamper=later).outcome, Outcome.EXPIRED)
        self.assertFalse(self.store.invitation(self.slot).used)

    def test_tampered_file_refused(self):
        def flip(n, line):
            if line.startswith(b"DATA ") and n == 2:
                data = bytearray(k.unb64(line[5:-1].decode()))
                data[20] ^= 1
                return b"DATA " + k.b64(bytes(data)).encode() + b"\n"
            return line

        result = self.enroll(tamper=flip)
        self.assertIs(result.outcome, Outcome.BAD_SERVER)
        self.assertIn("does not verify", result.detail)
        self.assertIsNone(result.text)

    def test_a_file_that_does_not_parse_is_the_servers_fault(self):
        """
        Sealed with the right key, so from the server that holds the code:
        its copy is damaged.  Exit 13 (the server broke the protocol), not
        an ENROLLED that the command then refuses as a usage error.
        """
        damaged = EnrolServer("192.0.2.7", self.store, lambda client: "garbage\n", self.audit,
                              self.tracker, lambda: self.now)
        self.server = lambda: damaged
        result = self.enroll()
        self.assertIs(result.outcome, Outcome.BAD_SERVER)
        self.assertIn("not a portknock file", result.detail)
        self.assertIsNone(result.text)

    def test_tampered_spake_message_fails_both_ways(self):
        """
        An active attacker who swaps the server's SPAKE2 message for its own
        gets the client's CONFIRM (one guess, spent) and no file.
        """
        attacker = k.Pake(self.slot, "crossover-clover-lantern")

        def swap(n, line):
            if line.startswith(b"ENROLLING "):
                return b"ENROLLING " + k.b64(attacker.message).encode() + b"\n"
            return line

        result = self.enroll(tamper=swap)
        self.assertIs(result.outcome, Outcome.WRONG_CODE)
        self.assertIsNone(result.text)

    def test_endless_data_refused(self):
        def endless(n, line):
            if line.startswith(b"ENROLLED "):
                words = line.split(b" ")
                return b"ENROLLED " + words[1] + b" %d\n" % (k.MAX_DATA_LINES + 1)
            return line

        result = self.enroll(tamper=endless)
        self.assertIs(result.outcome, Outcome.BAD_SERVER)
        self.assertIn("more than", result.detail)

    def test_wrong_server_confirmation(self):
        def forge(n, line):
            if line.startswith(b"ENROLLED "):
                words = line.split(b" ")
                return b"ENROLLED " + b"0" * 64 + b" " + words[2]
            return line

        result = self.enroll(tamper=forge)
        self.assertIs(result.outcome, Outcome.BAD_SERVER)
        self.assertIn("key confirmation", result.detail)

    def test_an_over_long_line_is_the_servers_fault(self):
        """
        The driver refuses a line longer than the protocol allows (a
        ProtocolError, a kind of ValueError): that is a bad server (exit
        13), not a usage mistake (exit 2) of the user's.
        """
        from knocker.client.knock import over_long_line

        class Overlong(_Conn):
            async def readline(self, timeout):
                if len(self.pipe.sent) >= 2:
                    raise over_long_line(b"D" * 2000)
                return await super().readline(timeout)

        class OverlongPipe(Pipe):
            async def connect(self, endpoint, timeout):
                return Overlong(self, self.case.server())

        result = run_blocking(enroll(OverlongPipe(self), "tcp:x:1", self.slot, WORDS))
        self.assertIs(result.outcome, Outcome.BAD_SERVER, result.message())
        self.assertIn("over-long line", result.detail)

    def test_malformed_lines(self):
        for line in (b"KNOCKER/1 ENROLL 01 AAAA", b"KNOCKER/1 ENROLL 1 !!", b"KNOCKER/1 ENROLL 1",
                     b"CONFIRM " + b"0" * 64, b"\xff", b"KNOCKER/1 ENROLL  1 x"):
            with self.subTest(line=line):
                sends = self.server().receive(line)
                self.assertEqual(len(sends), 1)
                self.assertTrue(sends[0].close)
                self.assertTrue(sends[0].line.startswith(b"ERROR "), sends[0].line)
                self.assertIsNotNone(sends[0].fault)
        self.assertEqual(self.store.invitation(self.slot).attempts, 0)

    def test_lines_stay_short(self):
        big = format_knockfile(generate("alice", tuple(range(20000, 20100)), 2000, 6,
                                        random.Random(7), b"\xab" * 32,
                                        datetime(2026, 12, 1, tzinfo=timezone.utc)))
        self.assertGreater(len(big), 80_000)
        server = EnrolServer("192.0.2.7", self.store, lambda client: big, self.audit,
                             self.tracker, lambda: self.now)
        pipe = Pipe(self)
        self.server = lambda: server
        result = run_blocking(enroll(pipe, "tcp:x:1", self.slot, WORDS))
        self.assertEqual(result.text, big)
        self.assertLessEqual(max(len(line) for line in pipe.sent), 512)


class EndpointTests(TestCase):
    def test_an_endpoint_twisted_cannot_parse_is_a_usage_error(self):
        class Refusing:
            async def connect(self, endpoint, timeout):
                raise ValueError(f"Unknown endpoint type: {endpoint!r}")

        result = run_blocking(enroll(Refusing(), "bogus", 7, WORDS))
        self.assertIs(result.outcome, Outcome.USAGE)
        self.assertIn("bogus", result.detail)


class KeyScheduleTests(TestCase):
    def test_both_sides_agree(self):
        client, server = k.Pake(7, WORDS), k.Pake(7, WORDS)
        ck = client.finish(client.message, server.message, server.message)
        sk = server.finish(client.message, server.message, client.message)
        self.assertEqual(ck, sk)
        self.assertEqual(len({ck.client_confirm, ck.server_confirm, ck.file_key}), 3)
        self.assertTrue(sk.check_client(ck.client_mac()))
        self.assertTrue(ck.check_server(sk.server_mac()))
        self.assertNotEqual(ck.client_mac(), ck.server_mac())

    def test_other_code_or_slot_other_keys(self):
        for slot, words in ((7, "crossover-clover-lantern"), (8, WORDS)):
            client, server = k.Pake(slot, words), k.Pake(7, WORDS)
            ck = client.finish(client.message, server.message, server.message)
            sk = server.finish(client.message, server.message, client.message)
            self.assertNotEqual(ck.file_key, sk.file_key)
            self.assertFalse(sk.check_client(ck.client_mac()))

    def test_transcript_binds_the_messages(self):
        self.assertNotEqual(k.transcript(7, b"a", b"b"), k.transcript(7, b"b", b"a"))
        self.assertNotEqual(k.transcript(7, b"a", b"b"), k.transcript(8, b"a", b"b"))

    def test_seal_round_trip_and_tamper(self):
        key = bytes(32)
        sealed = k.seal(key, b"file", b"ad")
        self.assertEqual(k.unseal(key, sealed, b"ad"), b"file")
        self.assertNotEqual(k.seal(key, b"file", b"ad"), sealed, "a fresh nonce each time")
        for bad in (sealed[:-1] + bytes([sealed[-1] ^ 1]), sealed[:10]):
            self.assertRaises(k.VerifyError, k.unseal, key, bad, b"ad")
        self.assertRaises(k.VerifyError, k.unseal, key, sealed, b"other")
        self.assertRaises(k.VerifyError, k.unseal, bytes([1]) + bytes(31), sealed, b"ad")

    def test_not_a_spake_message(self):
        pake = k.Pake(7, WORDS)
        for bad in (b"", b"S" + bytes(32), b"x" * 33, b"S" + b"\xff" * 32):
            self.assertRaises(k.VerifyError, pake.finish, b"", b"", bad)
            pake = k.Pake(7, WORDS)

    def test_base64_strict(self):
        self.assertEqual(k.unb64(k.b64(b"abc")), b"abc")
        for bad in ("!!", "YWJj\n", "YWJ", "YW Jj"):
            self.assertRaises(k.VerifyError, k.unb64, bad)


class EnrollOutputTests(TestCase):
    """
    C{knocker enroll}'s two output files: the portknock file and its
    configuration (STEM.conf) are each refused if they exist (without
    --force), and may not be one file.
    """

    def setUp(self):
        import os
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="knocker-enroll-")
        here = os.getcwd()
        os.chdir(self.dir)
        self.addCleanup(os.chdir, here)
        self.runs = []

    def enroll(self, *args, result=None, during=None):
        import contextlib
        import io
        from unittest import mock

        from knocker.admin.cli import main
        from knocker.enrol import client

        def run(*call):
            self.runs.append(call)
            if during is not None:
                during()
            return result or client.Result(Outcome.UNREACHABLE, "not here")

        err = io.StringIO()
        with mock.patch.object(client, "run", run), contextlib.redirect_stderr(err), \
                contextlib.redirect_stdout(io.StringIO()):
            status = main(["enroll", "7-crossover-clockwork-lantern", "--server", "tcp:x:1",
                           *args])
        return status, err.getvalue()

    def test_config_may_not_be_the_output(self):
        status, err = self.enroll("-o", "alice.conf")
        self.assertEqual(status, 2)
        self.assertIn("written over the portknock file", err)
        self.assertEqual(self.runs, [], "refused before the code is spent")

    def test_existing_config_refused_without_force(self):
        with open("alice.conf", "w") as f:
            f.write("mine\n")
        status, err = self.enroll("-o", "alice.knock")
        self.assertEqual((status, self.runs), (2, []))
        self.assertIn("alice.conf exists", err)
        status, err = self.enroll("-o", "alice.knock", "--force")
        self.assertEqual(len(self.runs), 1, "--force goes on")

    def enrolled_text(self):
        import random
        from datetime import datetime, timezone

        from knocker.core.knockgen import format_knockfile, generate

        return format_knockfile(generate("alice", tuple(range(3000, 3020)), 3, 2,
                                         random.Random(1), bytes(32),
                                         datetime.now(timezone.utc)))

    def test_an_output_that_appears_during_the_exchange_is_left_alone(self):
        import os

        from knocker.enrol import client

        os.mkdir("keys")
        text = self.enrolled_text()

        def appears():
            with open("keys/alice.knock", "w") as f:
                f.write("mine\n")

        status, err = self.enroll("-o", "keys/alice.knock", during=appears,
                                  result=client.Result(Outcome.ENROLLED, text=text))
        self.assertEqual(status, 0, err)
        self.assertIn("appeared while the code was exchanged", err)
        with open("keys/alice.knock") as f:
            self.assertEqual(f.read(), "mine\n")
        kept = [name for name in os.listdir("keys") if name.endswith(".knock")
                and name != "alice.knock"]
        self.assertEqual(len(kept), 1, os.listdir("keys"))
        with open(os.path.join("keys", kept[0])) as f:
            self.assertEqual(f.read(), text)

    def test_default_output_keeps_an_existing_config(self):
        import os

        from knocker.enrol import client

        text = self.enrolled_text()
        with open("alice.conf", "w") as f:
            f.write("mine\n")
        status, err = self.enroll(result=client.Result(Outcome.ENROLLED, text=text))
        self.assertEqual(status, 0, err)
        with open("alice.conf") as f:
            self.assertEqual(f.read(), "mine\n")
        self.assertFalse(os.path.exists("alice.knock"))
        written = sorted(os.listdir("."))
        self.assertEqual(len(written), 3, written)
        self.assertTrue(any(name.endswith(".knock") for name in written))


class ServerErrorShownTests(TestCase):
    def test_an_error_reason_reaches_the_terminal_escaped(self):
        """
        An impostor's (or a man in the middle's) ERROR reason with terminal
        escapes is shown escaped: it cannot rewrite the user's screen.
        """
        from knocker.enrol.client import _final

        hostile = _final(["ERROR", "\x1b]0;owned\x07\x1b[2Kenrolled-ok"])
        self.assertIs(hostile.outcome, Outcome.SERVER_ERROR)
        self.assertNotIn("\x1b", hostile.detail)
        self.assertIn("\\x1b", hostile.detail)
        self.assertEqual(_final(["ERROR", "server-error"]).detail, "server-error")
