"""
The life of an on-close action (docs/spec.md section 6): recorded in the
state before on-success runs, scheduled once on-success has finished,
retried while it fails; at start every close left in the state runs at
once, and at stop every pending close runs before the daemon exits (at
most L{ACTIONS_AT_ONCE} actions at a time, the rest queued).

The schedule also knows which doors are open now (on-success worked and
their close is not yet due), so that a firewall that lost them (a ruleset
flush) can be given them back (L{CloseSchedule.reopen}), and it never runs
a close while an action opening the same door still runs, so a close can
never be overtaken by the open it undoes.

A door is an address: a second knock from it while its door is open opens
the same door again (the nft scripts keep one set element an address).  So
the actions of one address are kept in order: a close that falls due (or
reaches its turn to run) while another door of its address is open, or
being opened, is parked until the address's last door falls due, and then
runs with it, each close with its own arguments (for a program that keeps
a rule a knock); an open waits for a close of its address already running.
Times are kept on the monotonic clock: a step of the wall clock neither
stretches nor cuts a door.
"""

from twisted.internet import defer
from twisted.logger import Logger

log = Logger()

CLOSE_RETRY = 60.0
#: Firewall actions (closes, and opens run again by L{CloseSchedule.reopen})
#: running at once.  A start, a stop or a ruleset flush can find thousands
#: due together (one per ssh connection made through knocker connect); all
#: at once, they outran script-timeout (nft serialises its transactions) and
#: the daemon's descriptors; queued, each has its whole timeout once started.
ACTIONS_AT_ONCE = 8


class _Runs:
    """
    Actions in flight, counted per key (a close id, or an address), and
    who waits for them to end.
    """

    def __init__(self):
        self._entries: dict[int | str, list] = {}  # key -> [count, waiters]

    def begin(self, key: int | str) -> None:
        self._entries.setdefault(key, [0, []])[0] += 1

    def end(self, key: int | str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] <= 0:
            del self._entries[key]
            for waiter in entry[1]:
                waiter.callback(None)

    def __contains__(self, key: int | str) -> bool:
        return key in self._entries

    def done(self, key: int | str) -> defer.Deferred:
        """
        Fires once nothing runs for C{key} (at once if nothing does).
        """
        entry = self._entries.get(key)
        if entry is None:
            return defer.succeed(None)
        waiter = defer.Deferred()
        entry[1].append(waiter)
        return waiter


class _Address:
    """
    One address's door: the closes whose door is open and not yet due
    (C{holders}), the opens running (C{opening}), and the closes due but
    held (C{parked}: id -> (client, index)).
    """

    __slots__ = ("holders", "opening", "parked")

    def __init__(self):
        self.holders: set[int] = set()
        self.opening = 0
        self.parked: dict[int, tuple[str, int]] = {}

    def held(self) -> bool:
        return bool(self.opening or self.holders)

    def idle(self) -> bool:
        return not (self.holders or self.opening or self.parked)


_PARKED = object()  # what a close that was parked instead of run "returns"


