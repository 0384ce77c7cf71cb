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

from knocker.core.sources import Networks, SourceKeys

GLOBAL = "*"
"""The lockout key that locks out every address (the whole server)."""

MAX_SOURCES = 100_000
"""Most sources remembered at once (lockouts in force, and for
C{lockout-memory} after each ends, its escalation step).  A flood from many
addresses (an IPv6 /64 holds 2**64, but counts as one source; a botnet's
IPv4 addresses do not) starts one lockout each; past this bound the source
whose lockout ends soonest is forgotten first.  That lets it knock early,
which grants nothing without the secret; an unbounded table would let the
flood take the daemon's memory."""

MAX_STEP = 32
"""Escalation steps stop doubling here (the length is capped well before)."""


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
    """
    The rules of docs/spec.md section 5, from the configuration.
    """

    window: float = 10
    lockout: float = 60.0
    scope: str = "knock"
    max_slots: int = 1
    memory: float = 3600.0
    lockout_max: float = 3600.0
    prefix6: int = 64
    never_lock: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config) -> "Policy":
        return cls(
            window=config.knock_window,
            lockout=config.lockout,
            scope=config.lockout_scope,
            max_slots=config.max_concurrent,
            memory=config.lockout_memory,
            lockout_max=config.lockout_max,
            prefix6=config.source_prefix6,
            never_lock=config.never_lock,
        )


@frozen
class Lockout:
    """
    A lockout that has just started: C{key} (a source key, or L{GLOBAL})
    is refused until C{until}, for C{seconds}; C{step} counts the doublings
    of a source that keeps failing (0 for its first).  C{reason} and C{ip}
    are the failed attempt that caused it.
    """

    key: str
    scope: str
    until: float
    seconds: float
    step: int
    reason: str
    ip: str


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

    def lockout_started(self, lockout: Lockout) -> None:
        """
        A failed attempt started C{lockout}.
        """


