"""
Configuration (docs/spec.md section 9): INI text in, frozen config out.

L{parse_server_config} and L{parse_client_config} are pure; C{load_*} read
the file.  Command-line overrides go through the same checks as the file, so
every bad key or value is a L{ConfigError} naming where it came from, the
key, and what is allowed.  Relative paths in a file are taken relative to
that file's folder (a daemon's working directory is rarely the operator's);
relative paths on the command line, relative to the working directory.
"""

import os

from knocker.core.record import Record


class ConfigError(ValueError):
    """
    A bad configuration; the message names the source, key and what is allowed.
    """


Parser = "Callable[[str], object]"


def _number(kind, low, high) -> tuple[Parser, str]:
    allowed = f"a {'whole ' if kind is int else ''}number from {low} to {high}"

    def parse(text: str):
        if not text or not all(char in "0123456789." for char in text):
            raise ValueError(allowed)  # no signs, exponents, underscores or "nan"
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(allowed) from None
        if not low <= value <= high or value != value:
            raise ValueError(allowed)
        return value

    return parse, allowed


def _choice(*names: str) -> tuple[Parser, str]:
    allowed = "one of " + ", ".join(names)

    def parse(text: str):
        if text not in names:
            raise ValueError(allowed)
        return text

    return parse, allowed


def _port_range(text: str) -> tuple[int, int]:
    allowed = "LOW-HIGH, two ports from 1 to 65535 with LOW <= HIGH"
    low, sep, high = (part.strip() for part in text.partition("-"))
    if not (sep and low.isdigit() and high.isdigit() and low.isascii() and high.isascii()):
        raise ValueError(allowed)
    low, high = int(low), int(high)
    if not 1 <= low <= high <= 65535:
        raise ValueError(allowed)
    return low, high


def _endpoint(text: str) -> str:
    kind, sep, rest = text.partition(":")
    if not (sep and kind.isalnum() and kind.isascii() and rest) or any(c.isspace() for c in text):
        raise ValueError("a Twisted endpoint string such as tcp:7000")
    return text


def _endpoint_fields(text: str) -> list[tuple[str, ...]]:
    """
    C{text} split as Twisted's C{serverFromString} splits it, so the
    C{admin} check reads what will be bound: fields at C{:}, a field's key
    from its value at its first C{=}, a backslash taking the next
    character as it is (C{interface=\\:\\:1}).
    """
    fields, field, current = [], [], ""
    separators = ":="
    characters = iter(text)
    for character in characters:
        if character in separators:
            field.append(current)
            current = ""
            if character == ":":
                fields.append(tuple(field))
                field, separators = [], ":="
            else:
                separators = ":"
        elif character == "\\":
            escaped = next(characters, None)
            if escaped is None:
                raise ValueError(f"{text}: a backslash at the end")
            current += escaped
        else:
            current += character
    fields.append((*field, current))
    return fields


def admin_endpoint(text: str) -> tuple[str, str, int]:
    """
    C{(kind, host, port)} of an C{admin} endpoint string: C{tcp}, C{tcp6} or
    C{ssl}; the host is the C{interface} (all addresses when absent).

    Read as Twisted reads it, and refused where Twisted reads it otherwise
    than a person would: an option given twice (Twisted keeps the last) or
    a value without its name (after the port, Twisted takes it for the
    address).
    """
    fields = _endpoint_fields(text)
    if not (len(fields) >= 2 and fields[0] in (("tcp",), ("tcp6",), ("ssl",))
            and len(fields[1]) == 1 and fields[1][0].isascii() and fields[1][0].isdigit()):
        raise ValueError(text)
    options = {}
    for field in fields[2:]:
        if len(field) != 2 or field[0] in options:
            raise ValueError(f"{text}: each option once, as NAME=VALUE")
        options[field[0]] = field[1]
    kind = fields[0][0]
    default = "::" if kind == "tcp6" else "0.0.0.0"
    return kind, options.get("interface", default), int(fields[1][0])


