"""
The server: the coordinator that ties tracker, state, actions and audit
together, and the thin protocols for the central port and the pool ports.

Data flows one way: a line or a hit comes in through a protocol, becomes a
call on L{KnockServer}, which asks the L{Tracker}, commits to the L{Store},
runs actions, records the audit log, and hands a reply line back.
"""

import hmac
import ipaddress
import secrets
import sys

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from knocker.core import handshake as hs
from knocker.daemon.actions import action_env
from knocker.core.knockfile import KnockFileError
from knocker.state.sqlite import secret_id
from knocker.core.tracker import GLOBAL, Outcome, Policy, Slot, Tracker

log = Logger()

BUILTIN_SUCCESS = (sys.executable, "-m", "knocker.daemon.logaction")
CLOSE_RETRY = 60.0


def normalise_ip(host: str) -> str:
    """
    The address a hit or a handshake counts under: IPv4-mapped IPv6
    addresses count as the IPv4 address (docs/spec.md section 5).
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def _hmac_hex(secret: bytes, message: bytes) -> str:
    """
    The server's HMAC-SHA256, from the standard hmac module; the client uses
    L{knocker.core.mac}, so every handshake checks one against the other.
    """
    return hmac.digest(secret, message, "sha256").hex()


class KnockServer:
    """
    The coordinator.  Everything it touches is given to it: C{clock} (an
    L{IReactorTime}), C{store} (L{knocker.state.sqlite.Store}), C{book}
    (L{knocker.state.book.ClientBook}), C{runner} (runs programs) and C{audit}.
    """

    def __init__(self, config, clock, store, book, runner, audit):
        self.config = config
        self._clock = clock
        self._store = store
        self._book = book
        self._runner = runner
        self._audit = audit
        self._sessions: dict[Slot, "CentralProtocol"] = {}
        self._close_timers: dict[int, object] = {}
        self._stopped = False
        self._dummy_secret = secrets.token_bytes(32)
        self.tracker = Tracker(
            clock,
            Policy(
                window=config.knock_window,
                lockout=config.lockout,
                scope=config.lockout_scope,
                max_slots=config.max_concurrent,
            ),
            self,
        )
        if config.on_success:
            self._success = (config.on_success,)
        else:
            self._success = BUILTIN_SUCCESS

    def restore(self) -> None:
        """
        Reinstate lockouts and pending close actions from the state.
        """
        for key, until in self._store.lockouts(self._clock.seconds()).items():
            self.tracker.restore_lockout(key, until)
            log.warn("lockout of {key} still in force from before the restart", key=key)
        pending = self._store.pending_closes()
        if pending and not self.config.on_close:
            raise ValueError(
                f"{len(pending)} close actions are pending in the state but on-close is not "
                f"set; set it again so they can run"
            )
        for close in pending:
            self._schedule_close(close.id, close.due, close.ip, close.client, close.index)

    # The central port.

    def new_nonce(self) -> str:
        return secrets.token_hex(32)

    def answer(self, ip: str, client: str, nonce: str, proof: str, session) -> hs.Reply:
        """
        Decide the reply to a finished handshake (docs/spec.md section 4), in this
        order: LOCKED, DENIED, EXHAUSTED, BUSY, GRANT.
        """
        if self._stopped:
            return hs.Error("shutting-down")
        refusal = self.tracker.refusal(ip)
        if refusal is not None and refusal.kind == "locked":
            self._audit.record("locked", ip=ip, client=client, retry_after=refusal.retry_after)
            return hs.Locked(refusal.retry_after)
        # Unknown clients take the same steps as known ones (a state lookup,
        # a secret id, an HMAC against a random secret) so that the two
        # denials cost the same time.
        state = self._store.client(client)
        if state is not None:
            secret = self._book.secret(client, state.secret_id)
        else:
            secret = None
            secret_id(self._dummy_secret)
        expected = _hmac_hex(secret or self._dummy_secret, hs.hello_message(client, nonce))
        if not hmac.compare_digest(expected, proof) or secret is None:
            reason = "unknown-client" if secret is None else "bad-proof"
            self._audit.record("denied", ip=ip, client=client, reason=reason)
            log.warn("denied {client} from {ip}: {reason}", client=client, ip=ip, reason=reason)
            self.tracker.failed_attempt(ip, "denied")
            return hs.Denied()
        if state.left <= 0:
            self._audit.record("exhausted", ip=ip, client=client)
            log.warn("{client} has no knocks left", client=client)
            return hs.Exhausted()
        if refusal is not None:
            self._audit.record("busy", ip=ip, client=client, retry_after=refusal.retry_after)
            return hs.Busy(refusal.retry_after)
        try:
            ports = self._book.knock(client, state.next_index)
        except (KnockFileError, IndexError) as error:
            log.error("cannot read knock {index} of {client}: {error}",
                      index=state.next_index, client=client, error=error)
            self._audit.record("error", ip=ip, client=client, reason="client-file")
            return hs.Error("server-error")
        index = self._store.burn(client)
        if index != state.next_index:
            self._audit.record("exhausted", ip=ip, client=client)
            return hs.Exhausted()
        slot = self.tracker.grant(ip, client, index, ports)
        self._sessions[slot] = session
        self._audit.record("grant", ip=ip, client=client, index=index,
                           window=self.config.knock_window)
        log.info("granted knock {index} of {client} to {ip}", index=index, client=client, ip=ip)
        return hs.Grant(index, self.config.knock_window,
                        _hmac_hex(secret, hs.grant_message(client, nonce, index)))

    def protocol_error(self, ip: str, reason: str) -> None:
        self._audit.record("error", ip=ip, reason=reason)

    def session_lost(self, session) -> None:
        """
        The client hung up before its verdict: its slot, if still knocking,
        ends (the number stays burned).
        """
        if self._stopped:
            return
        slot = next((s for s, each in self._sessions.items() if each is session), None)
        if slot is None:
            return
        del self._sessions[slot]
        if not slot.acting:
            self.tracker.abandon(slot)
            self._audit.record("fail", ip=slot.ip, client=slot.client, index=slot.index,
                               reason="abandoned")
            log.warn("knock {index} of {client} abandoned by {ip}",
                     index=slot.index, client=slot.client, ip=slot.ip)

    # The pool.

    def hit(self, ip: str, src_port: int, port: int) -> Outcome:
        """
        One accepted connection on pool port C{port} (the hot path).
        """
        if ":" in ip:
            ip = normalise_ip(ip)
        outcome = self.tracker.hit(ip, port)
        self._audit.hit(ip, src_port, port, outcome.value)
        return outcome

    # Tracker observer.

    def knock_completed(self, slot: Slot) -> None:
        log.info("knock {index} of {client} from {ip} complete; running on-success",
                 index=slot.index, client=slot.client, ip=slot.ip)
        close_id = None
        try:
            if self.config.on_close:
                # Recorded before on-success runs, so a crash in between still
                # closes; scheduled only once on-success has finished.
                due = self._clock.seconds() + self.config.open_duration + self.config.script_timeout
                close_id = self._store.add_close(due, slot.ip, slot.client, slot.index)
            d = self._run("on-success", self._success, slot.ip, slot.client, slot.index)
        except Exception:
            log.failure("starting on-success for {client}", client=slot.client)
            self._succeeded(None, slot, close_id)
            return
        d.addCallback(self._succeeded, slot, close_id)

    def _succeeded(self, result, slot: Slot, close_id) -> None:
        """
        on-success has finished (C{result} is its L{ActionResult}, or
        C{None} if it could not be started): verdict, then the close timer.
        """
        self.tracker.release(slot)
        if close_id is not None:
            due = self._clock.seconds() + self.config.open_duration
            self._schedule_close(close_id, due, slot.ip, slot.client, slot.index)
        if result is not None and result.ok:
            self._audit.record("open", ip=slot.ip, client=slot.client, index=slot.index)
            log.info("OPEN for {client} at {ip} (knock {index})",
                     client=slot.client, ip=slot.ip, index=slot.index)
            self._verdict(slot, hs.Open())
        else:
            self._audit.record("fail", ip=slot.ip, client=slot.client, index=slot.index,
                               reason="action-failed")
            self._verdict(slot, hs.Fail("action-failed"))

    def knock_failed(self, slot: Slot, reason: str) -> None:
        self._audit.record("fail", ip=slot.ip, client=slot.client, index=slot.index,
                           reason=reason)
        log.warn("knock {index} of {client} from {ip} failed: {reason}",
                 index=slot.index, client=slot.client, ip=slot.ip, reason=reason)
        self._verdict(slot, hs.Fail(reason))

    def lockout_started(self, key: str, until: float, reason: str, ip: str) -> None:
        scope = "global" if key == GLOBAL else "source"
        if key == GLOBAL:
            # Only the global lockout is kept across restarts: persisting one
            # per source would be an fsync per attacking address.
            try:
                self._store.set_lockout(key, until)
            except Exception:
                log.failure("saving the lockout (it holds until a restart)")
        self._audit.record("lockout", ip=ip, scope=scope, reason=reason,
                           seconds=self.config.lockout)
        log.warn("lockout ({scope}) for {seconds}s after {reason} from {ip}",
                 scope=scope, seconds=self.config.lockout, reason=reason, ip=ip)

    # Actions.

    def _verdict(self, slot: Slot, reply: hs.Reply) -> None:
        session = self._sessions.pop(slot, None)
        if session is not None:
            session.finish(reply)

    def _run(self, which: str, program: tuple[str, ...], ip: str, client: str, index: int):
        argv = [*program, ip, client, str(index)]
        d = self._runner.run(argv, action_env(ip, client, index))

        def report(result):
            self._audit.record(
                "script", action=which, ip=ip, client=client, index=index,
                exit_code=result.exit_code, signal=result.signal, timed_out=result.timed_out,
                stdout=result.stdout[-2000:], stderr=result.stderr[-2000:],
                **({"error": result.spawn_error} if result.spawn_error else {}),
            )
            level = log.info if result.ok else log.error
            level("{which} for {client} at {ip}: exit {code}{killed}; stdout {out!r} stderr {err!r}",
                  which=which, client=client, ip=ip, code=result.exit_code,
                  killed=" (killed: timeout)" if result.timed_out else "",
                  out=result.stdout[-500:], err=result.stderr[-500:])
            return result

        return d.addCallback(report)

    def stop(self) -> None:
        """
        Cancel every timer (slots, closes) and refuse further handshakes;
        pending closes stay in the state and run after the next start.
        """
        self._stopped = True
        self.tracker.stop()
        for timer in self._close_timers.values():
            if timer.active():
                timer.cancel()
        self._close_timers.clear()

    def _schedule_close(self, close_id, due, ip, client, index) -> None:
        def run_close():
            self._close_timers.pop(close_id, None)
            d = self._run("on-close", (self.config.on_close,), ip, client, index)
            d.addCallback(lambda result: self._closed(close_id, result, ip, client, index))

        delay = max(0.0, due - self._clock.seconds())
        self._close_timers[close_id] = self._clock.callLater(delay, run_close)

    def _closed(self, close_id, result, ip, client, index) -> None:
        # Log first, then forget: a crash in between runs the (idempotent)
        # close again after the restart, rather than leave a close unlogged.
        self._audit.record("close", ip=ip, client=client, index=index, ok=result.ok)
        if result.ok:
            self._store.remove_close(close_id)
        else:
            # The door may still be open: keep the close and try again.
            log.error("on-close for {client} at {ip} failed; retrying in {s}s",
                      client=client, ip=ip, s=CLOSE_RETRY)
            due = self._clock.seconds() + CLOSE_RETRY
            self._schedule_close(close_id, due, ip, client, index)


class CentralProtocol(LineOnlyReceiver):
    """
    One client's exchange on the central port: HELLO, PROOF, then the
    verdict.  Any deviation ends it with C{ERROR <reason>}.
    """

    delimiter = b"\n"
    MAX_LENGTH = hs.MAX_LINE

    def __init__(self, server: KnockServer, clock, timeout: float):
        self._server = server
        self._clock = clock
        self._timeout = timeout
        self._timer = None
        self._client: str | None = None
        self._nonce: str | None = None
        self._granted = False
        self._done = False
        self.ip = None

    def connectionMade(self):
        self.ip = normalise_ip(self.transport.getPeer().host)
        self._timer = self._clock.callLater(self._timeout, self._error, "handshake-timeout")

    def lineReceived(self, line: bytes):
        if self._done:
            return
        try:
            request = hs.parse_request(line)
        except hs.ProtocolError as error:
            return self._error(str(error))
        if self._granted:
            return self._error("unexpected-line")
        if isinstance(request, hs.Hello) and self._nonce is None:
            self._client = request.client
            self._nonce = self._server.new_nonce()
            self.transport.write(hs.format_reply(hs.Challenge(self._nonce)))
        elif isinstance(request, hs.Proof) and self._nonce is not None:
            self._cancel_timer()
            try:
                reply = self._server.answer(self.ip, self._client, self._nonce, request.mac, self)
            except Exception:
                log.failure("answering {client} from {ip}", client=self._client, ip=self.ip)
                reply = hs.Error("server-error")
            if isinstance(reply, hs.Grant):
                self._granted = True
                self.transport.write(hs.format_reply(reply))
            else:
                self.finish(reply)
        else:
            self._error("out-of-turn")

    def lineLengthExceeded(self, line):
        self._error("line-too-long")

    def finish(self, reply: hs.Reply) -> None:
        if not self._done:
            self._done = True
            self.transport.write(hs.format_reply(reply))
            self.transport.loseConnection()
            self._timer = _abort_later(self._clock, self.transport)

    def _error(self, reason: str) -> None:
        if not self._done:
            log.info("central {ip}: ERROR {reason}", ip=self.ip, reason=reason)
            self._server.protocol_error(self.ip, reason)
        self._cancel_timer()
        self.finish(hs.Error(reason))

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def connectionLost(self, reason):
        self.factory.connections -= 1
        self._cancel_timer()
        self._done = True
        if self._granted:
            self._server.session_lost(self)


class CentralFactory(protocol.Factory):
    """
    Builds a L{CentralProtocol} per connection, up to C{max_connections} at
    once; past that a connection gets C{ERROR too-many-connections}.
    """

    def __init__(self, server: KnockServer, clock, max_connections: int, timeout: float):
        self._server = server
        self._clock = clock
        self._max = max_connections
        self._timeout = timeout
        self.connections = 0

    def buildProtocol(self, addr):
        if self.connections >= self._max:
            return _Refuse(self._server, self._clock)
        self.connections += 1
        proto = CentralProtocol(self._server, self._clock, self._timeout)
        proto.factory = self
        return proto


class _Refuse(protocol.Protocol):
    def __init__(self, server, clock):
        self._server = server
        self._clock = clock
        self._timer = None

    def connectionMade(self):
        self._server.protocol_error(normalise_ip(self.transport.getPeer().host),
                                    "too-many-connections")
        self.transport.write(hs.format_reply(hs.Error("too-many-connections")))
        self.transport.loseConnection()
        self._timer = _abort_later(self._clock, self.transport)

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


CLOSE_GRACE = 2.0


def _abort_later(clock, transport):
    """
    A closing connection whose last line cannot be delivered (a peer that
    never reads, or never finishes a TLS handshake, so TLS holds the line
    and the connection) is cut after L{CLOSE_GRACE} seconds, so it cannot
    hold a place under max-connections for ever.
    """
    return clock.callLater(CLOSE_GRACE, transport.abortConnection)
