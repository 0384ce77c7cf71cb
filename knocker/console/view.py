"""
What the console's pages show, read from the running daemon: plain dicts,
no HTML (L{knocker.console.pages} draws them).

The state's part (the pool, the pending closes, the clients' counters) is
read by L{read_state} once a request, into a L{StateView}: at once from a
store that answers at once (SQLite), in the database threads from a
fleet's (L{knocker.daemon.fleet.ThreadedStore}), never on the reactor.

L{Activity} listens to the audit events for what the state does not keep:
the last open of each client, its recent knocks (for the run-out rate),
the reason of each lockout.  It knows what happened since the daemon
started; the pages say so.
"""

import re
from collections import defaultdict, deque

from attrs import frozen
from twisted.internet.defer import Deferred, succeed

from knocker.console.report import run_out
from knocker.core.isotime import iso_time
from knocker.core.tracker import GLOBAL

RATE_KNOCKS = 20


class Activity:
    """
    An audit listener: last opens, recent grants, lockout reasons.
    """

    def __init__(self, clock):
        self._clock = clock
        self.last_open: dict[str, str] = {}
        self.grants: dict[str, deque] = defaultdict(lambda: deque(maxlen=RATE_KNOCKS))
        self.lockout_reasons: dict[str, str] = {}

    def __call__(self, entry: dict) -> None:
        kind = entry["event"]
        if kind == "open":
            self.last_open[entry.get("client")] = entry["time"]
        elif kind == "grant":
            self.grants[entry.get("client")].append(self._clock.seconds())
        elif kind == "lockout":
            if len(self.lockout_reasons) > 10000:
                self.lockout_reasons.clear()
            self.lockout_reasons[entry.get("source")] = entry.get("reason", "")


@frozen
class StateView:
    """What the console shows of the state, read once for a request."""

    pool_size: int
    pending_closes: int
    clients: list
    invitations: tuple = ()  # (slot, client, expires, tries left) of those unused: no words


def snapshot(store) -> StateView:
    """The L{StateView} of C{store}, read here and now (blocking)."""
    invitations = [(i.slot, i.client, i.expires, i.tries - i.attempts)
                   for i in store.invitations() if not i.used and i.attempts < i.tries]
    return StateView(len(store.pool() or ()), len(store.pending_closes()), store.clients(),
                     invitations)


def read_state(store) -> Deferred:
    """
    A L{Deferred} firing with C{store}'s L{StateView}: read in the store's
    threads if it has them (C{store.read}), else at once.
    """
    read = getattr(store, "read", None)
    if read is not None:
        return read(snapshot)
    return succeed(snapshot(store))


def overview(server, state: StateView, started: str, clock, config) -> dict:
    tracker = server.tracker
    now = clock.seconds()
    data = {
        "started": started,
        "pool_size": state.pool_size,
        "central": config.central,
        "slots": [{"client": s.client, "index": s.index, "ip": s.ip,
                   "state": "running its action" if s.acting else f"{s.position} of {len(s.ports)} ports",
                   "left": max(0, round(s.deadline - now))} for s in tracker.slots()],
        "pending_closes": state.pending_closes,
    }
    data["lockouts"], data["lockouts_in_force"] = lockouts(server, clock, None, 0,
                                                          OVERVIEW_LOCKOUTS)
    return data


# A flood from many addresses may leave 100,000 lockouts in force: the pages
# show them a page at a time (drawing them all held the reactor for seconds).
LOCKOUTS_PER_PAGE = 100
OVERVIEW_LOCKOUTS = 20


