"""
The life of an on-close action (docs/spec.md section 6): recorded in the
state before on-success runs, scheduled once on-success has finished,
retried while it fails, restored after a restart, cancelled at stop.
"""

from twisted.logger import Logger

log = Logger()

CLOSE_RETRY = 60.0


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
        self._stopped = False

    def record(self, due: float, ip: str, client: str, index: int) -> int:
        """
        Note a close in the state before the door opens (C{due} is the
        latest it can fall due), so a crash in between still closes.
        """
        return self._store.add_close(due, ip, client, index)

    def schedule(self, close_id: int, due: float, ip: str, client: str, index: int) -> None:
        """
        Run close C{close_id} at C{due}; a close already scheduled under
        that id is replaced, and nothing is scheduled once stopped.
        """
        if self._stopped:
            return
        previous = self._timers.pop(close_id, None)
        if previous is not None and previous.active():
            previous.cancel()
        delay = max(0.0, due - self._wall.now())
        self._timers[close_id] = self._clock.callLater(
            delay, self._run, close_id, ip, client, index)

    def restore(self) -> int:
        """
        Schedule every close the state holds; returns how many.
        """
        pending = self._store.pending_closes()
        for close in pending:
            self.schedule(close.id, close.due, close.ip, close.client, close.index)
        return len(pending)

    def stop(self) -> None:
        """
        Cancel the timers; the closes stay in the state for the next start.
        """
        self._stopped = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    def _run(self, close_id, ip, client, index) -> None:
        self._timers.pop(close_id, None)
        d = self._run_close(ip, client, index)
        d.addCallback(self._closed, close_id, ip, client, index)

    def _closed(self, result, close_id, ip, client, index) -> None:
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
