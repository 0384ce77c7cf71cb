"""
Timestamps for the logs: ISO 8601, UTC, microseconds, C{Z}.
"""

from datetime import datetime, timezone


def iso_time(seconds: float) -> str:
    stamp = datetime.fromtimestamp(seconds, timezone.utc)
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")
