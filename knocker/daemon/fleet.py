"""
A gateway of a fleet (docs/spec.md section 11, docs/fleet.md): the daemon's
side of L{knocker.state.postgres.PostgresStore}.

The reactor never waits for the database.  L{ThreadedStore} runs the calls
of the knock path (a client's state, the burn, the record of a close before
on-success) and of section 10's (invitations, pending generations, drawing
a renewed file) in a small thread pool and hands the coordinator
L{Deferred}s; the saves it does not wait for (lockouts, forgetting a close
that has run) go the same way and log their failure.  Only start-up and
stop are synchronous.

Without its database the gateway fails closed: the lookup or the burn
fails, the handshake gets C{ERROR server-error}, no GRANT; hits are still
judged and recorded in the audit log; L{LockoutSync} notices the outage
and the return (logged and audited as C{database} events).

L{LockoutSync} keeps the tracker's lockouts in step with the shared table:
a dedicated connection LISTENs for NOTIFY (a lockout of the whole server,
or "read again" after a batch of source lockouts), and every
L{REREAD} seconds the rows changed since the last read are read anyway,
since a gateway that was reconnecting has missed its notifications.
"""

import threading
import time

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from knocker.core.knockfile import HEADER_LIMIT, KnockFileError, find_knock, parse_header
from knocker.state.book import ClientBook
from knocker.state.interface import WHOLE_SERVER, PendingClose, StateError, secret_id
from knocker.state.postgres import LIFT_NOTICE, LOCKOUT_CHANNEL, REVOKED_NOTICE

log = Logger()

REREAD = 5.0
FULL_EVERY = 12
PAGE = 5000
APPLY_CHUNK = 500
MAX_CUT = 10_000  # rows remembered as cut by the tracker's cap
LISTEN_POLL = 0.5
RECONNECT = 1.0
THREADS = 4
#: Database calls waiting or running at once, past which a new one fails at
#: once: anyone can send a PROOF, and each costs a lookup, so a database
#: that fell behind (or stopped answering) must not let them queue without
#: bound.  The knock then gets ERROR server-error, as without a database.
MAX_CALLS = 256
#: Lockout writes (batches, the server's lockout, lifts) waiting their
#: turn, past which one fails at once: a database that fell behind must
#: not make an operator's lift wait minutes behind a queue of batches.
MAX_LOCKOUT_WRITES = 16
#: Seconds a call may take before its knock is answered ERROR server-error:
#: a database frozen behind a kernel that still ACKs (a paused machine, a
#: stalled disk) trips no socket timeout, and the client would get silence.
#: The thread stays in the call until the database answers.
CALL_DEADLINE = 10.0


