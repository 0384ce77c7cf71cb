"""
Making a portknock file (docs/spec.md section 3): drawing its knocks and
writing its text.  Only the server side makes files; clients only read
them (L{knocker.core.knockfile}), so the knock path never loads this.
"""

from knocker.core.knockfile import (
    CLIENT_ID_RULE,
    FORMAT_VERSION,
    SECRET_BYTES,
    KnockFile,
    valid_client_id,
)


def generate(client, pool, knocks, ports, rng, secret, now) -> KnockFile:
    """
    Make a new portknock file for C{client} from C{pool}; C{rng} (a
    L{random.Random}) and C{secret} must come from L{secrets} in real use;
    C{now} is an aware L{datetime.datetime}.
    """
    check_generation(client, pool, knocks, ports, secret)
    return KnockFile(
        client=client,
        secret=secret,
        ports_per_knock=ports,
        created=created_stamp(now),
        knocks=tuple(draw_knocks(pool, ports, rng, knocks)),
    )


def check_generation(client, pool, knocks: int, ports: int, secret: bytes) -> None:
    """
    @raise ValueError: a file that L{generate} must not make; says why.
    """
    if not valid_client_id(client):
        raise ValueError(f"client id {client!r} does not match {CLIENT_ID_RULE}")
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"the secret must be {SECRET_BYTES} bytes")
    if not 1 <= ports <= min(64, len(pool)):
        raise ValueError(f"ports per knock must be 1-{min(64, len(pool))} "
                         f"(at most 64, and no more than the pool's {len(pool)})")
    if not 1 <= knocks <= 1_000_000:
        raise ValueError("a portknock file holds 1 to 1,000,000 knocks")


def draw_knocks(pool, ports: int, rng, knocks: int):
    """
    The knocks of a new file, one at a time: a caller on the reactor can
    draw a big file in slices (L{knocker.daemon.renewals}).
    """
    from knocker.core.pool import choose_knock

    for _ in range(knocks):
        yield choose_knock(pool, ports, rng)


def created_stamp(now) -> str:
    """The C{created} header of a file made at C{now} (an aware datetime)."""
    from datetime import timezone

    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_knockfile(kf: KnockFile) -> str:
    return ("".join(header_lines(kf.client, kf.secret, kf.ports_per_knock, kf.created))
            + "".join(knock_lines(kf.knocks)))


def header_lines(client: str, secret: bytes, ports: int, created: str) -> list[str]:
    """The text of a file before its first knock line."""
    return [
        "# knocker portknock file: keep it secret (mode 0600).\n",
        "# Each knock below is used once; the server burns it when it grants it.\n",
        f"version = {FORMAT_VERSION}\n",
        f"client = {client}\n",
        f"secret = {secret.hex()}\n",
        f"ports-per-knock = {ports}\n",
        f"created = {created}\n",
        "\n",
    ]


def knock_lines(knocks, start: int = 1):
    """The lines of C{knocks}, numbered from C{start}."""
    for number, ports in enumerate(knocks, start=start):
        yield f"{number} {','.join(map(str, ports))}\n"
