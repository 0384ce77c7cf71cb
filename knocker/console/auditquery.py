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


def query(lines, ip: str = "", client: str = "", event: str = "", since: str = "",
          until: str = "", page: int = 1, per_page: int = PER_PAGE) -> tuple[list[dict], int]:
    """
    The C{page}th page (from 1) of matching events, newest first, and how
    many match in all.  An empty filter matches everything; times are ISO
    prefixes compared as text ("2026-12-01T13" is that hour on).

    @raise ValueError: C{page} is not from 1 to C{MAX_PAGE}.
    """
    if not 1 <= page <= MAX_PAGE:
        raise ValueError(f"page must be from 1 to {MAX_PAGE}, not {page}")
    ip_bytes = ip.encode() if ip else None
    # Only the newest page * per_page matches are kept: a log of millions
    # of lines costs a page's worth of memory, not the log's.
    matches: deque = deque(maxlen=page * per_page)
    total = 0
    for line in lines:
        if ip_bytes is not None and ip_bytes not in line:
            continue  # cheap test before parsing
        entry = parse_line(line)
        if entry is None:
            continue
        when = entry.get("time", "")
        if type(when) is not str or type(entry.get("event", "")) is not str:
            continue
        if not _text_or_none(entry.get("ip")) or not _text_or_none(entry.get("client")):
            continue
        if ip and entry.get("ip") != ip and entry.get("source") != ip:
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
