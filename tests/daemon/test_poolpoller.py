"""
The pool's own poller, with real pool ports on loopback and a memory
reactor's clock: one descriptor in the reactor for the whole pool, each
connection taken as it comes, and a flood drained on a timer instead.
"""

import os
import select
import socket
import struct
import time

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from knocker.daemon import poolpoller
from knocker.daemon.poolpoller import PoolPoller
from knocker.daemon.poolport import PoolPort, SpareDescriptor
from tests.helpers.harness import epoll_watches


def queued(port) -> int:
    """
    Connections waiting in C{port}'s accept queue: for a listening socket,
    Linux reports it as C{tcpi_unacked} in C{TCP_INFO}.
    """
    info = port._socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, 24)[0]


class PoolPollerTests(TestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.running = True  # (as it is while the daemon serves)
        self.poller = PoolPoller(self.reactor)
        self.addCleanup(self.poller.stop)
        self.spare = SpareDescriptor()
        self.addCleanup(self.spare.close)
        self.hits = []
        self.after_hit = None
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
        if self.after_hit is not None:
            self.after_hit()

    def connect(self, port):
        """A connection queued on C{port}, once the kernel has queued it."""
        before = queued(port)
        sock = socket.create_connection(("127.0.0.1", port.port), timeout=5)
        self.addCleanup(sock.close)
        for _ in range(500):
            if queued(port) > before:
                return (sock.getsockname()[1], port.port)
            time.sleep(0.01)
        self.fail(f"the connection to {port.port} was never queued")

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

    def test_a_stopped_port_takes_nothing_and_the_rest_go_on(self):
        port = self.ports[0]
        self.connect(port)
        fd = port.fileno()
        self.assertIn(fd, epoll_watches(self.poller))
        # A copy of the descriptor keeps the socket open, so the kernel does
        # not drop it from the epoll by itself when the port closes it.
        copy = os.dup(fd)
        self.addCleanup(os.close, copy)
        port.stopListening()
        self.assertNotIn(fd, epoll_watches(self.poller))
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
        C{seconds} of the clock, each taken as it comes; the clock then a
        step past it (so the next wake judges the window, whatever the
        rounding of the steps).
        """
        count = int(poolpoller.FLOOD_RATE * seconds * 1.5) + 1
        step = seconds / count
        for _ in range(count):
            self.connect(port)
            self.poller.doRead()
            self.reactor.advance(step)
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
        self.assertIn("drained every", " ".join(formatEvent(e) for e in events))
        before = len(self.hits)
        waiting = [self.connect(self.ports[0]), self.connect(self.ports[0]),
                   self.connect(self.ports[1]), self.connect(self.ports[2])]
        self.reactor.advance(poolpoller.TICK)
        self.assertEqual(sorted(self.hits[before:]), sorted(waiting))
        # and the next tick is due
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)

    def test_the_tracker_hears_of_each_flooded_window(self):
        floods = []
        self.poller._on_flood = lambda: floods.append(self.reactor.seconds())
        self.enter_flood()
        self.assertEqual(len(floods), 1)
        self.flood(self.ports[0], poolpoller.WINDOW)
        self.reactor.advance(poolpoller.TICK)
        self.assertGreaterEqual(len(floods), 2, "while it lasts")
        for _ in range(int(poolpoller.WINDOW / poolpoller.TICK) + 2):
            self.reactor.advance(poolpoller.TICK)
        self.assertFalse(self.poller.flooded)
        heard = len(floods)
        for _ in range(int(poolpoller.WINDOW / poolpoller.TICK) + 2):
            self.reactor.advance(poolpoller.TICK)
        self.assertEqual(len(floods), heard, "not once it ended")

    def test_when_the_flood_ends_each_connection_is_taken_as_it_comes(self):
        self.enter_flood()
        with capturedLogs() as events:
            for _ in range(int(poolpoller.WINDOW / poolpoller.TICK) + 2):
                self.reactor.advance(poolpoller.TICK)
            self.reactor.advance(poolpoller.SAY_EVERY)  # (its line held till then)
        self.assertFalse(self.poller.flooded)
        self.assertEqual(self.reactor.getReaders(), [self.poller])
        self.assertEqual([call for call in self.reactor.getDelayedCalls()
                          if call.func == self.poller._tick], [], "the timer stopped")
        self.assertIn("each connection taken as it comes", " ".join(formatEvent(e) for e in events))
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
        self.enter_flood()
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

    def enter_flood(self):
        # a quiet window first, so the flood fills the next one
        self.reactor.advance(poolpoller.WINDOW * 1.5)
        self.poller.doRead()
        self.flood(self.ports[0], poolpoller.WINDOW)
        self.poller.doRead()
        self.assertTrue(self.poller.flooded)

    def test_a_drain_ends_at_its_budget_and_the_next_follows_at_once(self):
        """
        However many wait, a drain takes L{poolpoller.BUDGET} connections
        at most, so the reactor (the central port, the timers) has its
        turn; the next drain is due at once, not a tick later.
        """
        drains = []  # (when, hits so far) as each drain starts
        drain = self.poller._tick

        def counted():
            drains.append((self.reactor.seconds(), len(self.hits)))
            drain()

        self.patch(self.poller, "_tick", counted)
        self.enter_flood()
        extra = self.pool_port()
        before = len(self.hits)
        for port in self.ports + [extra]:
            for _ in range(poolpoller.BUDGET // 4 + 10):
                self.connect(port)
        waiting = 4 * (poolpoller.BUDGET // 4 + 10)
        self.reactor.advance(poolpoller.TICK)
        now = self.reactor.seconds()
        self.assertEqual(drains, [(now, before), (now, before + poolpoller.BUDGET)])
        self.assertEqual(len(self.hits), before + waiting)
        [call] = self.reactor.getDelayedCalls()
        self.assertAlmostEqual(call.getTime() - now, poolpoller.TICK,
                               msg="with nothing left, the next drain a tick later")

    def test_a_wake_takes_its_budget_at_most(self):
        ports = [self.pool_port() for _ in range(poolpoller.BUDGET + 10 - len(self.ports))]
        for port in self.ports + ports:
            self.connect(port)
        self.poller.doRead()
        self.assertEqual(len(self.hits), poolpoller.BUDGET)
        self.poller.doRead()
        self.assertEqual(len(self.hits), poolpoller.BUDGET + 10)

    def test_a_clock_set_back_does_not_hide_a_flood(self):
        self.connect(self.ports[0])
        self.poller.doRead()  # a window starts
        self.reactor.rightNow -= 10
        self.enter_flood()

    def test_a_failing_drain_still_schedules_the_next(self):
        self.enter_flood()

        def fail(most):
            raise OSError("poll failed")

        self.patch(self.poller, "_drain_once", fail)
        # (the reactor logs what a timed call raises; this clock hands it on)
        self.assertRaises(OSError, self.reactor.advance, poolpoller.TICK)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1, "drained again")

    def test_a_failing_wake_is_logged_and_the_pool_still_watched(self):
        def fail(most):
            raise OSError("poll failed")

        self.patch(self.poller, "_drain_once", fail)
        self.poller.doRead()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.reactor.getReaders(), [self.poller])

    def test_dropped_by_the_reactor_it_watches_again(self):
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        self.reactor.removeReader(self.poller)
        self.poller.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.reactor.getReaders(), [self.poller])

    def test_stopped_by_a_hit_mid_drain(self):
        """A hit whose consequences stop the pool ends the drain cleanly."""
        self.enter_flood()
        self.after_hit = self.poller.stop
        for port in self.ports:
            self.connect(port)
        self.reactor.advance(poolpoller.TICK)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.reactor.getReaders(), [])

    def test_lost_at_the_reactors_shutdown_it_stops_quietly(self):
        """
        At its shutdown the reactor tells every reader it is lost: a
        poller the service did not stop first stops then, with no error.
        """
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        self.reactor.running = False
        with capturedLogs() as events:
            self.poller.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.poller.fileno(), -1)
        self.assertEqual([e for e in events if e["log_level"].name != "debug"], [])

    def test_lost_once_stopped_is_quiet(self):
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        self.poller.stop()
        with capturedLogs() as events:
            self.poller.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.reactor.getReaders(), [])
        self.assertEqual(list(events), [])

    def leave_flood(self):
        """No connection for as long as it takes the poller to judge a window."""
        for _ in range(3 * int(poolpoller.WINDOW / poolpoller.TICK)):
            self.reactor.advance(poolpoller.TICK)
            if not self.poller.flooded:
                return
        self.fail("still flooded after three quiet windows")

    def mode_lines(self, events):
        return [formatEvent(e) for e in events if "pool:" in formatEvent(e)]

    def test_a_flood_that_stops_and_starts_is_not_a_line_each_time(self):
        """
        One line about the mode in L{poolpoller.SAY_EVERY} at most; a
        change within it is written when it is up, as the mode then, with
        how many changes there were.
        """
        with capturedLogs() as events:
            self.enter_flood()
            said_at = self.reactor.seconds()
            for _ in range(3):
                self.leave_flood()
                self.enter_flood()
            self.assertEqual(len(self.mode_lines(events)), 1)
            self.reactor.advance(said_at + poolpoller.SAY_EVERY - self.reactor.seconds() - 0.01)
            self.assertEqual(len(self.mode_lines(events)), 1, "not before the time is up")
            self.reactor.advance(0.01)
        lines = self.mode_lines(events)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("drained every", lines[0])
        self.assertNotIn("changed", lines[0])
        # quiet since the last flood: it left it meanwhile, the seventh change
        self.assertFalse(self.poller.flooded)
        self.assertIn("each connection taken as it comes", lines[1])
        self.assertIn("changed 7 times", lines[1])
        with capturedLogs() as events:
            self.enter_flood()  # within the time again: held, counted afresh
            self.reactor.advance(poolpoller.SAY_EVERY)
        [line] = self.mode_lines(events)
        self.assertIn("changed 2 times", line)

    def test_a_flood_that_stays_is_said_even_after_it_flapped(self):
        """The last line about the mode is the mode the pool is in."""
        self.patch(poolpoller, "SAY_EVERY", 0.5)
        with capturedLogs() as events:
            self.enter_flood()
            self.leave_flood()
            self.enter_flood()  # held: within 0.5 s of the first line
            self.assertEqual(len(self.mode_lines(events)), 1, "the second held")
            self.flood(self.ports[1], 0.3)  # and it goes on past the time
        self.assertTrue(self.poller.flooded)
        lines = self.mode_lines(events)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("drained every", lines[-1])
        self.assertIn("changed 2 times", lines[-1])

    def test_a_clock_set_back_does_not_hold_the_line(self):
        with capturedLogs() as events:
            self.enter_flood()
            self.leave_flood()
            self.reactor.advance(poolpoller.SAY_EVERY)  # the held line, then
            self.reactor.rightNow -= 3600
            self.enter_flood()
        lines = self.mode_lines(events)
        self.assertEqual(len(lines), 3, lines)
        self.assertIn("drained every", lines[2])

    def test_stopped_with_a_line_held_it_is_written(self):
        with capturedLogs() as events:
            self.enter_flood()
            self.leave_flood()  # held
            self.poller.stop()
        lines = self.mode_lines(events)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("each connection taken as it comes", lines[1])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
