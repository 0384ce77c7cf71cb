"""
The central port sends each line the moment it is decided: a knock is a
chain of lines the client waits for.
"""

import socket

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from knocker.core import handshake as hs
from knocker.daemon import central
from knocker.daemon.actions import ActionResult, MemoryRunner
from tests.helpers.harness import Harness


class FakeSocket:
    """A connected socket's send and shutdown; takes at most C{room} bytes."""

    def __init__(self, room=None):
        self.sent = b""
        self.room = room
        self.shut = []
        self.flags = []

    def send(self, data, flags=0):
        self.flags.append(flags)
        take = len(data) if self.room is None else min(self.room, len(data))
        if self.room is not None:
            self.room -= take
        if not take:
            raise BlockingIOError
        self.sent += bytes(data[:take])
        return take

    def shutdown(self, how):
        self.shut.append(how)


class SocketTransport(StringTransport):
    """A plain TCP transport as the central port sees one: it has a socket."""

    def __init__(self, sock, **kwargs):
        super().__init__(**kwargs)
        self.sock = sock

    def getHandle(self):
        return self.sock


class DirectSendTests(unittest.TestCase):
    def setUp(self):
        self.patch(central, "sends_directly", lambda transport: True)
        self.h = Harness(self)

    def knock(self, sock):
        h = self.h
        address = IPv4Address("TCP", "192.0.2.10", 40000)
        proto = h.central.buildProtocol(address)
        transport = SocketTransport(sock, peerAddress=address)
        proto.makeConnection(transport)
        proto.dataReceived(hs.format_hello("alice"))
        stream = lambda: sock.sent + transport.value()  # noqa: E731 - what the client reads
        nonce = hs.parse_reply(stream().split(b"\n")[0]).nonce
        proto.dataReceived(hs.format_proof(hs.hello_mac(h.files["alice"].secret, "alice", nonce)))
        grant = hs.parse_reply(stream().split(b"\n")[1])
        for port in h.files["alice"].knock(grant.index):
            h.hit("192.0.2.10", port)
        return stream().split(b"\n"), transport

    def test_lines_go_to_the_socket_and_the_fin_follows_the_verdict(self):
        sock = FakeSocket()
        lines, transport = self.knock(sock)
        self.assertEqual([line.split()[0] for line in lines[:3]],
                         [b"CHALLENGE", b"GRANT", b"OPEN"])
        self.assertEqual(transport.value(), b"")  # nothing waited for a reactor turn
        self.assertEqual(sock.shut, [socket.SHUT_WR])
        self.assertTrue(transport.disconnecting)

    def test_the_verdict_waits_for_its_fin_to_share_a_segment(self):
        """
        CHALLENGE and GRANT go at once; the verdict is sent with MSG_MORE,
        so the FIN that follows it leaves in the same segment (the client
        reads the end of the connection with the verdict).
        """
        sock = FakeSocket()
        self.knock(sock)
        self.assertEqual(sock.flags, [0, 0, socket.MSG_MORE])
        self.assertEqual(sock.shut, [socket.SHUT_WR])

    def test_a_line_the_socket_took_in_part_keeps_the_order(self):
        sock = FakeSocket(room=30)  # part of the CHALLENGE, then nothing
        lines, transport = self.knock(sock)
        self.assertEqual(len(sock.sent), 30)
        self.assertEqual([line.split()[0] for line in lines[:3]],
                         [b"CHALLENGE", b"GRANT", b"OPEN"])
        self.assertTrue(lines[0].startswith(b"CHALLENGE ") and len(lines[0]) == 74)
        # The rest waited in Twisted's buffer: no early FIN ahead of it.
        self.assertEqual(sock.shut, [])
        self.assertTrue(transport.disconnecting)


