"""
The pool's own poller: every pool port in one epoll of their own, which
the reactor watches as a single descriptor.

Why: in a flood each connection is a wake of its own, and a reactor wake
(the poll, dispatch under a log context, the timed-call check) costs more
of a hit's CPU than the accept and close.  So while the pool sees more
than L{FLOOD_RATE} connections a second, the poller stops waking for each
and drains the whole pool every L{TICK} seconds instead, the way a network
driver polls under load: the connections of a tick share its wakes, and a
knock's hit waits at most one tick longer.  Below that rate a connection
is taken the moment it arrives, as before.
"""

import select

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

# Connections a second above which the pool is drained on a timer.  A knock
# is 6 connections; a thousand a second is noise, not users.
FLOOD_RATE = 1000
# Seconds between drains while flooded: what a knock's hit may wait more.
TICK = 0.001
# Seconds over which the rate is judged; the timer stops once a window
# sees less than half the flood rate.
WINDOW = 0.1
# A drain asks the epoll again until no port is ready, at most this often
# (a tick must end, however hard the flood).
ROUNDS = 64
_MAX_EVENTS = 1024


@implementer(IReadDescriptor)
class PoolPoller:
    """
    Watches the pool ports for the reactor: a port's C{startListening}
    calls L{addReader} here instead of on the reactor.
    """

    def __init__(self, reactor):
        self._reactor = reactor
        self._epoll = select.epoll()
        self._ports = {}  # descriptor -> pool port
        self._watched = False  # by the reactor (else drained by the timer)
        self._tick_call = None
        self._window_start = None
        self._seen = 0  # ready ports taken in the current window
        self.flooded = False

    # What a pool port asks of its watcher.

    def addReader(self, port) -> None:
        fd = port.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._ports[fd] = port

    def removeReader(self, port) -> None:
        fd = port.fileno()
        if self._ports.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    # Life.

    def start(self) -> None:
        self._reactor.addReader(self)
        self._watched = True

    def stop(self) -> None:
        if self._tick_call is not None:
            self._tick_call.cancel()
            self._tick_call = None
        if self._watched:
            self._reactor.removeReader(self)
            self._watched = False
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        self._ports.clear()

    # IReadDescriptor

    def fileno(self) -> int:
        return self._epoll.fileno() if self._epoll is not None else -1

    def logPrefix(self) -> str:
        return "pool"

    def connectionLost(self, reason) -> None:
        self.stop()

    def doRead(self):
        self._judge(self._drain_once())

    # Draining.

    def _drain_once(self) -> int:
        """
        Take one connection from each ready port (a port with more waiting
        is ready again at the next poll); how many ports were ready.
        """
        ports = self._ports
        ready = self._epoll.poll(0, _MAX_EVENTS)
        for fd, _ in ready:
            port = ports.get(fd)  # (None: a port stopped or paused meanwhile)
            if port is not None:
                try:
                    port.doRead()
                except Exception:
                    # Never let one port's fault escape: the reactor would
                    # drop the poller, and with it every pool port.
                    log.failure("taking a connection on {prefix}", prefix=port.logPrefix())
        return len(ready)

    def _tick(self) -> None:
        """One drain while flooded: until no port is ready, or L{ROUNDS}."""
        self._tick_call = None
        if self._epoll is None:
            return
        taken = 0
        try:
            for _ in range(ROUNDS):
                ready = self._drain_once()
                taken += ready
                if not ready:
                    break
        finally:  # (whatever happened, the pool is drained again)
            self._judge(taken)
            if self.flooded and self._epoll is not None:
                self._tick_call = self._reactor.callLater(TICK, self._tick)

    def _judge(self, taken: int) -> None:
        """Count C{taken}; at the end of each window, flooded or not."""
        self._seen += taken
        now = self._reactor.seconds()
        start = self._window_start
        if start is None or now < start:
            self._window_start = now
            return
        if now - start < WINDOW:
            return
        rate = self._seen / (now - start)
        self._window_start, self._seen = now, 0
        if not self.flooded and rate > FLOOD_RATE:
            self.flooded = True
            self._reactor.removeReader(self)
            self._watched = False
            log.info("pool: {rate:.0f} connections a second, drained every {ms} ms",
                     rate=rate, ms=TICK * 1000)
            if self._tick_call is None:
                self._tick_call = self._reactor.callLater(TICK, self._tick)
        elif self.flooded and rate < FLOOD_RATE / 2:
            self.flooded = False
            self._reactor.addReader(self)
            self._watched = True
            log.info("pool: {rate:.0f} connections a second, each taken as it comes",
                     rate=rate)