def _admin(text: str) -> str | None:
    """
    The console's endpoint: empty turns it off; off loopback it must be TLS,
    since a session cookie and the bearer tokens cross it.
    """
    import ipaddress

    if not text:
        return None
    _endpoint(text)
    kind, host, _ = admin_endpoint(text)
    if kind != "ssl" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(text)
    return text


def _endpoints(text: str) -> str:
    """
    One endpoint, or several separated by spaces or newlines (a fleet's
    gateways, tried in turn): kept as one space-separated string.
    """
    items = text.split()
    if not items:
        raise ValueError("an endpoint")
    for item in items:
        _endpoint(item)
    return " ".join(items)


def _database(text: str) -> str:
    if text and not text.startswith(("postgresql://", "postgres://")):
        raise ValueError("empty (SQLite in state-dir) or a postgresql:// URI")
    return text


def _address(text: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("an IPv4 or IPv6 address such as 0.0.0.0 or ::") from None
    return text


def _networks(text: str) -> tuple[str, ...]:
    import ipaddress

    networks = []
    for item in text.replace(",", " ").split():
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(item) from None
    return tuple(networks)


def _text(text: str) -> str:
    if not text:
        raise ValueError("a non-empty value")
    return text


#: Set by the daemon for every action; never taken from its environment.
ACTION_OWN_ENV = ("PATH", "KNOCKER_CLIENT_IP", "KNOCKER_CLIENT", "KNOCKER_INDEX")
_ENV_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_ENV_REST = _ENV_FIRST | frozenset("0123456789")


def _env_names(text: str) -> tuple[str, ...]:
    names: list[str] = []
    for item in text.replace(",", " ").split():
        if item[0] not in _ENV_FIRST or not _ENV_REST.issuperset(item) or item in ACTION_OWN_ENV:
            raise ValueError(item)
        if item not in names:
            names.append(item)
    return tuple(names)


class Key:
    """
    One configuration key, declared once: its name in the file (and as
    C{--name} on the command line), its default, how its text is parsed and
    what is allowed (for the error message), and whether it is a path.
    """

    __slots__ = ("name", "attribute", "default", "parse", "allowed", "is_path")

    def __init__(self, name: str, default, rule: tuple[Parser, str], is_path: bool = False):
        self.name = name
        self.attribute = name.replace("-", "_")
        self.default = default
        self.parse, self.allowed = rule
        self.is_path = is_path


_PATH = (_text, "a path")

SERVER_TABLE = (
    Key("central", "tcp:7000:interface=127.0.0.1",
        (_endpoint, "a Twisted server endpoint string such as tcp:7000")),
    Key("interface", "127.0.0.1", (_address, "an IPv4 or IPv6 address")),
    Key("state-dir", "knocker-state", _PATH, is_path=True),
    Key("pool-size", 100, _number(int, 1, 30000)),
    Key("pool-range", (10000, 32000), (_port_range, "LOW-HIGH")),
    Key("knocks", 1000, _number(int, 1, 1_000_000)),
    Key("ports-per-knock", 6, _number(int, 1, 64)),
    Key("knock-window", 10, _number(int, 1, 3600)),
    Key("lockout", 60.0, _number(float, 0, 86400)),
    Key("lockout-scope", "knock", _choice("knock", "global", "source")),
    Key("lockout-memory", 3600.0, _number(float, 0, 31_536_000)),
    Key("lockout-max", 3600.0, _number(float, 0, 31_536_000)),
    Key("source-prefix6", 64, _number(int, 1, 128)),
    Key("never-lock", (), (_networks, "addresses or CIDR networks, separated by commas or spaces")),
    Key("max-concurrent", 1, _number(int, 1, 10000)),
    Key("max-connections", 64, _number(int, 1, 100000)),
    Key("max-connections-per-source", 8, _number(int, 1, 100000)),
    Key("handshake-timeout", 5.0, _number(float, 0.1, 300)),
    Key("on-success", None, _PATH, is_path=True),
    Key("on-close", None, _PATH, is_path=True),
    Key("open-duration", 300.0, _number(float, 0, 31_536_000)),
    Key("script-timeout", 10.0, _number(float, 0.1, 3600)),
    Key("on-check", None, _PATH, is_path=True),
    Key("check-interval", 2.0, _number(float, 0.5, 3600)),
    Key("action-env", ("KNOCKER_PROTECTED_PORTS", "KNOCKER_NFT_TABLE", "KNOCKER_NFT_TIMEOUT",
                       "KNOCKER_NFT"),
        (_env_names, "names of environment variables (letters, digits, _) separated by "
                     "spaces or commas, other than " + ", ".join(ACTION_OWN_ENV) +
                     " (the daemon sets those)")),
    Key("renew-at", None, _number(int, 0, 1_000_000)),
    Key("audit-log", None, _PATH, is_path=True),
    Key("audit-hit-rate", 100, _number(int, 1, 1_000_000)),
    Key("audit-min-free", 100, _number(int, 0, 1_000_000)),
    Key("admin", "tcp:8750:interface=127.0.0.1",
        (_admin, "empty (no console), tcp:PORT:interface=ADDRESS on a loopback address, or "
                 "ssl:PORT:privateKey=...:certKey=... (TLS) on any address; each option "
                 "once, as NAME=VALUE")),
    Key("database", "", (_database, "empty (SQLite in state-dir) or a libpq URI such as "
                                    "postgresql://knocker@db.example/knocker?sslmode=verify-full")),
    Key("database-key-file", None, _PATH, is_path=True),
    Key("gateway", "", (lambda text: text, "a name for this gateway, its own in the fleet "
                                           "(required with database)")),
)

CLIENT_TABLE = (
    Key("server", "tcp:host=127.0.0.1:port=7000",
        (_endpoints, "a Twisted client endpoint string such as tcp:host=example.org:port=7000, "
                     "or several separated by spaces or newlines")),
    Key("knock-file", None, _PATH, is_path=True),
    Key("log-file", "~/.knocker/client.log", _PATH, is_path=True),
    Key("timeout", 60.0, _number(float, 1, 3600)),
    Key("connect-timeout", 5.0, _number(float, 0.1, 300)),
    Key("busy-retries", 3, _number(int, 0, 100)),
)


def _fields(name: str, table: tuple[Key, ...]) -> type:
    """
    A L{Record} type with one field per key of C{table}, and its defaults.
    """
    return type(name, (Record,), {
        "__slots__": tuple(key.attribute for key in table),
        "_defaults": {key.attribute: key.default for key in table},
    })


class ServerConfig(_fields("ServerFields", SERVER_TABLE)):
    """
    The daemon's settings (C{[server]}), one attribute per key.
    """

    __slots__ = ()

    @property
    def audit_path(self) -> str:
        return self.audit_log or os.path.join(self.state_dir, "audit.log")


class ClientConfig(_fields("ClientFields", CLIENT_TABLE)):
    """
    A client's settings (C{[client]}), one attribute per key.
    """

    __slots__ = ()


_SERVER_KEYS = {key.name: key for key in SERVER_TABLE}
_CLIENT_KEYS = {key.name: key for key in CLIENT_TABLE}
SERVER_KEYS = tuple(_SERVER_KEYS)
CLIENT_KEYS = tuple(_CLIENT_KEYS)


def parse_server_config(
    text: str = "", source: str = "<defaults>", overrides: dict[str, str] | None = None
) -> ServerConfig:
    config = _parse(text, source, "server", _SERVER_KEYS, ServerConfig(), overrides)
    if overrides and {"pool-size", "pool-range", "ports-per-knock"} & set(overrides):
        source = "command line" if source == "<defaults>" else f"{source} and command line"
    low, high = config.pool_range
    if config.pool_size > high - low + 1:
        raise ConfigError(
            f"{source}: [server] pool-size = {config.pool_size} does not fit in "
            f"pool-range = {low}-{high}; allowed: at most {high - low + 1}"
        )
    if config.ports_per_knock > config.pool_size:
        raise ConfigError(
            f"{source}: [server] ports-per-knock = {config.ports_per_knock} is more "
            f"than pool-size = {config.pool_size}"
        )
    return config


def parse_client_config(
    text: str = "", source: str = "<defaults>", overrides: dict[str, str] | None = None
) -> ClientConfig:
    return _parse(text, source, "client", _CLIENT_KEYS, ClientConfig(), overrides)


def load_server_config(path: str | None, overrides: dict[str, str] | None = None) -> ServerConfig:
    return parse_server_config(*_read(path), overrides=overrides)


def load_client_config(path: str | None, overrides: dict[str, str] | None = None) -> ClientConfig:
    return parse_client_config(*_read(path), overrides=overrides)


def _read(path: str | None) -> tuple[str, str]:
    if path is None:
        return "", "<defaults>"
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(), path
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the configuration: {error}") from None


def _parse(text, source, section, keys, defaults, overrides):
    values = {}
    if text:
        values = _parse_file(text, source, section, keys)
    for key, raw in (overrides or {}).items():
        values[key] = _value("command line", section, keys, key, raw.strip(), None)
    return defaults.replace(**{keys[key].attribute: value for key, value in values.items()})


def simple_ini(text: str, section: str) -> dict[str, str] | None:
    """
    The C{key: value} lines of C{[section]} for the plain INI the example
    files use (comments, blank lines, one section header, C{key = value}),
    or C{None} for anything else, which then goes to configparser.

    C{knocker knock --config} reads its file on every knock, and importing
    configparser (and re with it) costs about 7 ms of a knock's 20.  This
    reader accepts only text on which it gives what configparser would,
    and declines the rest (tests/core/test_config.py holds the two to each
    other with hypothesis), so errors still come from one parser.
    """
    values: dict[str, str] = {}
    seen_header = False
    for line in text.split("\n"):
        if not line or line.isspace():
            continue
        if not _PLAIN.issuperset(line) or line[0] in " \t":
            return None
        if line[0] in "#;":
            continue
        if line[0] == "[":
            if line.rstrip() != f"[{section}]" or seen_header:
                return None
            seen_header = True
            continue
        key, equals, value = line.partition("=")
        key = key.strip()
        if not (equals and seen_header and key and _KEY_CHARS.issuperset(key)) or key in values:
            return None
        values[key] = value.strip()
    return values


_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_PLAIN = frozenset(chr(code) for code in range(0x20, 0x7F)) | {"\t"}


def _parse_file(text, source, section, keys):
    simple = simple_ini(text, section)
    if simple is not None:
        base = os.path.dirname(os.path.abspath(source))
        return {key: _value(source, section, keys, key, raw, base)
                for key, raw in simple.items()}
    import configparser  # only for files beyond the plain form: it costs start-up time

    # No DEFAULT section: a stray [DEFAULT] would otherwise be merged silently.
    parser = configparser.ConfigParser(interpolation=None, strict=True, default_section="\0")
    parser.optionxform = str  # keys are case-sensitive: "Lockout" is a typo
    try:
        parser.read_string(text, source=source)
    except configparser.Error as error:
        raise ConfigError(f"{source}: not a valid INI file: {error}") from None
    extra = [name for name in parser.sections() if name != section]
    if extra:
        raise ConfigError(
            f"{source}: unknown section [{extra[0]}]; allowed: [{section}]"
        )
    base = os.path.dirname(os.path.abspath(source)) if source != "<defaults>" else None
    values = {}
    if parser.has_section(section):
        for key, raw in parser.items(section):
            values[key] = _value(source, section, keys, key, raw.strip(), base)
    return values


def _value(source, section, keys, key, raw, base):
    if key not in keys:
        raise ConfigError(
            f"{source}: [{section}] unknown key {key!r}; allowed: {', '.join(keys)}"
        )
    declared = keys[key]
    try:
        value = declared.parse(raw)
    except ValueError:
        raise ConfigError(
            f"{source}: [{section}] {key} = {raw!r} is not allowed; allowed: {declared.allowed}"
        ) from None
    if declared.is_path:
        value = os.path.expanduser(value)
        if base is not None and not os.path.isabs(value):
            value = os.path.join(base, value)
    return value