class RecordsAndReplyTests(unittest.TestCase):
    """
    The audit line of a GRANT or an OPEN is written before the line leaves
    (a client never holds one the audit log lacks, however the daemon
    dies); the operator's log line after it (the client need not wait).
    """

    def setUp(self):
        self.h = Harness(self)
        self.sent_at = {}
        self.transport = None
        record = self.h.audit.record

        def spy(event, **fields):
            self.sent_at.setdefault(event, self.transport.value())
            record(event, **fields)

        self.h.audit.record = spy

        def observe(event):
            text = event.get("log_format", "")
            for key in ("OPEN for",):
                if text.startswith(key):
                    self.sent_at.setdefault(key, self.transport.value())

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def test_grant_is_audited_before_it_is_sent(self):
        h = self.h
        proto, self.transport = h.connect()
        proto.dataReceived(hs.format_hello("alice"))
        nonce = hs.parse_reply(self.transport.value().rstrip(b"\n")).nonce
        self.transport.clear()
        proto.dataReceived(hs.format_proof(hs.hello_mac(h.files["alice"].secret, "alice", nonce)))
        self.assertTrue(self.transport.value().startswith(b"GRANT "))
        self.assertEqual(self.sent_at["grant"], b"")

    def test_open_is_audited_before_it_is_sent_and_logged_after(self):
        h = self.h
        self.transport = StringTransport()  # until the knock's own
        line, proto, self.transport, nonce = h.handshake()
        self.transport.clear()
        self.sent_at.clear()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        for port in h.files["alice"].knock(grant.index):
            h.hit("192.0.2.10", port)
        self.assertEqual(self.transport.value(), b"OPEN\n")
        self.assertEqual(self.sent_at["script"], b"")
        self.assertEqual(self.sent_at["open"], b"")
        self.assertEqual(self.sent_at["OPEN for"], b"OPEN\n")
        events = [e["event"] for e in h.audit.events if e["event"] in ("script", "open")]
        self.assertEqual(events, ["script", "open"])


class OperatorLogTests(unittest.TestCase):
    """
    The daemon's own log (not the audit log): a knock is one line, when it
    ends; a successful one names its program's exit, and a program that
    prints, or fails, is shown as it was.
    """

    def setUp(self):
        self.lines = []

        def observe(event):
            if event.get("log_namespace") == "knocker.daemon.coordinator":
                self.lines.append((event["log_level"].name, formatEvent(event)))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def knock(self, h, result=None):
        line, _, transport, _ = h.handshake()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        transport.clear()
        for port in h.files["alice"].knock(grant.index):
            h.hit("192.0.2.10", port)
        if result is not None:
            d, argv = h.runner.pending.pop(0)
            d.callback(ActionResult(tuple(argv), *result))
        return grant.index, transport.value()

    def test_a_successful_knock_is_one_line(self):
        h = Harness(self)
        index, sent = self.knock(h)
        self.assertEqual(sent, b"OPEN\n")
        self.assertEqual(self.lines, [
            ("info", f"OPEN for alice at 192.0.2.10 (knock {index}): on-success exit 0"),
        ])

    def test_a_failed_knock_is_one_line_and_its_lockout_another(self):
        h = Harness(self)
        line, _, transport, _ = h.handshake()
        grant = hs.parse_reply(line.rstrip(b"\n"))
        transport.clear()
        ports = h.files["alice"].knock(grant.index)
        h.hit("192.0.2.10", ports[1])  # the second port first
        self.assertEqual(transport.value(), b"FAIL wrong-port\n")
        self.assertEqual(self.lines, [
            ("warn", f"knock {grant.index} of alice from 192.0.2.10 failed: wrong-port"),
            ("warn", "lockout (global) of * for 60.0s after wrong-port from 192.0.2.10"),
        ])

    def test_what_the_program_printed_is_on_the_open_line(self):
        h = Harness(self, runner=MemoryRunner(hold=True))
        index, sent = self.knock(h, (0, None, False, "rule added\n", ""))
        self.assertEqual(sent, b"OPEN\n")
        self.assertEqual(self.lines[-1], (
            "info", f"OPEN for alice at 192.0.2.10 (knock {index}): on-success exit 0; "
                    "stdout 'rule added\\n' stderr ''"))

    def test_a_failed_program_is_an_error_line(self):
        h = Harness(self, runner=MemoryRunner(hold=True))
        index, sent = self.knock(h, (1, None, False, "", "nft: no such table\n"))
        self.assertEqual(sent, b"FAIL action-failed\n")
        self.assertEqual(self.lines, [
            ("error", f"on-success for alice at 192.0.2.10 (knock {index}): exit 1; "
                      "stdout '' stderr 'nft: no such table\\n'"),
        ])

    def test_a_program_that_could_not_start_says_why(self):
        h = Harness(self, runner=MemoryRunner(hold=True))
        index, _ = self.knock(h, (None, None, False, "", "", "[Errno 2] No such file"))
        self.assertEqual(self.lines, [
            ("error", f"on-success for alice at 192.0.2.10 (knock {index}): "
                      "could not start ([Errno 2] No such file)"),
        ])

    def test_a_program_killed_at_the_timeout_says_so(self):
        h = Harness(self, runner=MemoryRunner(hold=True))
        index, _ = self.knock(h, (None, 9, True, "", ""))
        self.assertEqual(self.lines, [
            ("error", f"on-success for alice at 192.0.2.10 (knock {index}): "
                      "killed: it outlived script-timeout"),
        ])

    def test_the_door_closing_is_a_line_of_its_own(self):
        h = Harness(self, on_close="/bin/true", open_duration=300)
        index, _ = self.knock(h)
        h.clock.advance(300)
        self.assertEqual(self.lines, [
            ("info", f"OPEN for alice at 192.0.2.10 (knock {index}): on-success exit 0"),
            ("info", f"on-close for alice at 192.0.2.10 (knock {index}): exit 0"),
        ])

    def test_a_file_revoked_while_on_success_ran_is_a_warning(self):
        h = Harness(self, runner=MemoryRunner(hold=True))
        line, _, transport, _ = h.handshake()
        index = hs.parse_reply(line.rstrip(b"\n")).index
        for port in h.files["alice"].knock(index):
            h.hit("192.0.2.10", port)
        h.server.revoke("alice")
        self.lines.clear()
        h.runner.finish(0)
        self.assertTrue(transport.value().endswith(b"FAIL revoked\n"))
        self.assertEqual(self.lines, [
            ("warn", f"knock {index} of alice from 192.0.2.10: the file was revoked while "
                     "on-success ran (exit 0); its door is closed again"),
        ])

    def test_a_knock_under_way_as_the_daemon_stops_is_a_warning(self):
        h = Harness(self)
        line, _, transport, _ = h.handshake()
        index = hs.parse_reply(line.rstrip(b"\n")).index
        h.server.stop()
        for port in h.files["alice"].knock(index):  # too late: nothing more
            h.hit("192.0.2.10", port)
        self.assertTrue(transport.value().endswith(b"ERROR shutting-down\n"))
        self.assertEqual(h.runner.calls, [])
        self.assertEqual([e["reason"] for e in h.audit.of("fail")], ["shutting-down"])
        self.assertEqual(self.lines, [
            ("warn", f"knock {index} of alice from 192.0.2.10 failed: shutting-down"),
        ])


