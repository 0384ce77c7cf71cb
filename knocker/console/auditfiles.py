"""
Reading the audit log with its rotations (etc/knocker.logrotate:
C{audit.log.1}, then C{audit.log.2.gz} ... C{audit.log.30.gz}), oldest first.

The console reads them inside the daemon (in a thread), so a damaged or
hostile file must cost neither the daemon's memory nor the whole read: a
file that cannot be read on (a truncated or corrupt C{.gz}, an I/O error)
is read up to there and the others still are; a line longer than
C{MAX_LINE} (no line the daemon writes comes near) is skipped piece by
piece rather than held whole; a file that vanished since the listing (a
rotation under way) is left out.  What was left out is logged and listed
in L{AuditLines.problems}, which a report shows.
"""

import gzip
import json
import os
import re
import zlib

from twisted.logger import Logger

log = Logger()

#: The longest line read, in bytes; longer ones are skipped.
MAX_LINE = 1024 * 1024

#: At most this many problems are listed; more are only counted.
MAX_PROBLEMS = 20

# What no page, CSV or terminal can show as it is: control characters, C0
# (newlines included: a report's text lines must stay one a line) and C1
# (U+009B starts a terminal's escape sequence), lone surrogates (no UTF-8
# for them) and the two non-characters XML refuses.
_UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def may_hide_unshowable(line: bytes) -> bool:
    """
    Whether a raw JSON line may hold an unshowable character: one written
    as an escape, or DEL, or any byte past ASCII (json.loads takes UTF-8
    surrogates as they are).  The daemon writes plain ASCII without
    backslashes, so its lines skip L{showable}.
    """
    return b"\\" in line or b"\x7f" in line or not line.isascii()


def parse_line(line: bytes) -> dict | None:
    """
    One line of the log as an event, its strings L{showable}; C{None} for
    a line that is not a JSON object (torn, damaged, nested too deep:
    not the daemon's).
    """
    try:
        event = json.loads(line)
        if may_hide_unshowable(line):
            event = showable(event)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def showable(value):
    """
    C{value}, a JSON line's entry, with every string's unshowable
    characters written as C{\\uXXXX}: shown escaped, a damaged or foreign
    line cannot break a page, a CSV or a terminal.

    @raise RecursionError: C{value} is nested too deep (not the daemon's).
    """
    if isinstance(value, str):
        return _UNSHOWABLE.sub(lambda found: f"\\u{ord(found.group()):04x}", value)
    if isinstance(value, dict):
        return {showable(key): showable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [showable(item) for item in value]
    return value


def audit_files(path: str) -> list[str]:
    """
    C{path} and its rotations that exist, oldest first.
    """
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    pattern = re.compile(re.escape(base) + r"\.(\d+)(\.gz)?$")
    rotated = []
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    for name in names:
        match = pattern.match(name)
        if match:
            rotated.append((int(match.group(1)), os.path.join(directory, name)))
    files = [name for _, name in sorted(rotated, reverse=True)]
    if os.path.exists(path):
        files.append(path)
    return files


class AuditLines:
    """
    Every line of the log and its rotations, oldest first, as bytes (each
    ending in a newline but perhaps the last of a file); a file last
    written before C{since_epoch} is not opened at all.  Iterate once.
    """

    def __init__(self, path: str, since_epoch: float | None = None):
        self.path = path
        self.since_epoch = since_epoch
        self._problems: list[str] = []
        self._more_problems = 0

    @property
    def problems(self) -> list[str]:
        """
        What was left out so far, a sentence each (C{MAX_PROBLEMS} at most,
        then how many more).
        """
        more = [f"and {self._more_problems} more"] if self._more_problems else []
        return self._problems + more

    def __iter__(self):
        for name in audit_files(self.path):
            try:
                if self.since_epoch is not None and os.path.getmtime(name) < self.since_epoch:
                    continue
                opener = gzip.open if name.endswith(".gz") else open
                handle = opener(name, "rb")
            except FileNotFoundError:
                continue  # rotated away since the listing
            except OSError as error:
                self._problem(name, f"cannot be read ({error})")
                continue
            with handle:
                yield from self._lines(name, handle)

    def _lines(self, name: str, handle):
        readline = handle.readline
        skipped = 0
        try:
            while True:
                line = readline(MAX_LINE)
                if len(line) == MAX_LINE and not line.endswith(b"\n"):
                    skipped += 1
                    while len(line) == MAX_LINE and not line.endswith(b"\n"):
                        line = readline(MAX_LINE)  # the rest of it, dropped
                    continue
                if not line:
                    break
                yield line
        except (OSError, EOFError, zlib.error) as error:
            self._problem(name, f"read only in part ({type(error).__name__}: {error})")
        if skipped:
            self._problem(name, f"{skipped} line(s) over {MAX_LINE} bytes skipped")

    def _problem(self, name: str, what: str) -> None:
        log.warn("audit log {name}: {what}", name=name, what=what)
        if len(self._problems) < MAX_PROBLEMS:
            self._problems.append(f"{os.path.basename(name)}: {what}")
        else:
            self._more_problems += 1


def audit_lines(path: str, since_epoch: float | None = None) -> AuditLines:
    """
    The lines of the log and its rotations, oldest first (L{AuditLines}).
    """
    return AuditLines(path, since_epoch)
