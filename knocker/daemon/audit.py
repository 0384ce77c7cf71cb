"""
The audit log (docs/spec.md section 7): one JSON object a line, one line an event.

Each event is written with a single C{write} on a file opened C{O_APPEND}, so
a crash can tear at most the line being written and nothing is held in a
buffer that a flood could grow.  Readers use L{read_audit}, which skips a
torn last line.
"""

import json
import os

from twisted.logger import Logger

from knocker.core.isotime import iso_time

log = Logger()


class AuditLog:
    """
    Append events to C{path} (created 0600).  Time comes from C{clock}.
    """

    def __init__(self, path: str, clock):
        self.path = path
        self._clock = clock
        torn = _cut_torn_tail(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.dropped = 0
        self._second = None
        self._prefix = ""
        if torn is not None:
            # Keep the fragment as evidence, inside a valid line.
            self.record("audit-repaired", fragment=torn.decode("utf-8", "replace"))
            log.warn("audit log {path} ended in a torn line (a crash mid-write); "
                     "kept it as an audit-repaired event", path=path)

    def record(self, event: str, **fields) -> None:
        entry = {"time": iso_time(self._clock.seconds()), "event": event}
        entry.update(fields)
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            os.write(self._fd, line)
        except OSError as error:
            # A full disk must not stop the daemon; say so in the daemon log.
            self.dropped += 1
            log.error("audit log {path} write failed ({error}); {n} events lost",
                      path=self.path, error=error, n=self.dropped)

    def hit(self, ip: str, src_port: int, port: int, outcome: str) -> None:
        """
        L{record} for the hot path: a hit line formatted directly (the
        address comes from the kernel, so it needs no escaping) with the
        time's date part cached per second.
        """
        now = self._clock.seconds()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = iso_time(second)[:20]
        micros = min(999999, int((now - second) * 1e6))
        line = (
            f'{{"time":"{self._prefix}{micros:06d}Z","event":"hit","ip":"{ip}",'
            f'"src_port":{src_port},"port":{port},"outcome":"{outcome}"}}\n'
        )
        try:
            os.write(self._fd, line.encode("ascii"))
        except OSError as error:
            self.dropped += 1
            log.error("audit log {path} write failed ({error}); {n} events lost",
                      path=self.path, error=error, n=self.dropped)

    def reopen(self) -> None:
        """
        Switch to a fresh open of C{path}, after logrotate (or anyone) moved
        the file: events go to the new file from the next one on.  If the
        path cannot be opened, keep writing to the old file and say why.
        """
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            log.error("audit log {path} cannot be reopened ({error}); still writing to "
                      "the file opened before", path=self.path, error=error)
            return
        old, self._fd = self._fd, fd
        os.close(old)
        self.record("audit-reopened")

    def close(self) -> None:
        os.close(self._fd)


def _cut_torn_tail(path: str) -> bytes | None:
    """
    If the log ends without a newline (a crash mid-write), cut the fragment
    off so that every line stays a JSON object, and return it.
    """
    try:
        handle = open(path, "r+b")
    except FileNotFoundError:
        return None
    with handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return None
        start = max(0, size - 65536)
        handle.seek(start)
        tail = handle.read()
        cut = tail.rfind(b"\n") + 1
        handle.truncate(start + cut)
        return tail[cut:]


class MemoryAudit:
    """
    An audit sink for tests: the events as dicts, without the time.
    """

    def __init__(self):
        self.events: list[dict] = []

    def record(self, event: str, **fields) -> None:
        self.events.append({"event": event, **fields})

    def hit(self, ip: str, src_port: int, port: int, outcome: str) -> None:
        self.record("hit", ip=ip, src_port=src_port, port=port, outcome=outcome)

    def of(self, event: str) -> list[dict]:
        return [entry for entry in self.events if entry["event"] == event]

    def close(self) -> None:
        pass


def read_audit(path: str) -> list[dict]:
    """
    The events in an audit log, skipping a last line torn by a crash.

    @raise ValueError: a line other than the last is not JSON.
    """
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    events = []
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break  # torn by a crash mid-write
            raise ValueError(f"{path}, line {number}: not a JSON object") from None
    return events
