"""
The central-port protocol (docs/spec.md section 4), without I/O: the HMACs, the
request and reply lines, and the client's state machine.
"""

import hashlib
import hmac

from twisted.trial.unittest import SynchronousTestCase

from knocker.core.handshake import (
    MAX_LINE,
    Busy,
    Challenge,
    ClientHandshake,
    Denied,
    Error,
    Exhausted,
    Fail,
    Finished,
    Grant,
    KnockPorts,
    Locked,
    Open,
    ProtocolError,
    SendLine,
    format_hello,
    format_proof,
    grant_mac,
    hello_mac,
    parse_reply,
)
from knocker.core.knockfile import KnockFile, KnockFileError, KnockFileText
from knocker.core.knockgen import format_knockfile
from knocker.core.serverhandshake import Hello, Proof, format_reply, parse_request

SECRET = hashlib.sha256(b"a fixed test secret").digest()
NONCE = "ab" * 32
OTHER_NONCE = "cd" * 32
KNOCKS = ((8120, 8100, 12090), (11007, 4410, 8831), (2093, 15120, 6002))
KF = KnockFile(
    client="alice",
    secret=SECRET,
    ports_per_knock=3,
    created="2026-11-25T10:00:00Z",
    knocks=KNOCKS,
)


def independent_hmac(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode("ascii"), hashlib.sha256).hexdigest()


class MacTests(SynchronousTestCase):
    def test_secret_is_32_bytes(self):
        self.assertEqual(len(SECRET), 32)

    def test_hello_mac(self):
        self.assertEqual(
            hello_mac(SECRET, "alice", NONCE),
            independent_hmac(SECRET, "knocker/1|hello|alice|" + NONCE),
        )

    def test_grant_mac(self):
        self.assertEqual(
            grant_mac(SECRET, "alice", NONCE, 42),
            independent_hmac(SECRET, "knocker/1|grant|alice|" + NONCE + "|42"),
        )

    def test_known_values(self):
        """
        Fixed values (HMAC-SHA256 under an all-zero key, computed apart), so a
        change to the message format cannot pass unnoticed.
        """
        secret = bytes(32)
        self.assertEqual(
            hello_mac(secret, "a", "0" * 64),
            "99975a69b953c104b4ab5cde41f0611021921676c9c52fbbe81153cab8fc530a",
        )
        self.assertEqual(
            grant_mac(secret, "a", "0" * 64, 1),
            "4aa5f42c05329ce157e0df3f9b90aed8070859f5ec02b3e5480dde32eacac12c",
        )

    def test_lowercase_hex_64(self):
        for mac in (hello_mac(SECRET, "alice", NONCE), grant_mac(SECRET, "alice", NONCE, 1)):
            self.assertEqual(len(mac), 64)
            self.assertEqual(mac, mac.lower())
            int(mac, 16)

    def test_macs_differ(self):
        """
        Every input changes the HMAC; a hello proof is never a valid grant.
        """
        base = hello_mac(SECRET, "alice", NONCE)
        self.assertNotEqual(base, hello_mac(SECRET, "bob", NONCE))
        self.assertNotEqual(base, hello_mac(SECRET, "alice", OTHER_NONCE))
        self.assertNotEqual(base, hello_mac(bytes(32), "alice", NONCE))
        self.assertNotEqual(grant_mac(SECRET, "alice", NONCE, 1), grant_mac(SECRET, "alice", NONCE, 2))
        self.assertNotEqual(grant_mac(SECRET, "alice", NONCE, 1), base)


