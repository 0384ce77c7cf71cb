"""
The pool's own poller: every pool port in one epoll of their own, which
the reactor watches as a single descriptor.

Why: in a flood each connection is a wake of its own, and a reactor wake
(the poll, dispatch under a log context, the timed-call check) costs more
of a hit's CPU than the verdict and the audit line.  So while the pool sees
more than L{FLOOD_RATE} connections a second, the poller stops waking for
each and drains the pool on a timer instead, every L{TICK} seconds, the way
a network driver polls under load: the connections of a tick share its
wakes, and a knock's hit waits for the next drain.  Below that rate a
connection is taken the moment it arrives, as before.  Either way the
reactor has its turn after at most L{BUDGET} connections.
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
# A drain's own cost (the timer's wake, the reactor's turn) is shared by the
# connections of a tick: at 10,000 a second, 2 ms took about 1.5 µs a hit
# less than 1 ms here (bench/README.md, floor.py).
TICK = 0.002
# Seconds over which the rate is judged; the timer stops once a window
# sees less than half the flood rate.
WINDOW = 0.1
# Connections a wake or a drain takes at most (about 2 ms of work) before
# the reactor has its turn: the central port, the timers.  A drain that
# stops here with ports still ready is followed at once, not a tick later.
BUDGET = 256
# Seconds between lines about the mode at least: a flood that stops and
# starts every window would otherwise write ten lines a second to the
# daemon's log.  A change held back is written when the time is up, as the
# mode then, with how many changes there were.
SAY_EVERY = 10.0


@implementer(IReadDescriptor)
class PoolPoller:
    """
    Watches the pool ports for the reactor: a port's C{startListening}
    calls L{addReader} here instead of on the reactor.
    """

    def __init__(self, reactor, on_flood=None):
        self._reactor = reactor
        # Called at the end of each window judged a flood: a knock whose
        # window saw one is not to blame for timing out (its own SYNs may
        # have met a full listen queue).
        self._on_flood = on_flood
        self._epoll = select.epoll()
        self._ports = {}  # descriptor -> pool port
        self._watched = False  # by the reactor (else drained by the timer)
        self._tick_call = None
        self._window_start = None
        self._seen = 0  # ready ports taken in the current window
        self.flooded = False
        self._said_at = None  # when the last line about the mode was written
        self._unsaid = 0  # changes of mode since that line
        self._say_call = None  # the held line's turn
        self._rate = 0.0  # at the last judgement

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
        for call in (self._tick_call, self._say_call):
            if call is not None:
                call.cancel()
        self._tick_call = self._say_call = None
        if self._unsaid and self._epoll is not None:  # a held line: the last word
            self._say_mode(self._reactor.seconds())
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
        """
        The reactor let go of the poller.  It does so only at its shutdown
        (the service has stopped the poller by then) or if L{doRead}
        failed, which it is built not to: rather than lose every pool port
        in silence, say so and watch again.
        """
        if self._epoll is None:
            return
        if not getattr(self._reactor, "running", True):  # its shutdown
            self.stop()
            return
        log.error("pool: the reactor stopped watching the pool ({reason}); watching again",
                  reason=reason.getErrorMessage())
        self._watched = False
        if not self.flooded:
            self._reactor.addReader(self)
            self._watched = True

    def doRead(self):
        try:
            taken = self._drain_once(BUDGET)
        except Exception:
            log.failure("pool: draining")
            taken = 0
        self._judge(taken)

    # Draining.

    def _drain_once(self, most: int) -> int:
        """
        Take one connection from each ready port, from C{most} of them at
        most (a port with more waiting is ready again at the next poll,
        and epoll takes its ready ports in turn); how many were found ready.
        """
        ports = self._ports
        ready = self._epoll.poll(0, most)
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
        """
        One drain while flooded: until no port is ready, or L{BUDGET}
        connections; then the next, a tick later, or at once if the budget
        ran out (the reactor's turn comes in between).
        """
        self._tick_call = None
        if self._epoll is None:
            return
        taken = 0
        try:
            while taken < BUDGET and self._epoll is not None:  # (a hit may stop it)
                ready = self._drain_once(BUDGET - taken)
                if not ready:
                    break
                taken += ready
        finally:  # (whatever happened, the pool is drained again)
            self._judge(taken)
            if self.flooded and self._epoll is not None:
                delay = 0 if taken >= BUDGET else TICK
                self._tick_call = self._reactor.callLater(delay, self._tick)

    def _judge(self, taken: int) -> None:
        """Count C{taken}; at the end of each window, flooded or not."""
        if self._epoll is None:  # (stopped by a hit's consequences)
            return
        now = self._reactor.seconds()
        start = self._window_start
        if start is None or now < start:  # (the first, or a clock set back)
            self._window_start, self._seen = now, taken
            return
        self._seen += taken
        if now - start < WINDOW:
            return
        rate = self._rate = self._seen / (now - start)
        self._window_start, self._seen = now, 0
        if not self.flooded and rate > FLOOD_RATE:
            self.flooded = True
            self._reactor.removeReader(self)
            self._watched = False
            self._say(now)
            if self._tick_call is None:
                self._tick_call = self._reactor.callLater(TICK, self._tick)
        elif self.flooded and rate < FLOOD_RATE / 2:
            self.flooded = False
            self._reactor.addReader(self)
            self._watched = True
            self._say(now)
        if self.flooded and self._on_flood is not None:
            self._on_flood()

    def _say(self, now: float) -> None:
        """
        The mode changed: say so now, or, within L{SAY_EVERY} of the last
        line, when that time is up.
        """
        self._unsaid += 1
        said_at = self._said_at
        if said_at is None or not 0.0 <= now - said_at < SAY_EVERY:  # (or a clock set back)
            self._say_mode(now)
        elif self._say_call is None:
            self._say_call = self._reactor.callLater(said_at + SAY_EVERY - now, self._say_held)

    def _say_held(self) -> None:
        self._say_call = None
        if self._epoll is not None and self._unsaid:  # (none: said meanwhile)
            self._say_mode(self._reactor.seconds())

    def _say_mode(self, now: float) -> None:
        mode = (f"drained every {TICK * 1000:g} ms" if self.flooded
                else "each connection taken as it comes")
        changes, self._unsaid, self._said_at = self._unsaid, 0, now
        if changes == 1:
            log.info("pool: {rate:.0f} connections a second, {mode}", rate=self._rate, mode=mode)
        else:
            log.info("pool: {rate:.0f} connections a second, {mode} (the mode changed "
                     "{changes} times since the last such line)",
                     rate=self._rate, mode=mode, changes=changes)
