"""
A gateway of a fleet (docs/spec.md section 11, docs/fleet.md): the daemon's
side of L{knocker.state.postgres.PostgresStore}.

The reactor never waits for the database.  L{ThreadedStore} runs the calls
of the knock path (a client's state, the burn) and of section 10's
(invitations, pending generations, drawing a renewed file) in a small
thread pool and hands the coordinator L{Deferred}s; the saves it does not wait for
(lockouts, forgetting a close that has run) go the same way and log their
failure.  Only start-up, stop and the record of a close before on-success
(one short insert after a completed knock, bounded by the statement
timeout) are synchronous.

Without its database the gateway fails closed: the lookup or the burn
fails, the handshake gets C{ERROR server-error}, no GRANT; hits are still
judged and recorded in the audit log; L{LockoutSync} notices the outage
and the return (logged and audited as C{database} events).

L{LockoutSync} keeps the tracker's lockouts in step with the shared table:
a dedicated connection LISTENs for NOTIFY (a lockout of the whole server,
or "read again" after a batch of source lockouts), and every
L{REREAD} seconds the table is read again anyway, since a gateway that was
reconnecting has missed its notifications.
"""

import threading

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from knocker.core.knockfile import KnockFileError, find_knock, parse_header
from knocker.state.book import ClientBook
from knocker.state.interface import PendingClose, StateError, secret_id
from knocker.state.postgres import LOCKOUT_CHANNEL

log = Logger()

REREAD = 5.0
LISTEN_POLL = 0.5
RECONNECT = 1.0
THREADS = 4


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

    def path(self, client: str) -> str:
        return f"{self._store.path} (server's copy of {client})"

    def load(self) -> None:
        for client in self._store.book_clients():
            self.refresh(client)

    def clients(self) -> list[str]:
        return sorted(self._copies)

    def refresh(self, client: str) -> None:
        text = self._store.book(client)
        if text is None:
            self._copies.pop(client, None)
            return
        header = parse_header(text[:4096], self.path(client))
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
            self._pending[client] = (text, parse_header(text[:4096], self.pending_path(client)))

    def held_pending_id(self, client: str) -> str | None:
        copy = self._pending.get(client)
        return secret_id(copy[1].secret) if copy else None

    def pending_text(self, client: str) -> str | None:
        """From a database thread: the pending copy, read again."""
        self.refresh_pending(client)
        copy = self._pending.get(client)
        return copy[0] if copy else None

    def add_pending(self, kf) -> str:
        """
        From a database thread: the counter and the sealed copy at once.
        Returns the pending file's text: this one, or the one another
        gateway drew first.
        """
        from knocker.core.knockgen import format_knockfile

        text = self._store.add_pending_with_book(kf.client, len(kf.knocks), kf.secret,
                                                 format_knockfile(kf))
        self._pending[kf.client] = (text, parse_header(text[:4096], self.pending_path(kf.client)))
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


