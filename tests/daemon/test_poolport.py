"""
Pool ports over real loopback: every connection is accepted, reported with
its addresses, and closed at once by the server.
"""

import socket

from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from knocker.daemon.poolport import PoolPort, SpareDescriptor


def connect_and_wait_close(port, host="127.0.0.1"):
    """
    Connect, then read until the server closes: b"" means a clean close.
    """
    with socket.create_connection((host, port), timeout=5) as sock:
        return sock.getsockname()[1], sock.recv(10)


class PoolPortTests(TestCase):
    def listen(self, interface="127.0.0.1"):
        hits = []
        spare = SpareDescriptor()
        self.addCleanup(spare.close)
        pool_port = PoolPort(reactor, 0, interface, lambda *hit: hits.append(hit), spare)
        pool_port.startListening()
        self.addCleanup(pool_port.stopListening)
        return pool_port, hits

    async def test_accept_record_close(self):
        pool_port, hits = self.listen()
        seen = []
        for _ in range(3):
            # The client runs in a thread-free way: connect, then let the
            # reactor accept and close before reading.
            sock = socket.create_connection(("127.0.0.1", pool_port.port), timeout=5)
            await deferLater(reactor, 0.05)
            self.assertEqual(sock.recv(10), b"", "the server closes without a byte")
            seen.append(sock.getsockname()[1])
            sock.close()
        self.assertEqual(hits, [("127.0.0.1", src, pool_port.port) for src in seen])

    async def test_many_connections_in_one_wake(self):
        pool_port, hits = self.listen()
        socks = [socket.create_connection(("127.0.0.1", pool_port.port), timeout=5)
                 for _ in range(300)]
        for _ in range(50):
            if len(hits) == 300:
                break
            await deferLater(reactor, 0.02)
        self.assertEqual(len(hits), 300)
        self.assertEqual(sorted(h[1] for h in hits), sorted(s.getsockname()[1] for s in socks))
        for sock in socks:
            sock.close()

    async def test_ipv6_listener_sees_v4_mapped(self):
        try:
            pool_port, hits = self.listen("::")
        except CannotListenError as error:
            raise self.skipTest(f"no IPv6 on this host: {error}") from None
        sock = socket.create_connection(("127.0.0.1", pool_port.port), timeout=5)
        await deferLater(reactor, 0.05)
        sock.close()
        self.assertEqual(hits[0][0], "::ffff:127.0.0.1")

    def test_port_in_use_is_an_error(self):
        pool_port, _ = self.listen()
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.assertRaises(CannotListenError, PoolPort, reactor, blocker.getsockname()[1],
                          "127.0.0.1", lambda *hit: None, SpareDescriptor())

    def test_stop_closes_the_socket(self):
        pool_port, _ = self.listen()
        port = pool_port.port
        pool_port.stopListening()
        self.assertRaises(ConnectionRefusedError, socket.create_connection, ("127.0.0.1", port), 5)

    def test_out_of_descriptors_still_records_the_hit(self):
        """
        With no descriptor left, accept fails with EMFILE; the port gives
        back the spare, takes the connection, records it, and does not spin.
        """
        import errno

        pool_port, hits = self.listen()
        real_accept = pool_port._accept
        calls = []

        def accept():
            calls.append(1)
            if len(calls) == 1:
                raise OSError(errno.EMFILE, "Too many open files")
            return real_accept()

        pool_port._accept = accept
        sock = socket.create_connection(("127.0.0.1", pool_port.port), timeout=5)
        self.addCleanup(sock.close)
        for _ in range(100):
            if select_readable(pool_port):
                break
        pool_port.doRead()
        self.assertEqual(len(hits), 1)
        self.assertEqual(hits[0][1], sock.getsockname()[1])


def select_readable(pool_port) -> bool:
    import select

    return bool(select.select([pool_port.fileno()], [], [], 0.05)[0])


class FailingHitTests(TestCase):
    async def test_a_failing_hit_does_not_close_the_port(self):
        hits = []

        def on_hit(*hit):
            hits.append(hit)
            if len(hits) == 1:
                raise OSError("disk full")

        spare = SpareDescriptor()
        self.addCleanup(spare.close)
        pool_port = PoolPort(reactor, 0, "127.0.0.1", on_hit, spare)
        pool_port.startListening()
        self.addCleanup(pool_port.stopListening)
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", pool_port.port), timeout=5)
            await deferLater(reactor, 0.05)
            sock.close()
        self.assertEqual(len(hits), 2, "the port still accepts after a failed hit")
        self.flushLoggedErrors(OSError)
