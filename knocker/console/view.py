"""
What the console's pages show, read from the running daemon: plain dicts,
no HTML (L{knocker.console.pages} draws them).

L{Activity} listens to the audit events for what the state does not keep:
the last open of each client, its recent knocks (for the run-out rate),
the reason of each lockout.  It knows what happened since the daemon
started; the pages say so.
"""

from collections import defaultdict, deque

from knocker.console.report import run_out
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


def overview(server, started: str, clock, config) -> dict:
    tracker = server.tracker
    now = clock.seconds()
    return {
        "started": started,
        "pool_size": len(server.store.pool() or ()),
        "central": config.central,
        "slots": [{"client": s.client, "index": s.index, "ip": s.ip,
                   "state": "running its action" if s.acting else f"{s.position} of {len(s.ports)} ports",
                   "left": max(0, round(s.deadline - now))} for s in tracker.slots()],
        "lockouts": lockouts(server, clock, None),
        "pending_closes": len(server.store.pending_closes()),
    }


def lockouts(server, clock, activity: Activity | None) -> list[dict]:
    now = clock.seconds()
    rows = []
    for key, until in sorted(server.tracker.lockouts().items()):
        rows.append({
            "source": key,
            "scope": "everyone (the whole server)" if key == GLOBAL else "this source",
            "reason": (activity.lockout_reasons.get(key, "") if activity else "") or "-",
            "left": max(1, round(until - now)),
        })
    return rows


CLIENTS_PER_PAGE = 100


def clients(server, clock, activity: Activity, first: int = 0,
            count: int | None = None) -> list[dict]:
    """
    The clients from the C{first}th (by id), C{count} of them (all: C{None}).
    """
    now = clock.seconds()
    rows = []
    states = server.store.clients()
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


def describe_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "no knock since the daemon started"
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"in about {seconds / size:.0f} {unit}"
    return f"in about {seconds:.0f} seconds"
