"""
The portknock file (docs/spec.md section 3): generate, format and parse.

Pure: no file system access here (see L{knocker.files}).  Every refusal is a
L{KnockFileError} that names the file and the line, so an operator can fix
the file without reading code.  Parsed on every knock, so it imports only
what starts fast (no re, no attrs; see L{knocker.core.Record}).
"""

from knocker.core import Record

FORMAT_VERSION = 1
SECRET_BYTES = 32
CLIENT_ID_RULE = "[a-z0-9][a-z0-9_.-]{0,63}"
_LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_CLIENT_CHARS = _LOWER_ALNUM + "_.-"
_HEX = "0123456789abcdef"
_HEADER_KEYS = ("version", "client", "secret", "ports-per-knock", "created")
# The first knock line begins within this many bytes of the file's start
# (header and comments before it).  The daemon reads no more than this to
# index a client, so every reader holds files to the same rule.
HEADER_LIMIT = 4096


class KnockFileError(ValueError):
    """
    A portknock file broke a rule; the message names the file and line.
    """


class KnockFile(Record):
    """
    One client's secret and its numbered one-time knocks.

    C{knocks[i - 1]} holds knock number C{i}: numbers start at 1.
    """

    __slots__ = ("client", "secret", "ports_per_knock", "created", "knocks")

    def knock(self, index: int) -> tuple[int, ...]:
        """
        @raise KnockFileError: no knock numbered C{index}.
        """
        if not 1 <= index <= len(self.knocks):
            raise KnockFileError(f"no knock number {index} (the file holds 1-{len(self.knocks)})")
        return self.knocks[index - 1]

    def load(self) -> "KnockFile":
        return self

    checked_now = False  # parsed whole when read: nothing for the client to remember
    identity = None

    def check(self, known=()) -> None:
        pass


class KnockFileText:
    """
    A portknock file read for one knock.  The header is parsed and checked
    at once (the handshake needs the secret); the whole file by L{check},
    which the client calls while it waits for the server's GRANT, so a file
    that breaks a rule is refused before any port is knocked.  L{check}
    skips a file checked before, takes the fast path of
    L{knocks_at_a_glance} for a file in the form C{knocker generate}
    writes, and parses line by line (naming the line at fault) otherwise.
    A file checked before is known by its identity, not its text: hashing
    the text took 0.15-0.2 ms of every knock.
    """

    def __init__(self, text: str, name: str, identity: str | None = None):
        header = parse_header(text, name)
        self.client = header.client
        self.secret = header.secret
        self.ports_per_knock = header.ports_per_knock
        # What identifies the file this text was read from (see
        # L{knocker.files.read_private_identified}), if known: what the
        # client remembers of a file it has checked whole.
        self.identity = identity
        self._text = text
        self._name = name
        self._full = None
        self._checked = False
        self.checked_now = False

    def check(self, known=()) -> None:
        """
        Check the whole file, unless its L{identity} is in C{known}: the
        same file, unchanged, passed before, and a file that has not
        changed cannot have broken a rule since.  Sets L{checked_now} when
        it did the work.

        @raise KnockFileError: the file breaks a rule; names file and line.
        """
        if self._checked or (self.identity is not None and self.identity in known):
            self._checked = True
            return
        if not knocks_at_a_glance(knock_section(self._text), self.ports_per_knock):
            self.load()
        self._checked = self.checked_now = True

    def load(self) -> KnockFile:
        """
        Every knock, parsed line by line.

        @raise KnockFileError: the file breaks a rule; names file and line.
        """
        if self._full is None:
            self._full = parse_knockfile(self._text, self._name)
        return self._full

    def knock(self, index: int) -> tuple[int, ...]:
        """
        Knock C{index}, reading only its line (the whole file is checked by
        L{check}).

        @raise KnockFileError: no such knock, or its line breaks a rule.
        """
        if self._full is not None:
            return self._full.knock(index)
        return find_knock(self._text, self._name, index, self.ports_per_knock)[0]


def knock_section(text: str) -> str:
    """
    The text from the first line that is not blank, a comment or a header
    line: where the knocks begin, by the same rule as L{parse_knockfile}.
    """
    offset = 0
    while offset < len(text):
        end = text.find("\n", offset)
        end = len(text) if end < 0 else end + 1
        line = text[offset:end].removesuffix("\n").removesuffix("\r")
        if line.strip() and not line.startswith("#") and "=" not in line:
            break
        offset = end
    return text[offset:]