class Tracker:
    """
    C{observer} hears of completed and failed knocks and of lockouts; the
    coordinator sets itself there when it is given the tracker.

    Which failure locks whom (C{Policy.scope}): under C{knock}, a failed
    knock (a wrong port or a timeout in a granted slot) locks the whole
    server and every other failure only its source; under C{global} every
    failure locks the whole server; under C{source}, only its source.
    Sources in C{never-lock} start no lockout at all.
    """

    def __init__(self, clock, policy: Policy, observer: TrackerObserver | None = None):
        self._clock = clock
        self._policy = policy
        self.observer = observer
        self._slots: dict[str, Slot] = {}
        # Source key -> addresses of its slots: a source's lockout ends its
        # knocks without walking every slot (with max-concurrent raised, a
        # flood of stray hits from fresh sources would otherwise cost each
        # lockout a pass over all of them).
        self._slots_by_source: dict[str, set[str]] = {}
        # Address -> deadline of a knock ended from outside (L{end}): its
        # client is still knocking the ports it was granted, which are no
        # one's failures until that knock's window is over.
        self._ended: dict[str, float] = {}
        self.source_of = SourceKeys(policy.prefix6)
        self._never_lock = Networks(policy.never_lock)
        self._global_until = 0.0
        self._flood_seen = -math.inf  # when the pool was last seen flooded
        # Source key -> (until, step, forget_at): lockouts in force, and
        # for lockout-memory after each ends, the step it reached.
        self._sources: dict[str, tuple[float, int, float]] = {}
        # (forget_at, key), soonest first: sources leave from the top.
        self._forget: list[tuple[float, str]] = []
        self._changed: set[str] = set()

    # Questions.

    def locked_for(self, ip: str) -> float:
        """
        Seconds of lockout left for C{ip} (0 when it may knock).
        """
        until = self._global_until
        key = self.source_of(ip)
        entry = self._sources.get(key)
        if entry is not None and entry[0] > until and not (
                key != ip and self._spared(ip)):
            # (a never-lock address is spared its /64's lockout too; the
            # server's applies to it, as documented.  Asked only when the
            # key is a network: an address of its own was never locked.)
            until = entry[0]
        return max(0.0, until - self._clock.seconds())

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
        ended = self._ended.get(ip, 0.0) if self._ended else 0.0
        if ended > now:
            # Its revoked knock's client may still be hitting its ports: one
            # address, one knock, until that knock's window is over.
            return Refusal("busy", _ceil(ended - now))
        if len(self._slots) >= self._policy.max_slots:
            return Refusal("busy", min(self._wait(s, now) for s in self._slots.values()))
        return None

    def lockouts(self) -> dict[str, float]:
        """
        The lockouts in force: C{{key: until}}, L{GLOBAL} for the server.
        """
        now = self._clock.seconds()
        found = {key: entry[0] for key, entry in self._sources.items() if entry[0] > now}
        if self._global_until > now:
            found[GLOBAL] = self._global_until
        return found

    def slots(self) -> list[Slot]:
        """
        The knocks granted and not over yet (knocking, or acting).
        """
        return list(self._slots.values())

    def source_until(self, key: str) -> tuple[float, int]:
        """
        C{(until, step)} of C{key}'s lockout (L{GLOBAL}: the server's, step
        0), C{(0.0, 0)} if none is remembered: one lookup, where
        L{lockouts} builds the whole table.
        """
        if key == GLOBAL:
            return self._global_until, 0
        entry = self._sources.get(key)
        return (entry[0], entry[1]) if entry is not None else (0.0, 0)

    def changed_again(self, keys) -> None:
        """
        Source lockouts whose save failed: saved with the next batch.
        """
        self._changed.update(key for key in keys if key in self._sources)

    def unsaved(self, key: str | None = None) -> None:
        """
        Leave C{key}'s lockout (every one with C{None}) out of the batches
        to save: the operator is lifting it, and a save after the lift
        would bring it back.
        """
        if key is None:
            self._changed.clear()
        else:
            self._changed.discard(key)

    def take_changes(self) -> list[tuple[str, float, int]]:
        """
        C{(key, until, step)} of each source lockout started since the last
        call, to be saved in a batch (one write a second, not one a failure).
        """
        changed, self._changed = self._changed, set()
        return [(key, self._sources[key][0], self._sources[key][1])
                for key in changed if key in self._sources]

    # Events.

    def grant(self, ip: str, client: str, index: int, ports: tuple[int, ...]) -> Slot:
        """
        Open a slot for C{ip}; the caller has checked L{refusal} and burned
        the number.
        """
        if self.refusal(ip) is not None:
            raise RuntimeError(f"grant for {ip} while refused")
        now = self._clock.seconds()
        self._ended.pop(ip, None)
        slot = Slot(ip, client, index, ports, now + self._policy.window)
        slot.timer = self._clock.callLater(self._policy.window, self._timed_out, slot)
        self._slots[ip] = slot
        self._slots_by_source.setdefault(self.source_of(ip), set()).add(ip)
        return slot

    def hit(self, ip: str, port: int) -> HitVerdict:
        """
        Judge one accepted connection from C{ip} on pool port C{port}.
        """
        if self._global_until > self._clock.seconds() or self.locked_for(ip) > 0:
            return HitVerdict.LOCKED
        slot = self._slots.get(ip)
        if slot is None or slot.acting:
            if self._ended and self._ended.get(ip, 0.0) > self._clock.seconds():
                return HitVerdict.NO_SLOT  # the rest of a knock ended by L{end}
            self._failed(ip, "no-slot", in_knock=False)
            return HitVerdict.NO_SLOT
        if self._clock.seconds() >= slot.deadline:
            self._timed_out(slot)
            return HitVerdict.TIMEOUT
        if port != slot.ports[slot.position]:
            self._end(slot, "wrong-port")
            self._failed(ip, "wrong-port", in_knock=True)
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
            self._failed(ip, reason, in_knock=False)

    def release(self, slot: Slot) -> None:
        """
        The completed slot's action has finished; free the slot.
        """
        if self._slots.get(slot.ip) is slot:
            self._drop(slot)

    def end(self, slot: Slot, reason: str) -> None:
        """
        End a knock in progress for C{reason} (its file was revoked): told
        to the observer as a failure, and no lockout, since the client did
        nothing wrong.  A completed (acting) slot is left to its action.
        """
        if not slot.acting and self._slots.get(slot.ip) is slot:
            now = self._clock.seconds()
            self._ended = {ip: at for ip, at in self._ended.items() if at > now}
            self._ended[slot.ip] = slot.deadline
            self._end(slot, reason)

    def abandon(self, slot: Slot) -> None:
        """
        The client left before the verdict; the slot ends quietly (its
        number stays burned).
        """
        if not slot.acting and self._slots.get(slot.ip) is slot:
            self._cancel_timer(slot)
            self._drop(slot)

    def lift(self, key: str | None = None) -> list[str]:
        """
        End the lockout of C{key} (a source key or L{GLOBAL}), or of every
        lockout with C{None}; returns the keys lifted.  The escalation
        memory of a lifted source is forgotten too.
        """
        lifted = [k for k in self.lockouts() if key is None or k == key]
        if key is None or key == GLOBAL:
            self._global_until = 0.0
        # Those whose lockout has ended are forgotten too: their escalation
        # step would otherwise double the next lockout the operator meant
        # to spare them.
        for k in list(self._sources) if key is None else [key]:
            if self._sources.pop(k, None) is not None:
                self._changed.discard(k)
        return lifted

    def restore_lockout(self, key: str, until: float, step: int = 0) -> bool:
        """
        Reinstate a lockout that was in force before a restart (or that
        another gateway started: L{shared_lockout}).  It ends no later than
        the policy could make a lockout end now: C{until} comes from a wall
        clock, this one's before a restart or another gateway's, and a
        clock a day fast must not shut the door for a day.  Returns whether
        it is held (not with lockout = 0, for a never-lock address, or
        when it is over already).
        """
        now = self._clock.seconds()
        policy = self._policy
        longest = (0.0 if policy.lockout <= 0  # lockout = 0: nothing is held
                   else policy.lockout if key == GLOBAL
                   else max(policy.lockout_max, policy.lockout))
        until = min(until, now + longest)
        if until <= now:
            return False
        if key == GLOBAL:
            self._global_until = max(self._global_until, until)
        elif not self._spared(key):
            # (an address never-lock lists now is not locked again by a
            # lockout saved before it was listed, or by a gateway whose
            # list differs: L{locked_for} trusts that of such keys)
            self._remember(key, until, step)
            self._changed.discard(key)
        else:
            return False
        return True

    def shared_lockout(self, key: str, until: float, step: int = 0) -> None:
        """
        A lockout another gateway of the fleet started (docs/fleet.md): held
        here as if started here, so the knocks it covers end now
        (C{locked-out}) instead of timing out into a lockout of their own,
        but not told to the observer, which would save and spread it again.
        The later end and the higher escalation C{step} of the two are kept.
        """
        if until <= self._clock.seconds():
            return
        if key != GLOBAL:
            local_until, local_step = self.source_until(key)
            until, step = max(until, local_until), min(max(step, local_step), MAX_STEP)
        unsaved = key in self._changed
        held = self.restore_lockout(key, until, step)
        if unsaved:
            self._changed.add(key)  # still ours to save
        if not held:
            return  # (lockout = 0, never-lock, over already: no knock ends for it)
        ended = [slot for slot in (self._slots.values() if key == GLOBAL else self._slots_of(key))
                 if not slot.acting and (key == GLOBAL or not self._spared(slot.ip))]
        for slot in ended:
            self._end(slot, "locked-out")

    def flooding(self) -> None:
        """
        The pool is flooded now (the pool poller says so while it lasts):
        a knock whose window this falls in is not locked out for timing out.
        """
        self._flood_seen = self._clock.seconds()

    def stop(self) -> None:
        """
        Cancel the window timers (the daemon is stopping).
        """
        for slot in self._slots.values():
            self._cancel_timer(slot)

    # Internals.

    def _spared(self, ip: str) -> bool:
        """Whether C{ip} is in C{never-lock}: no source lockout applies to it."""
        return bool(self._never_lock) and ip in self._never_lock

    def _timed_out(self, slot: Slot) -> None:
        if self._slots.get(slot.ip) is slot and not slot.acting:
            self._end(slot, "timeout")
            if self._flood_seen >= slot.deadline - self._policy.window:
                # The pool was flooded during the knock's window: its SYNs
                # may have met full listen queues and waited for their
                # retries, so the timeout is the flood's doing, and under
                # lockout-scope = knock would let a flood shut the door for
                # everyone.  The knock fails (its number stays burned); no
                # lockout.
                return
            self._failed(slot.ip, "timeout", in_knock=True)

    def _failed(self, ip: str, reason: str, in_knock: bool) -> None:
        if self._spared(ip):
            return  # logged by the caller; monitoring hosts lock nobody out
        policy, now = self._policy, self._clock.seconds()
        if policy.lockout <= 0:
            # lockout = 0: failures lock nothing.  Without this, each stray
            # hit was a zero-second lockout: a line in the audit log, a
            # knock of the same address ended, and memory kept for an hour.
            return
        if policy.scope == "global" or (policy.scope == "knock" and in_knock):
            until = now + policy.lockout
            self._global_until = max(self._global_until, until)
            lockout = Lockout(GLOBAL, "global", until, policy.lockout, 0, reason, ip)
            ended = [slot for slot in self._slots.values() if not slot.acting]
        else:
            key = self.source_of(ip)
            last = self._sources.get(key)
            step = 0
            if last is not None and now - last[0] < policy.memory:
                step = min(last[1] + 1, MAX_STEP)
            seconds = min(policy.lockout * 2 ** step, max(policy.lockout_max, policy.lockout))
            until = now + seconds
            self._remember(key, until, step)
            self._changed.add(key)
            lockout = Lockout(key, "source", until, seconds, step, reason, ip)
            ended = [slot for slot in self._slots_of(key)
                     if not slot.acting and not self._spared(slot.ip)]
        for slot in ended:
            self._end(slot, "locked-out")
        self.observer.lockout_started(lockout)

    def _remember(self, key: str, until: float, step: int) -> None:
        forget_at = until + self._policy.memory
        self._sources[key] = (until, step, forget_at)
        heapq.heappush(self._forget, (forget_at, key))
        if len(self._forget) > 2 * len(self._sources) + 1024:
            # A source locked out again leaves its earlier entry behind until
            # that one's time comes (lockout-memory on): rebuilt from the
            # entries in use, so the heap stays within twice the sources.
            self._forget = [(entry[2], k) for k, entry in self._sources.items()]
            heapq.heapify(self._forget)
        now = self._clock.seconds()
        forget, sources = self._forget, self._sources
        kept = None
        while forget and (forget[0][0] <= now or len(sources) > MAX_SOURCES):
            at, old = heapq.heappop(forget)
            entry = sources.get(old)
            if entry is None or entry[2] != at:  # since replaced
                continue
            if old == key and at > now:
                # Over the bound: the lockout just started stays, even when
                # it would be forgotten first (the others escalated past
                # it), or it would be reported and never held.
                kept = (at, old)
                continue
            del sources[old]
            self._changed.discard(old)
        if kept is not None:
            heapq.heappush(forget, kept)

    def _end(self, slot: Slot, reason: str) -> None:
        self._cancel_timer(slot)
        self._drop(slot)
        self.observer.knock_failed(slot, reason)

    def _drop(self, slot: Slot) -> None:
        del self._slots[slot.ip]
        key = self.source_of(slot.ip)
        addresses = self._slots_by_source[key]
        addresses.discard(slot.ip)
        if not addresses:
            del self._slots_by_source[key]

    def _slots_of(self, key: str) -> list[Slot]:
        """The slots of the addresses whose source key is C{key}."""
        return [self._slots[ip] for ip in self._slots_by_source.get(key, ())]

    def _cancel_timer(self, slot: Slot) -> None:
        if slot.timer is not None and slot.timer.active():
            slot.timer.cancel()
        slot.timer = None

    def _wait(self, slot: Slot, now: float) -> int:
        if slot.acting:
            return 1
        return _ceil(slot.deadline - now)


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))
