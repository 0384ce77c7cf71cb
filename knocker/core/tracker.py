"""
The sequence tracker (docs/spec.md section 5): grants, hits, windows and lockouts
turned into verdicts.

Pure logic with time injected: the only outside thing it touches is the
C{clock} (an L{IReactorTime}, a L{twisted.internet.task.Clock} in tests),
for C{seconds()} and for the window timers.  Verdicts go to an observer; it
never sees a socket, a file or a process.
"""

import heapq
import math
from enum import Enum
from typing import Protocol

from attrs import define, field, frozen

GLOBAL = "*"
"""The lockout key that locks out every address (scope C{global})."""

MAX_LOCKOUTS = 100_000
"""Most lockouts held at once.  With C{lockout-scope = source} a flood from
many addresses (an IPv6 /64 holds 2**64) starts one each; past this bound
the soonest to end is dropped first.  That lets an address knock early,
which grants nothing without the secret; an unbounded table would let the
flood take the daemon's memory."""


class HitVerdict(str, Enum):
    """
    What the tracker judged one hit on a pool port to be.
    """

    PROGRESS = "progress"
    COMPLETE = "complete"
    WRONG_PORT = "wrong-port"
    NO_SLOT = "no-slot"
    TIMEOUT = "timeout"
    LOCKED = "locked"


@frozen
class Policy:
    window: float = 10
    lockout: float = 60.0
    scope: str = "global"
    max_slots: int = 1

    @classmethod
    def from_config(cls, config) -> "Policy":
        return cls(
            window=config.knock_window,
            lockout=config.lockout,
            scope=config.lockout_scope,
            max_slots=config.max_concurrent,
        )


@frozen
class Refusal:
    """
    Why a grant cannot be made now: C{kind} is C{"busy"} or C{"locked"}.
    """

    kind: str
    retry_after: int


@define(eq=False)
class Slot:
    """
    One granted knock being knocked (C{position} ports done so far), or,
    once complete, waiting for its action to finish.
    """

    ip: str
    client: str
    index: int
    ports: tuple[int, ...]
    deadline: float
    position: int = 0
    acting: bool = False
    timer: object = field(default=None, repr=False)


class TrackerObserver(Protocol):
    def knock_completed(self, slot: Slot) -> None:
        """
        Every port was hit in order in time; run the action, then L{release}.
        """

    def knock_failed(self, slot: Slot, reason: str) -> None:
        """
        The slot is over: C{wrong-port}, C{timeout} or C{locked-out}.
        """

    def lockout_started(self, key: str, until: float, reason: str, ip: str) -> None:
        """
        C{key} (an address, or L{GLOBAL}) is refused until C{until}; the failed
        attempt by C{ip} that caused it was C{reason}.
        """


