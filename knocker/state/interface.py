"""
What the daemon and the commands need of the durable state (docs/spec.md
sections 2 and 7), whatever holds it, and the values that cross it.

Every change is durable when the call returns, so the caller may act on
it: above all, L{IStore.burn} has made the number unusable before anyone
sends GRANT.
"""

import hashlib
import secrets

from attrs import frozen
from zope.interface import Interface

#: Most lockouts the state keeps (those ending soonest go first), as the
#: tracker remembers at most knocker.core.tracker.MAX_SOURCES.
MAX_LOCKOUT_ROWS = 100_000
#: The key of the whole server's lockout (knocker.core.tracker.GLOBAL): one
#: row, never pruned to make room for sources.
WHOLE_SERVER = "*"


class StateError(Exception):
    """
    The state cannot be used; the message says why.
    """


def secret_id(secret: bytes) -> str:
    """
    Names a secret without revealing it: which portknock file a counter
    belongs to, so a regenerated file is noticed by a running daemon.
    """
    return hashlib.sha256(b"knocker secret id|" + secret).hexdigest()[:32]


def then(value, callback, *args):
    """
    C{callback(value, *args)} now, or when C{value} fires if it is a
    L{Deferred} (a store that answers later, L{knocker.daemon.fleet}):
    so one piece of code serves SQLite's answers and a fleet's.  Returns
    what C{callback} returns, or that Deferred.
    """
    if hasattr(value, "addCallback"):
        return value.addCallback(callback, *args)
    return callback(value, *args)


SLOTS = range(100, 1000)
"""Where a new invitation's number is drawn from while some are free."""


def free_slot(held) -> int:
    """
    A number for a new invitation, not in C{held} (the numbers of every
    invitation not expired yet, open, used, void or cancelled alike: their
    codes are known to someone, and a try with one must not land on a new
    invitation): drawn at random among the free three-digit ones (more
    digits only once 900 are held), so that wrong codes sent to guessed
    numbers rarely reach an invitation at all.  With numbers counting from
    1, three wrong tries at slot 1 from three addresses voided the
    invitation just made.
    """
    free = [n for n in SLOTS if n not in held]
    if free:
        return secrets.choice(free)
    while True:
        n = 1000 + secrets.randbelow(999_000)  # up to the codes' largest, 999,999
        if n not in held:
            return n


@frozen
class ClientState:
    client: str
    next_index: int
    knocks: int
    secret_id: str

    @property
    def left(self) -> int:
        return self.knocks - self.next_index + 1


@frozen
class PendingClose:
    id: int
    due: float
    ip: str
    client: str
    index: int


@frozen
class Invitation:
    """
    An invitation to enrol (docs/spec.md section 10): C{code} is the secret
    part of its code (the words); C{tries} attempts are allowed, C{attempts}
    were started; C{used} once a client enrolled with it.  A I{cancelled}
    invitation (its client's file replaced or revoked) has no tries and no
    attempts: it is void, and no exchange begun before may use it.
    """

    slot: int
    client: str
    code: str
    expires: float
    tries: int
    attempts: int
    used: bool

    @property
    def cancelled(self) -> bool:
        return self.tries == 0

    def state(self, now: float) -> str:
        """
        C{open}, C{used}, C{void} (every try taken, or cancelled) or
        C{expired} at C{now}.
        """
        if self.used:
            return "used"
        if self.attempts >= self.tries:
            return "void"
        if now >= self.expires:
            return "expired"
        return "open"


