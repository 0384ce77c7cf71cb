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
    from datetime import timezone

    from knocker.core.pool import choose_knock

    if not valid_client_id(client):
        raise ValueError(f"client id {client!r} does not match {CLIENT_ID_RULE}")
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"the secret must be {SECRET_BYTES} bytes")
    if not 1 <= ports <= min(64, len(pool)):
        raise ValueError(f"ports per knock must be 1-{min(64, len(pool))} "
                         f"(at most 64, and no more than the pool's {len(pool)})")
    if not 1 <= knocks <= 1_000_000:
        raise ValueError("a portknock file holds 1 to 1,000,000 knocks")
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
