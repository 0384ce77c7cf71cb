"""
Durations on the monotonic clock, deadlines that outlive a restart on the
wall clock.

Twisted's reactor times its calls with C{reactor.seconds()}, which is wall
time: stepping the system clock back an hour stretched every window,
lockout and close by an hour.  The daemon therefore runs its reactor on
C{time.monotonic} (L{use_monotonic_time}), so knock windows, slots,
lockouts and open durations last what they say whatever the wall clock
does.  Only what must survive a restart (pending closes, lockouts) is
stored, as wall time, converted at that boundary by L{WallTime}.  A large
step of the wall clock is noticed by L{ClockStepWatch} and logged.
"""

import time

from twisted.logger import Logger

log = Logger()

STEP_CHECK = 5.0
STEP_TOLERANCE = 2.0


def use_monotonic_time(reactor) -> None:
    """
    Make C{reactor} time its calls on C{time.monotonic}; calls already
    scheduled are moved onto the new time base.  Call it before the
    daemon schedules anything.
    """
    if getattr(reactor, "seconds", None) is time.monotonic:
        return
    shift = time.monotonic() - reactor.seconds()
    for call in reactor.getDelayedCalls():
        call.time += shift
        call.seconds = time.monotonic
    reactor.seconds = time.monotonic


class WallTime:
    """
    Wall time beside a clock (an L{IReactorTime}) that need not be: C{now}
    is the wall time, C{to_wall} and C{from_wall} convert a moment of the
    clock to wall time (to store it) and back (after a restart).
    """

    def __init__(self, clock, wall=None):
        self._clock = clock
        self._wall = wall or clock.seconds

    def now(self) -> float:
        return self._wall()

    def to_wall(self, moment: float) -> float:
        return self._wall() + (moment - self._clock.seconds())

    def from_wall(self, moment: float) -> float:
        return self._clock.seconds() + (moment - self._wall())


class ClockStepWatch:
    """
    Every L{STEP_CHECK} seconds, compare how far the wall clock and the
    monotonic clock moved; a difference over L{STEP_TOLERANCE} seconds is a
    step of the wall clock, reported to C{on_step(seconds)} (positive: the
    wall clock jumped forward).
    """

    def __init__(self, clock, wall, on_step):
        self._clock = clock
        self._wall = wall
        self._on_step = on_step
        self._last = None
        self._call = None

    def start(self) -> None:
        self._last = (self._clock.seconds(), self._wall())
        self._call = self._clock.callLater(STEP_CHECK, self._check)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        mono, wall = self._clock.seconds(), self._wall()
        step = (wall - self._last[1]) - (mono - self._last[0])
        self._last = (mono, wall)
        if abs(step) > STEP_TOLERANCE:
            try:
                self._on_step(step)
            except Exception:
                log.failure("reporting a clock step")
        self._call = self._clock.callLater(STEP_CHECK, self._check)
