"""
knocker.client.tcp.connect_within: how the central connection shares its
time among a name's addresses.
"""

import errno
import time

from twisted.trial.unittest import SynchronousTestCase

from knocker.client import tcp

V6 = (tcp._socket.AF_INET6, tcp._socket.SOCK_STREAM, tcp._socket.IPPROTO_TCP, "",
      ("2001:db8::1", 7000, 0, 0))
V4 = (tcp._socket.AF_INET, tcp._socket.SOCK_STREAM, tcp._socket.IPPROTO_TCP, "",
      ("192.0.2.1", 7000))


class FakeSocket:
    """Records its timeout; the IPv6 address drops SYNs, the IPv4 one answers."""

    made = []

    def __init__(self, family, kind, proto):
        self.family, self.timeout, self.closed = family, None, False
        FakeSocket.made.append(self)

    def settimeout(self, seconds):
        self.timeout = seconds

    def connect(self, address):
        if self.family == tcp._socket.AF_INET6:
            raise TimeoutError("timed out")

    def close(self):
        self.closed = True


class ConnectWithinTests(SynchronousTestCase):
    def setUp(self):
        FakeSocket.made = []
        self.patch(tcp, "addresses", lambda host, port, seconds: [V6, V4])
        self.patch(tcp._socket, "socket", FakeSocket)

    def test_a_silent_first_address_leaves_time_for_the_next(self):
        sock = tcp.connect_within("door.example.org", 7000, time.monotonic() + 10)
        first, second = FakeSocket.made
        self.assertIs(sock, second)
        self.assertEqual(second.family, tcp._socket.AF_INET)
        self.assertTrue(first.closed)
        self.assertTrue(4.5 < first.timeout <= 5.0, first.timeout)  # half: two addresses
        self.assertTrue(4.5 < second.timeout <= 10.0, second.timeout)

    def test_a_family_this_host_lacks_is_passed_over(self):
        def no_ipv6(family, kind, proto):
            if family == tcp._socket.AF_INET6:
                raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
            return FakeSocket(family, kind, proto)

        self.patch(tcp._socket, "socket", no_ipv6)
        sock = tcp.connect_within("door.example.org", 7000, time.monotonic() + 10)
        self.assertEqual(sock.family, tcp._socket.AF_INET)

    def test_the_last_failure_is_raised_when_none_answers(self):
        self.patch(tcp, "addresses", lambda host, port, seconds: [V6])
        with self.assertRaises(TimeoutError):
            tcp.connect_within("door.example.org", 7000, time.monotonic() + 1)