class DatabaseBook:
    """
    The server's copies of the portknock files, from the database (sealed
    there; see L{knocker.state.postgres.SecretBox}), with
    L{knocker.state.book.ClientBook}'s interface.  L{secret} and L{knock}
    use only memory, so the reactor may call them; L{refresh} reads one
    client's copy and is called from a database thread (by
    L{ThreadedStore.client}) whenever the state names a secret not held.
    """

    def __init__(self, store, pool: tuple[int, ...]):
        self._store = store
        self._pool = frozenset(pool)
        self._copies: dict[str, tuple[str, object]] = {}  # client: (text, header)
        self._pending: dict[str, tuple[str, object]] = {}  # renewed, not yet proven
        self.skipped: list[tuple[str, str]] = []  # (client, why) not loaded at start

    def path(self, client: str) -> str:
        return f"{self._store.path} (server's copy of {client})"

    def load(self) -> None:
        """
        Every client's copy.  One that does not open (altered, sealed under
        another key, unreadable) is skipped and logged, and listed in
        L{skipped} for the audit log: that client cannot knock here, every
        other one can.  (A wrong key file is refused before, by
        L{knocker.state.postgres.PostgresStore.check_key}.)
        """
        for client in self._store.book_clients():
            try:
                self.refresh(client)
            except (StateError, KnockFileError) as error:
                self._copies.pop(client, None)
                self.skipped.append((client, str(error)))
                log.error("the server's copy for {client} cannot be used, so {client} cannot "
                          "knock on this gateway: {error}", client=client, error=error)

    def clients(self) -> list[str]:
        return sorted(self._copies)

    def refresh(self, client: str) -> None:
        text = self._store.book(client)
        if text is None:
            self._copies.pop(client, None)
            return
        header = parse_header(text[:HEADER_LIMIT], self.path(client))
        self._copies[client] = (text, header)

    def held_secret_id(self, client: str) -> str | None:
        copy = self._copies.get(client)
        return secret_id(copy[1].secret) if copy else None

    def secret(self, client: str, wanted_id: str) -> bytes:
        copy = self._copies.get(client)
        if copy is None or secret_id(copy[1].secret) != wanted_id:
            raise KnockFileError(
                f"{self.path(client)} is not the file the state's counter for {client!r} "
                f"belongs to; run 'knocker generate {client} --force' again")
        return copy[1].secret

    def knock(self, client: str, index: int) -> tuple[int, ...]:
        text, header = self._copies[client]
        ports, _ = find_knock(text, self.path(client), index, header.ports_per_knock)
        outside = set(ports) - self._pool
        if outside:
            raise KnockFileError(f"{self.path(client)}: knock {index} names ports "
                                 f"{sorted(outside)} outside the server's pool")
        return ports

    def read_ahead(self, client: str, index: int) -> None:
        """Nothing to do: every copy is in memory already (see L{knock})."""

    def add(self, kf) -> str:
        from knocker.core.knockgen import format_knockfile

        self._store.put_book(kf.client, kf.secret, format_knockfile(kf))
        return self.path(kf.client)

    def text(self, client: str) -> str:
        return self._copies[client][0]

    def ports_per_knock(self, client: str) -> int:
        """From a database thread (L{knocker.enrol.renewal.prepare_offer})."""
        if client not in self._copies:
            self.refresh(client)
        return self._copies[client][1].ports_per_knock

    # Renewal (section 10): the pending generation's copy is in the
    # database too (sealed, in the pending table), not in a file, so any
    # gateway can offer it again or accept its proof.

    pending_id = staticmethod(ClientBook.pending_id)

    def pending_path(self, client: str) -> str:
        return f"{self._store.path} (pending copy of {client})"

    def refresh_pending(self, client: str) -> None:
        """From a database thread: hold the pending copy the database has."""
        text = self._store.pending_book(client)
        if text is None:
            self._pending.pop(client, None)
        else:
            self._pending[client] = (text, parse_header(text[:HEADER_LIMIT], self.pending_path(client)))

    def held_pending_id(self, client: str) -> str | None:
        copy = self._pending.get(client)
        return secret_id(copy[1].secret) if copy else None

    def drop_pending(self, client: str, text: str) -> None:
        """
        From a database thread: forget C{text} as the pending copy (the
        state refused it: the client was generated again or revoked, which
        deleted the pending row with its sealed copy).
        """
        copy = self._pending.get(client)
        if copy is not None and copy[0] == text:
            del self._pending[client]

    def pending_text(self, client: str) -> str | None:
        """From a database thread: the pending copy, read again."""
        self.refresh_pending(client)
        copy = self._pending.get(client)
        return copy[0] if copy else None

    #: L{add_pending} keeps the pending counter with the copy, under the
    #: client's row lock: L{knocker.enrol.renewal.prepare_offer} must not set
    #: it again outside that lock (a C{generate --force} or a promotion in
    #: between would have it made anew).
    KEEPS_PENDING_COUNTER = True

    def add_pending(self, kf, current_id: str | None = None) -> str | None:
        """
        From a database thread: the counter and the sealed copy at once.
        Returns the pending file's text: this one, or the one another
        gateway drew first; C{None} if the client's current file is no
        longer C{current_id} (generated again, or revoked, meanwhile).
        """
        from knocker.core.knockgen import format_knockfile

        text = self._store.add_pending_with_book(kf.client, len(kf.knocks), kf.secret,
                                                 format_knockfile(kf), current_id)
        if text is not None:
            self._pending[kf.client] = (text, parse_header(text[:HEADER_LIMIT],
                                                           self.pending_path(kf.client)))
        return text

    def pending_secret(self, client: str, wanted_id: str) -> bytes | None:
        """In the reactor: memory only (L{ThreadedStore.pending} fetched it)."""
        copy = self._pending.get(client)
        if copy is None or secret_id(copy[1].secret) != wanted_id:
            return None
        return copy[1].secret

    def promote(self, client: str) -> None:
        """
        In the reactor, after the database promoted (which moved the sealed
        copy already): the pending copy held becomes the current one; if
        none is held, the next lookup reads the current one again.
        """
        copy = self._pending.pop(client, None)
        if copy is None:
            self._copies.pop(client, None)
        else:
            self._copies[client] = copy


