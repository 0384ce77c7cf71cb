"""
The server's side of an enrolment (docs/protocol.md, "Enrolment"), one per
central connection that opens with C{KNOCKER/1 ENROLL}: lines in, lines
out, no I/O.  Its collaborators are given: the state (L{IStore}), a reader
of the server's copy of a client's portknock file, the audit log, and the
coordinator's tracker (a wrong code is a failed attempt of its source,
exactly like a DENIED).
"""

from knocker.core import MAGIC, Record
from knocker.core.handshake import MAX_LINE
from knocker.enrol import keys as k
from knocker.state.interface import then

TRIES = 3
"""Wrong codes allowed on one invitation before it is void."""

CHUNK = 400
"""Base64 characters of the sealed file per DATA line (lines stay < 512)."""

REFUSALS = ("unknown", "used", "expired", "void", "wrong-code")


class Send(Record):
    """
    Write C{line}; close after it if C{close}; C{fault} names a protocol
    error (logged as an audit C{error}, not a failed attempt).
    """

    __slots__ = ("line", "close", "fault")
    _defaults = {"close": False, "fault": None}


def file_associated(keys: k.Keys) -> bytes:
    """What the sealed file's AEAD binds besides the file: this exchange."""
    return b"knocker/1|enrol-file|" + keys.transcript