def knocks_at_a_glance(section: str, size: int) -> bool:
    """
    Whether C{section} is a run of knock lines exactly as L{format_knockfile}
    writes them, keeping every rule: numbered 1, 2, 3, ... each with C{size}
    distinct ports in 1-65535.  Whole-text string operations check a
    thousand lines in about half the time a line-by-line parse takes, which
    lets the client check its whole file while the server answers PROOF.
    C{False} for anything else, even a valid file in another form (comments,
    CRLF, blank lines): L{parse_knockfile} decides those.
    """
    if not section.endswith("\n") or not section.isascii():
        return False
    if section.encode("ascii").translate(None, b"0123456789, \n"):
        return False
    width = size + 1
    tokens = section[:-1].replace("\n", " ").replace(",", " ").split(" ")
    count, extra = divmod(len(tokens), width)
    if extra or not count or "" in tokens:
        return False
    # One number, a space and `size` ports joined by commas on every line:
    # rebuild the text from the tokens in that shape and compare.
    from itertools import chain  # 0.1-0.2 ms to set up: paid on a first knock only

    separators = ([" "] + [","] * (size - 1) + ["\n"]) * count
    if "".join(chain.from_iterable(zip(tokens, separators))) != section:
        return False
    if tokens[::width] != list(map(str, range(1, count + 1))):
        return False
    try:
        columns = [list(map(int, tokens[column::width])) for column in range(1, width)]
    except ValueError:  # digits past Python's int limit (4,300): no port, and no traceback
        return False
    if min(map(min, columns)) < 1 or max(map(max, columns)) > 65535:
        return False
    return all(len(set(knock)) == size for knock in zip(*columns))


def valid_client_id(client: str) -> bool:
    """
    Whether C{client} matches C{[a-z0-9][a-z0-9_.-]{0,63}}.
    """
    # str.strip(chars) leaves nothing exactly when every character is in
    # chars: a character-class check at C speed, without re.
    return 0 < len(client) <= 64 and client[0] in _LOWER_ALNUM and not client.strip(_CLIENT_CHARS)


def is_hex64(text: str) -> bool:
    return len(text) == 64 and not text.strip(_HEX)


def is_digits(text: str, most: int) -> bool:
    return text.isdigit() and text.isascii() and len(text) <= most


def parse_header(text: str, name: str) -> KnockFile:
    """
    Parse and check only the header, giving a L{KnockFile} with no knocks:
    the server's index of clients must not hold every knock in memory.
    """
    return parse_knockfile(text, name, header_only=True)


def parse_knockfile(text: str, name: str, header_only: bool = False) -> KnockFile:
    """
    Parse and check a whole portknock file.

    @param name: how to name the file in errors (usually its path).
    """
    header: dict[str, str] = {}
    knocks: list[tuple[int, ...]] = []
    size = None

    def fail(lineno: int, why: str) -> KnockFileError:
        return KnockFileError(f"{name}, line {lineno}: {why}")

    # The header alone is read on every knock, from a file of a thousand
    # lines: split only as far as the first knock line then.
    lines = None if header_only else text.split("\n")
    first_knock = None if header_only else len(lines)
    offset = 0  # bytes before this line
    for lineno, raw in enumerate(_lines(text) if header_only else lines, start=1):
        start, offset = offset, offset + 1 + (len(raw) if raw.isascii() else len(raw.encode()))
        line = raw.removesuffix("\r")
        knock_line = line.strip() and not line.startswith("#") and "=" not in line
        if start >= HEADER_LIMIT or (offset > HEADER_LIMIT and not knock_line):
            # Judged before the line itself: a header-only read may have
            # cut it at the limit.
            raise fail(lineno, _too_long(start if knock_line else offset))
        if knock_line:
            first_knock = lineno - 1
            missing = [key for key in _HEADER_KEYS if key not in header]
            if missing:
                raise fail(lineno, f"header is missing {', '.join(missing)}")
            size = int(header["ports-per-knock"])
            break
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        if key not in _HEADER_KEYS:
            raise fail(
                lineno, f"unknown header key {key!r} (allowed: {', '.join(_HEADER_KEYS)})"
            )
        if key in header:
            raise fail(lineno, f"header key {key!r} given twice")
        header[key] = value
        _check_header(key, value, lambda why, lineno=lineno: fail(lineno, why))
    if size is not None and not header_only:
        knocks = _parse_knocks(lines, first_knock, size, fail)
    if size is None:
        # A header-only read may have been cut at HEADER_LIMIT (less a
        # character cut in two): no knock line begins before it.
        if header_only and offset - 1 > HEADER_LIMIT - 4:
            raise KnockFileError(f"{name}: {_too_long(offset - 1)}")
        missing = [key for key in _HEADER_KEYS if key not in header]
        if missing:
            raise KnockFileError(f"{name}: header is missing {', '.join(missing)}")
        size = int(header["ports-per-knock"])
    if not knocks and not header_only:
        raise KnockFileError(f"{name}: no knocks in the file")
    return KnockFile(
        client=header["client"],
        secret=bytes.fromhex(header["secret"]),
        ports_per_knock=size,
        created=header["created"],
        knocks=tuple(knocks),
    )