class IStore(Interface):
    """
    The server's state: the pool, each client's next knock number, pending
    close actions and lockouts that outlive a restart.
    """

    def close():
        """Let go of the state (the daemon is stopping)."""

    def pool():
        """The pool as a tuple of ports, or C{None} before it is drawn."""

    def set_pool(ports):
        """Keep the pool, once, for good; a second call raises L{StateError}."""

    def register(client, knocks, secret):
        """
        Start C{client} at knock 1 of C{knocks} of the file with C{secret},
        and cancel every invitation of C{client} not used yet: an earlier
        code must not fetch the new file.
        """

    def cancel_offers(client):
        """
        Cancel every invitation of C{client} not used yet, and forget its
        pending renewal: done before a replacing file's server copy is
        written (then L{register}), so that nothing made for the file being
        replaced can hand out the new one, nor put a renewal in its place.
        """

    def client(client):
        """C{client}'s L{ClientState}, or C{None}."""

    def clients():
        """Every L{ClientState}, by id."""

    def burn(client, secret_id=None):
        """
        Take C{client}'s next knock number for good and return it, or
        C{None} when every number is used (or, given C{secret_id}, when the
        counter belongs to another secret now); durable before it returns.
        """

    def add_close(due, ip, client, index):
        """Record a pending close; return its id."""

    def remove_close(close_id):
        """Forget a close that has run."""

    def pending_closes():
        """Every L{PendingClose}, soonest first."""

    def set_lockout(key, until):
        """Keep a lockout of C{key} until C{until} (wall time)."""

    def save_lockouts(lockouts, steps=None):
        """
        Keep every C{{key: until}} of C{lockouts}; C{steps} (C{{key:
        step}}), the escalation steps, may be kept too (a fleet's database
        does, for the other gateways).
        """

    def lockouts(now):
        """The lockouts still in force at C{now}: C{{key: until}}."""

    def prune_lockouts(now, keep=MAX_LOCKOUT_ROWS):
        """
        Forget the lockouts ended by C{now}, and past C{keep} rows those
        ending soonest, but never the whole server's (L{WHOLE_SERVER}): a
        flood from many addresses, each saved, cannot grow the state
        without bound, nor push that one out.
        """

    # Invitations (docs/spec.md section 10).  Kept apart from the rest:
    # every backend implements these five.

    def add_invitation(client, code, expires, tries, now):
        """
        Keep an invitation for C{client} with secret C{code} until
        C{expires} (wall time), allowing C{tries} attempts; return its
        slot: L{free_slot} of the numbers held at C{now} by invitations
        still open, or cancelled and not expired (an old code is told
        C{void}, not tried against the new invitation).
        """

    def invitation(slot):
        """The L{Invitation} in C{slot}, or C{None}."""

    def invitations():
        """Every L{Invitation}, by slot."""

    def invitation_attempt(slot, now):
        """
        Take one of the tries of the invitation in C{slot} if it is open at
        C{now} (not used, a try left, not expired), in one step that
        parallel callers cannot interleave.  Return it as this call left it
        if I{this call} took a try, else C{None} (no invitation, or not
        open: whoever gets C{None} must not go on).  Durable before it
        returns: parallel or crashed attempts all count.
        """

    def use_invitation(slot, client, code, now):
        """
        Mark the invitation in C{slot} used, if it is not already, is
        C{client}'s and made with C{code} (the slot may have been given
        again meanwhile, even to the same client: the exchange that took
        a try of the old one must not use the new one), is not cancelled
        and has not expired at C{now}, and say whether this call did: only
        one caller ever gets C{True}.
        """

    # Renewal (docs/spec.md section 10): at most one pending generation
    # per client, which replaces the current one once the client proves it
    # holds it.  register() forgets a pending generation.

    def set_pending(client, knocks, secret, current_id=None):
        """
        Keep a pending generation of C{client}: C{knocks} knocks of the file
        with C{secret}, numbered from 1 once it is current.  With
        C{current_id}, only while C{client}'s current file is that one (a
        file drawn for a generation replaced meanwhile is not kept).
        Returns whether it was kept.
        """

    def pending(client):
        """C{client}'s pending generation as a L{ClientState}, or C{None}."""

    def promote(client, wanted_id):
        """
        Make C{client}'s pending generation current if its secret id is
        C{wanted_id}; say whether it did (once, in one transaction).  Never
        while C{client}'s current file is revoked: the pending generation
        is forgotten instead (the renewed file must not outlive it).
        """

    # The operator's changes (the console, knocker unlock and revoke).

    def lift_lockouts(key=None):
        """Forget the lockout of C{key} (every lockout with C{None}), for good."""

    def revoke(client):
        """
        Revoke C{client}'s current file: keep its C{secret_id}, for good (a
        new file, with a new secret, is not revoked).  Its pending
        generation is forgotten and its unused invitations cancelled.
        """

    def revoked():
        """C{{client: secret_id}} of every revoked file."""