class Tracker:
    """
    C{observer} hears of completed and failed knocks and of lockouts; the
    coordinator sets itself there when it is given the tracker.
    """

    def __init__(self, clock, policy: Policy, observer: TrackerObserver | None = None):
        self._clock = clock
        self._policy = policy
        self.observer = observer
        self._slots: dict[str, Slot] = {}
        self._lockouts: dict[str, float] = {}
        # (until, key) for every lockout set, soonest first: expired and
        # excess lockouts leave from the top, in O(log n) each.
        self._ends: list[tuple[float, str]] = []

    # Questions.

    def locked_for(self, ip: str) -> float:
        """
        Seconds of lockout left for C{ip} (0 when it may knock).
        """
        now = self._clock.seconds()
        until = max(self._lockouts.get(GLOBAL, 0.0), self._lockouts.get(ip, 0.0))
        return max(0.0, until - now)

    def refusal(self, ip: str) -> Refusal | None:
        """
        Why C{ip} cannot be granted a knock now, or C{None} if it can.
        """
        locked = self.locked_for(ip)
        if locked > 0:
            return Refusal("locked", _ceil(locked))
        now = self._clock.seconds()
        if ip in self._slots:
            return Refusal("busy", self._wait(self._slots[ip], now))
        if len(self._slots) >= self._policy.max_slots:
            return Refusal("busy", min(self._wait(s, now) for s in self._slots.values()))
        return None

    def lockouts(self) -> dict[str, float]:
        now = self._clock.seconds()
        return {key: until for key, until in self._lockouts.items() if until > now}

    # Events.

    def grant(self, ip: str, client: str, index: int, ports: tuple[int, ...]) -> Slot:
        """
        Open a slot for C{ip}; the caller has checked L{refusal} and burned
        the number.
        """
        if self.refusal(ip) is not None:
            raise RuntimeError(f"grant for {ip} while refused")
        now = self._clock.seconds()
        slot = Slot(ip, client, index, ports, now + self._policy.window)
        slot.timer = self._clock.callLater(self._policy.window, self._timed_out, slot)
        self._slots[ip] = slot
        return slot

    def hit(self, ip: str, port: int) -> HitVerdict:
        """
        Judge one accepted connection from C{ip} on pool port C{port}.
        """
        if self.locked_for(ip) > 0:
            return HitVerdict.LOCKED
        slot = self._slots.get(ip)
        if slot is None or slot.acting:
            self._failed(ip, "no-slot")
            return HitVerdict.NO_SLOT
        if self._clock.seconds() >= slot.deadline:
            self._timed_out(slot)
            return HitVerdict.TIMEOUT
        if port != slot.ports[slot.position]:
            self._end(slot, "wrong-port")
            self._failed(ip, "wrong-port")
            return HitVerdict.WRONG_PORT
        slot.position += 1
        if slot.position < len(slot.ports):
            return HitVerdict.PROGRESS
        slot.acting = True
        self._cancel_timer(slot)
        self.observer.knock_completed(slot)
        return HitVerdict.COMPLETE

    def failed_attempt(self, ip: str, reason: str) -> None:
        """
        A failure seen elsewhere (a DENIED handshake) that starts a lockout.
        """
        if self.locked_for(ip) == 0:
            self._failed(ip, reason)

    def release(self, slot: Slot) -> None:
        """
        The completed slot's action has finished; free the slot.
        """
        if self._slots.get(slot.ip) is slot:
            del self._slots[slot.ip]

    def abandon(self, slot: Slot) -> None:
        """
        The client left before the verdict; the slot ends quietly (its
        number stays burned).
        """
        if not slot.acting and self._slots.get(slot.ip) is slot:
            self._cancel_timer(slot)
            del self._slots[slot.ip]

    def restore_lockout(self, key: str, until: float) -> None:
        """
        Reinstate a lockout that was in force before a restart.
        """
        if until > self._clock.seconds():
            self._lock(key, max(until, self._lockouts.get(key, 0.0)))

    def stop(self) -> None:
        """
        Cancel the window timers (the daemon is stopping).
        """
        for slot in self._slots.values():
            self._cancel_timer(slot)

    # Internals.

    def _timed_out(self, slot: Slot) -> None:
        if self._slots.get(slot.ip) is slot and not slot.acting:
            self._end(slot, "timeout")
            self._failed(slot.ip, "timeout")

    def _failed(self, ip: str, reason: str) -> None:
        key = GLOBAL if self._policy.scope == "global" else ip
        until = self._clock.seconds() + self._policy.lockout
        self._lock(key, until)
        for slot in list(self._slots.values()):
            if not slot.acting and (key == GLOBAL or slot.ip == ip):
                self._end(slot, "locked-out")
        self.observer.lockout_started(key, until, reason, ip)

    def _end(self, slot: Slot, reason: str) -> None:
        self._cancel_timer(slot)
        del self._slots[slot.ip]
        self.observer.knock_failed(slot, reason)

    def _cancel_timer(self, slot: Slot) -> None:
        if slot.timer is not None and slot.timer.active():
            slot.timer.cancel()
        slot.timer = None

    def _wait(self, slot: Slot, now: float) -> int:
        if slot.acting:
            return 1
        return _ceil(slot.deadline - now)

    def _lock(self, key: str, until: float) -> None:
        self._lockouts[key] = until
        heapq.heappush(self._ends, (until, key))
        now = self._clock.seconds()
        ends, lockouts = self._ends, self._lockouts
        while ends and (ends[0][0] <= now or len(lockouts) > MAX_LOCKOUTS):
            ended, old = heapq.heappop(ends)
            if lockouts.get(old) == ended:  # not since replaced by a later one
                del lockouts[old]


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))
