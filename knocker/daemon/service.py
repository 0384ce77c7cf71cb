"""
The knockserver daemon as a Twisted service: builds the coordinator and
binds the central port and every pool port when it starts.

Startup is strict: a bad client file, a state directory it cannot use or a
port it cannot bind stops the daemon with a message naming the cause (and
for a path, the key that set it), before anything listens (a half-started
knock server is worse than none).

Stopping runs every pending close before the daemon exits (each within
script-timeout), so no door stays open behind a stopped daemon; starting
runs those an earlier run left (L{knocker.daemon.closes}).  With C{on-check}
set, L{knocker.daemon.firewall.FirewallWatch} puts the firewall back when
something around the daemon removed it.
"""

import signal
import time
from contextlib import nullcontext

from twisted.application import service
from twisted.internet import threads
from twisted.internet.defer import gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from knocker.core.pool import ensure_pool
from knocker.core.serverconfig import ports_in_pool
from knocker.core.tracker import Policy, Tracker
from knocker.daemon.actionenv import check_env
from knocker.daemon.actions import ProcessRunner, run_blocking, script_fields
from knocker.daemon.audit import AuditLog
from knocker.daemon.central import CentralFactory
from knocker.daemon.clock import ClockStepWatch, WallTime, use_monotonic_time
from knocker.daemon.coordinator import KnockServer
from knocker.daemon.firewall import FirewallWatch
from knocker.daemon.paths import check_paths, check_state_trusted, owner_hint, readable
from knocker.daemon.poolpoller import PoolPoller
from knocker.daemon.poolport import PoolPort, SpareDescriptor
from knocker.daemon.privileges import acting_as, as_root
from knocker.files import ensure_private_dir
from knocker.state.book import ClientBook
from knocker.state.lock import StateLock
from knocker.state.sqlite import DAEMON_BUSY_TIMEOUT, SQLiteStore

log = Logger()


def raise_descriptor_limit(needed: int) -> None:
    """
    Every pool port holds a descriptor: lift the soft limit as far as needed
    (and allowed), or say what to change.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise StartupError(
                f"{needed} file descriptors are needed (pool, central connections, "
                f"margin) but the hard limit is {hard}: raise it (ulimit -Hn, LimitNOFILE=) "
                f"or lower pool-size"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class StartupError(Exception):
    """
    The daemon cannot start; the message says why.
    """


def _read_key(path: str | None, load_key):
    """
    The fleet's key, read once at start: as the daemon's user (no link of
    theirs followed as root) when they may read it, else as root, whose
    alone it may be, as a TLS key may (in a folder they cannot even see).
    """
    with nullcontext() if not path or readable(path) else as_root():
        return load_key(path)


def _listening_endpoint(reactor, key: str, description: str):
    """
    The server endpoint C{key = description} names, or L{StartupError}
    naming the key: Twisted's own complaint (an unknown kind or option, a
    port or backlog that is not a number, a TLS key file missing) would not
    say which line of the configuration to fix.  TCP (tcp, tcp6, ssl)
    alone: the daemon reports and compares port numbers.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in ("tcp", "tcp6", "ssl"):
        raise StartupError(f"{key} = {description}: the daemon listens on tcp:, tcp6: or "
                           f"ssl: endpoints, not {kind}:")
    try:
        return serverFromString(reactor, description)
    except Exception as error:  # TypeError, ValueError, OSError, Twisted's own
        raise StartupError(f"{key} = {description}: not an endpoint to listen on "
                           f"({error})") from error


class StartRefused(Exception):
    """A refused start, in a daemon twistd has forked (its one-line message)."""


StartRefused.__module__ = "builtins"  # its name alone before the reason, in twistd's 100 bytes


