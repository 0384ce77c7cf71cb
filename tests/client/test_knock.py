"""
The knock coroutine on a scripted driver: what it sends, what it knocks,
when it retries, and the outcome it reports (no sockets, no reactor).
"""

import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from knocker.client.knock import Outcome, knock, run_blocking
from knocker.core import handshake as hs
from knocker.core.config import parse_client_config
from knocker.core.knockfile import KnockFile

SECRET = bytes(range(32))
KF = KnockFile("alice", SECRET, 3, "2026-11-25T10:00:00Z", ((1, 2, 3), (4, 5, 6)))
NONCE = "ab" * 32


class ScriptedIO:
    """
    A driver whose server answers from a script: one list of reply lines
    per connection (callables get the nonce context and return a line).
    """

    def __init__(self, *scripts):
        self.scripts = list(scripts)
        self.sent, self.hits, self.sleeps = [], [], []
        self.clock = 0.0

    def now(self):
        return self.clock

    def say(self, message):
        pass

    async def connect(self, endpoint, timeout):
        return ScriptedConnection(self, list(self.scripts.pop(0)))

    async def hit(self, host, port, timeout):
        self.hits.append(port)

    async def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.clock += seconds


class ScriptedConnection:
    peer_host = "192.0.2.1"
    greeted = None

    def __init__(self, io, replies):
        self._io = io
        self._replies = replies

    def send(self, line):
        self._io.sent.append(line)

    async def readline(self, timeout):
        return self._replies.pop(0) if self._replies else None

    def close(self):
        pass


class TimedIO(ScriptedIO):
    """
    A L{ScriptedIO} that records the timeout given to each wait, and can
    make a wait take all of it (the clock moves on, then the wait fails).
    """

    stall_hit = None
    stall_connect = False

    def __init__(self, *scripts):
        super().__init__(*scripts)
        self.timeouts = []

    async def connect(self, endpoint, timeout):
        from knocker.client.knock import Unreachable

        self.timeouts.append(("connect", timeout))
        if self.stall_connect:
            self.clock += timeout
            raise Unreachable("timed out")
        if not self.scripts:
            raise Unreachable("connection refused")
        return TimedConnection(self, list(self.scripts.pop(0)))

    async def hit(self, host, port, timeout):
        from knocker.client.knock import Trouble

        self.timeouts.append(("hit", timeout))
        if port == self.stall_hit:
            self.clock += timeout
            raise Trouble(f"knock on port {port}: the server did not close it")
        self.hits.append(port)


class TimedConnection(ScriptedConnection):
    async def readline(self, timeout):
        self._io.timeouts.append(("readline", timeout))
        return await super().readline(timeout)


def grant(index):
    return f"GRANT {index} 10 {hs.grant_mac(SECRET, 'alice', NONCE, index)}".encode()


def config(**keys):
    keys.setdefault("log-file", "/dev/null")
    return parse_client_config(overrides={k: str(v) for k, v in keys.items()})