class _DatabaseThreads(ThreadPool):
    """
    The pool's threads, which a database that stopped answering may hold
    forever: daemon threads, and a stop that waits for them only so long,
    so that stopping the daemon (and running its closes) never hangs.
    """

    def threadFactory(self, *args, **kwargs):  # noqa: N802 - Twisted's name
        return threading.Thread(*args, daemon=True, **kwargs)

    def stop(self, seconds: float = CALL_DEADLINE) -> bool:
        """
        Whether every thread ended within C{seconds}.
        """
        self.joined = True
        self.started = False
        self._team.quit()
        end = time.monotonic() + seconds
        for thread in self.threads:
            thread.join(max(0.0, end - time.monotonic()))
        stuck = [thread for thread in self.threads if thread.is_alive()]
        if stuck:
            log.error("database: {n} threads still wait for it; leaving them",
                      n=len(stuck))
        return not stuck


def _within(seconds: float, function, *args, after=None):
    """
    C{function(*args)} in a thread of its own, given C{seconds}: its result,
    or L{StateError} if it raised one or did not answer in time (the thread
    is left to finish on its own).  C{after()} runs last in that thread,
    whatever happened (to close the connection the thread opened).
    """
    outcome = []

    def run():
        try:
            outcome.append((True, function(*args)))
        except Exception as error:  # noqa: BLE001 - handed to the caller
            outcome.append((False, error))
        finally:
            if after is not None:
                after()

    thread = threading.Thread(target=run, name="knocker-db-once", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise StateError(f"no answer within {seconds:g}s")
    ok, value = outcome[0]
    if ok:
        return value
    if isinstance(value, StateError):
        raise value
    raise StateError(str(value)) from value


class ThreadedStore:
    """
    L{knocker.state.postgres.PostgresStore} for the daemon: the knock
    path's calls return L{Deferred}s fired from a thread pool.
    """

    def __init__(self, store, reactor, book: DatabaseBook | None = None,
                 threads: int = THREADS, most: int = MAX_CALLS,
                 deadline: float = CALL_DEADLINE):
        self._most = most
        self._deadline = deadline
        self.calls = 0  # waiting or running, counted in the reactor
        self._overdue = 0  # calls past the deadline, not yet answered
        self._store = store
        self.raw = store
        self._reactor = reactor
        self.book = book
        self.path = store.path
        self.gateway = store.gateway
        self._closes: dict[int, PendingClose] = {}
        self._earlier_closes_read = False  # see pending_closes
        # The seq of the last lift this gateway's tracker has taken (None
        # before its first read): its lockout writes name it, and the
        # database leaves out what a later lift covers, so a write sent
        # before this gateway heard of a lift cannot undo it.  When a write
        # finds such a lift, missed_lifts() reads the lifts.  LockoutSync
        # keeps both.
        self.lifts_seen: int | None = None
        self.missed_lifts = None
        self._lockout_waiting: list[tuple[str, object]] = []  # (kind, start): see _in_order
        self._lockout_running = False
        self._pool = _DatabaseThreads(minthreads=1, maxthreads=threads, name="knocker-db")
        self._pool.start()
        # The server's lockout has a thread of its own: in the pool's queue
        # it could wait behind a flood's lookups past its deadline.
        self._urgent_pool = _DatabaseThreads(minthreads=1, maxthreads=1,
                                             name="knocker-db-lockout")
        self._urgent_pool.start()
        self._closed = False
        self._stuck = False
        # However the daemon ends, its threads must not keep the process alive.
        reactor.addSystemEventTrigger("after", "shutdown", self._stop_threads)

    def _defer(self, function, *args, left: Deferred | None = None,
               urgent: bool = False) -> Deferred:
        """
        C{function(*args)} in a database thread; fails with L{StateError}
        at once when L{MAX_CALLS} are waiting, or after the deadline without
        an answer.  C{urgent} (the server's lockout, which a flood of PROOFs
        must not hold back): neither bound nor queue, a thread of its own.
        C{left}, if given, fires once the thread is out of the call (or it
        never started), whatever the deadline did.
        """
        if self._closed or (self.calls >= self._most and not urgent):
            # (closed: the pool would drop the call without a word, and
            # neither its answer nor left would ever come)
            if left is not None:
                left.callback(None)
            why = "closed" if self._closed else f"{self.calls} calls already waiting for it"
            return fail(StateError(f"database: {why}"))
        self.calls += 1
        late = []  # set when the deadline passed first

        def run():
            try:
                if late:
                    # Its caller was answered (a knock got ERROR server-error)
                    # while it waited for a thread: run now, a burn would
                    # spend a number nobody is granted, and a retry another.
                    raise StateError("database: not run, past its deadline before it started")
                return function(*args)
            finally:
                self._reactor.callFromThread(self._ended, late, left)

        d = deferToThreadPool(self._reactor, self._urgent_pool if urgent else self._pool, run)
        return d.addTimeout(self._deadline, self._reactor, onTimeoutCancel=self._late(late))

    def _late(self, late: list):
        def overdue(result, timeout):
            late.append(True)
            if not self._overdue:
                log.error("database {db}: no answer within {s:g}s; knocks get ERROR "
                          "server-error until it answers", db=self.path, s=timeout)
            self._overdue += 1
            raise StateError(f"database: no answer within {timeout:g}s")
        return overdue

    def _ended(self, late: list, left: Deferred | None = None) -> None:
        self.calls -= 1
        if left is not None:
            left.callback(None)
        if late:
            self._overdue -= 1
            if not self._overdue:
                log.info("database {db} answers again", db=self.path)

    @property
    def _lockout_queue(self) -> int:
        """Lockout writes waiting or running."""
        return len(self._lockout_waiting) + self._lockout_running

    def _in_order(self, kind: str, function, *args) -> Deferred:
        """
        L{_defer} for the lockout writes, one after another: with several
        threads, an operator's lift could otherwise commit before a batch
        of saves asked for earlier, whose rows would then bring the lockout
        back on every gateway.  The next starts only when the thread has
        left the last, even past its deadline (the caller hears of that at
        the deadline).

        C{kind} is C{batch}, C{lift} or C{server}.  Each waits behind the
        writes asked for before it, except the server's lockout, which
        goes ahead of the batches of source lockouts (the fleet must hear
        of it within a second, and batches from a flood on a slow database
        can take longer), though never ahead of a lift (the lift would
        delete it).  Past L{MAX_LOCKOUT_WRITES} waiting, a batch or a lift
        fails at once (a batch is saved again later, a lift can be asked
        again); the server's lockout is always taken.
        """
        if kind != "server" and self._lockout_queue >= MAX_LOCKOUT_WRITES:
            return fail(StateError(f"database: {self._lockout_queue} lockout writes already "
                                   f"waiting for it"))
        answer = Deferred()

        def start():
            left = Deferred()
            self._defer(function, *args, left=left,
                        urgent=kind == "server").chainDeferred(answer)
            left.addBoth(self._next_lockout_write)

        at = len(self._lockout_waiting)
        if kind == "server":
            at = 0
            for position, (waiting, _) in enumerate(self._lockout_waiting):
                if waiting != "batch":
                    at = position + 1
        self._lockout_waiting.insert(at, (kind, start))
        if not self._lockout_running:
            self._next_lockout_write()
        return answer

    def _next_lockout_write(self, _=None) -> None:
        self._lockout_running = bool(self._lockout_waiting)
        if self._lockout_waiting:
            _, start = self._lockout_waiting.pop(0)
            start()

    def _background(self, what: str, function, *args) -> None:
        d = self._defer(function, *args)
        d.addErrback(lambda failure: log.error("database: {what} failed: {error}",
                                               what=what, error=failure.value))

    # The knock path: never on the reactor.

    def client(self, client: str) -> Deferred:
        return self._defer(self._client, client)

    def _client(self, client: str):
        return self._copy_held(client, self._store.client(client), current=True)

    def _copy_held(self, client: str, state, current: bool):
        """
        C{state} (a current or a pending counter), once the book holds the
        copy of the file it counts (read again if it held another).
        """
        if state is None or self.book is None:
            return state
        held = self.book.held_secret_id if current else self.book.held_pending_id
        if held(client) != state.secret_id:
            (self.book.refresh if current else self.book.refresh_pending)(client)
        return state

    def burn(self, client: str, wanted_secret_id: str | None = None) -> Deferred:
        """
        The burn, from the counter of C{wanted_secret_id} (the secret the
        client proved) only; fails if the client was generated again since.
        """
        return self._defer(self._burn, client, wanted_secret_id)

    def _burn(self, client, wanted_secret_id):
        index = self._store.burn(client, wanted_secret_id)
        if index is None and wanted_secret_id is not None:
            state = self._store.client(client)
            if state is not None and state.secret_id != wanted_secret_id:
                raise StateError(f"{client!r} was generated again while it knocked; "
                                 f"nothing burned")
            if self._store.is_revoked(client, wanted_secret_id):
                # Revoked on another gateway, not yet heard of here: no
                # GRANT (an ERROR, until the notice makes it DENIED).
                raise StateError(f"{client!r} is revoked; nothing burned")
        return index

    # Section 10 on the network path: in the threads too.

    def pending(self, client: str) -> Deferred:
        return self._defer(self._pending, client)

    def _pending(self, client: str):
        return self._copy_held(client, self._store.pending(client), current=False)

    def promote(self, client: str, wanted_id: str) -> Deferred:
        return self._defer(self._store.promote, client, wanted_id)

    def prepare_offer(self, client: str, now: float) -> Deferred:
        """The offer's file drawn (or the pending one read) in a thread."""
        from knocker.enrol.renewal import prepare_offer

        return self._defer(prepare_offer, self._store, self.book, client, now)

    def invitation(self, slot: int) -> Deferred:
        return self._defer(self._store.invitation, slot)

    def invitation_attempt(self, slot: int, now: float) -> Deferred:
        return self._defer(self._store.invitation_attempt, slot, now)

    def use_invitation(self, slot: int, client: str, code: str, now: float) -> Deferred:
        return self._defer(self._store.use_invitation, slot, client, code, now)

    def book_text(self, client: str) -> Deferred:
        """The server's copy of C{client}'s file, for its enrolment."""
        return self._defer(self._book_text, client)

    def _book_text(self, client: str) -> str:
        text = self._store.book(client)
        if text is None:
            raise StateError(f"{self.path}: no server's copy of {client!r}")
        return text

    # Saves nobody waits for.

    def set_lockout(self, key: str, until: float) -> Deferred:
        """The caller hears of a failure (and tries again)."""
        d = self._in_order("server" if key == WHOLE_SERVER else "batch",
                           self._store.set_lockout, key, until, self.lifts_seen)
        return d.addCallback(self._lifts_missed)

    def save_lockouts(self, lockouts: dict[str, float], steps=None) -> Deferred:
        """
        Saved in the thread pool; the L{Deferred} fails if it could not be
        (the coordinator saves those keys again with the next batch).
        """
        d = self._in_order("batch", self._store.save_lockouts, dict(lockouts),
                           dict(steps or {}), self.lifts_seen)
        return d.addCallback(self._lifts_missed)

    def _lifts_missed(self, behind) -> None:
        """
        A lockout write found lifts this gateway has not taken (their
        notice still on its way, or their read failed): it left out what
        they cover, and this gateway reads them now, lifting those here too.
        """
        if behind and self.missed_lifts is not None:
            self.missed_lifts()

    def remove_close(self, close_id: int) -> None:
        self._closes.pop(close_id, None)
        self._background("forgetting a close that ran", self._store.remove_close, close_id)

    def read_lockouts(self, after: int, limit: int, prune_before: float | None = None) -> Deferred:
        """
        The lockout rows changed after seq C{after} (at most C{limit});
        with C{prune_before}, the table is pruned first.
        """
        return self._defer(self._read_lockouts, after, limit, prune_before)

    def _read_lockouts(self, after, limit, prune_before):
        if prune_before is not None:
            self._store.prune_lockouts(prune_before)
        return self._store.lockouts_since(after, limit)

    # The operator's changes (the console, knocker unlock and revoke):
    # committed, and told to the other gateways, when the Deferred fires.

    def lift_lockouts(self, key: str | None = None) -> Deferred:
        return self._in_order("lift", self._store.lift_lockouts, key)

    def read_lifts(self, after: int | None) -> Deferred:
        """
        C{(seq, key)} of the lifts after seq C{after}; with C{None}, only
        the last one's seq (C{[(seq, "")]}): where to start.
        """
        if after is None:
            return self._defer(lambda: [(self._store.last_lift(), "")])
        return self._defer(self._store.lifts_since, after)

    def revoke(self, client: str) -> Deferred:
        return self._defer(self._store.revoke, client)

    def invite(self, client, knocks, ports, expires, force, now) -> Deferred:
        """L{knocker.enrol.invite.invite_in} in the thread pool, on the raw store."""
        from knocker.enrol.invite import invite_in

        return self._defer(invite_in, self._store, self.book, client, knocks, ports, expires,
                           force, now)

    def read_revoked(self) -> Deferred:
        """Every revocation, read in the thread pool (L{LockoutSync})."""
        return self._defer(self._store.revoked)

    def read(self, function) -> Deferred:
        """
        C{function(store)} in the thread pool, for the console's pages and
        gauges: their reads never hold the reactor.
        """
        return self._defer(function, self._store)

    # Start and stop: synchronous.

    def revoked(self):
        return self._store.revoked()

    def pool(self):
        return self._store.pool()

    def set_pool(self, ports) -> None:
        self._store.set_pool(ports)

    def clients(self):
        return self._store.clients()

    def register(self, client, knocks, secret) -> None:
        self._store.register(client, knocks, secret)

    def lockouts(self, now: float):
        return self._store.lockouts(now)

    def add_close(self, due, ip, client, index) -> Deferred:
        """
        Recorded in the thread pool (an unreachable database must not hold
        the reactor): the L{Deferred} fires with the close's id, or fails.
        """
        def recorded(close_id):
            self._closes[close_id] = PendingClose(close_id, due, ip, client, index)
            return close_id

        return self._defer(self._store.add_close, due, ip, client, index).addCallback(recorded)

    def pending_closes(self):
        """
        This gateway's pending closes.  Without the database: at stop,
        those this run recorded (a database that stopped answering must not
        keep the doors this run opened from closing); at start, before the
        closes earlier runs left have been read once, L{StateError}, so
        that the gateway does not start (and systemd tries again) rather
        than serve while a crashed run's doors stay open.
        """
        try:
            # On the reactor, within the deadline.
            # The thread's own connection is closed as it ends (not left
            # open, one more each read, until the store closes).
            pending = _within(self._deadline, self._store.pending_closes,
                              after=getattr(self._store, "release_thread", None))
        except StateError as error:
            if not self._earlier_closes_read:
                raise StateError(
                    f"cannot read the closes earlier runs left pending ({error}): without "
                    f"them the doors they opened would stay open"
                ) from error
            log.error("database: cannot read the pending closes ({error}); running the "
                      "{n} this run knows of", error=error, n=len(self._closes))
            return sorted(self._closes.values(), key=lambda close: close.due)
        self._earlier_closes_read = True
        return pending

    def _stop_threads(self) -> None:
        if not self._closed:
            self._closed = True
            end = time.monotonic() + self._deadline  # for both pools together
            stopped = [pool.stop(max(0.0, end - time.monotonic()))
                       for pool in (self._pool, self._urgent_pool)]
            self._stuck = not all(stopped)

    def close(self) -> None:
        self._stop_threads()
        if not self._stuck:  # (a connection a thread still waits on is left to the exit)
            self._store.close()


class LockoutSync:
    """
    The tracker's lockouts kept in step with the fleet's table: NOTIFY
    through a dedicated connection read in its own thread, and the rows
    changed since the last read every C{reread} seconds (which also notices
    the database going and coming back); every L{FULL_EVERY}th time, and
    after each (re)connection, the whole table again, pruned first.

    The reactor is never held long: rows come in pages of L{PAGE}, applied
    L{APPLY_CHUNK} a reactor turn, each with one lookup in the tracker.  A
    notice that comes while a read is under way is not lost: another read
    follows it.
    """

    def __init__(self, reactor, store: ThreadedStore, raw_store, tracker, wall, audit,
                 reread: float = REREAD, revoked=None):
        self._reactor = reactor
        # Revocations: C{revoked({client: secret_id})} after each read (on a
        # notice, and every tick, since a notice can be missed).
        self._revoked = revoked
        self._reading_revoked = False
        self._store = store
        self._raw = raw_store
        self._tracker = tracker
        self._wall = wall
        self._audit = audit
        self._reread = reread
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._stopping = threading.Event()
        self._thread = None
        self._reading = False
        self._again = False
        self._full_again = False
        self._lifts = 0  # lifts taken: a read begun before one is dropped
        self._lifts_at_read = 0
        self._last_lift = None  # the seq of the last lift row read (None: not yet)
        self._reading_lifts = False
        self._lifts_again = False
        self._last_seq = 0
        self._ticks = 0
        self._chunk_call = None
        # key: (until, step) of a row the tracker's cap cut when it was
        # applied (a gateway's clock ran fast).  Such a row looks later than
        # what is held at every read: without this it would be taken, and
        # cut to a fresh end, again and again.  Only such rows: few.
        self._cut: dict[str, tuple[float, int]] = {}
        self.available = True
        store.missed_lifts = self.read_lifts

    def start(self) -> None:
        self._thread = threading.Thread(target=self._listen, name="knocker-listen", daemon=True)
        self._thread.start()
        self._loop.start(self._reread, now=False)

    def stop(self) -> None:
        self._stopping.set()
        if self._loop.running:
            self._loop.stop()
        if self._chunk_call is not None and self._chunk_call.active():
            self._chunk_call.cancel()
        self._chunk_call = None
        if self._thread is not None:
            self._thread.join(timeout=LISTEN_POLL * 4)

    # In the reactor.

    def apply(self, key: str, until: float, step: int = 0) -> bool:
        """
        Take a lockout from the table (wall time C{until}) if it ends later
        than the tracker's own, or escalated further; returns whether it did.
        """
        if self._cut.get(key) == (until, step):
            return False
        local = self._wall.from_wall(until)
        held_until, held_step = self._tracker.source_until(key)
        if local <= held_until + 0.001 and step <= held_step:
            return False
        self._tracker.shared_lockout(key, local, step)
        if self._tracker.source_until(key)[0] < local - 0.001:
            if len(self._cut) >= MAX_CUT:
                self._cut.clear()  # bounded: at worst one more cut of such a row
            self._cut[key] = (until, step)
        return True

    def _tick(self) -> None:
        self._ticks += 1
        self.read_all(full=self._ticks % FULL_EVERY == 0)
        self.read_revoked()

    def read_revoked(self) -> None:
        """
        Read the revocations and hand them over (one read at a time; a
        failed read is left to the next tick, the lockouts' read reports
        the outage).
        """
        if self._revoked is None or self._reading_revoked or self._stopping.is_set():
            return
        self._reading_revoked = True

        def done(result):
            self._reading_revoked = False
            return result

        d = self._store.read_revoked()
        d.addBoth(done)
        d.addCallbacks(self._revoked, lambda failure: log.error(
            "database: cannot read the revocations: {error}", error=failure.value))

    def read_lifts(self) -> None:
        """
        Lift what the lift rows written since the last read say (a lift
        notice, or the start: then only where to begin).  Any role that
        may connect to the database can NOTIFY; only the fleet's can write
        a row, so a lift is taken from the table, never from a notice.
        """
        if self._stopping.is_set():
            return
        if self._reading_lifts:
            self._lifts_again = True
            return
        self._reading_lifts = True

        def read(rows):
            for seq, key in rows:
                if self._last_lift is not None:
                    self.lifted(key)
                self._last_lift = max(self._last_lift or 0, seq)
            self._store.lifts_seen = self._last_lift

        def done(result):
            self._reading_lifts = False
            if self._lifts_again:
                self._lifts_again = False
                self.read_lifts()
            return result

        d = self._store.read_lifts(self._last_lift)
        d.addCallbacks(read, lambda failure: log.error(
            "database: cannot read the lifts of lockouts: {error}", error=failure.value))
        d.addBoth(done)

    def lifted(self, key: str | None) -> None:
        """
        The lockout of C{key} (every one: C{None}) was lifted.  A read of
        the lockouts under way began before: what it brings is dropped,
        and read again.
        """
        lifted = self._tracker.lift(key)
        if key is None:
            self._cut.clear()
        else:
            self._cut.pop(key, None)  # the same row set again is a lockout again
        self._lifts += 1
        if self._reading:
            self._again = True
        if lifted:
            log.info("lockouts lifted on another gateway: {keys}", keys=", ".join(lifted))

    def read_all(self, full: bool = False):
        """
        Read the rows changed since the last read (C{full}: every row, and
        prune the table first).  While a read is under way, another follows
        it.
        """
        if self._reading:
            self._again = True
            self._full_again = self._full_again or full
            return None
        self._reading = True
        if full:
            self._last_seq = 0
        self._read_page(prune=full)
        return None

    def _read_page(self, prune: bool = False) -> None:
        self._lifts_at_read = self._lifts
        d = self._store.read_lockouts(self._last_seq, PAGE,
                                      self._wall.now() if prune else None)
        d.addCallbacks(self._read, self._failed)
        d.addErrback(self._broken)

    def _broken(self, failure) -> None:
        # Whatever went wrong, the next read must not find one under way
        # for ever: the lockouts would stop following the fleet's.
        log.failure("applying the fleet's lockouts", failure)
        self._done_reading()

    def _read(self, rows) -> None:
        self._set_available(True)
        self._apply_chunk(list(rows), 0)

    def _apply_chunk(self, rows, start: int) -> None:
        self._chunk_call = None
        if self._stopping.is_set():
            self._reading = False
            return
        if self._lifts != self._lifts_at_read:
            # Read before a lift: its rows may be the lifted ones.  The
            # read that follows (lifted() asked for one) sees the table as
            # the lift left it.
            self._done_reading()
            return
        for seq, key, until, step in rows[start:start + APPLY_CHUNK]:
            try:
                self.apply(key, until, step)
            except Exception:  # one row the tracker cannot take: the others still count
                log.failure("the fleet's lockout of {key} until {until}", key=key, until=until)
            self._last_seq = max(self._last_seq, seq)
        start += APPLY_CHUNK
        if start < len(rows):
            # The rest at the next reactor turn: hits and handshakes first.
            self._chunk_call = self._reactor.callLater(0, self._apply_chunk, rows, start)
        elif len(rows) >= PAGE:
            self._read_page()
        else:
            self._done_reading()

    def _failed(self, failure) -> None:
        self._set_available(False, str(failure.value))
        self._done_reading()

    def _done_reading(self) -> None:
        self._reading = False
        if self._again and not self._stopping.is_set():
            full, self._again, self._full_again = self._full_again, False, False
            self.read_all(full=full)

    def _set_available(self, available: bool, error: str = "") -> None:
        if available == self.available:
            return
        self.available = available
        if available:
            log.info("database {db} is back: granting again", db=self._store.path)
            self._audit.record("database", state="up")
        else:
            log.error("database {db} is unavailable: granting nothing until it is back "
                      "({error})", db=self._store.path, error=error)
            self._audit.record("database", state="down", detail=error)

    def _notified(self, payload: str) -> None:
        if payload == "reread":
            self.read_all()
            return
        if payload == REVOKED_NOTICE:
            self.read_revoked()
            return
        if payload == LIFT_NOTICE or payload.startswith(LIFT_NOTICE + " "):
            self.read_lifts()  # (the rows say what was lifted, not the notice)
            return
        # A lockout: read from the table, not taken from the notice, which
        # any role that may connect to the database can send.
        self.read_all()

    # In the listening thread.

    def _listen(self) -> None:
        while not self._stopping.is_set():
            conn = None
            try:
                conn = self._raw.connect()
                conn.execute(f"LISTEN {LOCKOUT_CHANNEL}")
                # Notices missed while (re)connecting: read the whole table now.
                self._reactor.callFromThread(self.read_all, True)
                self._reactor.callFromThread(self.read_revoked)
                self._reactor.callFromThread(self.read_lifts)
                while not self._stopping.is_set():
                    for notice in conn.notifies(timeout=LISTEN_POLL):
                        self._reactor.callFromThread(self._notified, notice.payload)
            except Exception as error:
                if not self._stopping.is_set():
                    self._reactor.callFromThread(self._set_available, False, str(error))
                    self._stopping.wait(RECONNECT)
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
