"""
Reading the audit log with its rotated files (etc/knocker.logrotate:
C{audit.log.1}, then C{audit.log.2.gz} ... C{audit.log.30.gz}), oldest first.
"""

import gzip
import os
import re


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


def audit_lines(path: str, since_epoch: float | None = None):
    """
    Every line of the log and its rotations, oldest first, as bytes; a
    file last written before C{since_epoch} is not opened at all.
    """
    for name in audit_files(path):
        if since_epoch is not None and os.path.getmtime(name) < since_epoch:
            continue
        opener = gzip.open if name.endswith(".gz") else open
        with opener(name, "rb") as handle:
            yield from handle
