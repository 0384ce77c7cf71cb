"""
The client's C{timeout} bounds the whole knock, against servers that stall
on real loopback sockets: a CHALLENGE dripped a byte at a time, a pool port
that drips bytes instead of closing, a central port that answers
C{ERROR too-many-connections} for ever; and a line without a newline longer
than the protocol allows is the server breaking the protocol (exit 13), not
an C{ERROR} from it (exit 12).  Each runs through both drivers.

The fake servers run in threads on blocking sockets, so one server serves
the blocking driver (which holds the test's thread) and the Twisted driver
(which runs in the reactor) alike.
"""

import os
import socket
import threading
import time

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from knocker.client.blocking_driver import BlockingDriver
from knocker.client.knock import Outcome, knock, run_blocking
from knocker.core import handshake as hs
from knocker.core.config import parse_client_config
from knocker.core.knockfile import KnockFile

SECRET = bytes(range(32))
NONCE = "cd" * 32
TIMEOUT = 2.0
GRACE = 0.5
DRIP_EVERY = 1.5
DRIP_BYTES = 8  # then the dripping server hangs up: today's code ends after 12 s, not never


class FakeServer:
    """
    A listener on 127.0.0.1 whose connections are each given, in a thread
    of their own, to C{handle(conn, stop)}; C{stop} is set at cleanup.
    """

    def __init__(self, test, handle):
        self._handle = handle
        self.stop = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()
        test.addCleanup(self.close)

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn):
        with conn:
            conn.settimeout(0.05)
            try:
                self._handle(conn, self.stop)
            except OSError:
                pass  # the client hung up

    def close(self):
        self.stop.set()
        for thread in list(self._threads):
            thread.join(5)
        self.listener.close()


def read_line(conn, stop) -> bytes:
    """
    One line from the client (without its newline), or b"" once it hangs up.
    """
    data = b""
    while not data.endswith(b"\n") and not stop.is_set():
        try:
            chunk = conn.recv(1)
        except TimeoutError:
            continue
        if not chunk:
            return b""
        data += chunk
    return data.rstrip(b"\n")


def drip(conn, stop, data: bytes) -> None:
    for byte in data:
        conn.sendall(bytes([byte]))
        if stop.wait(DRIP_EVERY):
            return


def drip_challenge(conn, stop):
    read_line(conn, stop)  # HELLO
    drip(conn, stop, f"CHALLENGE {NONCE}\n".encode()[:DRIP_BYTES])


def drip_instead_of_closing(conn, stop):
    drip(conn, stop, b"x" * DRIP_BYTES)


def central_port_full(conn, stop):
    conn.sendall(b"ERROR too-many-connections\n")


def over_long_line(conn, stop):
    read_line(conn, stop)  # HELLO
    conn.sendall(b"A" * 600)
    stop.wait()  # no newline, no close: only the length can end it


def over_long_line_then_newline(conn, stop):
    read_line(conn, stop)  # HELLO
    conn.sendall(b"CHALLENGE " + b"A" * 590 + b"\n")
    stop.wait()


def granting(index):
    """
    A central port that holds the secret and grants knock C{index}, then
    waits for the knock's verdict that never comes.
    """

    def handle(conn, stop):
        read_line(conn, stop)  # HELLO
        conn.sendall(f"CHALLENGE {NONCE}\n".encode())
        read_line(conn, stop)  # PROOF
        mac = hs.grant_mac(SECRET, "alice", NONCE, index)
        conn.sendall(f"GRANT {index} 30 {mac}\n".encode())
        stop.wait()

    return handle


def closing(conn, stop):
    """A pool port: accepts, then closes."""