class KnockCoroutineTests(SynchronousTestCase):
    def run_knock(self, io, **keys):
        return run_blocking(knock(io, config(**keys), KF, uniform=lambda a, b: 1.0))

    def test_open(self):
        io = ScriptedIO([f"CHALLENGE {NONCE}".encode(), grant(2), b"OPEN"])
        result = self.run_knock(io)
        self.assertEqual((result.outcome, result.index, result.ports), (Outcome.OPEN, 2, (4, 5, 6)))
        self.assertEqual(io.hits, [4, 5, 6])
        self.assertEqual(io.sent[0], b"KNOCKER/1 HELLO alice\n")
        self.assertEqual(io.sent[1], f"PROOF {hs.hello_mac(SECRET, 'alice', NONCE)}\n".encode())

    def test_hello_said_early_is_not_said_again(self):
        class Greeted(ScriptedIO):
            async def connect(self, endpoint, timeout):
                conn = await super().connect(endpoint, timeout)
                if len(self.scripts) == 1:  # the first connection only
                    conn.greeted = b"KNOCKER/1 HELLO alice\n"
                return conn

        busy_then_open = [f"CHALLENGE {NONCE}".encode(), b"BUSY 1"]
        io = Greeted(busy_then_open, [f"CHALLENGE {NONCE}".encode(), grant(2), b"OPEN"])
        result = self.run_knock(io, **{"busy-retries": 1})
        self.assertEqual(result.outcome, Outcome.OPEN)
        proof = f"PROOF {hs.hello_mac(SECRET, 'alice', NONCE)}\n".encode()
        # The retry's connection was not greeted: it says HELLO itself.
        self.assertEqual(io.sent, [proof, b"KNOCKER/1 HELLO alice\n", proof])

    def test_a_knock_begun_earlier_has_only_what_is_left_of_its_timeout(self):
        io = TimedIO([f"CHALLENGE {NONCE}".encode(), grant(2), b"OPEN"])
        io.clock = 4.0
        result = run_blocking(knock(io, config(timeout=10, **{"connect-timeout": 9}), KF,
                                    began=1.0))
        self.assertEqual(result.outcome, Outcome.OPEN)
        self.assertEqual(io.timeouts[0], ("connect", 7.0))
        self.assertEqual(io.timeouts[1], ("readline", 7.0))

    def test_a_first_server_that_took_the_whole_timeout_is_named(self):
        """
        A HELLO said early whose connect used up the timeout: the knock
        says which server and why, not just that the time passed.
        """
        io = TimedIO()
        io.stall_connect = True
        io.clock = 10.0
        result = run_blocking(knock(io, config(timeout=2, server="tcp:192.0.2.1:7000"), KF,
                                    began=7.0))
        self.assertEqual(result.outcome, Outcome.NO_VERDICT)
        self.assertIn("passed while connecting to tcp:192.0.2.1:7000 (timed out)",
                      result.message())

    def test_busy_is_polled_sooner_than_the_other_knocks_window(self):
        """
        BUSY 4 is what is left of another knock's window, which usually
        ends far sooner: the client polls after 1 s, then 2 s (growing, and
        never past what BUSY said).
        """
        busy = [f"CHALLENGE {NONCE}".encode(), b"BUSY 4"]
        io = ScriptedIO(busy, busy, busy, busy)
        result = self.run_knock(io, **{"busy-retries": 3})
        self.assertEqual((result.outcome, result.attempts), (Outcome.BUSY, 4))
        self.assertEqual(io.sleeps, [1.0, 2.0, 3.0])
        self.assertEqual(io.hits, [])

    def test_full_central_port_is_retried_like_busy(self):
        io = ScriptedIO([b"ERROR too-many-connections"],
                        [f"CHALLENGE {NONCE}".encode(), grant(1), b"OPEN"])
        result = self.run_knock(io)
        self.assertEqual((result.outcome, result.attempts), (Outcome.OPEN, 2))
        self.assertEqual(io.sleeps, [1.0])

    def test_full_central_port_after_a_grant_is_not_retried(self):
        """
        A server of ours never says it after GRANT; a man in the middle of
        a plain TCP central port might, to make the client burn its file's
        knocks one retry after another.  One knock, logged with its number.
        """
        io = ScriptedIO([f"CHALLENGE {NONCE}".encode(), grant(1), b"ERROR too-many-connections"],
                        [f"CHALLENGE {NONCE}".encode(), grant(2), b"OPEN"])
        result = self.run_knock(io)
        self.assertEqual((result.outcome, result.attempts), (Outcome.SERVER_ERROR, 1))
        self.assertEqual((result.index, result.ports), (1, (1, 2, 3)))
        self.assertEqual(io.sleeps, [])

    def test_forged_grant_knocks_nothing(self):
        forged = f"GRANT 1 10 {'0' * 64}".encode()
        io = ScriptedIO([f"CHALLENGE {NONCE}".encode(), forged])
        result = self.run_knock(io)
        self.assertEqual(result.outcome, Outcome.BAD_SERVER)
        self.assertEqual(io.hits, [])

    def test_busy_wait_past_the_timeout_ends_the_knock_without_waiting(self):
        """
        The client's timeout covers the retries: a pause that would pass it
        is not taken, and the knock ends with no verdict (exit 14).
        """
        busy = [f"CHALLENGE {NONCE}".encode(), b"BUSY 4"]
        io = ScriptedIO(busy, busy, busy)
        result = self.run_knock(io, **{"busy-retries": 2, "timeout": 2.5})
        self.assertEqual((result.outcome, result.attempts), (Outcome.NO_VERDICT, 2))
        self.assertEqual(io.sleeps, [1.0])  # 1 s fits in 2.5; the next 2 s does not
        self.assertIn("the client's timeout of 2.5s would pass before the retry in 2.0s",
                      result.detail)

    def test_every_wait_is_bounded_by_what_is_left_of_the_timeout(self):
        """
        One deadline for the whole knock: after a 1 s pause, the second
        attempt's connect, lines and hits get at most the 9 s left of 10.
        """
        busy = [f"CHALLENGE {NONCE}".encode(), b"BUSY 4"]
        io = TimedIO(busy, [f"CHALLENGE {NONCE}".encode(), grant(1), b"OPEN"])
        result = self.run_knock(io, **{"timeout": 10, "connect-timeout": 9.5})
        self.assertEqual((result.outcome, result.attempts), (Outcome.OPEN, 2))
        first, second = io.timeouts[:3], io.timeouts[3:]
        self.assertEqual(first, [("connect", 9.5), ("readline", 10.0), ("readline", 10.0)])
        self.assertEqual(second, [("connect", 9.0)] + [("readline", 9.0)] * 2
                         + [("hit", 9.0)] * 3 + [("readline", 9.0)])

    def test_timeout_passing_in_a_wait_is_no_verdict_saying_so(self):
        io = TimedIO([f"CHALLENGE {NONCE}".encode(), grant(1), b"OPEN"])
        io.stall_hit = 2  # the second port takes all the time left
        result = self.run_knock(io, **{"timeout": 10, "connect-timeout": 20})
        self.assertEqual((result.outcome, result.index), (Outcome.NO_VERDICT, 1))
        self.assertIn("the client's timeout of 10s passed while knocking port 2", result.detail)
        self.assertEqual(io.clock, 10.0)

    def test_connect_cut_short_by_the_timeout_is_no_verdict(self):
        io = TimedIO()
        io.stall_connect = True
        result = self.run_knock(io, **{"timeout": 3, "connect-timeout": 5})
        self.assertEqual(result.outcome, Outcome.NO_VERDICT)
        self.assertIn("the client's timeout of 3s passed while connecting", result.detail)

    def test_connect_refused_is_still_unreachable(self):
        io = TimedIO()
        result = self.run_knock(io)  # no script: refused at once
        self.assertEqual(result.outcome, Outcome.UNREACHABLE)

    def test_each_fail_reason_has_its_own_outcome(self):
        for reason, outcome in [("wrong-port", Outcome.WRONG_PORT), ("timeout", Outcome.TIMEOUT),
                                ("locked-out", Outcome.LOCKED_OUT),
                                ("action-failed", Outcome.ACTION_FAILED),
                                ("revoked", Outcome.DENIED)]:
            io = ScriptedIO([f"CHALLENGE {NONCE}".encode(), grant(1), f"FAIL {reason}".encode()])
            self.assertEqual(self.run_knock(io).outcome, outcome)

    def test_exit_statuses_are_distinct(self):
        from knocker.client.knock import OUTCOMES

        codes = [outcome.exit_code for outcome in OUTCOMES]
        self.assertEqual(len(codes), len(set(codes)))
        self.assertEqual(Outcome.OPEN.exit_code, 0)


