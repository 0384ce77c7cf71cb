"""
The figures of docs/spec.md section 12 from audit-log events: opens,
failures by reason, lockouts, denials and hits per hour or per day, the
top sources and clients.  Pure: lines or events in, a L{Report} out; the
reports page and C{knocker report} both call L{summarise}.

Events are read as the audit log writes them: a C{hit} line is one hit, a
C{hits} or C{hits-overflow} summary counts C{count} hits, and the reasons
C{lockout} and C{denied} of an C{errors} or C{errors-overflow} summary
count that many lockouts and denials, so the totals match what the daemon
saw even through a flood.
A line that is not what the daemon writes (not JSON, not an object, a
field of the wrong type) is skipped: the log may be damaged, or written
to by someone else, and a report must still come out.
"""

import heapq
from collections import Counter

from knocker.console.auditfiles import parse_line

#: Bucket key length in an ISO time "2026-12-01T13:44:26.123456Z".
BUCKETS = {"hour": 13, "day": 10}

FIGURES = ("opens", "failures", "lockouts", "denials", "hits")

#: A hit line from L{knocker.daemon.audit.AuditLog.hit}: {"time":"<27 chars>","event":"hit","ip":"
_HIT_AT = 9 + 27
_HIT = b'","event":"hit","ip":"'
_IP_AT = _HIT_AT + len(_HIT)


#: How many sources (and clients) a report keeps counts for, at least; past
#: twice as many it keeps the heaviest (see L{TopCounts}).
TOP_KEPT = 10_000


class TopCounts:
    """
    Events per source (or per client) in bounded memory.

    Outsiders choose the addresses hits come from (one host on an IPv6 /64
    can use a fresh one for every connection) and the client names HELLO
    claims, so counting each exactly would let them fill the daemon's
    memory through the reports page.  This is the Misra-Gries summary kept
    between C{kept} and twice as many keys: past that, every count loses
    the (C{kept}+1)th largest count and the keys left at zero go.  Each
    such cut removes at least C{kept}+1 times what it adds to C{short_by},
    so a count is short by at most C{short_by} <= W / (C{kept}+1), where
    W is the weight added in all (the sum of the C{n}s: a C{hits} line
    adds its count, not one), and any key with more than C{short_by} is
    still counted.  Exact (and C{short_by} 0) while there are no more
    than twice C{kept} keys.
    """

    def __init__(self, kept: int = TOP_KEPT):
        self.kept = kept
        self.counts: dict = {}
        self.short_by = 0

    def add(self, key, n: int = 1) -> None:
        counts = self.counts
        counts[key] = counts.get(key, 0) + n
        if len(counts) > 2 * self.kept:
            self._cut()

    def _cut(self) -> None:
        counts = self.counts
        cut = heapq.nlargest(self.kept + 1, counts.values())[-1]
        self.short_by += cut
        left = {key: n - cut for key, n in counts.items() if n > cut}
        counts.clear()  # the same dict: summarise holds it
        counts.update(left)

    def get(self, key, default: int = 0) -> int:
        return self.counts.get(key, default)

    def most_common(self, top: int) -> list:
        return heapq.nlargest(top, self.counts.items(), key=lambda item: item[1])


class Row:
    """
    The figures of one hour or day.
    """

    __slots__ = ("opens", "failures", "lockouts", "denials", "hits", "reasons")

    def __init__(self):
        self.opens = self.failures = self.lockouts = self.denials = self.hits = 0
        self.reasons: Counter = Counter()

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in FIGURES} | {
            "failures_by_reason": dict(self.reasons)}


class Report:
    """
    Per-bucket L{Row}s (keys sort in time order), the C{sources} and
    C{clients} seen, and the first and last event time.
    """

    def __init__(self, bucket: str = "hour"):
        self.bucket = bucket
        self.rows: dict[str, Row] = {}
        self.sources = TopCounts()
        self.clients = TopCounts()
        self.grants: Counter = Counter()  # clients that were granted: registered ones
        self.first: str | None = None
        self.last: str | None = None
        self.events = 0
        self.knocks_left: list[dict] = []
        self.problems: list[str] = []  # what could not be read (damaged files)

    def add_clients(self, states, seconds: float) -> None:
        """
        Each client's knocks left (C{states}: dicts with C{client}, C{left},
        C{knocks}, as C{knocker status} gives them) and when it runs out at
        the rate of its grants in this report, which spans C{seconds}.
        """
        for state in states:
            client, left = state["client"], max(0, state["left"])
            eta = run_out(left, self.grants.get(client, 0), seconds)
            self.knocks_left.append({
                "client": client, "left": left, "knocks": state["knocks"],
                "knocks_used_in_report": self.grants.get(client, 0),
                "runs_out_in_seconds": None if eta is None else round(eta),
            })

    def totals(self) -> Row:
        total = Row()
        for row in self.rows.values():
            for name in FIGURES:
                setattr(total, name, getattr(total, name) + getattr(row, name))
            total.reasons.update(row.reasons)
        return total

    def as_dict(self, top: int = 10) -> dict:
        return {
            "bucket": self.bucket, "first": self.first, "last": self.last,
            "events": self.events,
            "totals": self.totals().as_dict(),
            "rows": [{"start": start, **row.as_dict()} for start, row in sorted(self.rows.items())],
            "top_sources": [{"source": ip, "events": n} for ip, n in self.sources.most_common(top)],
            "top_clients": [{"client": c, "events": n} for c, n in self.clients.most_common(top)],
            # How many events each top count may be missing (0: exact).
            "top_sources_short_by": self.sources.short_by,
            "top_clients_short_by": self.clients.short_by,
            "knocks_left": self.knocks_left,
            # Files, or parts of them, left out: the figures may be short.
            "problems": self.problems,
        }