def renewal_dripping(pool_port):
    """
    A central port that grants and opens, offers a renewal, then announces
    65536 DATA lines and drips one every half second (12 of them, then
    hangs up: a knock that waits for each line ends after 6 s, not never).
    """

    def handle(conn, stop):
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        from knocker.enrol import keys as k
        from knocker.enrol.renewal import _raw

        read_line(conn, stop)  # HELLO
        conn.sendall(f"CHALLENGE {NONCE}\n".encode())
        read_line(conn, stop)  # PROOF
        mac = hs.grant_mac(SECRET, "alice", NONCE, 1)
        offer = k.b64(_raw(X25519PrivateKey.generate().public_key()))
        conn.sendall(f"GRANT 1 30 {mac}\nOPEN\nOFFER {offer}\n".encode())
        read_line(conn, stop)  # ACCEPT
        conn.sendall(b"RENEWAL 65536\n")
        for _ in range(12):
            if stop.wait(0.5):
                return
            conn.sendall(b"DATA " + b"A" * 400 + b"\n")

    return handle


def client_config(port, **keys):
    keys.setdefault("log-file", "/dev/null")
    keys.setdefault("timeout", TIMEOUT)
    keys["server"] = f"tcp:host=127.0.0.1:port={port}"
    return parse_client_config(overrides={k: str(v) for k, v in keys.items()})


def knock_file(*knocks):
    knocks = knocks or ((1, 2, 3),)
    return KnockFile("alice", SECRET, len(knocks[0]), "2026-11-25T10:00:00Z", knocks)


class _DeadlineTests:
    """
    The probes; the subclasses say which driver runs the knock.
    """

    async def knock(self, config, kf):
        raise NotImplementedError

    async def timed_knock(self, config, kf):
        started = time.monotonic()
        result = await self.knock(config, kf)
        return result, time.monotonic() - started

    def assertTimedOut(self, result, elapsed):
        self.assertEqual(result.outcome, Outcome.NO_VERDICT, result.message())
        self.assertEqual(result.outcome.exit_code, 14)
        self.assertIn("timeout", result.detail)
        self.assertLessEqual(elapsed, TIMEOUT + GRACE, result.message())

    async def test_dripped_challenge_ends_at_the_timeout(self):
        """
        A server that sends a byte every 1.5 s never lets one read time out;
        the knock's timeout still ends it.
        """
        server = FakeServer(self, drip_challenge)
        result, elapsed = await self.timed_knock(client_config(server.port), knock_file())
        self.assertTimedOut(result, elapsed)
        self.assertGreaterEqual(elapsed, TIMEOUT - 0.1)

    async def test_pool_port_that_drips_ends_at_the_timeout(self):
        """
        A knocked port that keeps sending instead of closing: the wait for
        its close is bounded by what is left of the knock's timeout
        (connect-timeout, 5 s by default, is longer than that).
        """
        pool = FakeServer(self, drip_instead_of_closing)
        central = FakeServer(self, granting(1))
        kf = knock_file((pool.port, pool.port + 1))
        result, elapsed = await self.timed_knock(client_config(central.port), kf)
        self.assertTimedOut(result, elapsed)
        self.assertEqual((result.index, result.ports), (1, (pool.port, pool.port + 1)))
        self.assertEqual(pool.accepted, 1)

    async def test_central_port_full_for_ever_ends_at_the_timeout(self):
        """
        C{ERROR too-many-connections} is retried like BUSY, but no retry
        waits past the knock's timeout.
        """
        server = FakeServer(self, central_port_full)
        config = client_config(server.port, **{"busy-retries": 5})
        result, elapsed = await self.timed_knock(config, knock_file())
        self.assertTimedOut(result, elapsed)
        self.assertGreaterEqual(result.attempts, 1)
        self.assertEqual(server.accepted, result.attempts)

    async def test_busy_retries_within_the_timeout_still_end_busy(self):
        """
        Retries that fit in the timeout are made, and the outcome after the
        last one is still BUSY (exit 6).
        """
        server = FakeServer(self, central_port_full)
        config = client_config(server.port, **{"busy-retries": 1, "timeout": 10})
        result, elapsed = await self.timed_knock(config, knock_file())
        self.assertEqual((result.outcome, result.attempts), (Outcome.BUSY, 2), result.message())
        self.assertEqual(server.accepted, 2)

    async def test_renewal_that_drips_ends_at_the_timeout_with_the_open(self):
        """
        After OPEN, a renewal whose lines keep coming (a server, or anyone
        who can write into a plain TCP connection) is bounded by what is
        left of the knock's timeout, not by a timeout for each line: the
        OPEN stands, the renewal is not taken, the file is untouched.
        """
        from knocker.core.knockgen import format_knockfile
        from knocker.files import read_private, write_private

        pool = FakeServer(self, closing)
        central = FakeServer(self, renewal_dripping(pool.port))
        kf = knock_file((pool.port,))
        path = os.path.join(self.mktemp() + "-client", "alice.knock")
        os.makedirs(os.path.dirname(path))
        write_private(path, format_knockfile(kf))
        config = client_config(central.port, **{"knock-file": path, "connect-timeout": 1})
        result, elapsed = await self.timed_knock(config, kf)
        self.assertEqual(result.outcome, Outcome.OPEN, result.message())
        self.assertIn("renewal not taken", result.detail)
        self.assertIn("timeout", result.detail)
        self.assertLessEqual(elapsed, TIMEOUT + GRACE, result.message())
        self.assertEqual(read_private(path), format_knockfile(kf))
        self.assertFalse(os.path.exists(path + ".prev"))

    async def test_over_long_line_is_a_broken_protocol(self):
        server = FakeServer(self, over_long_line)
        result, elapsed = await self.timed_knock(client_config(server.port), knock_file())
        self.assertEqual(result.outcome, Outcome.BAD_SERVER, result.message())
        self.assertEqual(result.outcome.exit_code, 13)
        self.assertIn("over-long line", result.detail)
        self.assertIn(f"more than {hs.MAX_LINE} bytes", result.detail)
        self.assertLess(elapsed, TIMEOUT, "the line's length should end it, not the timeout")

    async def test_over_long_line_with_its_newline_is_a_broken_protocol(self):
        server = FakeServer(self, over_long_line_then_newline)
        result, elapsed = await self.timed_knock(client_config(server.port), knock_file())
        self.assertEqual(result.outcome, Outcome.BAD_SERVER, result.message())
        self.assertIn("over-long line", result.detail)
        self.assertIn("b'CHALLENGE AAAA", result.detail)


