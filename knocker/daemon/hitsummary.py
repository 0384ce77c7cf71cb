"""
The audit log's flood accounting: which hits get a line of their own, and
the counts of the others.

Every hit is accounted for, but a connect flood must not fill the disk
(each hit line is 120 to 370 bytes):

  - B{Budget.}  A token bucket lets C{rate} hit lines a second through one
    by one (it holds at most C{rate} tokens: a burst of one second's
    worth).  The check is a few float operations on the time the line
    carries anyway; a clock stepped back leaves no debt.
  - B{Summaries.}  A hit past the budget is counted in memory under its
    C{(ip, port)}: the count, the first and last time, and the count of each
    outcome.  C{SUMMARY_INTERVAL} (10) seconds after the first such hit, each
    key becomes one line::

      {"time":…,"event":"hits","ip":…,"port":…,"count":N,"first":…,"last":…,
       "outcomes":{"no-slot":…,"locked":…}}

    (source ports are not kept).  The timer is C{clock.callLater}, scheduled
    only when a hit is counted.
  - B{Bounded table.}  At most C{keys} (C{SUMMARY_KEYS}, 10,000) keys an
    interval; the hits of further keys go into one C{hits-overflow} line for
    the interval: C{count}, C{sources} (distinct addresses, counted up to
    C{OVERFLOW_SOURCES}; C{sources_capped} when that bound was reached),
    C{first}, C{last}, C{outcomes}.  So a flood costs at most C{rate} hit
    lines a second plus C{keys} + 1 lines every 10 seconds, and a fixed
    amount of memory.
  - B{Low space.}  While the owner says the disk is short of space
    (L{HitSummary.set_low}), there is no budget (every hit is counted) and
    the table bound is C{LOW_SPACE_KEYS} (100) keys an interval.
  - B{Slices.}  A full table is some 10,000 lines; written in one go they
    would hold up the reactor (and the knocks) for a noticeable time, so
    they are written C{DRAIN_SLICE} lines a turn (C{callLater(0)}), the
    hits of the next interval counted meanwhile in a fresh table.
  - Summaries whose write fails go back into the (bounded) table for the
    next interval, so a full disk does not lose the count of hits while
    the process lives.
"""

from collections import deque

from knocker.core.isotime import iso_time

SUMMARY_INTERVAL = 10.0
SUMMARY_KEYS = 10_000
LOW_SPACE_KEYS = 100
OVERFLOW_SOURCES = 10_000
#: Summary lines written a turn of the reactor, for each table.
DRAIN_SLICE = 1_000


