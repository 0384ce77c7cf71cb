"""
Property-based fuzzing of the central-port line protocol (hypothesis): any
bytes, in any chunks, get only well-formed replies or a close; the server
never raises, never locks out on garbage, and still grants a real client
afterwards.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from knocker.core import handshake as hs
from knocker.daemon.central import DENIED_AT
from tests.helpers.harness import Harness

lines = st.one_of(
    st.binary(max_size=700),
    st.sampled_from([b"KNOCKER/1 HELLO alice", b"KNOCKER/1 HELLO mallory", b"PROOF " + b"0" * 64,
                     b"KNOCKER/1 HELLO", b"KNOCKER/1  HELLO alice", b"\r", b"", b"OPEN"]),
    st.text(max_size=80).map(lambda text: text.encode("utf-8", "replace")),
)
streams = st.lists(lines, max_size=8).map(lambda parts: b"\n".join(parts))


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


class FuzzCentralTests(SynchronousTestCase):
    def setUp(self):
        # No escalation memory: each example starts with every lockout over.
        self.harness = Harness(self, lockout_memory=0)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=streams, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6))
    def test_any_bytes(self, data, cuts):
        h = self.harness
        proto, transport = h.connect(ip="198.51.100.7")
        for chunk in chunks(data, cuts):
            proto.dataReceived(chunk)
        h.clock.advance(DENIED_AT)  # a DENIED goes out at its fixed delay
        replies = transport.value().split(b"\n")
        self.assertEqual(replies[-1], b"", "every reply ends its line")
        for line in replies[:-1]:
            self.assertLessEqual(len(line), hs.MAX_LINE)
            reply = hs.parse_reply(line)  # raises if not a protocol line
            self.assertFalse(isinstance(reply, hs.Grant), "garbage never gets a GRANT")
        kinds = {type(hs.parse_reply(line)) for line in replies[:-1]}
        if kinds & {hs.Error, hs.Denied, hs.Locked}:
            self.assertTrue(transport.disconnecting)
        if hs.Denied in kinds:
            self.assertEqual(set(h.tracker_lockouts()), {"198.51.100.7"},
                             "a bad proof is a failed attempt of its source")
        else:
            self.assertEqual(h.tracker_lockouts(), {}, "garbage is not a failed attempt")
        proto.connectionLost(None)
        h.clock.advance(60)

    def test_real_client_after_garbage(self):
        h = self.harness
        for junk in (b"\x00" * 600, b"GET / HTTP/1.0\r\n\r\n", b"KNOCKER/1 HELLO alice\n\xff\n"):
            proto, transport = h.connect()
            proto.dataReceived(junk)
            self.assertTrue(transport.disconnecting)
            proto.connectionLost(None)
        grant, transport = h.knock()
        self.assertEqual(transport.value(), b"OPEN\n")


class AfterTheLastLineTests(SynchronousTestCase):
    def test_bytes_after_the_last_line_are_dropped(self):
        """
        Under TLS a closing connection still delivers what its peer sends
        until the peer closes too; those bytes are not kept, however many,
        newline or not, and get no answer.
        """
        h = Harness(self)
        for opening in (b"x\n", b"y" * (hs.MAX_LINE + 10)):
            proto, transport = h.connect(ip="198.51.100.9")
            proto.dataReceived(opening)
            answered = transport.value()
            self.assertTrue(answered.startswith(b"ERROR "), answered)
            for _ in range(50):
                proto.dataReceived(b"z" * 65536)
            self.assertEqual(proto._buffer, b"", "3 MB kept")
            proto.dataReceived(b"\nKNOCKER/1 HELLO alice\n")
            self.assertEqual(transport.value(), answered)
            proto.connectionLost(None)


class SlowlorisTests(SynchronousTestCase):
    def test_half_finished_handshakes_time_out_and_free_their_place(self):
        h = Harness(self, max_connections=5, handshake_timeout=5)
        held = [h.connect(ip=f"198.51.100.{n}") for n in range(5)]
        for proto, _ in held:
            proto.dataReceived(b"KNOCKER/1 HEL")  # never finished
        # (from one of theirs: a source holding fewer would take a place)
        proto, transport = h.connect(ip="198.51.100.0")
        self.assertEqual(transport.value(), b"ERROR too-many-connections\n")
        h.clock.advance(5)
        for proto, transport in held:
            self.assertEqual(transport.value(), b"ERROR handshake-timeout\n")
            proto.connectionLost(None)
        grant, transport = h.knock()
        self.assertEqual(transport.value(), b"OPEN\n")