class RenewedMeanwhileTests(SynchronousTestCase):
    """
    Two knocks of one client at once: the first takes a renewal and writes
    the new file while the second, holding the old one, is DENIED.  The
    second knocks again, once, with the file now on disk.
    """

    def setUp(self):
        import os

        from knocker.core.knockfile import KnockFileText
        from knocker.core.knockgen import format_knockfile
        from knocker.files import write_private

        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "alice.knock")
        write_private(self.path, format_knockfile(KF))
        self.old = KnockFileText(format_knockfile(KF), self.path)
        self.new_secret = bytes(range(100, 132))
        self.renewed = KF.replace(secret=self.new_secret)

    def knock(self, io):
        conf = config(**{"knock-file": self.path})
        return run_blocking(knock(io, conf, self.old))

    def test_denied_then_the_renewed_file(self):
        from knocker.core.knockgen import format_knockfile
        from knocker.files import write_private

        write_private(self.path, format_knockfile(self.renewed))  # by the other knock
        new_grant = (f"GRANT 1 10 {hs.grant_mac(self.new_secret, 'alice', NONCE, 1)}").encode()
        io = ScriptedIO([f"CHALLENGE {NONCE}".encode(), b"DENIED"],
                        [f"CHALLENGE {NONCE}".encode(), new_grant, b"OPEN"])
        result = self.knock(io)
        self.assertEqual((result.outcome, result.attempts), (Outcome.OPEN, 2))
        proofs = [line for line in io.sent if line.startswith(b"PROOF ")]
        self.assertEqual(proofs, [f"PROOF {hs.hello_mac(secret, 'alice', NONCE)}\n".encode()
                                  for secret in (SECRET, self.new_secret)])

    def test_denied_with_the_file_unchanged_is_denied(self):
        io = ScriptedIO([f"CHALLENGE {NONCE}".encode(), b"DENIED"])
        result = self.knock(io)
        self.assertEqual((result.outcome, result.attempts), (Outcome.DENIED, 1))

    def test_once_only(self):
        from knocker.core.knockgen import format_knockfile
        from knocker.files import write_private

        write_private(self.path, format_knockfile(self.renewed))
        io = ScriptedIO([f"CHALLENGE {NONCE}".encode(), b"DENIED"],
                        [f"CHALLENGE {NONCE}".encode(), b"DENIED"])
        result = self.knock(io)
        self.assertEqual((result.outcome, result.attempts), (Outcome.DENIED, 2))