class ParseRequestTests(SynchronousTestCase):
    def refused(self, line, reason="malformed"):
        error = self.assertRaises(ProtocolError, parse_request, line)
        self.assertEqual(str(error), reason)

    def test_hello(self):
        self.assertEqual(parse_request(b"KNOCKER/1 HELLO alice"), Hello("alice"))

    def test_proof(self):
        mac = hello_mac(SECRET, "alice", NONCE)
        self.assertEqual(parse_request(b"PROOF " + mac.encode()), Proof(mac))

    def test_format_then_parse(self):
        """
        format_* end with a newline, which the line reader strips.
        """
        self.assertEqual(format_hello("bob.x_1-y"), b"KNOCKER/1 HELLO bob.x_1-y\n")
        self.assertEqual(parse_request(format_hello("bob.x_1-y")[:-1]), Hello("bob.x_1-y"))
        mac = "0f" * 32
        self.assertEqual(format_proof(mac), b"PROOF " + mac.encode() + b"\n")
        self.assertEqual(parse_request(format_proof(mac)[:-1]), Proof(mac))

    def test_trailing_cr(self):
        self.assertEqual(parse_request(b"KNOCKER/1 HELLO alice\r"), Hello("alice"))
        mac = "0f" * 32
        self.assertEqual(parse_request(b"PROOF " + mac.encode() + b"\r"), Proof(mac))

    def test_lowercase_keywords(self):
        self.refused(b"knocker/1 HELLO alice")
        self.refused(b"KNOCKER/1 hello alice")
        self.refused(b"proof " + b"0f" * 32)

    def test_wrong_version(self):
        self.refused(b"KNOCKER/2 HELLO alice")

    def test_extra_spaces(self):
        for line in [
            b"KNOCKER/1  HELLO alice",
            b"KNOCKER/1 HELLO  alice",
            b" KNOCKER/1 HELLO alice",
            b"KNOCKER/1 HELLO alice ",
            b"PROOF  " + b"0f" * 32,
            b"PROOF " + b"0f" * 32 + b" ",
        ]:
            self.refused(line)

    def test_tab(self):
        self.refused(b"KNOCKER/1\tHELLO alice")

    def test_extra_words(self):
        self.refused(b"KNOCKER/1 HELLO alice bob")
        self.refused(b"PROOF " + b"0f" * 32 + b" extra")

    def test_missing_words(self):
        self.refused(b"KNOCKER/1 HELLO")
        self.refused(b"PROOF")
        self.refused(b"")

    def test_bad_client_id(self):
        for client in [b"Alice", b"-alice", b"alice!", b"a" * 65, b"al/ice"]:
            self.refused(b"KNOCKER/1 HELLO " + client, "bad-client-id")

    def test_longest_client_id(self):
        self.assertEqual(parse_request(b"KNOCKER/1 HELLO " + b"a" * 64), Hello("a" * 64))

    def test_bad_proof(self):
        for proof in [b"0F" * 32, b"0f" * 31, b"0f" * 33, b"zz" * 32, b"0f" * 31 + b"0g"]:
            self.refused(b"PROOF " + proof, "bad-proof")

    def test_non_ascii(self):
        self.refused("KNOCKER/1 HELLO \u00e5lice".encode("utf-8"))
        self.refused(b"KNOCKER/1 HELLO \xffalice")

    def test_control_characters(self):
        self.refused(b"KNOCKER/1 HELLO alice\x00")
        self.refused(b"KNOCKER/1 HELLO al\rice")

    def test_too_long(self):
        self.refused(b"KNOCKER/1 HELLO " + b"a" * (MAX_LINE - 15), "line-too-long")
        self.refused(b"x" * 10000, "line-too-long")

    def test_max_line_is_512(self):
        self.assertEqual(MAX_LINE, 512)
        # 512 bytes is not too long, merely not a request.
        self.refused(b"x" * 512, "malformed")
        self.refused(b"x" * 513, "line-too-long")

    def test_replies_are_not_requests(self):
        self.refused(b"OPEN")
        self.refused(b"CHALLENGE " + NONCE.encode())


REPLIES = [
    (b"CHALLENGE " + NONCE.encode(), Challenge(NONCE)),
    (b"GRANT 17 10 " + ("5a" * 32).encode(), Grant(17, 10, "5a" * 32)),
    (b"BUSY 3", Busy(3)),
    (b"LOCKED 60", Locked(60)),
    (b"DENIED", Denied()),
    (b"EXHAUSTED", Exhausted()),
    (b"ERROR line-too-long", Error("line-too-long")),
    (b"OPEN", Open()),
    (b"FAIL wrong-port", Fail("wrong-port")),
    (b"FAIL timeout", Fail("timeout")),
    (b"FAIL locked-out", Fail("locked-out")),
    (b"FAIL action-failed", Fail("action-failed")),
]