def summarise(lines, bucket: str = "hour", since: str | None = None) -> Report:
    """
    A L{Report} of C{lines} (audit-log lines as bytes, or events as dicts), counting only events at or after C{since} (an ISO time string,
    compared as text, which is time order for the log's one format).
    Lines that are not the daemon's (a torn last line, damage) are
    skipped.  If C{lines} has C{problems} (L{knocker.console.auditfiles.
    audit_lines}: files it could not read whole), the report has them too.
    """
    width = BUCKETS[bucket]
    report = Report(bucket)
    rows, grants = report.rows, report.grants
    count_source, count_client = report.sources.add, report.clients.add
    first = last = None
    count = 0
    for line in lines:
        hit_from = None
        if isinstance(line, dict):
            event = line
        elif line.startswith(_HIT, _HIT_AT) and line[:9] == b'{"time":"':
            # A hit line as the daemon writes it (most of a scanned log):
            # its time and address by position, without a JSON parse.
            end = line.find(b'"', _IP_AT)
            if end < 0:
                continue  # torn (a crash, a full disk, a line being written)
            when = line[9:_HIT_AT].decode("ascii", "replace")
            hit_from = line[_IP_AT:end].decode("ascii", "replace")
        else:
            event = parse_line(line)
            if event is None:
                continue
        if hit_from is None:
            when = event.get("time")
            kind = event.get("event")
            ip = event.get("ip")
            client = event.get("client")
            if not (ip is None or type(ip) is str) or not (client is None or type(client) is str):
                continue
            if kind == "hits" or kind == "hits-overflow":
                n = event.get("count", 0)
                if type(n) is not int or n < 0:
                    continue
            elif kind == "errors" or kind == "errors-overflow":
                outcomes = event.get("outcomes")
                if not isinstance(outcomes, dict):
                    outcomes = {}
                n, denied = outcomes.get("lockout", 0), outcomes.get("denied", 0)
                if not (type(n) is int and n >= 0 and type(denied) is int and denied >= 0):
                    continue
        if not isinstance(when, str) or (since is not None and when < since):
            continue
        count += 1
        if first is None:
            first = when
        last = when
        key = when[:width]
        row = rows.get(key)
        if row is None:
            row = rows[key] = Row()
        if hit_from is not None:
            row.hits += 1
            count_source(hit_from)
            continue
        if kind == "hit":
            row.hits += 1
            if ip is not None:
                count_source(ip)
            continue
        if kind == "hits" or kind == "hits-overflow":
            row.hits += n
            if ip is not None:
                count_source(ip, n)
            continue
        if kind == "errors" or kind == "errors-overflow":
            # Source lockouts and denials past the audit log's budget
            # (protocol errors and LOCKED answers, counted there too, are
            # not figures here).
            if n or denied:
                row.lockouts += n
                row.denials += denied
                if ip is not None:
                    count_source(ip, n + denied)
            continue
        if kind == "open":
            row.opens += 1
        elif kind == "fail":
            row.failures += 1
            reason = event.get("reason", "?")
            row.reasons[reason if type(reason) is str else "?"] += 1
        elif kind == "lockout":
            row.lockouts += 1
        elif kind == "denied":
            row.denials += 1
        elif kind == "grant":
            grants[client] += 1
        else:
            continue
        if ip is not None:
            count_source(ip)
        if client is not None:
            count_client(client)
    report.first, report.last, report.events = first, last, count
    report.problems = list(getattr(lines, "problems", ()))
    return report


def run_out(left: int, used: int, seconds: float) -> float | None:
    """
    Seconds until a client with C{left} knocks runs out at the rate of
    C{used} knocks in C{seconds}, or C{None} when it used none.
    """
    if used <= 0 or seconds <= 0:
        return None
    return left * seconds / used


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

#: Ten years: longer than any audit log is kept, and "now minus it" is
#: always a time (a huge one is not).
MAX_DURATION = 3650 * 86400


def parse_duration(text: str) -> float:
    """
    C{30m}, C{24h}, C{7d}, C{2w} (or plain seconds) in seconds, at most
    C{MAX_DURATION}.

    @raise ValueError: anything else.
    """
    text = text.strip()
    unit = _UNITS.get(text[-1:], None)
    number = text[:-1] if unit else text
    # (few digits first: int() is slow on thousands and refuses more)
    if number.isdigit() and number.isascii() and len(number) <= 12:
        seconds = int(number) * (unit or 1)
        if seconds <= MAX_DURATION:
            return seconds
    raise ValueError(f"{text[:20]!r} is not a duration such as 30m, 24h or 7d, "
                     f"of at most 3650d (ten years)")