class CheckedRecordTests(SynchronousTestCase):
    """
    The whole-file check runs once per file: its identity (device, inode,
    size, times) is kept in FILE.checked, and a file that changed, or was
    replaced, is checked again.
    """

    def setUp(self):
        import os

        from knocker.core.knockgen import format_knockfile
        from knocker.files import write_private

        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "alice.knock")
        self.text = format_knockfile(KF)
        write_private(self.path, self.text)
        self.checks = []
        # A file written this instant has not settled (its times could
        # stay as they are through another write); the knocks in these
        # tests come a minute later by this clock.
        self.now = lambda: time.time() + 60

    def read(self):
        from knocker.core.knockfile import KnockFileText
        from knocker.files import read_private_identified

        text, identity = read_private_identified(self.path, now=self.now)
        return KnockFileText(text, self.path, identity)

    def run_knock(self, kf=None):
        import contextlib
        import os

        kf = self.read() if kf is None else kf
        io = ScriptedIO([f"CHALLENGE {NONCE}".encode(), grant(1), b"OPEN"])
        conf = config(**{"knock-file": self.path})
        with contextlib.suppress(FileNotFoundError):  # (each knock here is granted 1:
            os.unlink(self.path + ".granted")         # GrantedRecordTests' concern)
        return run_blocking(knock(io, conf, kf)), io

    def count_checks(self):
        from knocker.core import knockfile

        real = knockfile.knocks_at_a_glance

        def counted(*args):
            self.checks.append(args)
            return real(*args)

        self.patch(knockfile, "knocks_at_a_glance", counted)

    def rewrite(self, text):
        """
        Write the file again in place, as an editor that keeps the inode
        does, with its modification time set back: only its change time
        (set by the kernel) tells.
        """
        import os

        before = os.stat(self.path)
        time.sleep(0.05)  # past the tick of the file system's clock
        with open(self.path, "r+") as handle:
            handle.write(text)
            handle.truncate()
        os.utime(self.path, ns=(before.st_atime_ns, before.st_mtime_ns))

    def test_checked_once_then_remembered(self):
        import os
        import stat

        self.count_checks()
        first, _ = self.run_knock()
        record = self.path + ".checked"
        self.assertEqual(stat.S_IMODE(os.stat(record).st_mode), 0o600)
        info = os.stat(self.path)
        with open(record) as handle:
            self.assertEqual(handle.read().split(), [
                "file", str(info.st_dev), str(info.st_ino), str(info.st_size),
                str(info.st_mtime_ns), str(info.st_ctime_ns)])
        second, io = self.run_knock()
        self.assertEqual((first.outcome, second.outcome), (Outcome.OPEN, Outcome.OPEN))
        self.assertEqual(len(self.checks), 1, "the unchanged file was checked again")
        self.assertEqual(io.hits, [1, 2, 3])

    def test_a_file_changed_just_now_is_not_remembered(self):
        """
        Its times could stay the same through another write in the same
        tick of the file system's clock: it is checked until it settles.
        """
        import os

        self.now = time.time
        self.count_checks()
        for _ in range(2):
            result, _ = self.run_knock()
            self.assertEqual(result.outcome, Outcome.OPEN)
        self.assertEqual(len(self.checks), 2)
        self.assertFalse(os.path.exists(self.path + ".checked"))

    def test_one_file_object_knocking_twice_writes_the_record_once(self):
        """
        A long-lived client (one parsed file, many knocks) records the
        check once, not at every knock.
        """
        from knocker.client import knock as module

        writes = []
        real = module.remember_checked
        self.patch(module, "remember_checked", lambda *a: (writes.append(a), real(*a)))
        kf = self.read()
        conf = config(**{"knock-file": self.path})
        for index in (1, 2):
            io = ScriptedIO([f"CHALLENGE {NONCE}".encode(), grant(index), b"OPEN"])
            self.assertEqual(run_blocking(knock(io, conf, kf)).outcome, Outcome.OPEN)
        self.assertEqual(len(writes), 1)

    def test_changed_file_is_checked_again_and_refused(self):
        self.run_knock()
        damaged = self.text.replace("\n2 4,5,6", "\n2 4,4,6")  # the same size
        self.assertNotEqual(damaged, self.text)
        self.rewrite(damaged)
        result, io = self.run_knock()
        self.assertEqual(result.outcome, Outcome.BAD_FILE)
        self.assertIn(f"{self.path}, line ", result.detail)
        self.assertEqual(io.hits, [])

    def test_replaced_file_is_checked_again(self):
        from knocker.core.knockgen import format_knockfile
        from knocker.files import write_private

        self.run_knock()
        write_private(self.path, format_knockfile(KF))  # same text, a new inode
        self.count_checks()
        result, _ = self.run_knock()
        self.assertEqual(result.outcome, Outcome.OPEN)
        self.assertEqual(len(self.checks), 1)

    def test_text_without_a_file_is_checked_every_time(self):
        from knocker.core.knockfile import KnockFileText

        self.count_checks()
        for _ in range(2):
            result, _ = self.run_knock(KnockFileText(self.text, self.path))
            self.assertEqual(result.outcome, Outcome.OPEN)
        self.assertEqual(len(self.checks), 2)

    def test_unsafe_record_is_ignored(self):
        import os

        self.run_knock()
        os.chmod(self.path + ".checked", 0o644)
        self.count_checks()
        result, _ = self.run_knock()
        self.assertEqual(result.outcome, Outcome.OPEN)
        self.assertEqual(len(self.checks), 1, "a record others could have written was trusted")

    def test_a_record_that_is_not_an_identity_is_ignored(self):
        """
        A record from before (a SHA-256 of the text), or anything else,
        is not trusted: the file is checked and the record replaced.
        """
        from knocker.files import read_private, write_private

        write_private(self.path + ".checked", "ab" * 32 + "\n")
        self.count_checks()
        result, _ = self.run_knock()
        self.assertEqual(result.outcome, Outcome.OPEN)
        self.assertEqual(len(self.checks), 1)
        self.assertTrue(read_private(self.path + ".checked").startswith("file "))

    def test_record_that_cannot_be_written_costs_only_time(self):
        import os

        os.chmod(self.dir, 0o500)
        self.addCleanup(os.chmod, self.dir, 0o700)
        if os.access(self.dir, os.W_OK):  # root ignores the mode
            os.makedirs(self.path + ".checked")  # a directory: not writable as a file
        self.count_checks()
        for _ in range(2):
            result, _ = self.run_knock()
            self.assertEqual(result.outcome, Outcome.OPEN)
        self.assertEqual(len(self.checks), 2)