class ReplyTests(SynchronousTestCase):
    def test_parse_each(self):
        for line, reply in REPLIES:
            self.assertEqual(parse_reply(line), reply, line)

    def test_format_each(self):
        for line, reply in REPLIES:
            self.assertEqual(format_reply(reply), line + b"\n")

    def test_round_trip(self):
        for _, reply in REPLIES:
            self.assertEqual(parse_reply(format_reply(reply)[:-1]), reply)

    def test_crlf(self):
        for line, reply in REPLIES:
            self.assertEqual(parse_reply(line + b"\r"), reply)

    def test_zero_seconds(self):
        self.assertEqual(parse_reply(b"BUSY 0"), Busy(0))
        self.assertEqual(parse_reply(b"LOCKED 0"), Locked(0))

    def test_junk(self):
        for line in [
            b"",
            b"HELLO",
            b"open",
            b"OPEN now",
            b" OPEN",
            b"OPEN ",
            b"DENIED please",
            b"CHALLENGE",
            b"CHALLENGE " + NONCE.upper().encode(),
            b"CHALLENGE " + NONCE[:-2].encode(),
            b"GRANT 1 10",
            b"GRANT x 10 " + ("5a" * 32).encode(),
            b"GRANT 1 -10 " + ("5a" * 32).encode(),
            b"GRANT 1 10 " + ("5A" * 32).encode(),
            b"GRANT  1 10 " + ("5a" * 32).encode(),
            b"BUSY",
            b"BUSY soon",
            b"BUSY -1",
            b"BUSY 1.5",
            b"LOCKED",
            b"ERROR",
            b"ERROR Bad",
            b"ERROR two words",
            b"FAIL",
            b"FAIL Wrong-Port",
            b"\xff\xfe",
            b"OPEN\x00",
            b"x" * 513,
        ]:
            self.assertRaises(ProtocolError, parse_reply, line)

    def test_junk_message_quotes_line(self):
        error = self.assertRaises(ProtocolError, parse_reply, b"WHAT NOW")
        self.assertIn("WHAT NOW", str(error))