class HitSummary:
    """
    The budget of hit lines and the table of the hits past it.  It writes
    nothing and reads no clock: the times are given to L{take} and L{add};
    C{clock} (an C{IReactorTime}) is used only for C{callLater}.

    The owner asks L{take} for each hit: C{True}, write the hit's line (and
    if that fails, L{add} it after all); C{False}, L{add} it.
    C{SUMMARY_INTERVAL} seconds after the first hit added, C{due} is called
    (no arguments); it is expected to call L{drain} with a function that
    writes one line, so the owner can do what it must first.  A hit is
    always in exactly one place: the table, the lines waiting to be
    written (L{drain}), or a line written.

    The same accounting bounds the central port's protocol errors: a table
    made with C{event="errors"} and C{key_field=None} is keyed by address
    alone (L{add} with C{port=None}), the reason as the outcome, and writes
    C{errors} and C{errors-overflow} lines.

    @param rate: hit lines a second (the config's C{audit-hit-rate}).
    @param now: the time the budget starts, full, from.
    @param keys: the bound on C{(ip, port)} keys an interval.
    @param event: the summary lines' event (C{event}, C{event-overflow}).
    @param key_field: the name of the key's second part in a summary line,
        or C{None} for a table keyed by address alone.
    """

    def __init__(self, clock, due, rate: float, now: float, keys: int = SUMMARY_KEYS,
                 event: str = "hits", key_field: str | None = "port"):
        self._event = event
        self._key_field = key_field
        self._clock = clock
        self._due = due
        self._rate = float(rate)
        self._burst = float(rate)      # 0 while space is low
        self._tokens = float(rate)
        self._refilled = now
        self._keys = keys
        self._bound = keys             # LOW_SPACE_KEYS while space is low
        # [first, last, outcomes] a key; the count is the sum of the outcomes
        self._table: dict[tuple[str, int], list] = {}
        self._overflow: list | None = None   # [first, last, outcomes, sources]
        self._call = None
        # Taken from the table, not yet written: (key, entry), the key None
        # for the overflow; written a slice a turn with _write.
        self._waiting: deque = deque()
        self._write = None
        self._slice_call = None

    def __len__(self) -> int:
        """
        The C{(ip, port)} keys in the table.
        """
        return len(self._table)

    @property
    def pending(self) -> bool:
        """
        Whether any hit is counted and not yet written.
        """
        return bool(self._table) or self._overflow is not None or bool(self._waiting)

    def take(self, now: float) -> bool:
        """
        Spend a token of the budget for a hit at C{now}, if there is one.
        """
        elapsed = now - self._refilled
        self._refilled = now
        # A clock stepped back neither gives debt nor takes the tokens held
        # (the first LOCKED after a step would otherwise go unwritten).
        tokens = self._tokens + elapsed * self._rate if elapsed > 0.0 else self._tokens
        if tokens > self._burst:
            tokens = self._burst
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    def add(self, ip: str, port: int, outcome: str, now: float) -> None:
        """
        Count a hit at C{now} in the table, or in the overflow once the
        table holds its bound of keys.
        """
        key = (ip, port)
        table = self._table
        entry = table.get(key)
        if entry is not None:
            entry[1] = now
            outcomes = entry[2]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1   # (the count is their sum)
            return
        if len(table) < self._bound:
            table[key] = [now, now, {outcome: 1}]
        elif self._overflow is None:
            self._overflow = [now, now, {outcome: 1}, {ip}]
        else:
            overflow = self._overflow
            overflow[1] = now
            outcomes = overflow[2]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if len(overflow[3]) < OVERFLOW_SOURCES:
                overflow[3].add(ip)
            return
        if self._call is None:
            self._call = self._clock.callLater(SUMMARY_INTERVAL, self._due)

    def set_low(self, low: bool) -> None:
        """
        Enter (C{True}) or leave the low-space mode: no budget and at most
        C{LOW_SPACE_KEYS} keys while in it; the whole budget on leaving.
        """
        self._bound = LOW_SPACE_KEYS if low else self._keys
        if low:
            self._burst = self._tokens = 0.0
        else:
            self._burst = self._tokens = self._rate

    def drain(self, write, at_once: bool = False) -> None:
        """
        Write the table with C{write(event, fields)}, which returns whether
        the line was written: one C{hits} line a key, then the
        C{hits-overflow} line (C{errors}, C{errors-overflow} for errors).
        The table is emptied at once (a new interval starts); its lines are
        written C{DRAIN_SLICE} now and as many each following turn, or all
        now if C{at_once} (at close).  After a failed write, what is left
        goes back into the table for the next interval, and the timer is
        scheduled again.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self._waiting.extend(self._table.items())
        if self._overflow is not None:
            self._waiting.append((None, self._overflow))
        self._table, self._overflow = {}, None
        self._write = write
        if at_once:
            self._cancel_slice()
            self._write_slice(None)
        elif self._slice_call is None:  # (else the running slices write these too)
            self._write_slice(DRAIN_SLICE)

    def _next_slice(self) -> None:
        self._slice_call = None
        self._write_slice(DRAIN_SLICE)

    def _write_slice(self, limit: int | None) -> None:
        """
        Write up to C{limit} (C{None}: all) waiting lines; schedule the
        next slice if some are left, or put them back if a write failed.
        """
        waiting, write = self._waiting, self._write
        written = 0
        while waiting and (limit is None or written < limit):
            key, entry = waiting[0]
            if not write(*self._line(key, entry)):
                self._put_back()
                return
            waiting.popleft()  # (only once written: always in one place)
            written += 1
        if waiting:
            self._slice_call = self._clock.callLater(0, self._next_slice)
        else:
            self._write = None

    def _line(self, key, entry) -> tuple[str, dict]:
        if key is None:
            first, last, outcomes, sources = entry
            fields = {"count": sum(outcomes.values()), "sources": len(sources),
                      "first": iso_time(first), "last": iso_time(last), "outcomes": outcomes}
            if len(sources) >= OVERFLOW_SOURCES:
                fields["sources_capped"] = True
            return self._event + "-overflow", fields
        first, last, outcomes = entry
        fields = {"ip": key[0]}
        if self._key_field is not None:
            fields[self._key_field] = key[1]
        fields.update(count=sum(outcomes.values()), first=iso_time(first),
                      last=iso_time(last), outcomes=outcomes)
        return self._event, fields

    def _put_back(self) -> None:
        """
        A write failed: the lines not written go back into the table, merged
        with what the new interval counted, within the table's bound (the
        rest into the overflow), for the next interval.
        """
        self._cancel_slice()
        waiting, self._waiting = self._waiting, deque()
        self._write = None
        table = self._table
        for key, entry in waiting:
            if key is None:
                self._merge_overflow(entry)
                continue
            current = table.get(key)
            if current is not None:
                _merge(current, entry)
            elif len(table) < self._bound:
                table[key] = entry
            else:
                self._merge_overflow([entry[0], entry[1], entry[2], {key[0]}])
        if self._call is None:
            self._call = self._clock.callLater(SUMMARY_INTERVAL, self._due)

    def _merge_overflow(self, older: list) -> None:
        overflow = self._overflow
        if overflow is None:
            self._overflow = older
            return
        _merge(overflow, older)
        sources = overflow[3]
        for ip in older[3]:
            if len(sources) >= OVERFLOW_SOURCES:
                break
            sources.add(ip)

    def _cancel_slice(self) -> None:
        if self._slice_call is not None:
            if self._slice_call.active():
                self._slice_call.cancel()
            self._slice_call = None

    def close(self) -> int:
        """
        Stop the timer and drop what is left; return the hits dropped.
        """
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        self._cancel_slice()
        entries = [*self._table.values(), *(entry for _, entry in self._waiting)]
        if self._overflow is not None:
            entries.append(self._overflow)
        lost = sum(sum(entry[2].values()) for entry in entries)
        self._table, self._overflow, self._waiting, self._write = {}, None, deque(), None
        return lost


def _merge(entry: list, other: list) -> None:
    """Count C{other}'s hits (C{[first, last, outcomes, ...]}) in C{entry} too."""
    entry[0] = min(entry[0], other[0])
    entry[1] = max(entry[1], other[1])
    outcomes = entry[2]
    for outcome, n in other[2].items():
        outcomes[outcome] = outcomes.get(outcome, 0) + n
