"""
The coordinator: where a hit and a finished handshake become decisions.

Data flows one way: a line (L{knocker.daemon.central}) or a hit
(L{knocker.daemon.poolport}) becomes a call on L{KnockServer}, which asks
the L{Tracker} for the verdict, commits to the store, runs actions, records
the audit log, and hands a reply back.  Every collaborator is given to it.
"""

import hmac
import secrets
import sys

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from knocker.core import handshake as hs
from knocker.core.knockfile import KnockFileError
from knocker.core.sources import normalise_ip
from knocker.core.tracker import GLOBAL, HitVerdict, Lockout, Slot, Tracker
from knocker.daemon.actionenv import action_env, passed_env
from knocker.daemon.actions import script_fields
from knocker.daemon.clock import WallTime
from knocker.daemon.closes import CloseSchedule
from knocker.state.interface import secret_id, then

log = Logger()

# -P: not the working directory first on sys.path, where someone who may
# write there could plant a knocker/daemon/logaction.py for root to run.
BUILTIN_SUCCESS = (sys.executable, "-P", "-m", "knocker.daemon.logaction")
LOCKOUT_FLUSH = 1.0
LOCKOUT_RETRY = 5.0
LOCKOUT_PRUNE = 60.0  # seconds between prunes of the saved lockouts (SQLite)
# How long after a renewal a proof made with the file it replaced is denied
# as "superseded" rather than as an attack: a client's whole knock, BUSY
# retries included, ends within its timeout (60 s by default).
SUPERSEDED_GRACE = 60.0


def _hmac_hex(secret: bytes, message: bytes) -> str:
    """
    The server's HMAC-SHA256, from the standard hmac module; the client uses
    L{knocker.core.handshake.hmac_sha256}, so every handshake checks one
    against the other.
    """
    return hmac.digest(secret, message, "sha256").hex()


def _ending(result) -> str:
    """How a program ended, for a log line."""
    if result.spawn_error:
        return f"could not start ({result.spawn_error})"
    if result.timed_out:
        return "killed: it outlived script-timeout"
    if result.exit_code is None:
        return f"killed by signal {result.signal}"
    return f"exit {result.exit_code}"


def _output_text(result) -> str:
    """What a program printed, for a log line; nothing if it printed nothing."""
    if not (result.stdout or result.stderr):
        return ""
    return f"; stdout {result.stdout[-500:]!r} stderr {result.stderr[-500:]!r}"


def _ignoring(_answer, function, *args):
    """C{function(*args)} once a lookup made only for its time has answered."""
    return function(*args)


def _generation_of(state, secret: bytes):
    """C{(state, secret)} if C{state} counts the file of C{secret}, else C{None}."""
    if state is None or state.secret_id != secret_id(secret):
        return None
    return state, secret


def _renewal_due(left: int, knocks: int, renew_at: int | None) -> bool:
    """
    Knocks left down to renew-at (a third of the file by default).  The
    last knock (none left) is included: it is the client's last chance to
    be offered one before EXHAUSTED, if every offer so far was cut.  By
    default a file of one or two knocks (a third of it is none) is never
    renewed: an operator who hands out a single-use file means it.
    """
    threshold = knocks // 3 if renew_at is None else renew_at
    return threshold > 0 and left <= threshold  # renew-at = 0: renewal off


class RevokeNotSaved(Exception):
    """
    A client is refused by this daemon from now on, but the state did not
    record it: a restart (or another gateway) would take its file again.
    """

    def __init__(self, client: str, why: str):
        super().__init__(f"{client} is refused by the running daemon, but the state could "
                         f"not record it ({why}): a restart would take its file again; "
                         f"revoke it again once the state is writable")
        self.client, self.why = client, why


