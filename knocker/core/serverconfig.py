"""
The daemon's configuration (docs/spec.md section 9): the keys of
C{[server]}, read by the format and rules of L{knocker.core.config}.

L{parse_server_config} is pure; L{load_server_config} reads the file.
"""

import os

from knocker.core.config import (
    PATH,
    ConfigError,
    Key,
    choice,
    endpoint,
    number,
    parse_section,
    read_file,
    record_type,
)


def _port_range(text: str) -> tuple[int, int]:
    allowed = "LOW-HIGH, two ports from 1 to 65535 with LOW <= HIGH"
    low, sep, high = (part.strip() for part in text.partition("-"))
    if not (sep and low.isdigit() and high.isdigit() and low.isascii() and high.isascii()):
        raise ValueError(allowed)
    low, high = int(low), int(high)
    if not 1 <= low <= high <= 65535:
        raise ValueError(allowed)
    return low, high


def endpoint_fields(text: str) -> list[tuple[str, ...]]:
    """
    C{text} split as Twisted's endpoint parsers split it, so a check reads
    what will be bound or connected to: fields at C{:}, a field's key
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
    kind, port, options = _admin_fields(text)
    default = "::" if kind == "tcp6" else "0.0.0.0"
    return kind, options.get("interface", default), port


def admin_certificate(text: str) -> str | None:
    """
    The file holding the certificate an C{ssl:} C{admin} endpoint serves
    (C{certKey}, else C{privateKey}, as Twisted reads them), or C{None}.
    """
    kind, _, options = _admin_fields(text)
    if kind != "ssl":
        return None
    return options.get("certKey") or options.get("privateKey")


def _admin_fields(text: str) -> tuple[str, int, dict[str, str]]:
    fields = endpoint_fields(text)
    if not (len(fields) >= 2 and fields[0] in (("tcp",), ("tcp6",), ("ssl",))
            and len(fields[1]) == 1 and fields[1][0].isascii() and fields[1][0].isdigit()):
        raise ValueError(text)
    options = {}
    for field in fields[2:]:
        if len(field) != 2 or field[0] in options:
            raise ValueError(f"{text}: each option once, as NAME=VALUE")
        options[field[0]] = field[1]
    return fields[0][0], int(fields[1][0]), options


def listening_port(text: str) -> int | None:
    """
    The TCP port a C{tcp:}, C{tcp6:} or C{ssl:} endpoint string listens on,
    or C{None} for another kind or port 0 (any free port).
    """
    fields = endpoint_fields(text)
    if not fields or fields[0] not in (("tcp",), ("tcp6",), ("ssl",)):
        return None
    # As Twisted reads it: port=N wherever it is, else the first field
    # without a name (tcp:7000, tcp:interface=127.0.0.1:7000).
    named = [field[1] for field in fields[1:] if len(field) == 2 and field[0] == "port"]
    positional = [field[0] for field in fields[1:] if len(field) == 1]
    port = (named or positional or [""])[0]
    return int(port) or None if port.isascii() and port.isdigit() else None


def ports_in_pool(config, pool) -> list[tuple[str, int]]:
    """
    C{(key, port)} of C{central} and C{admin} where the port is one of
    C{pool}'s: the daemon could not bind both.
    """
    pool = set(pool)
    found = []
    for key, text in (("central", config.central), ("admin", config.admin)):
        port = listening_port(text) if text else None
        if port in pool:
            found.append((key, port))
    return found


def _admin(text: str) -> str | None:
    """
    The console's endpoint: empty turns it off; off loopback it must be TLS,
    since a session cookie and the bearer tokens cross it.
    """
    import ipaddress

    if not text:
        return None
    endpoint(text)
    kind, host, _ = admin_endpoint(text)
    if kind != "ssl" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(text)
    return text


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
    """
    Strict: a network with bits set past its prefix (C{192.0.2.10/3}) is
    a typo, most likely of C{/32}; read loosely it would exempt an eighth
    of IPv4 from lockouts.
    """
    import ipaddress

    networks = []
    for item in text.replace(",", " ").split():
        try:
            networks.append(str(ipaddress.ip_network(item)))
        except ValueError:
            raise ValueError(item) from None
    return tuple(networks)


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


SERVER_TABLE = (
    Key("central", "tcp:7000:interface=127.0.0.1",
        (endpoint, "a Twisted server endpoint string such as tcp:7000")),
    Key("interface", "127.0.0.1", (_address, "an IPv4 or IPv6 address")),
    Key("state-dir", "knocker-state", PATH, is_path=True),
    Key("pool-size", 100, number(int, 1, 30000)),
    Key("pool-range", (10000, 32000), (_port_range, "LOW-HIGH")),
    Key("knocks", 1000, number(int, 1, 1_000_000)),
    Key("ports-per-knock", 6, number(int, 1, 64)),
    Key("knock-window", 10, number(int, 1, 3600)),
    Key("lockout", 60.0, number(float, 0, 86400)),
    Key("lockout-scope", "knock", choice("knock", "global", "source")),
    Key("lockout-memory", 3600.0, number(float, 0, 31_536_000)),
    Key("lockout-max", 3600.0, number(float, 0, 31_536_000)),
    Key("source-prefix6", 64, number(int, 1, 128)),
    Key("never-lock", (), (_networks, "addresses or CIDR networks with no bits set past the "
                                      "prefix (10.0.0.0/8, not 10.1.2.3/8), separated by commas "
                                      "or spaces"), is_list=True),
    Key("max-concurrent", 1, number(int, 1, 10000)),
    Key("max-connections", 64, number(int, 1, 100000)),
    Key("max-connections-per-source", 8, number(int, 1, 100000)),
    Key("handshake-timeout", 5.0, number(float, 0.1, 300)),
    Key("on-success", None, PATH, is_path=True),
    Key("on-close", None, PATH, is_path=True),
    Key("open-duration", 300.0, number(float, 0, 31_536_000)),
    Key("script-timeout", 10.0, number(float, 0.1, 3600)),
    Key("on-check", None, PATH, is_path=True),
    Key("check-interval", 2.0, number(float, 0.5, 3600)),
    Key("action-env", ("KNOCKER_PROTECTED_PORTS", "KNOCKER_NFT_TABLE", "KNOCKER_NFT_TIMEOUT",
                       "KNOCKER_NFT"),
        (_env_names, "names of environment variables (letters, digits, _) separated by "
                     "spaces or commas, other than " + ", ".join(ACTION_OWN_ENV) +
                     " (the daemon sets those)"), is_list=True),
    Key("renew-at", None, number(int, 0, 1_000_000)),
    Key("audit-log", None, PATH, is_path=True),
    Key("audit-hit-rate", 100, number(int, 1, 1_000_000)),
    Key("audit-min-free", 100, number(int, 0, 1_000_000)),
    Key("admin", "tcp:8750:interface=127.0.0.1",
        (_admin, "empty (no console), tcp:PORT:interface=ADDRESS on a loopback address, or "
                 "ssl:PORT:privateKey=...:certKey=... (TLS) on any address; each option "
                 "once, as NAME=VALUE")),
    Key("database", "", (_database, "empty (SQLite in state-dir) or a libpq URI such as "
                                    "postgresql://knocker@db.example/knocker?sslmode=verify-full"),
        secret=True),
    Key("database-key-file", None, PATH, is_path=True),
    Key("gateway", "", (lambda text: text, "a name for this gateway, its own in the fleet "
                                           "(required with database)")),
)


_SERVER_KEYS = {key.name: key for key in SERVER_TABLE}
SERVER_KEYS = tuple(_SERVER_KEYS)


class ServerConfig(record_type("ServerFields", SERVER_TABLE)):
    """
    The daemon's settings (C{[server]}), one attribute per key.
    """

    __slots__ = ()

    @property
    def audit_path(self) -> str:
        return self.audit_log or os.path.join(self.state_dir, "audit.log")


def parse_server_config(
    text: str = "", source: str = "<defaults>", overrides: dict[str, str] | None = None
) -> ServerConfig:
    config = parse_section(text, source, "server", _SERVER_KEYS, ServerConfig(), overrides)
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
    for key, port in ports_in_pool(config, range(low, high + 1)):
        # The pool is drawn once and kept (the clients' files name its
        # ports): a port drawn over the central or admin one would stop
        # every start with "address already in use".
        raise ConfigError(
            f"{source}: [server] {key} listens on port {port}, inside pool-range = "
            f"{low}-{high}, from which the pool is drawn; move one of them"
        )
    return config


def load_server_config(path: str | None, overrides: dict[str, str] | None = None) -> ServerConfig:
    return parse_server_config(*read_file(path), overrides=overrides)