class CloseSchedule:
    """
    Pending closes: C{store} keeps them across restarts with their due
    time as wall time (C{wall}, a L{knocker.daemon.clock.WallTime}),
    C{clock} times them, C{run_close(ip, client, index)} runs the program
    and fires with its L{knocker.daemon.actions.ActionResult}, C{audit}
    records each run.
    """

    def __init__(self, clock, wall, store, run_close, audit, retry: float = CLOSE_RETRY):
        self._clock = clock
        self._wall = wall
        self._store = store
        self._run_close = run_close
        self._audit = audit
        self._retry = retry
        self._timers: dict[int, object] = {}
        self._open: dict[int, tuple[str, str, int]] = {}
        self._opening = _Runs()
        self._unscheduled: set[int] = set()  # recorded, on-success still running
        self._closing = _Runs()
        self._closing_at = _Runs()  # the same, per address
        self._addresses: dict[str, _Address] = {}
        self._stopped = False
        self._slots = defer.DeferredSemaphore(ACTIONS_AT_ONCE)

    def _address(self, ip: str) -> _Address:
        found = self._addresses.get(ip)
        if found is None:
            found = self._addresses[ip] = _Address()
        return found

    def _forget_if_idle(self, ip: str) -> None:
        found = self._addresses.get(ip)
        if found is not None and found.idle():
            del self._addresses[ip]

    def record(self, due: float, ip: str, client: str, index: int) -> int:
        """
        Note a close in the state before the door opens (C{due} is the
        latest it can fall due), so a crash in between still closes.  The
        caller runs on-success next, and says when it has finished with
        L{opened} (or L{schedule}); until then no close of this id, nor of
        this address, runs.  With a store that answers later, a
        L{Deferred} firing with the id.
        """
        self._address(ip).opening += 1  # now: a fleet's id comes later
        try:
            recorded = self._store.add_close(due, ip, client, index)
        except BaseException:
            self._open_ended(ip)
            raise
        if isinstance(recorded, defer.Deferred):
            return recorded.addCallbacks(self._recorded, self._not_recorded,
                                         callbackArgs=(ip,), errbackArgs=(ip,))
        return self._recorded(recorded, ip)

    def _recorded(self, close_id: int, ip: str) -> int:
        self._opening.begin(close_id)
        self._unscheduled.add(close_id)
        return close_id

    def _not_recorded(self, failure, ip: str):
        self._open_ended(ip)  # on-success will not run
        return failure

    def quiet(self, ip: str) -> defer.Deferred | None:
        """
        C{None} if no close of C{ip} is running; else a L{Deferred} that
        fires once none is.  An open waits for it, so that it cannot be
        undone by a close that started before it.
        """
        return self._closing_at.done(ip) if ip in self._closing_at else None

    def opened(self, close_id: int, due: float, ip: str, client: str, index: int,
               ok: bool) -> None:
        """
        on-success for close C{close_id} has finished (C{ok}: it worked, so
        the door is open until the close falls due at C{due}).
        """
        if ok and not self._stopped:
            self._open[close_id] = (ip, client, index)
            self._address(ip).holders.add(close_id)
        self.schedule(close_id, due, ip, client, index)

    def schedule(self, close_id: int, due: float, ip: str, client: str, index: int) -> None:
        """
        Run close C{close_id} at C{due} (wall time, timed from now on the
        monotonic clock); a close already scheduled under that id is
        replaced, and nothing is scheduled once stopped.  The first
        schedule of a recorded close says its on-success has finished.
        """
        if not self._stopped:
            previous = self._timers.pop(close_id, None)
            if previous is not None and previous.active():
                previous.cancel()
            delay = max(0.0, due - self._wall.now())
            self._timers[close_id] = self._clock.callLater(
                delay, self._fall_due, close_id, ip, client, index)
        if close_id in self._unscheduled:
            self._unscheduled.discard(close_id)
            self._opening.end(close_id)
            self._open_ended(ip)

    def _open_ended(self, ip: str) -> None:
        self._address(ip).opening -= 1
        self._release(ip)

    def _release(self, ip: str) -> None:
        """Run the parked closes of C{ip} once nothing holds its door."""
        found = self._addresses.get(ip)
        if found is None:
            return
        if not self._stopped and not found.held() and found.parked:
            parked, found.parked = found.parked, {}
            for close_id, (client, index) in parked.items():
                self._run(close_id, ip, client, index)
        self._forget_if_idle(ip)

    def _fall_due(self, close_id, ip, client, index) -> None:
        self._timers.pop(close_id, None)
        found = self._address(ip)
        found.holders.discard(close_id)
        if self._stopped:
            return  # close_now runs it
        if found.held():
            log.info("the close of knock {index} of {client} at {ip} waits for the address's "
                     "later door", index=index, client=client, ip=ip)
            found.parked[close_id] = (client, index)
            return
        self._run(close_id, ip, client, index)
        self._release(ip)

    def restore(self, pending=None) -> int:
        """
        At start: every close the state holds (C{pending}, if the caller
        has read them) runs at once, whenever it was due.  A door that an
        earlier run left open is closed rather than kept open to its time
        (fail-closed); its client knocks again.  Returns how many.
        """
        if pending is None:
            pending = self._store.pending_closes()
        now = self._wall.now()
        for close in pending:
            self.schedule(close.id, now, close.ip, close.client, close.index)
        return len(pending)

    def open_doors(self) -> list[tuple[str, str, int]]:
        """
        C{(ip, client, index)} of every door open now: on-success worked
        and the close is not yet due.
        """
        return list(self._open.values())

    def close_client(self, client: str) -> int:
        """
        C{client}'s doors fall due now (it is revoked): each close runs at
        once, or with its address's last door when another client's knock
        holds the address open.  None is given back by L{reopen}.  Returns
        how many doors there were.
        """
        doors = [(close_id, door) for close_id, door in self._open.items() if door[1] == client]
        for close_id, (ip, _, index) in doors:
            timer = self._timers.get(close_id)
            if timer is not None and timer.active():
                timer.cancel()
            self._open.pop(close_id)
            if close_id in self._address(ip).holders:
                self._fall_due(close_id, ip, client, index)
        return len(doors)

    def reopen(self, run_open) -> int:
        """
        Run C{run_open(ip, client, index)} (on-success again) once for each
        address with a door open now, for its latest knock, after the
        firewall lost them; closes of the address wait until it has
        finished, and it waits for one already running.  Returns how many.
        """
        latest = {}
        for close_id, (ip, client, index) in self._open.items():
            latest[ip] = (close_id, client, index)
        for ip, (close_id, client, index) in latest.items():
            self._address(ip).opening += 1
            self._opening.begin(close_id)
            waited = self.quiet(ip) or defer.succeed(None)
            d = waited.addCallback(lambda _, ip=ip, client=client, index=index:
                                   self._slots.run(run_open, ip, client, index))
            d.addBoth(self._reopened, close_id, ip)
        return len(latest)

    def _reopened(self, result, close_id, ip):
        self._opening.end(close_id)
        self._open_ended(ip)
        return result

    def stop(self) -> None:
        """
        Cancel the timers; the closes stay in the state.
        """
        self._stopped = True
        self._open.clear()
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for found in self._addresses.values():
            found.holders.clear()
            found.parked.clear()  # close_now runs them: they are in the state

    def close_now(self) -> defer.Deferred:
        """
        At stop: cancel the timers and run every close the state holds,
        now (a close whose door an action is still opening runs once that
        action has finished; a close already running is waited for, not
        run twice).  Fires with how many closes there were, once all have
        finished, each within script-timeout.  A close that fails stays in
        the state, and the next start runs it at once.
        """
        self.stop()
        pending = self._store.pending_closes()
        runs = []
        for close in pending:
            if close.id in self._closing:
                runs.append(self._closing.done(close.id))
            else:
                runs.append(self._run(close.id, close.ip, close.client, close.index))
        done = defer.gatherResults(runs, consumeErrors=True)
        return done.addBoth(lambda _: len(pending))

    def _run(self, close_id, ip, client, index) -> defer.Deferred:
        self._timers.pop(close_id, None)
        self._open.pop(close_id, None)
        self._closing.begin(close_id)
        d = self._opening.done(close_id)
        d.addCallback(lambda _: self._slots.run(self._start, close_id, ip, client, index))
        d.addCallback(self._closed, close_id, ip, client, index)
        d.addErrback(self._close_failed, close_id, ip, client, index)
        d.addBoth(self._close_ended, close_id)
        return d

    def _start(self, close_id, ip, client, index):
        """
        Its turn to run (closes queue for L{ACTIONS_AT_ONCE}): parked
        instead if a door of its address opened meanwhile, or is opening.
        """
        found = self._address(ip)
        if not self._stopped and found.held():
            found.parked[close_id] = (client, index)
            return _PARKED
        self._closing_at.begin(ip)
        d = defer.maybeDeferred(self._run_close, ip, client, index)
        return d.addBoth(self._close_finished, ip)

    def _close_finished(self, result, ip):
        self._closing_at.end(ip)
        self._forget_if_idle(ip)
        return result

    def _close_ended(self, result, close_id):
        self._closing.end(close_id)
        return result

    def _close_failed(self, failure, close_id, ip, client, index) -> None:
        """
        Running the close, or recording its end, raised: the door may
        still be open, so the close stays and is tried again, as one that
        failed (it is idempotent, should it have run).
        """
        log.failure("on-close for {client} at {ip}; retrying in {s}s", failure,
                    client=client, ip=ip, s=self._retry)
        if not self._stopped:
            self.schedule(close_id, self._wall.now() + self._retry, ip, client, index)

    def _closed(self, result, close_id, ip, client, index) -> None:
        if result is _PARKED:
            return
        # Log first, then forget: a crash in between runs the (idempotent)
        # close again after the restart, rather than leave a close unlogged.
        self._audit.record("close", ip=ip, client=client, index=index, ok=result.ok)
        if result.ok:
            self._store.remove_close(close_id)
        else:
            # The door may still be open: keep the close and try again.
            log.error("on-close for {client} at {ip} failed; retrying in {s}s",
                      client=client, ip=ip, s=self._retry)
            self.schedule(close_id, self._wall.now() + self._retry, ip, client, index)