class GrantedRecordTests(SynchronousTestCase):
    """
    FILE.granted keeps the highest number a server granted the file: an
    impostor replaying a recorded exchange (its GRANT's MAC is good, made
    for the nonce the impostor chose again) gets nothing knocked.
    """

    def setUp(self):
        import os

        from knocker.core.knockgen import format_knockfile
        from knocker.files import write_private

        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "alice.knock")
        write_private(self.path, format_knockfile(KF))
        self.conf = config(**{"knock-file": self.path})

    def run_knock(self, index, answered=False):
        lines = [grant(index), b"OPEN"]
        if answered:  # the command's way: CHALLENGE read and PROOF sent before the knock
            machine = hs.ClientHandshake(KF)
            machine.hello()
            machine.receive(f"CHALLENGE {NONCE}".encode())

            class Answered(ScriptedIO):
                async def connect(self, endpoint, timeout):
                    conn = await super().connect(endpoint, timeout)
                    conn.answered = machine
                    return conn

            io = Answered(lines)
        else:
            io = ScriptedIO([f"CHALLENGE {NONCE}".encode(), *lines])
        return run_blocking(knock(io, self.conf, KF)), io

    def test_a_replayed_exchange_knocks_nothing(self):
        import os
        import stat

        for answered in (False, True):
            with self.subTest(answered=answered):
                first, _ = self.run_knock(1, answered)
                self.assertEqual(first.outcome, Outcome.OPEN)
                record = self.path + ".granted"
                self.assertEqual(stat.S_IMODE(os.stat(record).st_mode), 0o600)
                again, io = self.run_knock(1, answered)
                self.assertEqual(again.outcome, Outcome.BAD_SERVER)
                self.assertIn("replayed exchange", again.detail)
                self.assertEqual(io.hits, [], "a spent number is not knocked again")
                os.unlink(record)

    def test_a_record_found_loose_is_made_private(self):
        """Else it would never be read again (records must be 0600), and guard nothing."""
        import os
        import stat

        with open(self.path + ".granted", "w") as handle:
            handle.write("stale\n")
        os.chmod(self.path + ".granted", 0o644)
        self.run_knock(1)
        self.assertEqual(stat.S_IMODE(os.stat(self.path + ".granted").st_mode), 0o600)
        self.assertEqual(self.run_knock(1)[0].outcome, Outcome.BAD_SERVER)

    def test_a_later_number_goes_on(self):
        self.assertEqual(self.run_knock(1)[0].outcome, Outcome.OPEN)
        second, io = self.run_knock(2)
        self.assertEqual(second.outcome, Outcome.OPEN)
        self.assertEqual(io.hits, [4, 5, 6])

    def test_a_record_of_another_file_is_ignored(self):
        """A renewed file (another secret) starts again from its first knock."""
        from knocker.client.knock import _granted_tag
        from knocker.files import write_private

        other = KnockFile("alice", bytes(32), 3, KF.created, KF.knocks)
        write_private(self.path + ".granted", f"{_granted_tag(other)} 2\n")
        self.assertEqual(self.run_knock(1)[0].outcome, Outcome.OPEN)
        write_private(self.path + ".granted", f"{_granted_tag(KF)} 2\n")  # this file's
        self.assertEqual(self.run_knock(1)[0].outcome, Outcome.BAD_SERVER)