def _too_long(size: int) -> str:
    return (f"the knocks must begin within the first {HEADER_LIMIT} bytes; "
            f"the header and comments before them take at least {size}")


def _lines(text: str):
    """C{text.split("\\n")}, one line at a time."""
    start = 0
    while True:
        end = text.find("\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start:end]
        start = end + 1


def _check_header(key: str, value: str, fail) -> None:
    if key == "version" and value != str(FORMAT_VERSION):
        raise fail(f"version {value!r} is not supported (only {FORMAT_VERSION})")
    if key == "client" and not valid_client_id(value):
        raise fail(f"client id {value!r} does not match {CLIENT_ID_RULE}")
    if key == "secret" and not is_hex64(value):
        raise fail("secret must be 64 lowercase hex digits (256 bits)")
    if key == "ports-per-knock" and not (is_digits(value, 2) and 1 <= int(value) <= 64):
        raise fail(f"ports-per-knock must be a whole number 1-64, not {value!r}")
    if key == "created" and not _is_utc_time(value):
        raise fail(f"created must be a UTC time like 2026-11-25T10:00:00Z, not {value!r}")


def _is_utc_time(text: str) -> bool:
    """
    Whether C{text} is C{YYYY-MM-DDTHH:MM:SSZ} with plausible fields.
    """
    if len(text) != 20 or text[4] + text[7] + text[10] + text[13] + text[16] + text[19] != "--T::Z":
        return False
    parts = (text[0:4], text[5:7], text[8:10], text[11:13], text[14:16], text[17:19])
    if not all(is_digits(part, 4) for part in parts):
        return False
    _, month, day, hour, minute, second = map(int, parts)
    return 1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61


def _parse_knocks(lines: list[str], start: int, size: int, fail) -> list[tuple[int, ...]]:
    """
    The knock lines, from C{lines[start]} on.  This runs a thousand times
    per knock, so each line is checked whole (one comparison for the
    number, one pass for the digits); only a bad line gets the slower
    search that names what is wrong with it.
    """
    knocks = []
    for lineno in range(start + 1, len(lines) + 1):
        line = lines[lineno - 1]
        if line[-1:] == "\r":
            line = line[:-1]
        if not line or line[0] == "#" or line.isspace():
            continue
        ports = _knock_line(line, len(knocks) + 1, size)
        if ports is None:
            raise _bad_knock_line(line, len(knocks) + 1, size,
                                 lambda why, lineno=lineno: fail(lineno, why))
        knocks.append(ports)
    return knocks


def _knock_line(line: str, expected: int, size: int) -> tuple[int, ...] | None:
    """
    The ports of a good knock line numbered C{expected}, or C{None}.
    """
    number, _, text = line.partition(" ")
    fields = text.split(",")
    digits = text.replace(",", "")
    if (
        number == str(expected)
        and len(fields) == size
        and digits.isdigit()
        and digits.isascii()
        and "" not in fields
    ):
        try:
            ports = tuple(map(int, fields))
        except ValueError:  # digits past Python's int limit (4,300): no port, and no traceback
            return None
        if min(ports) > 0 and max(ports) < 65536 and len(set(ports)) == size:
            return ports
    return None


def find_knock(text: str, name: str, index: int, size: int) -> tuple[tuple[int, ...], int]:
    """
    Knock C{index} of a portknock file's text (or of a piece of it that
    starts at a line break), checking only its own line; and the offset
    just past that line.

    For the server's copies, which it wrote itself and reads at every
    grant: parsing all thousand lines would hold the reactor for 2 ms.

    @raise KnockFileError: no such knock, or its line is malformed.
    """
    start = text.find(f"\n{index} ") + 1
    if start == 0:
        raise KnockFileError(f"{name}: no knock number {index}")
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    line = text[start:end].removesuffix("\r")
    ports = _knock_line(line, index, size)
    if ports is None:
        lineno = text.count("\n", 0, start) + 1
        raise _bad_knock_line(
            line, index, size, lambda why: KnockFileError(f"{name}, line {lineno}: {why}")
        )
    return ports, end


def _bad_knock_line(line: str, expected: int, size: int, fail) -> KnockFileError:
    if "=" in line:
        return fail("header line after the first knock")
    number, sep, text = line.partition(" ")
    if not sep or not is_digits(number, 9):
        return fail("expected '<knock number> <port>,<port>,...'")
    if number != str(expected):
        return fail(f"knock number {number} where {expected} was expected")
    fields = text.split(",")
    if len(fields) != size:
        return fail(f"{len(fields)} ports where ports-per-knock is {size}")
    for field in fields:
        if not (is_digits(field, 5) and 0 < int(field) < 65536):
            return fail(f"port {field!r} is not a number in 1-65535")
    return fail("a port is repeated inside one knock")
