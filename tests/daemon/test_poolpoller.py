"""
The pool's own poller, with real pool ports on loopback and a memory
reactor's clock: one descriptor in the reactor for the whole pool, each
connection taken as it comes, and a flood drained on a timer instead.
"""

import select
import socket

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase

from knocker.daemon import poolpoller
from knocker.daemon.poolpoller import PoolPoller
from knocker.daemon.poolport import PoolPort, SpareDescriptor


class PoolPollerTests(TestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.poller = PoolPoller(self.reactor)
        self.addCleanup(self.poller.stop)
        self.spare = SpareDescriptor()
        self.addCleanup(self.spare.close)
        self.hits = []
        self.ports = [self.pool_port() for _ in range(3)]
        self.poller.start()

    def pool_port(self, on_hit=None):
        port = PoolPort(self.reactor, 0, "127.0.0.1", on_hit or self.on_hit, self.spare,
                        watcher=self.poller)
        port.startListening()
        self.addCleanup(port.stopListening)
        return port

    def on_hit(self, ip, src_port, port):
        self.hits.append((src_port, port))

    def connect(self, port):
        """A connection queued on C{port}, once the poller sees it ready."""
        sock = socket.create_connection(("127.0.0.1", port.port), timeout=5)
        self.addCleanup(sock.close)
        for _ in range(100):
            if select.select([self.poller.fileno()], [], [], 0.05)[0]:
                break
        return (sock.getsockname()[1], port.port)

    def test_the_reactor_watches_one_descriptor_for_the_pool(self):
        self.assertEqual(self.reactor.getReaders(), [self.poller])
        self.assertGreaterEqual(self.poller.fileno(), 0)

    def test_a_wake_takes_one_connection_from_each_ready_port(self):
        a, b = self.ports[0], self.ports[2]
        first_a, second_a, first_b = self.connect(a), self.connect(a), self.connect(b)
        self.poller.doRead()
        self.assertEqual(sorted(self.hits), sorted([first_a, first_b]))
        self.poller.doRead()  # a's second was still queued: a is ready again
        self.assertEqual(sorted(self.hits), sorted([first_a, second_a, first_b]))
        self.poller.doRead()
        self.assertEqual(len(self.hits), 3, "nothing left to take")

    def test_the_server_closes_each_connection(self):
        sock = socket.create_connection(("127.0.0.1", self.ports[1].port), timeout=5)
        self.addCleanup(sock.close)
        select.select([self.poller.fileno()], [], [], 5)
        self.poller.doRead()
        self.assertEqual(sock.recv(10), b"", "closed by the server without a byte")

    def test_a_stopped_port_is_no_longer_watched(self):
        port = self.ports[0]
        self.connect(port)
        port.stopListening()
        self.connect(self.ports[1])
        self.poller.doRead()
        self.assertEqual([hit[1] for hit in self.hits], [self.ports[1].port])

    def test_a_port_that_fails_does_not_take_the_pool_down(self):
        """A fault escaping one port is logged; the others are still drained."""
        broken = self.pool_port()

        def fail():
            raise RuntimeError("broken port")

        broken.doRead = fail
        self.connect(broken)
        taken = self.connect(self.ports[0])
        self.poller.doRead()
        self.assertEqual(self.hits, [taken])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.reactor.getReaders(), [self.poller])

    def flood(self, port, seconds):
        """
        More than L{poolpoller.FLOOD_RATE} connections a second for
        C{seconds} of the clock, each taken as it comes.
        """
        count = int(poolpoller.FLOOD_RATE * seconds * 1.2) + 1
        step = seconds / count
        for _ in range(count):
            self.connect(port)
            self.poller.doRead()
            self.reactor.advance(step)

    def test_a_flood_is_drained_on_a_timer(self):
        """
        Past the flood rate the reactor no longer watches the pool; every
        L{poolpoller.TICK} the poller takes whatever is waiting, on every
        port, in one go.
        """
        with capturedLogs() as events:
            self.flood(self.ports[0], poolpoller.WINDOW)
            self.poller.doRead()  # the window's end: judged
        self.assertTrue(self.poller.flooded)
        self.assertEqual(self.reactor.getReaders(), [])
        self.assertIn("drained every", " ".join(e["log_format"] for e in events))
        before = len(self.hits)
        waiting = [self.connect(self.ports[0]), self.connect(self.ports[0]),
                   self.connect(self.ports[1]), self.connect(self.ports[2])]
        self.assertEqual(len(self.hits), before, "nothing taken before the tick")
        self.reactor.advance(poolpoller.TICK)
        self.assertEqual(sorted(self.hits[before:]), sorted(waiting))
        # and the next tick is due
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)

    def test_when_the_flood_ends_each_connection_is_taken_as_it_comes(self):
        self.flood(self.ports[0], poolpoller.WINDOW)
        self.poller.doRead()
        self.assertTrue(self.poller.flooded)
        with capturedLogs() as events:
            for _ in range(int(poolpoller.WINDOW / poolpoller.TICK) + 2):
                self.reactor.advance(poolpoller.TICK)
        self.assertFalse(self.poller.flooded)
        self.assertEqual(self.reactor.getReaders(), [self.poller])
        self.assertEqual(self.reactor.getDelayedCalls(), [], "the timer stopped")
        self.assertIn("each taken as it comes", " ".join(e["log_format"] for e in events))
        taken = self.connect(self.ports[2])
        self.poller.doRead()
        self.assertEqual(self.hits[-1], taken)

    def test_knock_rates_are_not_a_flood(self):
        """Knocks at a hundred connections a second are taken as they come."""
        for _ in range(int(10 * poolpoller.WINDOW * 100)):
            self.connect(self.ports[1])
            self.poller.doRead()
            self.reactor.advance(0.01)
        self.assertFalse(self.poller.flooded)
        self.assertEqual(self.reactor.getReaders(), [self.poller])

    def test_stop_while_flooded_leaves_nothing_behind(self):
        self.flood(self.ports[0], poolpoller.WINDOW)
        self.poller.doRead()
        self.assertTrue(self.poller.flooded)
        self.poller.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.reactor.getReaders(), [])
        self.assertEqual(self.poller.fileno(), -1)
        for port in self.ports:  # and the ports still stop cleanly after it
            port.stopListening()

    def test_a_paused_port_is_watched_again_after_the_pause(self):
        """
        Out of descriptors with no spare to give, a port leaves the poller
        for a moment (its connections wait in the kernel), then returns.
        """
        import errno

        from knocker.daemon import poolport

        port = self.ports[0]
        self.spare.release()
        self.patch(self.spare, "restore", lambda: None)

        def accept():
            raise OSError(errno.EMFILE, "Too many open files")

        real_accept, port._accept = port._accept, accept
        queued = self.connect(port)
        self.poller.doRead()
        self.assertEqual(self.hits, [])
        port._accept = real_accept
        self.poller.doRead()
        self.assertEqual(self.hits, [], "not watched while paused")
        self.reactor.advance(poolport._PAUSE_SECONDS)
        self.poller.doRead()
        self.assertEqual(self.hits, [queued])