class KnockServer:
    """
    The coordinator.  Everything it touches is given to it: C{clock} (an
    L{IReactorTime}), C{store} (an L{knocker.state.interface.IStore}),
    C{book} (L{knocker.state.book.ClientBook}), C{runner} (runs programs),
    C{audit}, and the C{tracker}, whose observer it becomes; C{blocking}
    runs file writes that may be long (a renewed file) away from the
    reactor.
    """

    def __init__(self, config, clock, store, book, runner, audit, tracker: Tracker,
                 wall: WallTime | None = None, blocking=maybeDeferred):
        self.config = config
        self._blocking = blocking  # f(*args) in a thread, as a Deferred (the daemon's)
        self._draws = None  # renewed files being drawn (made when first needed)
        self._due_at_grant: dict[str, bool] = {}  # client: renewal due after its last grant
        self._clock = clock
        self._wall = wall or WallTime(clock)
        self._store = store
        self._book = book
        self._runner = runner
        self._audit = audit
        self._sessions: dict[Slot, object] = {}
        self._granted_ids: dict[Slot, str] = {}  # the secret id of each granted file
        self._refused: set[Slot] = set()  # verdicts that became FAIL revoked
        self._stopped = False
        self._dummy_secret = secrets.token_bytes(32)
        self.tracker = tracker
        tracker.observer = self
        self._lockout_flush = None
        self._global_retry = None  # the server's lockout, saved again (L{_save_global})
        self._pruned = None  # when the saved lockouts were last pruned
        self._revoked: dict[str, str] = {}  # client -> secret_id of its revoked file
        # client -> the secret its last renewal replaced, while this daemon runs
        self._superseded: dict[str, tuple[bytes, str, float]] = {}
        # The sources with an enrolment under way: one at a time each.
        self._enrolling: set[str] = set()
        #: The central port's number once it listens (the daemon sets it), for
        #: the enrol command the console shows when C{central} says port 0.
        self.central_port: int | None = None
        # The action-env names' values, taken once: every action gets the same.
        self.passed_env = passed_env(config.action_env)
        self.closes = CloseSchedule(
            clock, self._wall, store,
            lambda ip, client, index: self._run("on-close", (config.on_close,), ip, client, index),
            audit,
        )
        if config.on_success:
            self._success = (config.on_success,)
        else:
            self._success = BUILTIN_SUCCESS

    def restore(self) -> None:
        """
        Reinstate lockouts from the state, and run every close action it
        holds at once (fail-closed: doors a previous run opened are closed,
        not kept open to their time).
        """
        self._revoked = dict(self._store.revoked())
        saved = self._store.lockouts(self._wall.now())
        for key, until in saved.items():
            self.tracker.restore_lockout(key, self._wall.from_wall(until))
        held = self.tracker.lockouts() if saved else {}  # (never-lock, lockout = 0: not held)
        if held:
            # One line: after a flood the state may hold 100,000.
            log.warn("{count} lockouts still in force from before the restart{whole}",
                     count=len(held), whole=" (the whole server's among them)"
                     if GLOBAL in held else "")
        pending = self._store.pending_closes()
        if pending and not self.config.on_close:
            raise ValueError(
                f"{len(pending)} close actions are pending in the state but on-close is not "
                f"set; set it again so they can run"
            )
        if self.closes.restore(pending):  # read once: a second read could fail
            log.warn("{n} doors left open by the previous run are closed now (their clients "
                     "knock again)", n=len(pending))

    # The central port.

    def new_nonce(self) -> str:
        return secrets.token_hex(32)

    def answer(self, ip: str, client: str, nonce: str, proof: str, session):
        """
        Decide the reply to a finished handshake (docs/spec.md section 4), in this
        order: LOCKED, DENIED, EXHAUSTED, BUSY, GRANT.

        With a store that answers at once (SQLite) the reply is returned;
        with one that answers later (a fleet's database,
        L{knocker.daemon.fleet.ThreadedStore}) a L{Deferred} that fires with
        it: the lookup and the burn run off the reactor, and whatever
        cannot be known (the database gone, a burn whose commit is in doubt)
        becomes C{ERROR server-error}, never a GRANT.
        """
        early = self._stopped_or_locked(ip, client)
        if early is not None:
            return early
        state = self._store.client(client)
        if isinstance(state, Deferred):
            return state.addCallbacks(
                self._judge_later, self._store_failed,
                callbackArgs=(ip, client, nonce, proof, session), errbackArgs=(ip, client))
        return self._judge(state, ip, client, nonce, proof, session)

    def _stopped_or_locked(self, ip, client):
        if self._stopped:
            return hs.Error("shutting-down")
        refusal = self.tracker.refusal(ip)
        if refusal is not None and refusal.kind == "locked":
            self._audit.locked(ip=ip, client=client, retry_after=refusal.retry_after)
            return hs.Locked(refusal.retry_after)
        return None

    def _judge_later(self, state, ip, client, nonce, proof, session):
        """
        L{_judge} once a store that answers later has: the daemon may have
        stopped, or the source been locked out, meanwhile.
        """
        early = self._stopped_or_locked(ip, client)
        if early is not None:
            return early
        return self._judge(state, ip, client, nonce, proof, session)

    def _judge(self, state, ip, client, nonce, proof, session):
        # Unknown clients have their proof checked by the same code, against
        # a random stand-in secret; the central port sends every DENIED at
        # one fixed delay after the PROOF, so the time of the two denials
        # does not depend on their work.
        revoked = state is not None and self.is_revoked(state)
        if revoked:
            state = None  # denied like an unknown client, by the same code
        if state is not None:
            try:
                secret = self._book.secret(client, state.secret_id)
            except KnockFileError as error:
                # The server's fault, not the client's: no lockout.  The
                # proof is not judged yet, so anyone naming this client comes
                # here: its lines share the audit log's budget.
                if self._audit.server_error("client-file", ip=ip, client=client,
                                            detail=str(error)):
                    log.error("cannot use the server's copy for {client}: {error}",
                              client=client, error=error)
                return hs.Error("server-error")
        else:
            secret = None
        expected = _hmac_hex(secret or self._dummy_secret, hs.hello_message(client, nonce))
        matched = hmac.compare_digest(expected, proof) and secret is not None
        if secret is not None and not matched and self._made_with_superseded(
                client, state.secret_id, nonce, proof):
            # The file the last renewal replaced, from a knock of the client's
            # own that read it before (two knocks at once): refused, but it is
            # no attack, so no failed attempt.  (DENIED goes out at its fixed
            # moment all the same.)
            self._audit.record("denied", ip=ip, client=client, reason="superseded")
            log.info("denied {client} from {ip}: a proof made with the file its renewal "
                     "replaced", client=client, ip=ip)
            return hs.Denied()
        if secret is not None and not matched:
            # A renewed file proving itself (section 10): it becomes current.
            # Its lookup may answer later too (a fleet's database).
            return then(self._proven_renewal(ip, client, nonce, proof, secret), self._proved,
                        False, state, secret, ip, client, nonce, session)
        if not matched:
            # The same lookup for an unknown (or revoked) client, its answer
            # unused: on a slow database a wrong proof for a real client would
            # otherwise take one round trip more, past DENIED's fixed moment.
            return then(self._store.pending(client), _ignoring, self._proved,
                        None, False, state, secret, ip, client, nonce, session)
        return self._proved(None, matched, state, secret, ip, client, nonce, session)

    def _proved(self, renewed, matched, state, secret, ip, client, nonce, session):
        """
        The rest of L{_judge}, once the proof is checked: C{matched} says
        whether it was made with C{secret}; C{renewed} is C{(state,
        secret)} of a pending generation the proof was made with, just
        promoted.
        """
        if renewed is not None:
            state, secret = renewed
            matched = True
            early = self._stopped_or_locked(ip, client)
            if early is not None:
                return early
        refusal = self.tracker.refusal(ip)
        if not matched:
            # A revoked file reaches here as an unknown client (state None).
            revoked = secret is None and client in self._revoked
            reason = "revoked" if revoked else "unknown-client" if secret is None else "bad-proof"
            # (within the audit log's budget: where lockouts do not hold, a
            # source may be denied without end)
            if self._audit.denied(ip=ip, client=client, reason=reason):
                log.warn("denied {client} from {ip}: {reason}", client=client, ip=ip,
                         reason=reason)
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
        if getattr(session, "lost", False):
            return hs.Error("server-error")  # gone while the state answered: burn nothing
        index = self._store.burn(client, state.secret_id)
        if isinstance(index, Deferred):
            return index.addCallbacks(
                self._burned, self._store_failed,
                callbackArgs=(state, ports, secret, ip, client, nonce, session),
                errbackArgs=(ip, client))
        if index != state.next_index:
            self._audit.record("exhausted", ip=ip, client=client)
            return hs.Exhausted()
        return self._grant(index, ports, secret, state, ip, client, nonce, session)

    def _burned(self, index, state, ports, secret, ip, client, nonce, session):
        """
        A burn that answered later: committed, so C{index} is this
        grant's alone, but the world may have moved meanwhile (another
        gateway took the number read before, a lockout came, the daemon is
        stopping).  The number is spent either way; a refusal costs it.
        """
        if index is None:
            self._audit.record("exhausted", ip=ip, client=client)
            return hs.Exhausted()
        held = getattr(self._book, "held_secret_id", None)
        if held is not None and held(client) != state.secret_id:
            # generate --force came in between: the book holds another file.
            log.error("{client} was generated again while knock {index} was burned; "
                      "granting nothing", client=client, index=index)
            self._audit.record("error", ip=ip, client=client, reason="client-file",
                               detail="generated again meanwhile")
            return hs.Error("server-error")
        if self._stopped:
            return hs.Error("shutting-down")
        if self.is_revoked(state):
            # Revoked while the burn was in the database: a GRANT now would
            # hold a place no revocation ends.  No failed attempt: the
            # client did nothing wrong when it sent its PROOF.
            self._audit.record("denied", ip=ip, client=client, reason="revoked", index=index)
            log.warn("denied {client} from {ip}: revoked while its knock was burned",
                     client=client, ip=ip)
            return hs.Denied()
        refusal = self.tracker.refusal(ip)
        if refusal is not None:
            self._audit.record(refusal.kind, ip=ip, client=client, index=index,
                               retry_after=refusal.retry_after)
            return (hs.Locked if refusal.kind == "locked" else hs.Busy)(refusal.retry_after)
        if index != state.next_index:
            try:
                ports = self._book.knock(client, index)
            except (KnockFileError, IndexError, KeyError) as error:
                log.error("cannot read knock {index} of {client}: {error}",
                          index=index, client=client, error=error)
                self._audit.record("error", ip=ip, client=client, reason="client-file")
                return hs.Error("server-error")
        return self._grant(index, ports, secret, state, ip, client, nonce, session)

    def state_failed(self, ip: str, client: str, failure) -> bool:
        """
        Answering a PROOF raised C{failure} (a damaged state row, say): its
        C{error} line within the audit log's budget, as L{_store_failed}'s.
        Returns whether to log it too.
        """
        return self._audit.server_error("state", ip=ip, client=client,
                                        detail=str(failure.value))

    def _store_failed(self, failure, ip, client):
        """
        The database did not answer, or a burn's commit is in doubt: no
        GRANT (fail closed); the audit log and the log say why.
        """
        # Within the audit log's budget: anyone may send PROOFs, and an
        # ERROR locks nobody out, so a database down would otherwise have a
        # flood write a line (and a log line) a PROOF.
        if self.state_failed(ip, client, failure):
            log.error("the state did not answer for {client} from {ip}: {error}; granting "
                      "nothing", client=client, ip=ip, error=failure.value)
        return hs.Error("server-error")

    def _grant(self, index, ports, secret, state, ip, client, nonce, session):
        slot = self.tracker.grant(ip, client, index, ports)
        self._sessions[slot] = session
        self._granted_ids[slot] = state.secret_id
        # Two knocks of one file in flight: the one a renewal is due at wins
        # (its OPEN may come first, or alone).
        self._due_at_grant[client] = (
            _renewal_due(state.knocks - index, state.knocks, self.config.renew_at)
            or self._due_at_grant.get(client, False))
        # Audited before it is sent: whenever the daemon dies, a client never
        # holds a GRANT the audit log lacks.  A write that fails (a full
        # disk) grants all the same, by choice (docs/security.md, "What is
        # logged"): the event is counted lost, and the daemon's log says so.
        # The daemon's own log says nothing yet: each knock is one line
        # there, when it ends.
        self._audit.record("grant", ip=ip, client=client, index=index,
                           window=self.config.knock_window)
        return hs.Grant(index, self.config.knock_window,
                        _hmac_hex(secret, hs.grant_message(client, nonce, index)))

    def _made_with_superseded(self, client: str, current_id: str, nonce: str,
                              proof: str) -> bool:
        """
        Whether C{proof} is made with the secret C{client}'s last renewal
        replaced, while the file that replaced it is still the current one
        (C{current_id}) and for L{SUPERSEDED_GRACE} seconds after: long
        enough for a knock of the client's own that began before it, not a
        lasting pass from lockouts for whoever holds the old file.
        """
        replaced = self._superseded.get(client)
        if replaced is None:
            return False
        old_secret, new_id, promoted_at = replaced
        if new_id != current_id or self._clock.seconds() - promoted_at > SUPERSEDED_GRACE:
            del self._superseded[client]
            return False
        return hmac.compare_digest(_hmac_hex(old_secret, hs.hello_message(client, nonce)), proof)

    def _proven_renewal(self, ip: str, client: str, nonce: str, proof: str, replaced: bytes):
        """
        C{(state, secret)} of C{client}'s pending generation if C{proof} is
        made with its secret, after promoting it; otherwise C{None}.  With
        a store that answers later, a L{Deferred} of that.
        """
        return then(self._store.pending(client), self._pending_proof, ip, client, nonce, proof,
                    replaced)

    def _pending_proof(self, pending, ip, client, nonce, proof, replaced):
        if pending is None:
            return None
        secret = self._book.pending_secret(client, pending.secret_id)
        expected = _hmac_hex(secret or self._dummy_secret, hs.hello_message(client, nonce))
        if secret is None or not hmac.compare_digest(expected, proof):
            return None
        return then(self._promote(ip, client, pending, "proof", replaced), self._current,
                    client, secret)

    def _current(self, _promoted, client: str, secret: bytes):
        """
        The state once the generation of C{secret} is current: promoted by
        this call, or just before by another (a CONFIRM, another gateway).
        """
        return then(self._store.client(client), _generation_of, secret)

    def _promote(self, ip: str, client: str, pending, how: str, replaced: bytes):
        # Known before the state commits the promotion: on a fleet a lookup
        # for the client's other knock may see the new file before this
        # promotion's answer comes back.  Harmless if it fails: it counts
        # only while the new file is current.  (Memory only, and this
        # gateway's: see _made_with_superseded.)
        self._superseded[client] = (replaced, pending.secret_id, self._clock.seconds())
        return then(self._store.promote(client, pending.secret_id), self._promoted,
                    ip, client, pending, how)

    def _promoted(self, done: bool, ip: str, client: str, pending, how: str) -> bool:
        if not done:
            return False
        self._book.promote(client)
        self._audit.record("renew-confirm", ip=ip, client=client, knocks=pending.knocks, by=how)
        log.info("{client} proved its renewed file ({how}): it is current now",
                 client=client, how=how)
        return True

    def renewal(self, ip: str, client: str, nonce: str):
        """
        After OPEN: an offer of a new file if C{client}'s knocks left are
        down to renew-at (L{knocker.enrol.renewal.RenewServer}), or C{None};
        with a store that answers later, a L{Deferred} of either.  A
        failure is logged and offers nothing: the OPEN stands.
        """
        if self.config.renew_at == 0:
            return None  # renewal off: no state to read on every OPEN
        if not self._due_at_grant.pop(client, True):
            # Not due when this knock was granted: no state read before the
            # client hears the connection end (a renewal comes at a later OPEN).
            return None
        return self._guarded(None, "preparing a renewal for {client}", client,
                             lambda: then(self._store.client(client), self._offer,
                                          ip, client, nonce))

    def _offer(self, state, ip: str, client: str, nonce: str):
        if state is None or not _renewal_due(state.left, state.knocks, self.config.renew_at):
            return None
        secret = self._book.secret(client, state.secret_id)
        # A fleet draws it in its database threads (its book is there).
        prepare = getattr(self._store, "prepare_offer", None)
        made = (prepare(client, self._wall.now()) if prepare is not None
                else self._renewal_draws().offer(client, self._wall.now()))
        return then(made, self._offered, ip, client, nonce, state, secret)

    def _renewal_draws(self):
        if self._draws is None:
            from knocker.daemon.renewals import RenewalDraws

            self._draws = RenewalDraws(self._store, self._book, self._clock, self._blocking)
        return self._draws

    def _offered(self, made, ip: str, client: str, nonce: str, state, secret: bytes):
        from knocker.enrol.renewal import RenewServer

        if made is None or self._stopped or self.is_revoked(state):
            return None  # replaced or revoked while the new file was drawn
        text, new = made
        self._audit.record("renew-offer", ip=ip, client=client, left=state.left, new=new)
        return RenewServer(client, secret, nonce, text,
                           lambda wanted_id: self._confirmed(ip, client, wanted_id,
                                                             state.secret_id, secret))

    def _confirmed(self, ip: str, client: str, wanted_id: str, offered_id: str,
                   replaced: bytes):
        """
        The client's CONFIRM after a renewal, made with the new secret
        (C{wanted_id}): promote its pending file, if that is still the one
        and the file it was offered to (C{offered_id}) is not revoked.
        """
        return self._guarded(False, "promoting {client}'s renewed file", client,
                             lambda: then(self._store.pending(client), self._confirm_pending,
                                          ip, client, wanted_id, offered_id, replaced))

    def _confirm_pending(self, pending, ip: str, client: str, wanted_id: str,
                         offered_id: str, replaced: bytes):
        if self._revoked.get(client) == offered_id:
            return self._renewal_revoked(ip, client)
        if pending is None or pending.secret_id != wanted_id:
            return False
        return self._promote(ip, client, pending, "confirm", replaced)

    def _renewal_revoked(self, ip: str, client: str):
        """
        Revoked between the offer and the CONFIRM: the renewed file must
        not outlive the revocation.  The state forgot it with the
        revocation (and never promotes a revoked client's), so it is only
        refused here.
        """
        from knocker.enrol.renewal import REVOKED

        self._audit.record("renew-refused", ip=ip, client=client, reason="revoked")
        log.warn("{client} was revoked during its renewal: the renewed file is refused",
                 client=client)
        return REVOKED

    @staticmethod
    def _guarded(fallback, what: str, client: str, work):
        """
        C{work()}, its failure (now or, from a L{Deferred}, later) logged
        as C{what} and replaced by C{fallback}.
        """
        try:
            result = work()
        except Exception:
            log.failure(what, client=client)
            return fallback
        if isinstance(result, Deferred):
            def failed(failure):
                log.failure(what, failure, client=client)
                return fallback

            result.addErrback(failed)
        return result

    def enrolment(self, ip: str):
        """
        A central connection opened with ENROLL: its state machine
        (L{knocker.enrol.server.EnrolServer}), given what it needs.  A
        fleet reads the server's copy in its database threads.
        """
        from knocker.enrol.server import EnrolServer

        read_file = getattr(self._store, "book_text", None) or self._book.text
        return EnrolServer(ip, self._store, read_file, self._audit, self.tracker,
                           self._wall.now, enrolling=self._enrolling)

    def protocol_error(self, ip: str, reason: str) -> bool:
        """
        Audit an C{ERROR} sent for a broken protocol; whether it got a line
        of its own (past the budget it is only counted, and not logged).
        """
        return self._audit.protocol_error(ip, reason)

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
            self._granted_ids.pop(slot, None)
            self.tracker.abandon(slot)
            self._audit.record("fail", ip=slot.ip, client=slot.client, index=slot.index,
                               reason="abandoned")
            log.warn("knock {index} of {client} abandoned by {ip}",
                     index=slot.index, client=slot.client, ip=slot.ip)

    # The pool.

    def hit(self, ip: str, src_port: int, port: int) -> HitVerdict:
        """
        One accepted connection on pool port C{port} (the hot path).
        """
        if ":" in ip:
            ip = normalise_ip(ip)
        outcome = self.tracker.hit(ip, port)
        self._audit.hit(ip, src_port, port, outcome.value)
        return outcome

    # Tracker observer.

    def _revoked_since_grant(self, slot: Slot) -> bool:
        """Whether the file this knock was granted to is revoked now."""
        granted = self._granted_ids.get(slot)
        return granted is not None and self._revoked.get(slot.client) == granted

    def _end_revoked(self, slot: Slot, close_id=None) -> None:
        """
        Revoked between the GRANT and on-success: no door.  A close already
        recorded is told its open failed (it runs, harmlessly, at once).
        """
        if close_id is not None:
            self.closes.opened(close_id, self._wall.now(), slot.ip, slot.client, slot.index,
                               ok=False)
        self.tracker.release(slot)
        self._audit.record("fail", ip=slot.ip, client=slot.client, index=slot.index,
                           reason="revoked")
        log.warn("knock {index} of {client} from {ip} ended: the file is revoked",
                 index=slot.index, client=slot.client, ip=slot.ip)
        self._verdict(slot, hs.Fail("revoked"))

    def knock_completed(self, slot: Slot) -> None:
        if self._revoked_since_grant(slot):
            self._end_revoked(slot)
            return
        close_id = None
        try:
            if self.config.on_close:
                # Recorded before on-success runs, so a crash in between still
                # closes; scheduled only once on-success has finished.
                due = self._wall.now() + self.config.open_duration + self.config.script_timeout
                close_id = self.closes.record(due, slot.ip, slot.client, slot.index)
                if isinstance(close_id, Deferred):
                    # Recorded off the reactor: on-success once it is (fail
                    # closed: no record, no door).
                    close_id.addCallbacks(self._start_success, self._close_not_recorded,
                                          callbackArgs=(slot,), errbackArgs=(slot,))
                    return
        except Exception:
            log.failure("recording the close for {client}", client=slot.client)
            self._succeeded(None, slot, None)
            return
        self._start_success(close_id, slot)

    def _start_success(self, close_id, slot: Slot) -> None:
        if self._stopped:
            log.warn("knock {index} of {client} from {ip} not opened: the daemon is stopping",
                     index=slot.index, client=slot.client, ip=slot.ip)
            self._succeeded(None, slot, close_id)
            return
        running = self.closes.quiet(slot.ip)
        if running is not None:
            # A close of this address already runs: the open goes after it,
            # or the close could land last and shut the door just opened.
            running.addCallback(lambda _: self._start_success(close_id, slot))
            return
        if self._revoked_since_grant(slot):  # while the close was recorded, or ran
            self._end_revoked(slot, close_id)
            return
        try:
            done = self._run("on-success", self._success, slot.ip, slot.client, slot.index,
                             verdict=lambda result: self._send_verdict(result, slot, close_id))
        except Exception:
            log.failure("starting on-success for {client}", client=slot.client)
            self._succeeded(None, slot, close_id)
            return
        done.addCallback(self._log_verdict, slot)

    def _close_not_recorded(self, failure, slot: Slot) -> None:
        log.error("cannot record the close for {client} at {ip} ({error}); on-success not run",
                  client=slot.client, ip=slot.ip, error=failure.value)
        self._audit.record("error", ip=slot.ip, client=slot.client, reason="state",
                           detail=str(failure.value))
        self._succeeded(None, slot, None)

    def _succeeded(self, result, slot: Slot, close_id) -> None:
        """
        on-success has finished (C{result} is its L{ActionResult}, or
        C{None} if it could not be started): verdict, then the close timer.
        """
        self._send_verdict(result, slot, close_id)
        self._log_verdict(result, slot)

    def _send_verdict(self, result, slot: Slot, close_id) -> None:
        # Revoked while on-success ran: its door closes at once.
        revoked = self._revoked_since_grant(slot)
        if close_id is not None:
            # First: until the schedule hears of it, no close of this address runs.
            due = self._wall.now() + self.config.open_duration
            self.closes.opened(close_id, due, slot.ip, slot.client, slot.index,
                               ok=result is not None and result.ok)
            if revoked:
                self.closes.close_client(slot.client)
        self.tracker.release(slot)
        # Audited before it is sent, as a GRANT is.
        if revoked:
            self._refused.add(slot)
            self._audit.record("fail", ip=slot.ip, client=slot.client, index=slot.index,
                               reason="revoked")
            self._verdict(slot, hs.Fail("revoked"))
        elif result is not None and result.ok:
            self._audit.record("open", ip=slot.ip, client=slot.client, index=slot.index)
            self._verdict(slot, hs.Open())
        else:
            self._audit.record("fail", ip=slot.ip, client=slot.client, index=slot.index,
                               reason="action-failed")
            self._verdict(slot, hs.Fail("action-failed"))

    def _log_verdict(self, result, slot: Slot) -> None:
        """The log line of a verdict already sent (the client need not wait for it)."""
        if slot in self._refused:
            self._refused.discard(slot)
            log.warn("knock {index} of {client} from {ip}: the file was revoked while "
                     "on-success ran{ran}; its door is closed again", index=slot.index,
                     client=slot.client, ip=slot.ip,
                     ran=f" (exit 0{_output_text(result)})" if result is not None and result.ok
                     else "")
        elif result is not None and result.ok:
            # One line for the knock's success and its program's: a daemon's
            # log line costs it tens of microseconds, on every knock.
            log.info("OPEN for {client} at {ip} (knock {index}): on-success exit 0{output}",
                     client=slot.client, ip=slot.ip, index=slot.index,
                     output=_output_text(result))

    def knock_failed(self, slot: Slot, reason: str) -> None:
        self._audit.record("fail", ip=slot.ip, client=slot.client, index=slot.index,
                           reason=reason)
        log.warn("knock {index} of {client} from {ip} failed: {reason}",
                 index=slot.index, client=slot.client, ip=slot.ip, reason=reason)
        self._verdict(slot, hs.Fail(reason))

    def lockout_started(self, lockout: Lockout) -> None:
        if lockout.key == GLOBAL:
            self._save_global()
        elif self._lockout_flush is None:
            # Source lockouts are saved in a batch a second: a flood from
            # many addresses costs one write a second, not one per address.
            self._lockout_flush = self._clock.callLater(LOCKOUT_FLUSH, self.save_lockouts)
        # A source's lockout is a line within the audit log's budget (a flood
        # from fresh addresses starts one a hit), else counted in its
        # summaries; the daemon's log follows suit.
        if self._audit.lockout(ip=lockout.ip, source=lockout.key, scope=lockout.scope,
                               reason=lockout.reason, seconds=lockout.seconds,
                               step=lockout.step):
            log.warn("lockout ({scope}) of {key} for {seconds}s after {reason} from {ip}",
                     scope=lockout.scope, key=lockout.key, seconds=lockout.seconds,
                     reason=lockout.reason, ip=lockout.ip)

    def _save_global(self) -> None:
        """
        Save the server's lockout at once (the other gateways of a fleet
        learn of it from the save); a save that fails is tried again every
        L{LOCKOUT_RETRY} seconds while the lockout lasts, as a batch of
        source lockouts is.
        """
        if self._global_retry is not None and self._global_retry.active():
            self._global_retry.cancel()  # this save is the retry: one chain at most
        self._global_retry = None
        until, _ = self.tracker.source_until(GLOBAL)
        if self._stopped or until <= self._clock.seconds():
            return
        try:
            saved = self._store.set_lockout(GLOBAL, self._wall.to_wall(until))
        except Exception as error:
            self._global_not_saved(error)
            return
        if isinstance(saved, Deferred):
            saved.addErrback(lambda failure: self._global_not_saved(failure.value))

    def _global_not_saved(self, error) -> None:
        log.error("saving the server's lockout failed ({error}); trying again in {seconds}s",
                  error=error, seconds=LOCKOUT_RETRY)
        if not self._stopped and self._global_retry is None:
            self._global_retry = self._clock.callLater(LOCKOUT_RETRY, self._save_global)

    def save_lockouts(self) -> None:
        """
        Save the source lockouts started since the last call (so that
        C{knocker status} sees them and a restart keeps them).
        """
        if self._lockout_flush is not None and self._lockout_flush.active():
            self._lockout_flush.cancel()
        self._lockout_flush = None
        changes = self.tracker.take_changes()
        if changes:
            keys = [key for key, _, _ in changes]
            try:
                saved = self._store.save_lockouts(
                    {key: self._wall.to_wall(until) for key, until, _ in changes},
                    steps={key: step for key, _, step in changes})
            except Exception:
                log.failure("saving {n} source lockouts", n=len(changes))
                self._lockouts_not_saved(keys)
                return
            if isinstance(saved, Deferred):
                saved.addErrback(self._lockouts_save_failed, keys)
            self._prune_lockouts()

    def _prune_lockouts(self) -> None:
        """
        At most once a L{LOCKOUT_PRUNE}, with a batch: the saved lockouts
        that have ended are forgotten, so that a flood from ever new
        addresses does not grow the state for as long as the daemon runs.
        (A fleet's gateways prune the shared table as they read it.)
        """
        if self.config.database:
            return
        now = self._wall.now()
        if self._pruned is not None and now - self._pruned < LOCKOUT_PRUNE:
            return
        self._pruned = now
        try:
            self._store.prune_lockouts(now)
        except Exception:
            log.failure("pruning the saved lockouts")

    def _lockouts_save_failed(self, failure, keys) -> None:
        log.error("saving {n} source lockouts failed ({error}); trying again",
                  n=len(keys), error=failure.value)
        self._lockouts_not_saved(keys)

    def _lockouts_not_saved(self, keys) -> None:
        """
        A batch of source lockouts could not be saved: its keys go back
        into the next batch, tried again in L{LOCKOUT_RETRY} seconds.
        """
        self.tracker.changed_again(keys)
        if not self._stopped and self._lockout_flush is None:
            self._lockout_flush = self._clock.callLater(LOCKOUT_RETRY, self.save_lockouts)

    # Actions.

    def _verdict(self, slot: Slot, reply: hs.Reply) -> None:
        self._granted_ids.pop(slot, None)
        session = self._sessions.pop(slot, None)
        if session is not None:
            session.finish(reply)
        # Sent: the client's next knock, read now, costs its GRANT a stat.
        self._book.read_ahead(slot.client, slot.index + 1)

    def _run(self, which: str, program: tuple[str, ...], ip: str, client: str, index: int,
             verdict=None, **extra):
        """
        Start C{program}; the L{Deferred} fires with its result once it is
        recorded.  C{verdict(result)}, if given, runs once the audit log has
        the program's result and before any log line: a client is waiting
        for it, the operator's log can wait.  A program that succeeded with
        a verdict to send gets no line here: the verdict's (OPEN) names it.
        """
        argv = [*program, ip, client, str(index)]
        d = self._runner.run(argv, action_env(ip, client, index, self.passed_env))

        def report(result):
            try:
                self._audit.record("script", action=which, ip=ip, client=client, index=index,
                                   **extra, **script_fields(result))
            except Exception:  # the verdict below must come all the same: it records the
                # door's close and frees the knock's slot
                log.failure("auditing {which} for {client}", which=which, client=client)
            if verdict is not None:
                try:
                    verdict(result)
                except Exception:
                    log.failure("the verdict after {which} for {client}", which=which,
                                client=client)
            if result.ok and verdict is not None:
                return result  # the verdict's own line (OPEN) names it
            level = log.info if result.ok else log.error
            level("{which} for {client} at {ip} (knock {index}): {ended}{output}",
                  which=which, client=client, ip=ip, index=index, ended=_ending(result),
                  output=_output_text(result))
            return result

        return d.addCallback(report)

    def reopen_doors(self) -> int:
        """
        The firewall lost its state (on-check restored it): run on-success
        again for every door open now, so their clients keep their access
        until the close.  Returns how many.
        """
        return self.closes.reopen(
            lambda ip, client, index: self._run("on-success", self._success, ip, client, index,
                                                reopen=True))

    # The operator (the console, knocker unlock and revoke; they audit it).

    @property
    def store(self):
        return self._store

    def lift(self, key: str | None = None):
        """
        End the lockout of C{key} (a source key or L{GLOBAL}; every lockout
        with C{None}) now and in the state, so a restart does not bring it
        back (and, in a fleet, on every gateway); returns the keys lifted
        here, or a L{Deferred} firing with them once the state has it
        (lifted here then: a state that fails it lifts nothing).
        """
        # Those in force now: in a fleet this gateway's own notice of the
        # lift may come back and lift them before the state's answer does.
        held = [k for k in self.tracker.lockouts() if key is None or k == key]

        def lift(_=None):
            return sorted(set(held) | set(self.tracker.lift(key)))

        # Not saved from now on: a batch taken while the state lifts it
        # would bring it back (the state writes them in the order asked).
        # If the lift fails they are saved again, as still in force.
        self.tracker.unsaved(key)
        try:
            done = self._store.lift_lockouts(key)
        except Exception:
            self.tracker.changed_again(held)
            raise
        if isinstance(done, Deferred):
            def not_lifted(failure):
                self.tracker.changed_again(held)
                return failure
            return done.addCallbacks(lift, not_lifted)
        return lift()

    def revoke(self, client: str):
        """
        Refuse C{client}'s current file from its next HELLO on (DENIED), for
        good; a new file (knocker generate --force) is not revoked.
        C{False} if there is no such client; a L{Deferred} firing with the
        answer with a store that answers later (a fleet's).
        """
        state = self._store.client(client)
        if isinstance(state, Deferred):
            return state.addCallback(self._revoke, client)
        return self._revoke(state, client)

    def _revoke(self, state, client: str):
        if state is None:
            return False
        # Refused here at once, whether or not the state takes it (a stolen
        # file is refused while the operator deals with a failing state).
        self._revoked[client] = state.secret_id
        self._close_revoked(client)

        def not_saved(failure):
            raise RevokeNotSaved(client, failure.getErrorMessage()) from failure.value

        try:
            done = self._store.revoke(client)
        except Exception as error:
            raise RevokeNotSaved(client, str(error)) from error
        if isinstance(done, Deferred):
            return done.addCallbacks(lambda _: True, not_saved)
        return True

    def invite(self, client: str, knocks: int, ports: int, expires: float, force: bool,
               now: float | None = None, blocking=None):
        """
        C{client} created (or, with C{force}, replaced) in this daemon's own
        store and book, with an invitation to enrol it
        (L{knocker.enrol.invite.invite_in}): served at once.  Returns the
        L{knocker.enrol.invite.Invited}, or a L{Deferred} firing with it.
        A fleet's store does it all in its threads; with SQLite the file
        is drawn by C{blocking} (C{deferToThread} in the daemon: a big file
        takes seconds) and kept here.

        @raise ValueError: a client id or an expiry L{check_invite
            <knocker.enrol.invite.check_invite>} refuses, before any change.
        """
        from knocker.admin.clients import refuse_existing
        from knocker.enrol.invite import check_invite, draw_file, invite_in, keep_invited

        check_invite(client, expires)  # before anything changes
        now = self._wall.now() if now is None else now
        run = getattr(self._store, "invite", None)
        if run is not None:
            return run(client, knocks, ports, expires, force, now)
        if blocking is None:
            return invite_in(self._store, self._book, client, knocks, ports, expires, force, now)
        refuse_existing(self._store.client(client), client, force)
        pool = self._store.pool() or ()
        return blocking(draw_file, client, pool, knocks, ports).addCallback(
            lambda kf: keep_invited(self._store, self._book, kf, expires, force, now))

    def revocations_read(self, revoked: dict[str, str]) -> None:
        """
        The revocations as the state holds them (a fleet's gateways read
        them again on notice and every few seconds): added to those held.
        A revocation is never withdrawn, so none held is dropped.
        """
        for client, revoked_id in revoked.items():
            if self._revoked.get(client) != revoked_id:
                self._revoked[client] = revoked_id
                self._close_revoked(client)

    def _close_revoked(self, client: str) -> None:
        """
        A revoked client's knocks in progress end now with FAIL revoked
        (they would hold the server's place until their window ran out, and
        a wrong port of the revoked file's holder would still lock everyone
        out); its doors close now, not at their time (a door is an address:
        one another client's knock holds open closes with it).
        """
        for slot in self.tracker.slots():
            if slot.client == client and self._revoked_since_grant(slot):
                self.tracker.end(slot, "revoked")
        closed = self.closes.close_client(client)
        if closed:
            log.warn("{client} is revoked: closing its {n} open doors now",
                     client=client, n=closed)

    def is_revoked(self, state) -> bool:
        """
        Whether C{state}'s file is revoked (a lookup in memory: no store call
        on the handshake's path).
        """
        return self._revoked.get(state.client) == state.secret_id

    def stop(self) -> None:
        """
        Cancel every timer (slots, closes) and refuse further handshakes;
        pending closes stay in the state (L{close_doors} runs them).
        """
        self._stopped = True
        self._end_knocks_under_way()
        if self._draws is not None:
            self._draws.stop()
        if self._global_retry is not None and self._global_retry.active():
            self._global_retry.cancel()
        self.save_lockouts()
        self.tracker.stop()
        self.closes.stop()

    def _end_knocks_under_way(self) -> None:
        """
        Knocks granted and still being knocked get C{ERROR shutting-down}
        and a C{fail} line: no door opens for them now, and a client left
        to find its connection closed could only say there was no verdict.
        (A knock whose on-success runs gets its verdict when it ends.)
        """
        for slot, session in list(self._sessions.items()):
            if slot.acting:
                continue
            del self._sessions[slot]  # its verdict is the ERROR, not a FAIL
            # Audited and logged as a failed knock (knock_failed), and its
            # hits still on their way find no knock, yet lock nobody out.
            self.tracker.end(slot, "shutting-down")
            session.finish(hs.Error("shutting-down"))

    def close_doors(self):
        """
        At stop, after L{stop}: run every pending close now; the L{Deferred}
        fires once they have all finished (each within script-timeout).
        """
        return self.closes.close_now()