class ClientHandshakeTests(SynchronousTestCase):
    def setUp(self):
        self.client = ClientHandshake(KF)

    def challenge(self, nonce=NONCE):
        return self.client.receive(b"CHALLENGE " + nonce.encode())

    def grant_line(self, index, window=10, nonce=NONCE, secret=SECRET, client="alice"):
        mac = grant_mac(secret, client, nonce, index)
        return f"GRANT {index} {window} {mac}".encode()

    def granted(self, index=2):
        self.challenge()
        return self.client.receive(self.grant_line(index))

    def test_hello(self):
        self.assertEqual(self.client.hello(), SendLine(b"KNOCKER/1 HELLO alice\n"))

    def test_answers_challenge_with_proof(self):
        answer = self.challenge()
        expected = independent_hmac(SECRET, "knocker/1|hello|alice|" + NONCE)
        self.assertEqual(answer, SendLine(b"PROOF " + expected.encode() + b"\n"))

    def test_proof_depends_on_nonce(self):
        other = ClientHandshake(KF)
        self.assertNotEqual(self.challenge(), other.receive(b"CHALLENGE " + OTHER_NONCE.encode()))

    def test_proof_is_a_valid_request(self):
        answer = self.challenge()
        self.assertEqual(
            parse_request(answer.line.rstrip(b"\n")), Proof(hello_mac(SECRET, "alice", NONCE))
        )

    def test_grant(self):
        self.assertEqual(self.granted(2), KnockPorts(2, KNOCKS[1], 10))

    def test_grant_first_and_last(self):
        self.assertEqual(self.granted(1), KnockPorts(1, KNOCKS[0], 10))
        self.client = ClientHandshake(KF)
        self.assertEqual(self.granted(3), KnockPorts(3, KNOCKS[2], 10))

    def test_grant_window(self):
        self.challenge()
        result = self.client.receive(self.grant_line(1, window=25))
        self.assertEqual(result.window, 25)

    def test_grant_wrong_mac(self):
        self.challenge()
        self.assertRaises(ProtocolError, self.client.receive, b"GRANT 1 10 " + b"5a" * 32)

    def test_grant_mac_from_wrong_secret(self):
        self.challenge()
        line = self.grant_line(1, secret=bytes(32))
        self.assertRaises(ProtocolError, self.client.receive, line)

    def test_grant_mac_for_other_nonce(self):
        """
        A GRANT replayed from another connection (another nonce) is refused.
        """
        self.challenge()
        line = self.grant_line(1, nonce=OTHER_NONCE)
        self.assertRaises(ProtocolError, self.client.receive, line)

    def test_grant_mac_for_other_index(self):
        self.challenge()
        mac = grant_mac(SECRET, "alice", NONCE, 1)
        self.assertRaises(ProtocolError, self.client.receive, f"GRANT 2 10 {mac}".encode())

    def test_grant_mac_for_other_client(self):
        self.challenge()
        line = self.grant_line(1, client="bob")
        self.assertRaises(ProtocolError, self.client.receive, line)

    def test_grant_index_past_end(self):
        """
        A correctly signed GRANT for a knock our file lacks: the server holds
        our secret, so our copy is the damaged one.
        """
        self.challenge()
        error = self.assertRaises(KnockFileError, self.client.receive, self.grant_line(4))
        self.assertIn("no knock number 4", str(error))

    def test_grant_reads_only_the_granted_line(self):
        """
        From the file's text, a grant checks the granted line; damage
        elsewhere is left for L{KnockFileText.damage}, after the knock.
        """
        text = format_knockfile(KF).replace("\n3 ", "\n3 99999,")
        self.client = ClientHandshake(KnockFileText(text, "alice.knock"))
        self.assertEqual(self.granted(2), KnockPorts(2, KNOCKS[1], 10))

    def test_grant_of_a_malformed_line(self):
        text = format_knockfile(KF).replace("\n2 ", "\n2 99999,")
        self.client = ClientHandshake(KnockFileText(text, "alice.knock"))
        self.challenge()
        error = self.assertRaises(KnockFileError, self.client.receive, self.grant_line(2))
        self.assertIn("alice.knock, line ", str(error))

    def test_grant_index_zero(self):
        self.challenge()
        self.assertRaises(ProtocolError, self.client.receive, self.grant_line(0))

    def test_finished_after_proof(self):
        for line, reply in [
            (b"BUSY 5", Busy(5)),
            (b"LOCKED 60", Locked(60)),
            (b"DENIED", Denied()),
            (b"EXHAUSTED", Exhausted()),
            (b"ERROR timeout", Error("timeout")),
        ]:
            client = ClientHandshake(KF)
            client.receive(b"CHALLENGE " + NONCE.encode())
            self.assertEqual(client.receive(line), Finished(reply), line)

    def test_finished_after_grant(self):
        for line, reply in [
            (b"OPEN", Open()),
            (b"FAIL wrong-port", Fail("wrong-port")),
            (b"FAIL timeout", Fail("timeout")),
            (b"FAIL locked-out", Fail("locked-out")),
            (b"FAIL action-failed", Fail("action-failed")),
        ]:
            client = ClientHandshake(KF)
            client.receive(b"CHALLENGE " + NONCE.encode())
            client.receive(self.grant_line(1))
            self.assertEqual(client.receive(line), Finished(reply), line)

    def test_busy_or_locked_before_challenge(self):
        """
        A server that is busy or locked may say so at once.
        """
        for line, reply in [(b"BUSY 5", Busy(5)), (b"LOCKED 9", Locked(9)), (b"ERROR busy", Error("busy"))]:
            self.assertEqual(ClientHandshake(KF).receive(line), Finished(reply))

    def test_open_before_grant(self):
        self.challenge()
        self.assertRaises(ProtocolError, self.client.receive, b"OPEN")

    def test_fail_before_grant(self):
        self.challenge()
        self.assertRaises(ProtocolError, self.client.receive, b"FAIL timeout")

    def test_out_of_turn_before_challenge(self):
        for line in [b"OPEN", b"FAIL timeout", b"DENIED", b"EXHAUSTED", b"GRANT 1 10 " + b"5a" * 32]:
            self.assertRaises(ProtocolError, ClientHandshake(KF).receive, line)

    def test_second_challenge(self):
        self.challenge()
        self.assertRaises(ProtocolError, self.challenge, OTHER_NONCE)

    def test_out_of_turn_after_grant(self):
        for line in [
            b"CHALLENGE " + NONCE.encode(),
            b"BUSY 1",
            b"DENIED",
            b"EXHAUSTED",
        ]:
            client = ClientHandshake(KF)
            client.receive(b"CHALLENGE " + NONCE.encode())
            client.receive(self.grant_line(1))
            self.assertRaises(ProtocolError, client.receive, line)

    def test_second_grant(self):
        self.granted(1)
        self.assertRaises(ProtocolError, self.client.receive, self.grant_line(2))

    def test_junk_line(self):
        self.challenge()
        self.assertRaises(ProtocolError, self.client.receive, b"GRANT me everything")

    def test_nothing_after_finished(self):
        """
        After the server's last word, any further line is out of turn.
        """
        self.challenge()
        self.assertIsInstance(self.client.receive(b"DENIED"), Finished)
        self.assertRaises(ProtocolError, self.client.receive, self.grant_line(1))

    def test_nothing_after_open(self):
        self.granted(1)
        self.assertEqual(self.client.receive(b"OPEN"), Finished(Open()))
        self.assertRaises(ProtocolError, self.client.receive, b"OPEN")

    def test_proof_for_the_first_challenge_is_what_receive_answers(self):
        early = ClientHandshake(KF)
        proof = early.proof_for(b"CHALLENGE " + NONCE.encode())
        self.assertEqual(proof, self.challenge().line)
        # and it has taken the CHALLENGE: a GRANT for it is checked as ever
        self.assertEqual(early.receive(self.grant_line(2)), KnockPorts(2, KNOCKS[1], 10))

    def test_proof_for_anything_else_changes_nothing(self):
        """
        A first line that is no CHALLENGE (a refusal, junk) gets no PROOF,
        and L{receive} then judges it as it would have; so does a second
        CHALLENGE.
        """
        for line in (b"LOCKED 30", b"ERROR server-error", b"CHALLENGE nothex", b"GRANT 1 10 x"):
            early, fresh = ClientHandshake(KF), ClientHandshake(KF)
            self.assertIsNone(early.proof_for(line))
            try:
                expected = fresh.receive(line)
            except ProtocolError as failure:
                with self.assertRaises(ProtocolError) as raised:
                    early.receive(line)
                self.assertEqual(str(raised.exception), str(failure))
            else:
                self.assertEqual(early.receive(line), expected)
        self.challenge()
        self.assertIsNone(self.client.proof_for(b"CHALLENGE " + OTHER_NONCE.encode()))
        self.assertEqual(self.client.receive(self.grant_line(1)), KnockPorts(1, KNOCKS[0], 10))


