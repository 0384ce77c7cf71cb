"""
Live events: the daemon's audit events as they are written, for the
overview page (server-sent events) and the metrics.

L{ObservedAudit} stands in front of the audit log: every event goes to the
log first, then to the L{EventBus} and the metrics.  A hit only bumps a
counter (the pool ports' hot path); the live page shows the other events.

A browser that reads slowly must never slow the daemon: each
L{EventStream} keeps at most C{limit} events while its connection is
backed up (Twisted pauses it as a producer) and is dropped past that.
A stream lasts no longer than the session that opened it: it ends when
that session logs out (L{EventBus.end_session}) or expires.
"""

from collections import deque

from knocker.core.isotime import iso_time

RECENT = 50
STREAM_LIMIT = 100
MAX_SUBSCRIBERS = 20
LIVE_RATE = 50


class EventBus:
    """
    The last C{RECENT} events, and the live subscribers.

    At most C{rate} events a second go live (C{clock}'s seconds): in a
    flood from many sources (a lockout event each) the rest are only
    counted, and the next second's first event is preceded by a
    C{live-skipped} event saying how many; the audit log and the metrics
    still have every one.
    """

    def __init__(self, clock=None, recent: int = RECENT, rate: int = LIVE_RATE):
        self.recent: deque = deque(maxlen=recent)
        self.subscribers: set = set()
        self.dropped = 0
        self._clock = clock
        self._rate = rate
        self._second = None
        self._sent = 0
        self.skipped = 0

    def publish(self, entry: dict) -> None:
        if self._clock is not None:
            second = int(self._clock.seconds())
            if second != self._second:
                self._second, self._sent = second, 0
                if self.skipped:
                    skipped, self.skipped = self.skipped, 0
                    self._send({"time": entry.get("time"), "event": "live-skipped",
                                "count": skipped})
            if self._sent >= self._rate:
                self.skipped += 1
                return
            self._sent += 1
        self._send(entry)

    def _send(self, entry: dict) -> None:
        self.recent.append(entry)
        if self.subscribers:
            import json

            data = b"data: " + json.dumps(entry).encode("utf-8") + b"\n\n"  # once for all
            for subscriber in list(self.subscribers):
                subscriber.push(data)

    def subscribe(self, subscriber) -> None:
        self.subscribers.add(subscriber)

    def unsubscribe(self, subscriber) -> None:
        self.subscribers.discard(subscriber)

    def end_session(self, session: str) -> None:
        """
        End the streams C{session} opened: it logged out.
        """
        for subscriber in list(self.subscribers):
            if subscriber.session == session:
                subscriber.close()


class ObservedAudit:
    """
    The audit log, with every event also handed to C{listeners} (callables
    taking the event as a dict) and every hit to C{on_hit(outcome)}.
    Anything else (C{reopen}, C{close}, C{path}) is the log's own.
    """

    def __init__(self, audit, wall, listeners=(), on_hit=None):
        self._audit = audit
        self._wall = wall
        self._listeners = tuple(listeners)
        self._on_hit = on_hit

    def record(self, event: str, **fields) -> None:
        self._audit.record(event, **fields)
        entry = {"time": iso_time(self._wall()), "event": event, **fields}
        for listener in self._listeners:
            listener(entry)

    def protocol_error(self, ip: str, reason: str) -> bool:
        """
        Listeners see the protocol errors the log writes one by one; those
        past its budget are only counted there, and here.
        """
        written = self._audit.protocol_error(ip, reason)
        if written:
            entry = {"time": iso_time(self._wall()), "event": "error", "ip": ip,
                     "reason": reason}
            for listener in self._listeners:
                listener(entry)
        return written

    def locked(self, **fields) -> bool:
        """
        Listeners see every LOCKED answer (the metrics count them all); the
        log writes those within its budget.
        """
        written = self._audit.locked(**fields)
        entry = {"time": iso_time(self._wall()), "event": "locked", **fields}
        for listener in self._listeners:
            listener(entry)
        return written

    def lockout(self, **fields) -> bool:
        """
        Listeners see every lockout (the metrics count them all, the live
        page shows them); the log writes a source's within its budget.
        """
        written = self._audit.lockout(**fields)
        entry = {"time": iso_time(self._wall()), "event": "lockout", **fields}
        for listener in self._listeners:
            listener(entry)
        return written

    def denied(self, **fields) -> bool:
        """Listeners see every DENIED (the metrics count them all), as every LOCKED."""
        return self._seen_by_all("denied", self._audit.denied(**fields), fields)

    def enrol_refused(self, **fields) -> bool:
        """Listeners see every refused enrolment; the log writes those within its budget."""
        return self._seen_by_all("enrol", self._audit.enrol_refused(**fields), fields)

    def server_error(self, reason: str, **fields) -> bool:
        """Listeners see every PROOF the server could not answer, as every DENIED."""
        return self._seen_by_all("error", self._audit.server_error(reason, **fields),
                                 {**fields, "reason": reason})

    def _seen_by_all(self, event: str, written: bool, fields: dict) -> bool:
        entry = {"time": iso_time(self._wall()), "event": event, **fields}
        for listener in self._listeners:
            listener(entry)
        return written

    def hit(self, ip: str, src_port: int, port: int, outcome: str) -> None:
        self._audit.hit(ip, src_port, port, outcome)
        if self._on_hit is not None:
            self._on_hit(outcome)

    def __getattr__(self, name):
        return getattr(self._audit, name)


class EventStream:
    """
    One browser's C{text/event-stream}: a streaming producer on its
    request, so Twisted pauses it when the connection backs up; while
    paused it keeps at most C{limit} events, then gives up on the browser.

    C{session} is the session that opened it, if any, and C{ends} when that
    session expires, in C{clock}'s seconds: the stream ends then, since
    the session is checked only when a request starts.
    """

    def __init__(self, request, bus: EventBus, limit: int = STREAM_LIMIT,
                 session: str | None = None, clock=None, ends: float | None = None):
        self._request = request
        self._bus = bus
        self._limit = limit
        self._pending: deque = deque()
        self.paused = False
        self.closed = False
        self.session = session
        self._expiry = None
        if ends is not None:
            self._expiry = clock.callLater(max(0.0, ends - clock.seconds()), self.close)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.registerProducer(self, True)
        request.write(b": knocker events\n\n")
        request.notifyFinish().addBoth(self._gone)
        bus.subscribe(self)

    def push(self, data: bytes) -> None:
        """
        One event, as its C{data:} field (L{EventBus.publish} encodes it).
        """
        if self.closed:
            return
        if self.paused:
            if len(self._pending) >= self._limit:
                self._bus.dropped += 1
                self.close()
                return
            self._pending.append(data)
            return
        self._request.write(data)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self._pending and not self.paused and not self.closed:
            self._request.write(self._pending.popleft())

    def stopProducing(self) -> None:
        self._gone(None)

    def close(self) -> None:
        """
        End the response: the browser is too slow, or its session is over.
        """
        if self.closed:
            return
        self._gone(None)
        self._request.unregisterProducer()
        self._request.finish()

    def _gone(self, _) -> None:
        self.closed = True
        self._pending.clear()
        self._bus.unsubscribe(self)
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
