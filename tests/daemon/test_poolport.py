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

    def test_one_connection_a_wake_the_rest_at_the_next(self):
        """
        A wake takes one waiting connection; the others stay queued for
        the next (the poller wakes the port again while any wait), and a
        wake with none waiting records nothing.
        """
        hits, spare = [], SpareDescriptor()
        self.addCleanup(spare.close)
        pool_port = PoolPort(reactor, 0, "127.0.0.1", lambda *hit: hits.append(hit), spare)
        self.addCleanup(pool_port.stopListening)  # (never watched: woken by hand)
        socks = [socket.create_connection(("127.0.0.1", pool_port.port), timeout=5)
                 for _ in range(2)]
        for sock in socks:
            self.addCleanup(sock.close)
        taken = []
        for _ in range(3):
            pool_port.doRead()
            taken.append(len(hits))
        self.assertEqual(taken, [1, 2, 2])
        self.assertEqual(sorted(h[1] for h in hits), sorted(s.getsockname()[1] for s in socks))

    async def test_many_waiting_connections_are_all_taken(self):
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


class OutOfDescriptorsTests(TestCase):
    """
    The process is out of descriptors (a memory reactor; accept and the
    spare's reopening are made to fail as the kernel would).
    """

    def setUp(self):
        import errno

        from twisted.internet.testing import MemoryReactorClock

        self.reactor = MemoryReactorClock()
        self.spare = SpareDescriptor()
        self.addCleanup(self.spare.close)
        self.hits = []
        self.port = PoolPort(self.reactor, 0, "127.0.0.1", self.on_hit, self.spare)
        self.addCleanup(self.port.stopListening)
        self.port.startListening()
        self.emfile = OSError(errno.EMFILE, "Too many open files")
        self.spare_held_at_hit = []

    def on_hit(self, *hit):
        self.spare_held_at_hit.append(self.spare.held)
        self.hits.append(hit)

    def connection(self):
        sock = socket.create_connection(("127.0.0.1", self.port.port), timeout=5)
        self.addCleanup(sock.close)
        for _ in range(100):
            if select_readable(self.port):
                return sock
        self.fail("the connection never reached the port")

    def test_the_spare_is_taken_again_before_the_hit_is_recorded(self):
        """
        Recording a hit may open descriptors (an action's pipes, the state's
        files): the spare must be held again by then, or recording takes
        it and the next shortage has nothing to give back.
        """
        real_accept, calls = self.port._accept, []

        def accept():
            calls.append(1)
            if len(calls) == 1:
                raise self.emfile
            return real_accept()

        self.port._accept = accept
        self.connection()
        self.port.doRead()
        self.assertEqual(len(self.hits), 1)
        self.assertEqual(self.spare_held_at_hit, [True])

    def test_no_spare_to_give_stops_watching_for_a_moment(self):
        """
        With the spare gone too, accept keeps failing: the port stops
        watching its socket for a moment instead of waking at once for
        every wake of a flood, and then watches it again.
        """
        from knocker.daemon import poolport

        self.spare.release()
        self.patch(self.spare, "restore", lambda: None)  # still none to reopen

        def accept():
            raise self.emfile

        self.port._accept = accept
        self.port.doRead()
        self.assertNotIn(self.port, self.reactor.getReaders())
        self.reactor.advance(poolport._PAUSE_SECONDS)
        self.assertIn(self.port, self.reactor.getReaders())
        self.assertEqual(self.hits, [])

    def test_a_spare_lost_in_a_shortage_is_taken_back_when_descriptors_are(self):
        """
        The spare could not be reopened in a shortage (another took the
        descriptor): once descriptors are back, the next wake takes it
        again, so the next shortage still has one to give.
        """
        self.spare.release()  # lost
        self.connection()
        self.port.doRead()  # an ordinary wake: the hit
        self.assertEqual(len(self.hits), 1)
        self.assertTrue(self.spare.held)
        # taken back before the hit was recorded, which may open descriptors
        self.assertEqual(self.spare_held_at_hit, [True])

    def test_a_spare_closed_for_good_is_not_taken_again(self):
        self.spare.close()
        self.connection()
        self.port.doRead()
        self.assertEqual(len(self.hits), 1)
        self.assertFalse(self.spare.held)

    def test_one_warning_line_per_ten_seconds(self):
        from twisted.logger import capturedLogs

        def accept():
            raise self.emfile

        self.port._accept = accept
        with capturedLogs() as events:
            for _ in range(50):
                self.port.doRead()
                self.reactor.advance(0.1)
            self.reactor.advance(10)
            self.port.doRead()
        warnings = [e for e in events if "out of file descriptors" in e.get("log_format", "")]
        self.assertEqual([e["count"] for e in warnings], [1, 50])


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