class PreciseWaitsTests(unittest.SynchronousTestCase):
    """
    The daemon finishes a DENIED's wait to the microsecond, blocking the
    reactor for up to PRECISE_EARLY; a flood of them (where lockouts do not
    hold) may not keep it blocked: so many a second, then no more.
    """

    def test_so_many_a_second(self):
        now, slept = [100.0], []
        waits = central.PreciseWaits(now=lambda: now[0], sleep_until=slept.append)
        for n in range(central.PRECISE_PER_SECOND + 10):
            waits(100.5 + n)
        self.assertEqual(slept, [100.5 + n for n in range(central.PRECISE_PER_SECOND)])
        now[0] = 101.0
        for n in range(central.PRECISE_PER_SECOND + 10):
            waits(101.5 + n)
        self.assertEqual(len(slept), 2 * central.PRECISE_PER_SECOND, "a second later: as many")

    def test_so_many_in_any_second_not_per_calendar_second(self):
        # A flood across a second's boundary (0.99 s, then 1.01 s): none
        # more; and one a millisecond for three seconds: never more than
        # PRECISE_PER_SECOND in any one-second window.
        now, slept = [100.99], []
        waits = central.PreciseWaits(now=lambda: now[0], sleep_until=lambda _: slept.append(now[0]))
        for _ in range(central.PRECISE_PER_SECOND):
            waits(now[0])
        now[0] = 101.01
        for _ in range(central.PRECISE_PER_SECOND):
            waits(now[0])
        self.assertEqual(len(slept), central.PRECISE_PER_SECOND)
        now[0], slept[:] = 200.0, []
        for n in range(3000):
            now[0] = 200.0 + n / 1000
            waits(now[0])
        busiest = max(sum(1 for t in slept if start <= t < start + 1.0) for start in slept)
        self.assertEqual(busiest, central.PRECISE_PER_SECOND)
        self.assertGreaterEqual(len(slept), 3 * central.PRECISE_PER_SECOND - 1, "and as many")

    def test_the_daemons_central_port_uses_them(self):
        h = Harness(self)
        factory = central.CentralFactory(h.server, h.clock, 10, 5, precise_time=True)
        self.assertIsInstance(factory.wait_until, central.PreciseWaits)
        self.assertEqual(factory.early, central.PRECISE_EARLY)
