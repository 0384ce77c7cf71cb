"""
The pool of knock ports, and how hard a knock is to guess.

Pure: randomness is passed in so tests can pin it; callers use
L{secrets.SystemRandom}.
"""

from math import comb, perm
from random import Random


def choose_pool(size: int, low: int, high: int, rng: Random) -> tuple[int, ...]:
    """
    Draw C{size} distinct ports from C{low}..C{high} inclusive, sorted.
    """
    span = high - low + 1
    if not 1 <= size <= span:
        raise ValueError(
            f"a pool of {size} ports does not fit in {low}-{high} ({span} ports)"
        )
    return tuple(sorted(rng.sample(range(low, high + 1), size)))


def choose_knock(pool: tuple[int, ...], ports: int, rng: Random) -> tuple[int, ...]:
    """
    Draw one knock: C{ports} distinct pool ports in a random order.
    """
    return tuple(rng.sample(pool, ports))


def keyspace(pool_size: int, ports: int) -> tuple[int, int]:
    """
    How many knocks there are to guess from: ordered sequences (what the
    server checks) and unordered sets (what a scan that ignores order faces).
    """
    return perm(pool_size, ports), comb(pool_size, ports)


def ensure_pool(store, config, rng: Random | None = None) -> tuple[int, ...]:
    """
    The server's pool, drawn once (on first use) from C{pool-range} and kept
    in C{store} (an L{knocker.state.interface.IStore}) from then on, so it
    never changes under existing files.
    """
    pool = store.pool()
    if pool is None:
        if rng is None:
            import secrets

            rng = secrets.SystemRandom()
        low, high = config.pool_range
        pool = choose_pool(config.pool_size, low, high, rng)
        try:
            store.set_pool(pool)
        except Exception:
            # Drawn meanwhile by another (two gateways starting on a new
            # fleet database): the one kept is the pool.
            kept = store.pool()
            if kept is None:
                raise
            pool = kept
    return pool
