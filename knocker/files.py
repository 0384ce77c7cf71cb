"""
Private files: written 0600 and atomically, refused when others can read them.

Every secret knocker writes (portknock files, the server's copies, TLS keys
made by tests) goes through L{write_private}; every portknock file it reads
goes through L{read_private}.
"""

import os
import stat
import time


class PrivateFileError(ValueError):
    """
    A secret file can be read by group or others, or is not a regular file.
    """


def write_private(path: str, text: str) -> None:
    """
    Write C{text} to C{path} with mode 0600, replacing it atomically, so a
    crash leaves the old file or the new one, never half of one.
    """
    staged = stage_private(path, text)
    try:
        commit_private(staged, path)
    except BaseException:
        discard_private(staged)
        raise


def stage_private(path: str, text: str, owner: tuple[int, int] | None = None) -> str:
    """
    The first half of L{write_private}: C{text} written and synced to a
    new 0600 file beside C{path}, whose name is returned; C{path} is not
    touched until L{commit_private} puts it in place (L{discard_private}
    drops it), so a step that must succeed first can come in between.
    With C{owner} (uid, gid), the new file is given to them through its
    descriptor (by name, another could have been swapped in for it).
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = _new_private_file(directory)
    except OSError as error:  # named as the file asked for, not the temporary one
        raise OSError(error.errno, error.strerror, path) from None
    try:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        discard_private(tmp)
        raise
    return tmp


def commit_private(staged: str, path: str) -> None:
    """
    Put a file from L{stage_private} in place of C{path}, durably; if that
    fails, the staged file is left where it is (the caller says what
    becomes of it).
    """
    os.replace(staged, path)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def discard_private(staged: str) -> None:
    try:
        os.unlink(staged)
    except FileNotFoundError:
        pass


def _new_private_file(directory: str) -> tuple[int, str]:
    """
    A new empty file of mode 0600 in C{directory} under a random name,
    made with C{O_EXCL} (never someone else's file, nor through a link),
    as C{tempfile.mkstemp} makes one.  Not mkstemp itself: importing
    tempfile costs a knock 6-12 ms, and a first knock (a new or renewed
    file) writes FILE.checked through here before it exits.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        name = os.path.join(directory, f".knocker-{os.urandom(8).hex()}.tmp")
        try:
            return os.open(name, flags, 0o600), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory}")


def open_private(path: str):
    """
    Open a secret file for reading (binary), refusing one that group or
    others may read, or that is not a regular file.
    """
    return _open_private(path)[0]


def _open_private(path: str):
    """L{open_private}'s file, and the C{fstat} it was checked by."""
    # O_NONBLOCK: a FIFO in place of the file must not hang the daemon.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PrivateFileError(f"{path}: not a regular file")
        if info.st_mode & 0o077:
            raise PrivateFileError(
                f"{path}: open to group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        return os.fdopen(fd, "rb"), info
    except BaseException:
        os.close(fd)
        raise


def read_private(path: str, limit: int | None = None) -> str:
    """
    Read a secret file, refusing one that group or others may read.

    @param limit: read at most this many bytes (enough for a header).
    """
    with open_private(path) as handle:
        data = handle.read() if limit is None else handle.read(limit)
    return _text(path, data, errors="strict" if limit is None else "ignore")


def _text(path: str, data: bytes, errors: str = "strict") -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as error:
        raise PrivateFileError(f"{path}: not UTF-8 text ({error.reason})") from None


# A file changed this recently may change again without its times moving:
# they come from a clock that ticks in steps (jiffies; whole seconds, or
# two, on some file systems).
SETTLED_SECONDS = 2.0


def read_private_identified(path: str, now=time.time) -> tuple[str, str | None]:
    """
    L{read_private} of the whole file, and what identifies the text read:
    device, inode, size and modification and change times, the same before
    the read and after it.  Text written since has another change time
    (the kernel sets it on every write; no system call sets it back), or
    another inode if the file was replaced.  C{None} instead of an
    identity for a file changed in the last L{SETTLED_SECONDS} (a change in
    the same tick of the file system's clock could leave its times as they
    were), or changed while it was read.

    This trusts the local file system's change time; it is no integrity
    check (a disk edited offline, or a file system that makes its change
    time up, would get past it).  The client uses it only to skip
    re-checking a file it has checked, and still checks the knock it uses.
    """
    handle, before = _open_private(path)
    with handle:
        data = handle.read()
        after = os.fstat(handle.fileno())
    text = _text(path, data)
    identity = _identity(after)
    if identity != _identity(before) or now() - after.st_ctime < SETTLED_SECONDS:
        return text, None
    return text, identity


def _identity(info) -> str:
    return (f"file {info.st_dev} {info.st_ino} {info.st_size} "
            f"{info.st_mtime_ns} {info.st_ctime_ns}")


def is_identity(text: str) -> bool:
    """Whether C{text} is an identity as L{read_private_identified} gives them."""
    words = text.split(" ")
    return (len(words) == 6 and words[0] == "file"
            and all(word.isdigit() and word.isascii() for word in words[1:]))


def ensure_private_dir(path: str) -> None:
    """
    Create C{path} (and parents) as a 0700 directory if it is missing.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