def lockouts(server, clock, activity: Activity | None, first: int = 0,
             count: int = LOCKOUTS_PER_PAGE, find: str = "") -> tuple[list[dict], int]:
    """
    The lockouts in force, the whole server's first and then by source,
    from the C{first}th, C{count} of them, with those whose source holds
    C{find} alone if it is given; and how many there are in all.
    """
    now = clock.seconds()
    found = server.tracker.lockouts()
    keys = [key for key in found if find in key] if find else list(found)
    total = len(keys)
    if total > first + count:
        import heapq  # a page's worth, not a sort of every key

        keys = heapq.nsmallest(first + count, keys, key=_whole_server_first)
    else:
        keys.sort(key=_whole_server_first)
    rows = []
    for key in keys[first:first + count]:
        rows.append({
            "source": key,
            "scope": "everyone (the whole server)" if key == GLOBAL else "this source",
            "reason": (activity.lockout_reasons.get(key, "") if activity else "") or "-",
            "left": max(1, round(found[key] - now)),
        })
    return rows, total


def _whole_server_first(key: str) -> tuple[bool, str]:
    return key != GLOBAL, key


CLIENTS_PER_PAGE = 100


def clients(server, state: StateView, clock, activity: Activity, first: int = 0,
            count: int | None = None) -> list[dict]:
    """
    The clients from the C{first}th (by id), C{count} of them (all: C{None}).
    """
    now = clock.seconds()
    rows = []
    states = state.clients
    for state in states[first:None if count is None else first + count]:
        times = activity.grants.get(state.client, ())
        eta = None
        if len(times) >= 2:
            eta = run_out(max(0, state.left), len(times) - 1, times[-1] - times[0])
        elif len(times) == 1:
            eta = run_out(max(0, state.left), 1, now - times[0])
        rows.append({
            "client": state.client,
            "left": max(0, state.left),
            "knocks": state.knocks,
            "last_open": activity.last_open.get(state.client, "-"),
            "run_out": describe_seconds(eta),
            "revoked": server.is_revoked(state),
        })
    return rows


def invitations(state: StateView, now: float) -> list[dict]:
    """The invitations still open at C{now} (wall time), by slot, without their words."""
    return [{"slot": slot, "client": client, "expires": minute(expires),
             "left": describe_seconds(expires - now).removeprefix("in "),
             "tries_left": tries}
            for slot, client, expires, tries in sorted(state.invitations) if expires > now]


def minute(seconds: float) -> str:
    """POSIX time as a person reads it: C{2026-12-01 16:19} (UTC)."""
    return iso_time(seconds)[:16].replace("T", " ")


def enrol_endpoint(central: str, host: str, bound: int | None = None) -> str:
    """
    The C{--server} a client gives C{knocker enroll} to reach C{central}
    (this daemon's server endpoint): C{tcp:HOST:PORT}, C{tls:} for an
    C{ssl:} one; the port is C{bound} (where it listens) if known; the host
    is C{central}'s interface when it names one, else C{host}, unless that
    is only C{localhost}: then C{GATEWAY}, for the operator to fill in.
    A C{tls:} one ends in C{trustRoots=CERTS}: the client checks the
    server's certificate against the directory it puts there (without it,
    only against the CAs its system trusts, which a daemon's own
    certificate is rarely signed by).
    """
    kind, *fields = re.split(r"(?<!\\):", central)  # "\:" is a colon inside a field
    port = next((f for f in fields if f.isdigit()), "7000")
    named = dict(f.partition("=")[::2] for f in fields if "=" in f)
    port = str(bound) if bound else named.get("port", port)
    interface = named.get("interface", "")
    interface = interface.replace("\\:", ":")
    if interface and interface not in ("0.0.0.0", "::"):
        host = interface
    elif host == "localhost" or host.startswith("localhost."):
        # This machine's own name says nothing to a client elsewhere.
        host = "GATEWAY"
    if ":" in host:
        host = host.replace(":", "\\:")  # an IPv6 address, as Twisted's endpoints write it
    if kind == "ssl":
        return f"tls:{host}:{port}:trustRoots=CERTS"
    return f"tcp:{host}:{port}"


def describe_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "no knock since the daemon started"
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"in about {seconds / size:.0f} {unit}"
    return f"in about {seconds:.0f} seconds"