class KnockServerService(service.Service):
    name = "knockserver"

    def __init__(self, config, reactor, runs_as: tuple[int, int] | None = None,
                 early_reloads: list | None = None, daemonizes: bool = False):
        self.config = config
        self.daemonizes = daemonizes  # twistd without -n: a refusal is told otherwise
        self._reactor = reactor
        #: C{(uid, gid)} twistd switches to once the service has started
        #: (C{--uid}), or C{None} if it stays this process's.
        self.runs_as = runs_as
        #: SIGHUPs that came before L{startService} (see
        #: L{knocker.daemon.tap.makeService}).
        self._early_reloads = early_reloads if early_reloads is not None else []
        self.server: KnockServer | None = None
        self.central_port = None
        self.pool_ports = []
        self._store = None
        self._lock = None
        self._step_watch = None
        self._audit = None
        self._spare = None
        self._poller = None
        self._previous_sighup = None
        self.firewall: FirewallWatch | None = None
        self.console = None
        self._sync = None

    def privilegedStartService(self):
        try:
            with acting_as(self.runs_as):  # see knocker.daemon.privileges
                self._start()
        except Exception as error:
            try:
                with acting_as(self.runs_as):  # (the console's files are the user's)
                    self._stop_listening()
            except Exception:  # the refusal must still say why, and let go of the rest
                log.failure("stopping what the refused start had begun")
            try:
                closed = self._close_left_doors()
            except Exception as failure:  # the refusal must still say why, and let go
                closed = f"; running the closes an earlier run left pending failed: {failure}"
            if self._store is not None:
                self._store.close()
            if self._lock is not None:
                self._lock.release()
            message = f"knockserver cannot start: {error}{closed}"
            if self.daemonizes:
                # twistd's daemon child tells its launcher only of an
                # Exception (the launcher then prints it and exits 1): a
                # SystemExit there left the launcher waiting for ever.  The
                # launcher shows 100 bytes: the reason first; the log has
                # the whole line.
                log.error("{message}", message=message)
                raise StartRefused(f"{error}{closed}") from None
            # SystemExit: twistd prints the one line and exits 1, where any
            # other exception would bury the cause in a traceback.
            raise SystemExit(message) from error
        service.Service.privilegedStartService(self)

    def _close_left_doors(self) -> str:
        """
        A start refused after this daemon took the state (its lock; a
        fleet's gateway, its name) still closes the doors an earlier run
        left open, whatever stops it (a port taken, a client file, an edit
        of the configuration): otherwise a crash followed by failing starts
        would keep them open for good.  Each pending close runs now, in
        turn, within script-timeout, and leaves the state if it worked.
        Returns what to add to the refusal's message.
        """
        if (self._lock is None or not self._lock.held or self._store is None
                or not self.config.on_close):
            return ""
        store = getattr(self._store, "raw", self._store)  # no reactor runs yet
        try:
            pending = store.pending_closes()
        except Exception as error:
            return (f"; the closes an earlier run left pending could not be read ({error}): "
                    f"the doors it opened may still be open")
        if not pending:
            return ""
        from knocker.daemon.actionenv import action_env, passed_env

        audit, opened_here = self._audit, False
        if audit is None:  # refused before it was opened: opened for these lines
            try:
                # As the daemon's user, as the start opens it (no link of
                # theirs followed as root); the programs below are run as
                # that user by run_blocking, from root's real ids.
                with acting_as(self.runs_as):
                    audit = AuditLog(self.config.audit_path, self._reactor, wall=time.time)
                opened_here = True
            except OSError:
                pass  # (the refusal may be about the audit log itself)
        passed = passed_env(self.config.action_env)
        closed = 0
        try:
            for close in pending:
                # As the user twistd switches to (--uid): that is who runs
                # on-close at a start that goes through.
                result = run_blocking(
                    [self.config.on_close, close.ip, close.client, str(close.index)],
                    action_env(close.ip, close.client, close.index, passed),
                    self.config.script_timeout, self.runs_as)
                if audit is not None:
                    audit.record("script", action="on-close", ip=close.ip, client=close.client,
                                 index=close.index, **script_fields(result))
                    audit.record("close", ip=close.ip, client=close.client, index=close.index,
                                 ok=result.ok)
                if result.ok:
                    closed += 1
                    try:
                        store.remove_close(close.id)
                    except Exception:
                        pass  # it runs again at the next start: closes are idempotent
        finally:
            if opened_here:
                audit.close()
        return (f"; of the {len(pending)} doors an earlier run left open, on-close closed "
                f"{closed} before this exit" + ("" if closed == len(pending) else
                                                 " (the rest stay pending for the next start)"))

    def startService(self):
        service.Service.startService(self)
        # SIGHUP reopens the audit log (for logrotate); left alone, it would
        # end the daemon.  The handler only wakes the reactor, which does
        # the work between events.
        previous = signal.signal(
            signal.SIGHUP, lambda number, frame: self._reactor.callFromThread(self.reopen_logs)
        )
        self._previous_sighup = (previous,)
        if self.firewall is not None:
            self.firewall.start()
        if self._early_reloads:
            # A reload asked for while the daemon started: done now.
            self._reactor.callWhenRunning(self.reopen_logs)

    def reopen_logs(self):
        """
        SIGHUP: reopen the audit log (after logrotate moved it) and check
        the firewall at once (systemctl reload nftables propagates here).
        """
        if self._audit is not None and self._audit.reopen():
            log.info("audit log {path} reopened", path=self._audit.path)
        if self.firewall is not None:
            self.firewall.check_now()

    def _start(self):
        config, reactor = self.config, self._reactor
        use_monotonic_time(reactor)
        if self.config.on_success is None:
            log.warn("on-success is not set: the built-in action only logs; "
                     "no firewall change will be made")
        elif self.config.on_close is None:
            log.warn("on-success is set and on-close is not: the daemon never closes a door "
                     "it opened (open-duration is not used), so each lasts as long as "
                     "on-success makes it (with nft-open, KNOCKER_NFT_TIMEOUT); set on-close "
                     "(/etc/knocker/scripts/nft-close) to close it after open-duration")
        if config.lockout_scope == "global" and not _is_loopback(config.interface):
            log.warn("lockout-scope = global on {interface}: any stray connection to a pool "
                     "port (a scanner) locks everyone out; lockout-scope = knock keeps the "
                     "paper's rule for failed knocks without that lever",
                     interface=config.interface)
        check_paths(config)
        # Again now that it exists (check_paths may have made it; the options
        # were judged before, when it may not have).
        check_state_trusted(config.state_dir, self.runs_as)
        if config.database:
            book = self._open_database(config)
            pool = book.pool
        else:
            # The lock first: a second daemon must not touch the state at all.
            self._lock = StateLock(config.state_dir)
            self._take_lock(config)
            try:
                self._store = SQLiteStore(config.state_dir, busy_timeout=DAEMON_BUSY_TIMEOUT)
            except Exception as error:
                raise StartupError(f"state-dir = {config.state_dir}: cannot open the state: "
                                   f"{error}") from error
            pool = ensure_pool(self._store, config)
            book = ClientBook(config.state_dir, pool)
            book.load()
        for key, port in ports_in_pool(config, pool):
            raise StartupError(
                f"{key} listens on port {port}, which is one of the pool's (drawn and "
                f"kept in {self._store.path} when pool-range held it; the clients' files "
                f"name the pool's ports): move {key} to a port outside the pool"
            )
        registered = {state.client for state in self._store.clients()}
        missing = [client for client in book.clients() if client not in registered]
        if missing:
            raise StartupError(
                f"{book.path(missing[0])}: no knock counter for client {missing[0]!r} "
                f"in {self._store.path}; run 'knocker generate {missing[0]}' again"
            )
        try:
            self._audit = AuditLog(config.audit_path, reactor, hit_rate=config.audit_hit_rate,
                                   min_free_mib=config.audit_min_free, wall=time.time)
        except OSError as error:
            raise StartupError(f"audit-log = {config.audit_path}: {error}") from error
        for client, error in getattr(book, "skipped", ()):
            self._audit.record("error", client=client, reason="client-file", detail=error)
        runner = ProcessRunner(reactor, config.script_timeout)
        audit = self._audit
        if config.admin:
            # Loaded only with a console: the live events and the metrics
            # hear every event through the audit log and every action run.
            from knocker.console.site import ConsoleService

            self.console = ConsoleService(config, reactor, time.time)
            audit = self.console.observe(self._audit)
            runner = self.console.timed(runner)
        wall = WallTime(reactor, time.time)
        self.server = KnockServer(
            config, reactor, self._store, book, runner, audit,
            Tracker(reactor, Policy.from_config(config)), wall,
            blocking=lambda f, *args: threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), f, *args),
        )
        if config.on_check:
            self.firewall = FirewallWatch(
                reactor, runner, config.on_check, config.check_interval,
                check_env(self.server.passed_env), audit, self.server.reopen_doors)
        with as_root():  # the ports, the descriptor limit, a TLS key only root reads
            central_endpoint = _listening_endpoint(reactor, "central", config.central)
            admin_endpoint = None
            if config.admin:  # judged before anything listens, bound below
                admin_endpoint = _listening_endpoint(reactor, "admin", config.admin)
            raise_descriptor_limit(len(pool) + config.max_connections + 256)
            self._spare = SpareDescriptor()
            self._poller = PoolPoller(reactor, on_flood=self.server.tracker.flooding)
            for port in pool:
                listener = PoolPort(reactor, port, config.interface, self.server.hit,
                                    self._spare, watcher=self._poller)
                self.pool_ports.append(listener)
                listener.startListening()
            self._poller.start()
            central = CentralFactory(self.server, reactor, config.max_connections,
                                     config.handshake_timeout, precise_time=True)
            result = []
            central_endpoint.listen(central).addBoth(result.append)
        if not result:
            raise StartupError(f"central endpoint {config.central!r} did not listen at once")
        if isinstance(result[0], Failure):
            raise StartupError(f"central endpoint {config.central!r}: {result[0].value}")
        self.central_port = result[0]
        self.server.central_port = self.central_port.getHost().port
        self.server.restore()
        if config.database:
            from knocker.daemon.fleet import LockoutSync

            self._sync = LockoutSync(reactor, self._store, self._store.raw, self.server.tracker,
                                     wall, audit, revoked=self.server.revocations_read)
            self._sync.start()
        admin_port = None
        if self.console is not None:
            try:
                admin_port = self.console.listen(self.server, audit, admin_endpoint,
                                                 privileged=as_root)
            except ValueError as error:
                raise StartupError(str(error)) from error
            except OSError as error:  # its credentials in the state-dir
                raise StartupError(f"state-dir = {config.state_dir}: the console's files: "
                                   f"{error}; {owner_hint(config.state_dir)}") from error
        self._step_watch = ClockStepWatch(reactor, time.time, self._clock_stepped)
        self._step_watch.start()
        address = self.central_port.getHost()
        self._audit.record("start", central=config.central, central_port=address.port,
                           interface=config.interface, pool_size=len(pool),
                           clients=len(book.clients()), lockout_scope=config.lockout_scope,
                           admin_port=admin_port)
        log.info("knockserver: central port {port}, {n} pool ports on {interface}, "
                 "{clients} clients, lockout {scope}",
                 port=address.port, n=len(pool), interface=config.interface,
                 clients=len(book.clients()), scope=config.lockout_scope)

    def _open_database(self, config):
        """
        A gateway of a fleet: the state in PostgreSQL (docs/fleet.md); the
        state directory keeps the lock and the audit log.  Returns the
        book, its pool as C{book.pool}.
        """
        from knocker.daemon.fleet import DatabaseBook, ThreadedStore
        from knocker.state.postgres import PostgresStore, load_key, redact, unverified_tls

        if not config.gateway:
            # A name made up from the host would change with it, and two
            # gateways sharing one would run and delete each other's closes.
            raise StartupError(
                "database is set but gateway is not: give each gateway of the fleet its "
                "own name (gateway = gw-1), the same across restarts (docs/fleet.md)")
        ensure_private_dir(config.state_dir)
        self._lock = StateLock(config.state_dir)
        self._take_lock(config)
        raw = None
        try:
            key = _read_key(config.database_key_file, load_key)
            raw = PostgresStore(config.database, key, config.gateway)
            raw.hold_gateway()
            raw.check_key()
        except Exception as error:
            if raw is not None:
                raw.close()
            raise StartupError(f"database = {redact(config.database)}: {error}") from error
        warning = unverified_tls(config.database)
        if warning:
            log.warn("database = {db}: {warning}", db=raw.path, warning=warning)
        self._store = ThreadedStore(raw, self._reactor)
        try:
            pool = ensure_pool(raw, config)
            book = DatabaseBook(raw, pool)
            book.load()
        except Exception as error:
            raise StartupError(f"database = {raw.path}: {error}") from error
        self._store.book = book
        book.pool = pool
        log.info("gateway {gateway} of the fleet in {db}", gateway=raw.gateway, db=raw.path)
        return book

    def _clock_stepped(self, seconds: float) -> None:
        log.warn("the wall clock stepped by {seconds:+.1f}s; windows, lockouts and open "
                 "doors run on the monotonic clock and are not stretched", seconds=seconds)
        self._audit.record("clock-step", seconds=round(seconds, 3))

    def stopService(self):
        """
        Stop listening, then run every pending close now; the rest (the
        audit log's C{stop}, the state, the lock) once they have finished.
        The L{Deferred} fires when all is done; twistd waits for it.
        """
        service.Service.stopService(self)
        if self._sync is not None:
            self._sync.stop()
            self._sync = None
        if self._step_watch is not None:
            self._step_watch.stop()
            self._step_watch = None
        if self.firewall is not None:
            self.firewall.stop()
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup[0] or signal.SIG_DFL)
            self._previous_sighup = None
        closing = succeed(0)
        if self.server is not None and self._store is not None:
            self.server.stop()
            closing = self.server.close_doors()
        stopped = self._stop_listening()
        closing.addBoth(self._closed_all)
        return gatherResults([stopped, closing])

    def _closed_all(self, result):
        if isinstance(result, Failure):
            log.failure("running the pending closes at stop", result)
        elif result:
            log.info("{n} pending closes run at stop", n=result)
        if self._audit is not None:
            self._audit.record("stop")
            self._audit.close()
            self._audit = None
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        return None

    def _take_lock(self, config) -> None:
        try:
            self._lock.acquire()
        except OSError as error:  # (StateError: another daemon holds it, says so)
            raise StartupError(f"state-dir = {config.state_dir}: cannot take its lock "
                               f"({error}); {owner_hint(config.state_dir)}") from error

    def _stop_listening(self):
        ports = self.pool_ports + ([self.central_port] if self.central_port else [])
        self.pool_ports, self.central_port = [], None
        stopping = [maybeDeferred(port.stopListening) for port in ports]
        if self.console is not None:
            stopping.append(maybeDeferred(self.console.stop))
            self.console = None
        if self._spare is not None:
            self._spare.close()
            self._spare = None
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
        return gatherResults(stopping)


def _is_loopback(interface: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(interface).is_loopback