class BlockingDriverDeadlineTests(_DeadlineTests, TestCase):
    async def knock(self, config, kf):
        return run_blocking(knock(BlockingDriver(), config, kf))


class TwistedDriverDeadlineTests(_DeadlineTests, TestCase):
    async def knock(self, config, kf):
        from knocker.client.twisted_driver import knock as twisted_knock

        return await twisted_knock(reactor, config, kf)


class SilentResolverTests(TestCase):
    """
    A resolver that never answers (the C library's getaddrinfo has no
    deadline of its own) holds neither a knock nor a connect past its time.
    """

    def setUp(self):
        from knocker.client import blocking_driver

        self.release = threading.Event()
        self.addCleanup(self.release.set)
        self.patch(blocking_driver._socket, "getaddrinfo",
                   lambda *args: self.release.wait(30) or [])

    def test_the_knock_is_unreachable_within_its_timeout(self):
        config = parse_client_config(overrides={
            "server": "tcp:host=door.example.org:port=7000", "timeout": "2",
            "connect-timeout": "1", "log-file": os.devnull})
        started = time.monotonic()
        result = run_blocking(knock(BlockingDriver(), config, knock_file((7001,))))
        self.assertLess(time.monotonic() - started, 2.5)
        self.assertEqual(result.outcome, Outcome.UNREACHABLE)
        self.assertIn("no answer from the resolver for door.example.org within", result.detail)

    def test_connects_target_is_given_up_too(self):
        from knocker.client.connect import resolve

        started = time.monotonic()
        with self.assertRaises(OSError) as raised:
            resolve("door.example.org", 22, 0.5)
        self.assertLess(time.monotonic() - started, 1.5)
        self.assertIn("within 0.5s", str(raised.exception))
