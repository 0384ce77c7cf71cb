"""
Invitations as the administrator makes and replaces them, against the
harness's central port (real SQLite state and book, the real client's
exchange): a code only ever fetches the file it was made for, so a file
replaced (C{invite --force}, the console's Replace, C{generate --force})
or revoked leaves the earlier codes void, even mid-exchange; and an
expiry is bounded before anything is made.
"""

import math
import os
import subprocess
import sys
import time

from twisted.trial.unittest import TestCase

from knocker.admin.cli import main
from knocker.admin.clients import generate_client
from knocker.client.knock import run_blocking
from knocker.enrol.client import Outcome, _exchange
from knocker.enrol.invite import MAX_EXPIRES, check_invite, invite_client
from knocker.enrol.words import parse_code
from knocker.state.sqlite import SQLiteStore
from tests.helpers.harness import Harness, HarnessConnection, enrol_deadline, enroll
from tests.helpers.processes import environment


def enrol_with(h, code, ip="192.0.2.10"):
    return enroll(h, *parse_code(code), ip=ip)


def served(h, client="alice") -> str:
    return h.book.text(client)


class ReplacedFileTests(TestCase):
    def test_forced_invite_voids_the_earlier_code(self):
        """knocker invite CLIENT --force: the old code is refused, the new one enrols."""
        h = Harness(self, clients=())
        h.stop()
        first = invite_client(h.config, "alice", 9, 3, 3600)
        second = invite_client(h.config, "alice", 9, 3, 3600, force=True)
        h.start()
        old = enrol_with(h, first.code)
        self.assertIs(old.outcome, Outcome.VOID, old.message())
        self.assertIsNone(old.text)
        self.assertEqual(h.tracker_lockouts(), {}, "a stale code proves nothing")
        new = enrol_with(h, second.code)
        self.assertIs(new.outcome, Outcome.ENROLLED, new.message())
        self.assertEqual(new.text, served(h))

    def test_replace_in_the_console_voids_the_earlier_code(self):
        h = Harness(self, clients=())
        first = h.server.invite("alice", 9, 3, 3600, force=False)
        second = h.server.invite("alice", 9, 3, 3600, force=True)
        self.assertIs(enrol_with(h, first.code).outcome, Outcome.VOID)
        self.assertIs(enrol_with(h, second.code).outcome, Outcome.ENROLLED)

    def test_generate_force_voids_the_code(self):
        h = Harness(self, clients=())
        invited = h.server.invite("alice", 9, 3, 3600, force=False)
        generate_client(h.config, "alice", 9, 3, None, force=True)
        self.assertIs(enrol_with(h, invited.code).outcome, Outcome.VOID)

    def test_revoking_voids_the_code(self):
        h = Harness(self, clients=())
        invited = h.server.invite("alice", 9, 3, 3600, force=False)
        self.assertTrue(h.server.revoke("alice"))
        self.assertIs(enrol_with(h, invited.code).outcome, Outcome.VOID)

    def test_replaced_during_the_exchange(self):
        """
        The old code's exchange has its try and ENROLLING when the file is
        replaced: its CONFIRM gets neither the new file nor the new
        invitation, which still enrols.
        """
        h = Harness(self, clients=())
        first = h.server.invite("alice", 9, 3, 3600, force=False)
        replaced = []

        class ReplacedBeforeConfirm(HarnessConnection):
            def send(self, line):
                if line.startswith(b"CONFIRM "):
                    replaced.append(h.server.invite("alice", 9, 3, 3600, force=True))
                super().send(line)

        proto, transport = h.connect()
        slot, words = parse_code(first.code)
        old = run_blocking(_exchange(ReplacedBeforeConfirm(proto, transport), slot, words, enrol_deadline()))
        self.assertIs(old.outcome, Outcome.VOID, old.message())
        self.assertIsNone(old.text)
        self.assertEqual([e["outcome"] for e in h.audit.of("enrol")], ["void"])
        new = enrol_with(h, replaced[0].code)
        self.assertIs(new.outcome, Outcome.ENROLLED, new.message())
        self.assertEqual(new.text, served(h))


    def test_a_confirm_between_the_new_copy_and_its_registration(self):
        """
        C{generate --force} (or C{invite --force}) in another process
        writes the new file's server copy, then registers its counter; a
        CONFIRM of the old code that the daemon takes between the two (a
        few milliseconds) must not fetch the new file.
        """
        import knocker.admin.clients

        h = Harness(self, clients=())
        first = h.server.invite("alice", 9, 3, 3600, force=False)
        confirm = []

        class CopyWritten(knocker.admin.clients.ClientBook):
            def add(self, kf):
                path = super().add(kf)
                confirm.pop()()  # the daemon takes the CONFIRM now
                return path

        class ConfirmWhileReplaced(HarnessConnection):
            def send(self, line):
                if line.startswith(b"CONFIRM "):
                    confirm.append(lambda: HarnessConnection.send(self, line))
                    generate_client(h.config, "alice", 9, 3, None, force=True)
                    self.confirmed_between = not confirm
                    return
                super().send(line)

        self.patch(knocker.admin.clients, "ClientBook", CopyWritten)
        proto, transport = h.connect()
        slot, words = parse_code(first.code)
        conn = ConfirmWhileReplaced(proto, transport)
        old = run_blocking(_exchange(conn, slot, words, enrol_deadline()))
        self.assertTrue(conn.confirmed_between, "the CONFIRM went in between")
        self.assertIs(old.outcome, Outcome.VOID, old.message())
        self.assertIsNone(old.text)
        self.assertEqual(h.store.invitation(first.slot).state(time.time()), "void")