class ClientLogTests(SynchronousTestCase):
    """
    The client log line is written by hand (no json import on the knock
    path): it must still be one JSON object with the attempt's values.
    """

    @given(server=st.text(max_size=40), detail=st.text(max_size=80),
           index=st.one_of(st.none(), st.integers(1, 10**6)),
           ports=st.lists(st.integers(1, 65535), max_size=6),
           started=st.floats(min_value=0, max_value=4e9))
    @settings(max_examples=300, deadline=None)
    def test_each_line_is_the_json_of_the_attempt(self, server, detail, index, ports, started):
        import json
        import os
        import tempfile
        from datetime import datetime, timezone

        from knocker.client.knock import KnockResult, log_attempt

        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "client.log")
            conf = parse_client_config(overrides={"log-file": path}).replace(server=server)
            result = KnockResult(Outcome.OPEN, detail, index, tuple(ports), 2)
            log_attempt(conf, "alice", started, result)
            with open(path, encoding="utf-8") as handle:
                entry = json.loads(handle.read())
        self.assertEqual(
            {k: entry[k] for k in ("server", "client", "index", "ports", "verdict",
                                   "detail", "attempts")},
            {"server": server, "client": "alice", "index": index, "ports": ports,
             "verdict": "open", "detail": detail, "attempts": 2})
        written = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
        self.assertLessEqual(abs(written.replace(tzinfo=timezone.utc).timestamp() - started),
                             1e-5)

    def test_a_missing_folder_is_made_private_and_lines_are_appended(self):
        import json
        import os
        import stat

        from knocker.client.knock import KnockResult, log_attempt

        base = self.mktemp()
        path = os.path.join(base, "knocker", "client.log")
        conf = parse_client_config(overrides={"log-file": path})
        for index in (1, 2):
            log_attempt(conf, "alice", time.time(), KnockResult(Outcome.OPEN, "", index, (1, 2), 1))
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, encoding="utf-8") as handle:
            self.assertEqual([json.loads(line)["index"] for line in handle], [1, 2])

    def test_a_log_that_is_a_link_is_not_followed(self):
        """
        A link where the log should be (someone else's, in a shared folder)
        is not written through: the knock says it cannot write the log,
        and the file the link points to is untouched.
        """
        import os

        from knocker.client.knock import KnockResult, log_attempt

        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        target = os.path.join(base, "target")
        with open(target, "w") as handle:
            handle.write("theirs\n")
        path = os.path.join(base, "client.log")
        os.symlink(target, path)
        conf = parse_client_config(overrides={"log-file": path})
        import io
        import sys

        said = io.StringIO()
        self.patch(sys, "stderr", said)
        log_attempt(conf, "alice", time.time(), KnockResult(Outcome.OPEN, "", 1, (1, 2), 1))
        with open(target) as handle:
            self.assertEqual(handle.read(), "theirs\n")
        self.assertIn(f"cannot write the client log {path}", said.getvalue())