class ThreadedStore:
    """
    L{knocker.state.postgres.PostgresStore} for the daemon: the knock
    path's calls return L{Deferred}s fired from a thread pool.
    """

    def __init__(self, store, reactor, book: DatabaseBook | None = None,
                 threads: int = THREADS):
        self._store = store
        self.raw = store
        self._reactor = reactor
        self.book = book
        self.path = store.path
        self.gateway = store.gateway
        self._closes: dict[int, PendingClose] = {}
        self._pool = ThreadPool(minthreads=1, maxthreads=threads, name="knocker-db")
        self._pool.start()
        self._closed = False
        # However the daemon ends, its threads must not keep the process alive.
        reactor.addSystemEventTrigger("after", "shutdown", self._stop_threads)

    def _defer(self, function, *args) -> Deferred:
        return deferToThreadPool(self._reactor, self._pool, function, *args)

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

    def burn(self, client: str) -> Deferred:
        return self._defer(self._store.burn, client)

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

    def invitation_attempt(self, slot: int) -> Deferred:
        return self._defer(self._store.invitation_attempt, slot)

    def use_invitation(self, slot: int) -> Deferred:
        return self._defer(self._store.use_invitation, slot)

    def book_text(self, client: str) -> Deferred:
        """The server's copy of C{client}'s file, for its enrolment."""
        return self._defer(self._book_text, client)

    def _book_text(self, client: str) -> str:
        text = self._store.book(client)
        if text is None:
            raise StateError(f"{self.path}: no server's copy of {client!r}")
        return text

    # Saves nobody waits for.

    def set_lockout(self, key: str, until: float) -> None:
        self._background("saving the lockout", self._store.set_lockout, key, until)

    def save_lockouts(self, lockouts: dict[str, float]) -> None:
        self._background(f"saving {len(lockouts)} source lockouts",
                         self._store.save_lockouts, dict(lockouts))

    def remove_close(self, close_id: int) -> None:
        self._closes.pop(close_id, None)
        self._background("forgetting a close that ran", self._store.remove_close, close_id)

    def read_lockouts(self, now: float) -> Deferred:
        return self._defer(self._store.lockouts, now)

    # Start, stop, and the record before on-success: synchronous.

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

    def add_close(self, due, ip, client, index) -> int:
        close_id = self._store.add_close(due, ip, client, index)
        self._closes[close_id] = PendingClose(close_id, due, ip, client, index)
        return close_id

    def pending_closes(self):
        """
        This gateway's pending closes; without the database, those this
        run recorded (so a stop still closes the doors it opened).
        """
        try:
            return self._store.pending_closes()
        except StateError as error:
            log.error("database: cannot read the pending closes ({error}); running the "
                      "{n} this run knows of", error=error, n=len(self._closes))
            return sorted(self._closes.values(), key=lambda close: close.due)

    def _stop_threads(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.stop()

    def close(self) -> None:
        self._stop_threads()
        self._store.close()


class LockoutSync:
    """
    The tracker's lockouts kept in step with the fleet's table: NOTIFY
    through a dedicated connection read in its own thread, and the whole
    table every C{reread} seconds (which also notices the database going
    and coming back).
    """

    def __init__(self, reactor, store: ThreadedStore, raw_store, tracker, wall, audit,
                 reread: float = REREAD):
        self._reactor = reactor
        self._store = store
        self._raw = raw_store
        self._tracker = tracker
        self._wall = wall
        self._audit = audit
        self._reread = reread
        self._loop = LoopingCall(self.read_all)
        self._loop.clock = reactor
        self._stopping = threading.Event()
        self._thread = None
        self._reading = False
        self.available = True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._listen, name="knocker-listen", daemon=True)
        self._thread.start()
        self._loop.start(self._reread, now=False)

    def stop(self) -> None:
        self._stopping.set()
        if self._loop.running:
            self._loop.stop()
        if self._thread is not None:
            self._thread.join(timeout=LISTEN_POLL * 4)

    # In the reactor.

    def apply(self, key: str, until: float) -> bool:
        """
        Take a lockout from the table (wall time C{until}) if it ends later
        than the tracker's own; returns whether it did.
        """
        local = self._wall.from_wall(until)
        if local <= self._tracker.lockouts().get(key, 0.0) + 0.001:
            return False
        self._tracker.shared_lockout(key, local)
        return True

    def read_all(self):
        if self._reading:
            return None
        self._reading = True
        d = self._store.read_lockouts(self._wall.now())
        d.addCallbacks(self._read, self._failed)
        d.addBoth(self._done_reading)
        return None

    def _done_reading(self, _):
        self._reading = False

    def _read(self, lockouts: dict[str, float]) -> None:
        self._set_available(True)
        for key, until in lockouts.items():
            self.apply(key, until)

    def _failed(self, failure) -> None:
        self._set_available(False, str(failure.value))

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
        until, _, key = payload.partition(" ")
        try:
            self.apply(key, float(until))
        except ValueError:
            log.warn("database: a lockout notice not understood: {payload!r}", payload=payload)

    # In the listening thread.

    def _listen(self) -> None:
        while not self._stopping.is_set():
            conn = None
            try:
                conn = self._raw.connect()
                conn.execute(f"LISTEN {LOCKOUT_CHANNEL}")
                # Notices missed while (re)connecting: read the table now.
                self._reactor.callFromThread(self.read_all)
                while not self._stopping.is_set():
                    for notice in conn.notifies(timeout=LISTEN_POLL):
                        self._reactor.callFromThread(self._notified, notice.payload)
            except (StateError, Exception) as error:
                if not self._stopping.is_set():
                    self._reactor.callFromThread(self._set_available, False, str(error))
                    self._stopping.wait(RECONNECT)
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