class BigFileTests(TestCase):
    def test_a_big_file_is_not_cut_while_a_slow_link_takes_it(self):
        """
        The file goes out last, then the connection closes, and is cut if
        the close cannot finish: not two seconds after the last line, when a
        client on a 512 kbit/s link is still taking a file of 20,000 knocks
        (its invitation already used), but once such a link would be done.
        """
        from knocker.daemon.central import CLOSE_GRACE, MIN_RATE

        h = Harness(self, clients=())
        invitation = h.server.invite("alice", 20000, 6, 3600, force=False)
        proto, transport = h.connect()
        slot, words = parse_code(invitation.code)
        result = run_blocking(_exchange(HarnessConnection(proto, transport), slot, words, enrol_deadline()))
        self.assertIs(result.outcome, Outcome.ENROLLED, result.message())
        self.assertGreater(len(result.text), 10 * MIN_RATE)
        self.assertTrue(transport.disconnecting)
        h.clock.advance(CLOSE_GRACE + 5)
        self.assertFalse(transport.disconnected, "cut while a slow link still takes the file")
        h.clock.advance(len(result.text) / MIN_RATE)
        self.assertTrue(transport.disconnected, "cut in the end")


    def test_the_client_gives_a_big_file_the_time_a_slow_link_takes(self):
        """
        knocker enroll's one deadline grows, once ENROLLED says how many
        DATA lines come, by what the server gives them: a file of 20,000
        knocks on a 512 kbit/s link takes longer than the 5 s asked for,
        and its invitation is already used.
        """
        from knocker.core.handshake import MIN_RATE
        from knocker.enrol.client import _Deadline

        h = Harness(self, clients=())
        invitation = h.server.invite("alice", 20000, 6, 3600, force=False)
        proto, transport = h.connect()
        slot, words = parse_code(invitation.code)
        clock = [0.0]

        class SlowLink(HarnessConnection):
            async def readline(self, timeout):
                line = await super().readline(timeout)
                if line is not None:
                    clock[0] += (len(line) + 1) / MIN_RATE
                return line

        result = run_blocking(_exchange(SlowLink(proto, transport), slot, words,
                                        _Deadline(lambda: clock[0], 5)))
        self.assertIs(result.outcome, Outcome.ENROLLED, result.message())
        self.assertGreater(clock[0], 10, "longer than the 5 s asked for")