class FailoverIO(ScriptedIO):
    """
    A fleet: C{dead} endpoints refuse, the others answer from the script.
    """

    def __init__(self, dead, *scripts):
        super().__init__(*scripts)
        self.dead = dead
        self.tried = []

    async def connect(self, endpoint, timeout):
        from knocker.client.knock import Unreachable

        self.tried.append(endpoint)
        if endpoint in self.dead:
            raise Unreachable("connection refused")
        return await super().connect(endpoint, timeout)


class FailoverTests(SynchronousTestCase):
    """
    C{server} naming several gateways (spaces or newlines): tried in turn,
    the first whose central port answers is knocked.
    """

    def test_dead_first_endpoint_is_passed_over(self):
        io = FailoverIO({"tcp:a:7000"}, [f"CHALLENGE {NONCE}".encode(), grant(2), b"OPEN"])
        cfg = parse_client_config("[client]\nserver = tcp:a:7000\n  tcp:b:7000 tcp:c:7000\n",
                                  "/x/client.conf",
                                  overrides={"log-file": "/dev/null"})
        self.assertEqual(cfg.server, "tcp:a:7000 tcp:b:7000 tcp:c:7000")
        result = run_blocking(knock(io, cfg, KF))
        self.assertEqual(result.outcome, Outcome.OPEN)
        self.assertEqual(io.tried, ["tcp:a:7000", "tcp:b:7000"])

    def test_a_gateway_that_never_says_its_first_line_hands_over_after_connect_timeout(self):
        """
        Its port takes the connection, its daemon says nothing: the next
        gateway is tried once connect-timeout has passed, not the whole
        timeout (the last gateway gets what is left of it).
        """
        class Silent(FailoverIO):
            async def connect(self, endpoint, timeout):
                conn = await super().connect(endpoint, timeout)
                if endpoint == "tcp:a:7000":
                    io = self

                    async def stalls(timeout):
                        io.waits.append(timeout)
                        from knocker.client.knock import Trouble

                        io.clock += timeout
                        raise Trouble(f"no reply within {timeout:.1f}s")
                    conn.readline = stalls
                return conn

        io = Silent(set(), [], [f"CHALLENGE {NONCE}".encode(), grant(2), b"OPEN"])
        io.waits = []
        result = run_blocking(knock(io, config(**{"server": "tcp:a:7000 tcp:b:7000",
                                                  "timeout": 60, "connect-timeout": 5}), KF))
        self.assertEqual(result.outcome, Outcome.OPEN)
        self.assertEqual(io.tried, ["tcp:a:7000", "tcp:b:7000"])
        self.assertEqual(io.waits, [5.0])

    def test_all_dead_is_unreachable(self):
        io = FailoverIO({"tcp:a:7000", "tcp:b:7000"})
        result = run_blocking(knock(io, config(server="tcp:a:7000 tcp:b:7000"), KF))
        self.assertEqual(result.outcome, Outcome.UNREACHABLE)
        self.assertEqual(io.tried, ["tcp:a:7000", "tcp:b:7000"])

    def test_a_gateway_that_answers_error_before_a_grant_hands_over_to_the_next(self):
        """
        A gateway cut off from the fleet's database answers ERROR
        server-error, every time: no number was granted there, so the knock
        goes to the next gateway (before, it ended there, and the next was
        never tried).
        """
        io = FailoverIO(set(), [f"CHALLENGE {NONCE}".encode(), b"ERROR server-error"],
                        [f"CHALLENGE {NONCE}".encode(), grant(2), b"OPEN"])
        import json

        log = self.mktemp() + "-client.log"
        result = run_blocking(knock(io, config(server="tcp:a:7000 tcp:b:7000", **{
            "log-file": log}), KF))
        self.assertEqual((result.outcome, result.server), (Outcome.OPEN, "tcp:b:7000"))
        self.assertEqual(io.tried, ["tcp:a:7000", "tcp:b:7000"])
        self.assertEqual(io.hits, list(KF.knock(2)))
        with open(log, encoding="utf-8") as handle:
            self.assertEqual(json.loads(handle.read())["server"], "tcp:b:7000",
                             "the log names the gateway that opened")

    def test_a_gateway_that_closes_before_any_answer_hands_over_to_the_next(self):
        """
        A gateway that accepts and closes (or fails its TLS handshake)
        answered nothing: the next one is knocked, not the knock ended.
        """
        io = FailoverIO(set(), [], [f"CHALLENGE {NONCE}".encode(), grant(2), b"OPEN"])
        result = run_blocking(knock(io, config(server="tcp:a:7000 tcp:b:7000"), KF))
        self.assertEqual((result.outcome, result.server), (Outcome.OPEN, "tcp:b:7000"))
        self.assertEqual(io.tried, ["tcp:a:7000", "tcp:b:7000"])

    def test_a_retry_after_busy_starts_at_the_gateway_that_said_it(self):
        """
        The first gateway is out of reach, the second says BUSY: the
        retries go to the second, not back through the dead one first
        (each try of which can cost a connect-timeout).
        """
        busy = [f"CHALLENGE {NONCE}".encode(), b"BUSY 4"]
        io = FailoverIO({"tcp:a:7000"}, busy, busy,
                        [f"CHALLENGE {NONCE}".encode(), grant(2), b"OPEN"])
        result = run_blocking(knock(io, config(server="tcp:a:7000 tcp:b:7000 tcp:c:7000"), KF,
                                    uniform=lambda a, b: 1.0))
        self.assertEqual((result.outcome, result.attempts, result.server),
                         (Outcome.OPEN, 3, "tcp:b:7000"))
        self.assertEqual(io.tried, ["tcp:a:7000", "tcp:b:7000", "tcp:b:7000", "tcp:b:7000"])

    def test_a_retry_goes_round_the_list_from_the_busy_gateway(self):
        """Past the busy gateway, the ones after it come before those
        found out of reach."""
        busy = [f"CHALLENGE {NONCE}".encode(), b"BUSY 4"]
        io = FailoverIO({"tcp:a:7000"}, busy, [b"ERROR server-error"],
                        [f"CHALLENGE {NONCE}".encode(), grant(2), b"OPEN"])
        result = run_blocking(knock(io, config(server="tcp:a:7000 tcp:b:7000 tcp:c:7000"), KF,
                                    uniform=lambda a, b: 1.0))
        self.assertEqual((result.outcome, result.server), (Outcome.OPEN, "tcp:c:7000"))
        self.assertEqual(io.tried, ["tcp:a:7000", "tcp:b:7000", "tcp:b:7000", "tcp:c:7000"])

    def test_every_gateway_answering_error_is_a_server_error(self):
        io = FailoverIO({"tcp:c:7000"},
                        [f"CHALLENGE {NONCE}".encode(), b"ERROR server-error"],
                        [b"ERROR server-error"])
        result = run_blocking(knock(io, config(server="tcp:a:7000 tcp:b:7000 tcp:c:7000"), KF))
        self.assertEqual((result.outcome, result.detail), (Outcome.SERVER_ERROR, "server-error"))
        self.assertEqual(result.server, "tcp:b:7000", "the last to answer")
        self.assertEqual(io.tried, ["tcp:a:7000", "tcp:b:7000", "tcp:c:7000"])

    def test_an_error_after_a_grant_is_not_handed_over(self):
        """Past a GRANT a number is spent: the knock ends where it is."""
        io = FailoverIO(set(), [f"CHALLENGE {NONCE}".encode(), grant(2), b"ERROR server-error"],
                        [f"CHALLENGE {NONCE}".encode(), grant(3), b"OPEN"])
        result = run_blocking(knock(io, config(server="tcp:a:7000 tcp:b:7000"), KF))
        self.assertEqual((result.outcome, result.index), (Outcome.SERVER_ERROR, 2))
        self.assertEqual(io.tried, ["tcp:a:7000"])

    def test_each_endpoint_is_checked(self):
        from knocker.core.config import ConfigError

        self.assertRaises(ConfigError, config, server="tcp:a:7000 nonsense")
