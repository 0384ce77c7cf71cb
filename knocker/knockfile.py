"""
The portknock file (SPEC section 3): generate, format and parse.

Pure: no file system access here (see L{knocker.files}).  Every refusal is a
L{KnockFileError} that names the file and the line, so an operator can fix
the file without reading code.
"""

import re
from datetime import datetime, timezone
from random import Random

from attrs import frozen

from knocker.pool import choose_knock

FORMAT_VERSION = 1
SECRET_BYTES = 32
CLIENT_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PORT = re.compile(r"[0-9]{1,5}")
_HEADER_KEYS = ("version", "client", "secret", "ports-per-knock", "created")


class KnockFileError(ValueError):
    """
    A portknock file broke a rule; the message names the file and line.
    """


@frozen
class KnockFile:
    """
    One client's secret and its numbered one-time knocks.

    C{knocks[i - 1]} holds knock number C{i}: numbers start at 1.
    """

    client: str
    secret: bytes
    ports_per_knock: int
    created: str
    knocks: tuple[tuple[int, ...], ...]

    def knock(self, index: int) -> tuple[int, ...]:
        return self.knocks[index - 1]


def valid_client_id(client: str) -> bool:
    return CLIENT_ID.fullmatch(client) is not None


def generate(
    client: str,
    pool: tuple[int, ...],
    knocks: int,
    ports: int,
    rng: Random,
    secret: bytes,
    now: datetime,
) -> KnockFile:
    """
    Make a new portknock file for C{client}; C{rng} and C{secret} must come
    from L{secrets} in real use.
    """
    if not valid_client_id(client):
        raise ValueError(f"client id {client!r} does not match {CLIENT_ID.pattern}")
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"the secret must be {SECRET_BYTES} bytes")
    if not 1 <= ports <= len(pool):
        raise ValueError(f"ports per knock must be 1-{len(pool)} (the pool size)")
    if knocks < 1:
        raise ValueError("a portknock file needs at least one knock")
    created = now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return KnockFile(
        client=client,
        secret=secret,
        ports_per_knock=ports,
        created=created,
        knocks=tuple(choose_knock(pool, ports, rng) for _ in range(knocks)),
    )


def format_knockfile(kf: KnockFile) -> str:
    lines = [
        "# knocker portknock file: keep it secret (mode 0600).",
        "# Each knock below is used once; the server burns it when it grants it.",
        f"version = {FORMAT_VERSION}",
        f"client = {kf.client}",
        f"secret = {kf.secret.hex()}",
        f"ports-per-knock = {kf.ports_per_knock}",
        f"created = {kf.created}",
        "",
    ]
    lines.extend(
        f"{number} {','.join(map(str, ports))}"
        for number, ports in enumerate(kf.knocks, start=1)
    )
    return "\n".join(lines) + "\n"


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

    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip() or line.startswith("#"):
            continue
        if "=" in line:
            if knocks:
                raise fail(lineno, "header line after the first knock")
            key, _, value = (part.strip() for part in line.partition("="))
            if key not in _HEADER_KEYS:
                raise fail(
                    lineno,
                    f"unknown header key {key!r} (allowed: {', '.join(_HEADER_KEYS)})",
                )
            if key in header:
                raise fail(lineno, f"header key {key!r} given twice")
            header[key] = value
            _check_header(key, value, lambda why: fail(lineno, why))
            continue
        if size is None:
            missing = [key for key in _HEADER_KEYS if key not in header]
            if missing:
                raise fail(lineno, f"header is missing {', '.join(missing)}")
            size = int(header["ports-per-knock"])
            if header_only:
                break
        number, sep, ports_text = line.partition(" ")
        if not sep or not number.isdigit() or not number.isascii():
            raise fail(lineno, "expected '<knock number> <port>,<port>,...'")
        if int(number) != len(knocks) + 1:
            raise fail(
                lineno, f"knock number {number} where {len(knocks) + 1} was expected"
            )
        knocks.append(_parse_ports(ports_text, size, lambda why: fail(lineno, why)))
    if size is None:
        missing = [key for key in _HEADER_KEYS if key not in header]
        if missing:
            raise KnockFileError(f"{name}: header is missing {', '.join(missing)}")
    if not knocks and not header_only:
        raise KnockFileError(f"{name}: no knocks in the file")
    return KnockFile(
        client=header["client"],
        secret=bytes.fromhex(header["secret"]),
        ports_per_knock=size,
        created=header["created"],
        knocks=tuple(knocks),
    )


def _check_header(key: str, value: str, fail) -> None:
    if key == "version" and value != str(FORMAT_VERSION):
        raise fail(f"version {value!r} is not supported (only {FORMAT_VERSION})")
    if key == "client" and not valid_client_id(value):
        raise fail(f"client id {value!r} does not match {CLIENT_ID.pattern}")
    if key == "secret" and not _HEX64.fullmatch(value):
        raise fail("secret must be 64 lowercase hex digits (256 bits)")
    if key == "ports-per-knock" and not (
        value.isascii() and value.isdigit() and 1 <= int(value) <= 64
    ):
        raise fail(f"ports-per-knock must be a whole number 1-64, not {value!r}")
    if key == "created":
        try:
            datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise fail(
                f"created must be a UTC time like 2026-11-25T10:00:00Z, not {value!r}"
            ) from None


def _parse_ports(text: str, size: int, fail) -> tuple[int, ...]:
    fields = text.split(",")
    if len(fields) != size:
        raise fail(f"{len(fields)} ports where ports-per-knock is {size}")
    ports = []
    for field in fields:
        if not _PORT.fullmatch(field) or not 1 <= int(field) <= 65535:
            raise fail(f"port {field!r} is not a number in 1-65535")
        ports.append(int(field))
    if len(set(ports)) != len(ports):
        raise fail("a port is repeated inside one knock")
    return tuple(ports)
