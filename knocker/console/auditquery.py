"""
The audit page's question: which events match an address, a client, an
event name and a time range, newest first, one page at a time.  Pure:
lines in, a page of events out.  A line that is not what the daemon
writes (not a JSON object; a time, event, address or client that is not
text) is skipped, so a damaged log still has its other events found.
"""

from collections import deque

from knocker.console.auditfiles import parse_line

PER_PAGE = 50
#: The newest C{page * per_page} matches are kept while the log is read:
#: deeper pages cost more memory, and older events are better found by time.
MAX_PAGE = 1000


#: What a time filter may be: this, or a part of it from the left, any
#: digit standing for a 0 (as the log writes its times).
TIME_SHAPE = "0000-00-00T00:00:00.000000Z"


def time_filter(text: str) -> str | None:
    """
    C{text} as a time filter ("2026-12-01 16" as "2026-12-01T16": the
    console shows times with a space), or C{None} if it is none: the year
    at least, then what follows it in L{TIME_SHAPE}.
    """
    text = text.replace(" ", "T", 1)
    shape = "".join("0" if "0" <= c <= "9" else c for c in text)
    return text if len(text) >= 4 and TIME_SHAPE.startswith(shape) else None


def query(lines, ip: str = "", client: str = "", event: str = "", since: str = "",
          until: str = "", page: int = 1, per_page: int = PER_PAGE,
          source: str = "") -> tuple[list[dict], int]:
    """
    The C{page}th page (from 1) of matching events, newest first, and how
    many match in all.  An empty filter matches everything; times are ISO
    prefixes compared as text ("2026-12-01T13" is that hour on).  C{ip}
    matches an event's address or source; C{source}, the key C{ip} counts
    under (an IPv6 address's /64), matches a source too: a lockout of the
    /64 concerns each of its addresses.

    @raise ValueError: C{page} is not from 1 to C{MAX_PAGE}.
    """
    if not 1 <= page <= MAX_PAGE:
        raise ValueError(f"page must be from 1 to {MAX_PAGE}, not {page}")
    sources = {text for text in (ip, source) if text}
    needles = [text.encode() for text in sources]
    # Only the newest page * per_page matches are kept: a log of millions
    # of lines costs a page's worth of memory, not the log's.
    matches: deque = deque(maxlen=page * per_page)
    total = 0
    for line in lines:
        if needles and not any(needle in line for needle in needles):
            continue  # cheap test before parsing
        entry = parse_line(line)
        if entry is None:
            continue
        when = entry.get("time", "")
        if type(when) is not str or type(entry.get("event", "")) is not str:
            continue
        if not _text_or_none(entry.get("ip")) or not _text_or_none(entry.get("client")):
            continue
        if ip and entry.get("ip") != ip and entry.get("source") not in sources:
            continue
        if client and entry.get("client") != client:
            continue
        if event and entry.get("event") != event:
            continue
        if since and when < since:
            continue
        if until and when[:len(until)] > until:
            continue
        matches.append(entry)
        total += 1
    newest_first = list(reversed(matches))
    return newest_first[(page - 1) * per_page:page * per_page], total


def _text_or_none(value) -> bool:
    return value is None or type(value) is str