class ExpiryBoundTests(TestCase):
    def test_check_invite(self):
        check_invite("alice", 1)
        check_invite("alice", MAX_EXPIRES)
        self.assertEqual(MAX_EXPIRES, 30 * 86400)
        for bad in (0, -1, MAX_EXPIRES + 1, 3_000_000 * 86400, math.inf, -math.inf, math.nan):
            with self.assertRaises(ValueError) as caught:
                check_invite("alice", bad)
            self.assertIn(f"--expires is {bad:g} seconds", str(caught.exception))
            self.assertIn("at most 2592000", str(caught.exception))

    def test_console_invite_refused_before_any_change(self):
        h = Harness(self, clients=())
        for bad in (3_000_000 * 86400, math.inf):
            self.assertRaises(ValueError, h.server.invite, "alice", 9, 3, bad, False)
        self.assertIsNone(h.store.client("alice"))
        self.assertEqual(h.store.invitations(), [])
        self.assertFalse(os.path.exists(h.book.path("alice")))

    def test_command_refuses_before_any_change(self):
        h = Harness(self, clients=())
        h.stop()
        state_dir = h.config.state_dir
        for bad in ("inf", "nan", "259200000", "2592001"):
            err = self.command(["invite", "alice", "--expires", bad, "--state-dir", state_dir])
            self.assertEqual(err[0], 2, bad)
            self.assertIn(f"--expires is {float(bad):g} seconds", err[1])
        store = SQLiteStore(state_dir)
        self.addCleanup(store.close)
        self.assertIsNone(store.client("alice"))
        self.assertEqual(store.invitations(), [])
        code, _ = self.command(["invite", "alice", "--expires", "2592000", "--state-dir", state_dir])
        self.assertEqual(code, 0)
        self.assertEqual(len(store.invitations()), 1)

    def test_command_takes_the_consoles_durations(self):
        h = Harness(self, clients=())
        h.stop()
        state_dir = h.config.state_dir
        before = time.time()
        code, _ = self.command(["invite", "alice", "--expires", "30m", "--state-dir", state_dir])
        self.assertEqual(code, 0)
        store = SQLiteStore(state_dir)
        self.addCleanup(store.close)
        [invitation] = store.invitations()
        self.assertLess(abs(invitation.expires - before - 1800), 60)
        done = subprocess.run([sys.executable, "-m", "knocker.main", "invite", "bob", "--expires",
                               "30x", "--state-dir", state_dir], capture_output=True, text=True,
                              env=environment(), timeout=60)
        self.assertEqual(done.returncode, 2)
        self.assertIn("--expires: '30x' is not a duration such as 30m", done.stderr)

    def command(self, argv):
        import contextlib
        import io

        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
        return code, err.getvalue()


class StatusListTests(TestCase):
    def test_status_lists_invitations_until_a_week_after_they_expire(self):
        """
        Numbers are reused only when a random draw lands on them, so old
        rows stay; `knocker status` must not list them for ever.
        """
        from knocker.admin.clients import _status

        h = Harness(self, clients=())
        now = time.time()
        old = h.store.add_invitation("old", "x", now - 8 * 86400, 3, now - 9 * 86400)
        recent = h.store.add_invitation("recent", "y", now - 86400, 3, now - 2 * 86400)
        current = h.store.add_invitation("current", "z", now + 3600, 3, now)
        listed = _status(h.config, SQLiteStore(h.config.state_dir))["invitations"]
        self.assertEqual([(i["slot"], i["state"]) for i in listed],
                         sorted([(recent, "expired"), (current, "open")]))
        self.assertIsNotNone(h.store.invitation(old), "kept in the state, only not listed")