class EnrolServer:
    """
    One enrolment on the central port.  C{enrolling} is the set of sources
    (L{knocker.core.tracker.Tracker.source_of}) with an enrolment under
    way, shared by the daemon's exchanges: a source gets one at a time.
    Else one address could send ENROLL on several connections at once,
    each passing the lockout check before any wrong guess was counted,
    and spend every try of an invitation (voiding it) in one round trip.
    """

    def __init__(self, ip: str, store, read_file, audit, tracker, now,
                 enrolling: set[str] | None = None):
        self.ip = ip
        self._enrolling = set() if enrolling is None else enrolling
        self._source = None  # ours in enrolling, while the exchange lasts
        self._store = store
        self._read_file = read_file
        self._audit = audit
        self._tracker = tracker
        self._now = now
        self._slot = None
        self._client = None
        self._keys = None
        self._counted = None
        self._confirmed = False
        self.done = False
        self.delivered = False  # the file went out (ENROLLED and its DATA)

    def receive(self, line: bytes) -> list[Send]:
        if self.done:
            return []
        words = words_of(line)
        if words:
            if self._keys is None and len(words) == 4 and words[:2] == [MAGIC, "ENROLL"]:
                return self._enrol(words[2], words[3])
            if self._keys is not None and len(words) == 2 and words[0] == "CONFIRM":
                return self._confirm(words[1])
        if self._keys is not None and not self._confirmed:
            # Anything but CONFIRM after ENROLLING, well formed or not: a
            # spent guess (the exchange ends here, so no hang-up counts it).
            self._dropped()
        return self._end(b"ERROR out-of-turn" if words else b"ERROR malformed",
                         fault="out-of-turn" if words else "malformed")

    def _enrol(self, slot_text: str, message_text: str) -> list[Send]:
        if not (slot_text.isdigit() and len(slot_text) <= 6 and slot_text[0] != "0"):
            return self._end(b"ERROR malformed", fault="malformed")
        try:
            theirs = k.unb64(message_text)
        except k.VerifyError:
            return self._end(b"ERROR malformed", fault="malformed")
        slot = self._slot = int(slot_text)
        refusal = self._tracker.refusal(self.ip)
        if refusal is not None and refusal.kind == "locked":
            self._audit.locked(ip=self.ip, slot=slot, retry_after=refusal.retry_after)
            return self._end(b"LOCKED %d" % refusal.retry_after)
        source = self._tracker.source_of(self.ip)
        if source in self._enrolling:
            return self._end(b"ERROR busy", fault="busy")  # no try taken
        self._enrolling.add(source)
        self._source = source
        # The state may answer later (a fleet's database): each step goes on
        # when it has.
        return then(self._store.invitation(slot), self._found, slot, theirs)

    def _found(self, found, slot: int, theirs: bytes) -> list[Send]:
        if found is None:
            self._tracker.failed_attempt(self.ip, "denied")
            return self._refuse("unknown")
        self._client = found.client
        state = found.state(self._now())
        if state != "open":
            return self._refuse(state)
        if self.done:
            return []  # ended while the state answered (a line out of turn): no try taken
        return then(self._store.invitation_attempt(slot, self._now()), self._attempt,
                    slot, theirs)

    def _attempt(self, counted, slot: int, theirs: bytes) -> list[Send]:
        # The store says whether this call took a try, in the same step as
        # it took it: what was read before may be stale (parallel attempts
        # on other connections or gateways read it too).
        if counted is None:
            return self._refuse("void")  # parallel attempts took the last try
        self._client = counted.client
        if self.done:
            # Ended while the try was being taken (a line out of turn, a
            # hang-up): the try is spent all the same, so it counts.
            self._counted = counted
            self._dropped()
            return []
        pake = k.Pake(slot, counted.code)
        try:
            self._keys = pake.finish(theirs, pake.message, theirs)
        except k.VerifyError:
            return self._wrong(counted)
        self._counted = counted
        return [Send(b"ENROLLING " + k.b64(pake.message).encode("ascii") + b"\n")]

    def connection_lost(self) -> None:
        """
        The connection ended: the client hung up, or the central port's
        timeout closed it.  After ENROLLING and before CONFIRM, that is a
        try spent on a guess the server never saw checked (the client may
        have tested it against the server's message offline): a failed
        attempt of its source, as a wrong code is.
        """
        if not self.done and self._keys is not None and not self._confirmed:
            self._dropped()
        self._ended()

    def _ended(self) -> None:
        """No more of this exchange: its source may enrol again."""
        self.done = True
        if self._source is not None:
            self._enrolling.discard(self._source)
            self._source = None

    def _dropped(self) -> None:
        self._tracker.failed_attempt(self.ip, "denied")
        self._audit.record("enrol", ip=self.ip, slot=self._slot, client=self._client,
                           outcome="dropped", attempts=self._counted.attempts)

    def _confirm(self, mac: str) -> list[Send]:
        self._confirmed = True
        if not self._keys.check_client(mac):
            return self._wrong(self._counted)
        # The file is read and sealed first, the invitation used after, the
        # lines sent last: a file that cannot be read leaves the invitation
        # as it was (no used code without its file).
        try:
            text = self._read_file(self._client)
        except Exception as error:
            return self._file_error(error)
        if hasattr(text, "addCallbacks"):
            return text.addCallbacks(self._sealed, lambda failure: self._file_error(failure.value))
        return self._sealed(text)

    def _sealed(self, text: str) -> list[Send]:
        if self.done:
            return []  # ended while the file was read: the invitation stays unused
        sealed = k.b64(k.seal(self._keys.file_key, text.encode("utf-8"),
                              file_associated(self._keys)))
        if len(sealed) > k.MAX_DATA_LINES * CHUNK:
            return self._file_error(ValueError(f"the file is larger than {k.MAX_DATA_LINES} "
                                               f"DATA lines: no client would take it"))
        # (by its code too: the slot may hold a new invitation of the same
        # client by now, made after this one expired)
        return then(self._store.use_invitation(self._slot, self._client, self._counted.code,
                                               self._now()),
                    self._used, sealed)

    def _used(self, used: bool, sealed: str) -> list[Send]:
        if used and self.done:
            # The client left while the state marked it used (a fleet's
            # database answers later): spent, and nothing went out.
            self._audit.record("enrol", ip=self.ip, slot=self._slot, client=self._client,
                               outcome="lost")
            return []
        if used:
            return self._deliver(sealed)
        # Used by a parallel attempt, or expired since the try was taken.
        return then(self._store.invitation(self._slot), self._not_used)

    def _not_used(self, found) -> list[Send]:
        ours = found is not None and found.client == self._client and not found.used
        if ours and found.cancelled:
            return self._refuse("void")  # the client's file was replaced or revoked meanwhile
        return self._refuse("expired" if ours and self._now() >= found.expires else "used")

    def _file_error(self, error) -> list[Send]:
        self._audit.record("error", ip=self.ip, client=self._client, reason="client-file",
                           detail=str(error))
        return self._end(b"ERROR server-error")

    def _deliver(self, sealed: str) -> list[Send]:
        chunks = [sealed[i:i + CHUNK] for i in range(0, len(sealed), CHUNK)]
        self._audit.record("enrol", ip=self.ip, slot=self._slot, client=self._client,
                           outcome="ok")
        out = [Send(f"ENROLLED {self._keys.server_mac()} {len(chunks)}\n".encode("ascii"))]
        out += [Send(f"DATA {chunk}\n".encode("ascii")) for chunk in chunks]
        out[-1] = out[-1].replace(close=True)
        self.delivered = True
        self._ended()
        return out

    def _wrong(self, counted) -> list[Send]:
        self._tracker.failed_attempt(self.ip, "denied")
        if counted.attempts >= counted.tries:
            self._audit.record("enrol", ip=self.ip, slot=self._slot, client=self._client,
                               outcome="void", attempts=counted.attempts)
        return self._refuse("wrong-code", attempts=counted.attempts)

    def _refuse(self, reason: str, **fields) -> list[Send]:
        fields.update(ip=self.ip, slot=self._slot, client=self._client, outcome=reason)
        if reason == "wrong-code":
            # a try of the invitation's, bounded by its tries: always its line
            self._audit.record("enrol", **fields)
        else:
            # asked for as often as anyone likes: within the log's budget
            self._audit.enrol_refused(**fields)
        return self._end(f"REFUSED {reason}".encode("ascii"))

    def _end(self, line: bytes, fault: str | None = None) -> list[Send]:
        self._ended()
        return [Send(line + b"\n", close=True, fault=fault)]


def words_of(line: bytes) -> list[str] | None:
    if len(line) > MAX_LINE:
        return None
    try:
        text = line.decode("ascii").removesuffix("\r")
    except UnicodeDecodeError:
        return None
    words = text.split(" ")
    if not text.isprintable() or "" in words:
        return None
    return words