class ServerHandshakeTests(SynchronousTestCase):
    """
    The server's half of the central-port exchange, without I/O: what each
    line from the peer gets in reply, and when the connection closes.
    """

    def setUp(self):
        from knocker.core.serverhandshake import ServerHandshake

        self.nonces = [NONCE, OTHER_NONCE]
        self.made = []
        self.server = ServerHandshake(self.new_nonce)

    def new_nonce(self):
        nonce = self.nonces.pop(0)
        self.made.append(nonce)
        return nonce

    def hello(self, client="alice"):
        return self.server.receive(format_hello(client).rstrip(b"\n"))

    def proof(self, mac=None):
        mac = mac or hello_mac(SECRET, "alice", NONCE)
        return self.server.receive(format_proof(mac).rstrip(b"\n"))

    def granted(self, index=1):
        from knocker.core.serverhandshake import Respond

        self.hello()
        self.proof()
        grant = Grant(index, 10, grant_mac(SECRET, "alice", NONCE, index))
        self.assertEqual(self.server.judged(grant), Respond(grant))
        return grant

    def assertFault(self, step, reason):
        from knocker.core.serverhandshake import Respond

        self.assertEqual(step, Respond(Error(reason), close=True, fault=True))
        self.assertEqual(format_reply(step.reply), b"ERROR " + reason.encode() + b"\n")
        self.assertTrue(self.server.done)

    def test_hello_gets_challenge_with_a_fresh_nonce(self):
        from knocker.core.serverhandshake import Respond

        step = self.hello()
        self.assertEqual(step, Respond(Challenge(NONCE)))
        self.assertFalse(step.close)
        self.assertFalse(step.fault)
        self.assertEqual(format_reply(step.reply), b"CHALLENGE " + NONCE.encode() + b"\n")
        self.assertEqual(self.made, [NONCE], "one nonce per HELLO")
        self.assertEqual(self.server.client, "alice")
        self.assertFalse(self.server.done)

    def test_hello_with_crlf(self):
        from knocker.core.serverhandshake import Respond

        self.assertEqual(
            self.server.receive(b"KNOCKER/1 HELLO alice\r"), Respond(Challenge(NONCE))
        )

    def test_proof_before_hello_is_out_of_turn(self):
        self.assertFault(self.proof(), "out-of-turn")
        self.assertEqual(self.made, [], "no challenge was made")

    def test_second_hello_is_out_of_turn(self):
        self.hello()
        self.assertFault(self.hello("bob"), "out-of-turn")
        self.assertEqual(self.made, [NONCE], "no second nonce")

    def test_proof_after_hello_asks_for_judgement(self):
        from knocker.core.serverhandshake import Judge

        self.hello()
        mac = hello_mac(SECRET, "alice", NONCE)
        self.assertEqual(self.proof(mac), Judge("alice", NONCE, mac))
        self.assertFalse(self.server.done, "the verdict is the coordinator's")

    def test_judge_carries_the_peers_proof_even_if_wrong(self):
        """
        The state machine does not check the HMAC; it hands on what it got.
        """
        from knocker.core.serverhandshake import Judge

        self.hello("bob")
        self.assertEqual(self.proof("0f" * 32), Judge("bob", NONCE, "0f" * 32))

    def test_a_second_proof_while_judged_is_out_of_turn(self):
        """
        One PROOF a connection: another, before the coordinator answered
        the first, ends the exchange; the answer that comes after is for
        nobody (the caller gives a GRANT up).
        """
        self.hello()
        self.proof()
        self.assertFault(self.proof(), "out-of-turn")
        self.assertIsNone(self.server.judged(Grant(1, 10, "ab" * 32)))
        self.assertFalse(self.server.knocking)

    def test_knocking_until_the_verdict_not_a_fault(self):
        """
        Granted and no verdict sent: a fault then (a stray line) leaves the
        knock unfinished, which the connection's end must give up.
        """
        from knocker.core.handshake import Open

        self.granted(1)
        self.assertTrue(self.server.knocking)
        self.assertFault(self.server.receive(b"garbage"), "malformed")
        self.assertTrue(self.server.knocking)
        self.server.verdict(Open())
        self.assertTrue(self.server.knocking, "the fault ended the exchange; no verdict went out")

    def test_grant_keeps_the_connection_open(self):
        grant = self.granted(3)
        self.assertTrue(self.server.granted)
        self.assertFalse(self.server.done)
        self.assertEqual(
            format_reply(grant),
            b"GRANT 3 10 " + grant_mac(SECRET, "alice", NONCE, 3).encode() + b"\n",
        )

    def test_refusals_close(self):
        from knocker.core.serverhandshake import Respond, ServerHandshake

        for reply in [Denied(), Locked(60), Busy(5), Exhausted(), Error("server-error")]:
            server = ServerHandshake(lambda: NONCE)
            server.receive(b"KNOCKER/1 HELLO alice")
            server.receive(b"PROOF " + b"0f" * 32)
            step = server.judged(reply)
            self.assertEqual(step, Respond(reply, close=True), reply)
            self.assertFalse(step.fault, "a refusal is not a protocol fault")
            self.assertFalse(server.granted)
            self.assertTrue(server.done)

    def test_denied_bytes(self):
        self.hello()
        self.proof()
        self.assertEqual(format_reply(self.server.judged(Denied()).reply), b"DENIED\n")

    def test_well_formed_line_after_grant_is_unexpected(self):
        for line in [b"KNOCKER/1 HELLO alice", b"PROOF " + b"0f" * 32]:
            self.setUp()
            self.granted()
            self.assertFault(self.server.receive(line), "unexpected-line")

    def test_malformed_line_after_grant_gives_its_reason(self):
        self.granted()
        self.assertFault(self.server.receive(b"OPEN please"), "malformed")

    def test_bad_proof_after_grant_gives_its_reason(self):
        self.granted()
        self.assertFault(self.server.receive(b"PROOF " + b"0F" * 32), "bad-proof")

    def test_malformed_first_line(self):
        self.assertFault(self.server.receive(b"knocker/1 hello alice"), "malformed")

    def test_bad_client_id(self):
        self.assertFault(self.server.receive(b"KNOCKER/1 HELLO Alice"), "bad-client-id")
        self.assertEqual(self.made, [])

    def test_line_too_long(self):
        self.assertFault(self.server.receive(b"KNOCKER/1 HELLO " + b"a" * 600), "line-too-long")

    def test_line_of_512_bytes_is_not_too_long(self):
        self.assertFault(self.server.receive(b"x" * MAX_LINE), "malformed")

    def test_line_too_long_after_hello(self):
        self.hello()
        self.assertFault(self.server.receive(b"PROOF " + b"0f" * 300), "line-too-long")

    def test_verdict_after_grant_closes_once(self):
        from knocker.core.serverhandshake import Respond

        self.granted()
        step = self.server.verdict(Open())
        self.assertEqual(step, Respond(Open(), close=True))
        self.assertFalse(step.fault)
        self.assertEqual(format_reply(step.reply), b"OPEN\n")
        self.assertTrue(self.server.done)
        self.assertIsNone(self.server.verdict(Fail("timeout")))

    def test_fail_verdict(self):
        from knocker.core.serverhandshake import Respond

        self.granted()
        step = self.server.verdict(Fail("wrong-port"))
        self.assertEqual(step, Respond(Fail("wrong-port"), close=True))
        self.assertEqual(format_reply(step.reply), b"FAIL wrong-port\n")

    def test_lines_after_done_are_ignored(self):
        self.hello()
        self.proof()
        self.server.judged(Denied())
        for line in [b"KNOCKER/1 HELLO alice", b"PROOF " + b"0f" * 32, b"junk", b"x" * 1000]:
            self.assertIsNone(self.server.receive(line), line)
        self.assertEqual(self.made, [NONCE])

    def test_lines_after_verdict_are_ignored(self):
        self.granted()
        self.server.verdict(Open())
        self.assertIsNone(self.server.receive(b"PROOF " + b"0f" * 32))

    def test_lines_after_fault_are_ignored(self):
        self.assertFault(self.proof(), "out-of-turn")
        self.assertIsNone(self.hello())
        self.assertEqual(self.made, [])

    def test_timeout_fault(self):
        self.hello()
        self.assertFault(self.server.fault("handshake-timeout"), "handshake-timeout")

    def test_timeout_after_done_is_ignored(self):
        self.granted()
        self.server.verdict(Open())
        self.assertIsNone(self.server.fault("handshake-timeout"))

    def test_timeout_after_fault_is_ignored(self):
        self.assertFault(self.server.receive(b"junk"), "malformed")
        self.assertIsNone(self.server.fault("handshake-timeout"))

    def test_no_verdict_after_fault(self):
        self.granted()
        self.assertFault(self.server.receive(b"junk"), "malformed")
        self.assertIsNone(self.server.verdict(Open()))
