"""
The paths the daemon needs, checked before anything else starts, so that a
missing or unwritable one stops it with a message that names the key that
set the path, the path, who the daemon runs as, and what to do, rather
than a bare C{[Errno 2]} from deep inside.

  - C{state-dir}: created 0700 (with its parents) if missing; it and what
    is in it (C{state.sqlite} and its journal files, C{daemon.lock},
    C{clients/}) must be readable and writable by the daemon's user;
  - the audit log (C{audit-log}, default C{STATE-DIR/audit.log}): its
    folder is created 0700 if missing but its parent exists, else the
    start is refused; the folder (or the file, if it exists) must be
    writable;
  - C{on-check}: an executable file;
  - every program (on-success, on-close, on-check), the configuration
    file and the state directory: no one but root and the daemon's own
    user can change them (L{check_trusted}), checked as the options are
    read (L{knocker.daemon.tap.check_programs}).
"""

import os
import stat


class PathError(Exception):
    """
    A path the daemon needs is missing or unusable; the message says which
    key, which path and what to do.
    """


def _user() -> str:
    """The name of the user the daemon runs as (its uid when it has none)."""
    return _login(os.geteuid())


def _who() -> str:
    return _name(os.geteuid())


def owner_hint(path: str) -> str:
    return f"chown it to the daemon's user (the unit's User=), e.g. chown -R {_user()}: {path}"


def _install(folder: str) -> str:
    """The command that makes C{folder} for the user the daemon runs as."""
    user = _user()
    return f"install -d -m 0700 -o {user} -g {user} {folder}"


def _can(path: str, mode: int) -> bool:
    """
    C{os.access}, but for the effective ids when they are not the real
    ones: under twistd --uid the start runs with the daemon's user's
    effective ids while the real uid is still root's, to whom everything
    is allowed.  Judged from the mode bits then (ACLs aside, as README
    says), not with faccessat2, which older kernels and C libraries lack
    (glibc then quietly judges the real ids) and older seccomp profiles
    refuse.
    """
    euid = os.geteuid()
    if euid == os.getuid():
        return os.access(path, mode)
    try:
        st = os.stat(path)
    except OSError:
        return False
    if euid == 0:
        return True
    if st.st_uid == euid:
        bits = st.st_mode >> 6
    elif st.st_gid == os.getegid() or st.st_gid in os.getgroups():
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & mode & 0o7 == mode


def readable(path: str) -> bool:
    """Whether this process, by its effective ids, may read C{path}."""
    return _can(path, os.R_OK)


def check_state_dir(state_dir: str) -> None:
    key = f"state-dir = {state_dir}"
    if not os.path.isdir(state_dir):
        if os.path.lexists(state_dir):
            raise PathError(f"{key}: exists but is not a directory")
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
        except OSError as error:
            raise PathError(
                f"{key}: missing, and {_who()} cannot create it ({error.strerror}); create it "
                f"for the daemon's user ({_install(state_dir)}) or set state-dir"
            ) from None
    if not _can(state_dir, os.R_OK | os.W_OK | os.X_OK):
        raise PathError(f"{key}: {_who()} cannot read and write it; {owner_hint(state_dir)}")
    for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm", "daemon.lock"):
        path = os.path.join(state_dir, name)
        if os.path.exists(path) and not _can(path, os.R_OK | os.W_OK):
            raise PathError(f"{key}: {_who()} cannot write {path}; {owner_hint(state_dir)}")
    clients = os.path.join(state_dir, "clients")
    if os.path.isdir(clients) and not _can(clients, os.R_OK | os.X_OK):
        raise PathError(f"{key}: {_who()} cannot read {clients}; {owner_hint(state_dir)}")
    console = os.path.join(state_dir, "console")  # the console's credentials
    if os.path.isdir(console) and not _can(console, os.R_OK | os.W_OK | os.X_OK):
        raise PathError(f"{key}: {_who()} cannot write {console}; {owner_hint(state_dir)}")


def check_audit_log(path: str, configured: bool) -> None:
    key = f"audit-log = {path}" if configured else f"audit-log (unset, so {path})"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if os.path.lexists(folder):
            raise PathError(f"{key}: {folder} is not a directory")
        if not os.path.isdir(parent):
            raise PathError(
                f"{key}: its folder {folder} does not exist, nor does {parent}; create it for "
                f"the daemon's user ({_install(folder)}) or set audit-log to a path whose "
                f"folder exists"
            )
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        except OSError as error:
            raise PathError(
                f"{key}: its folder {folder} is missing, and {_who()} cannot create it "
                f"({error.strerror}); create it ({_install(folder)}) or set audit-log"
            ) from None
    if os.path.exists(path):
        if not _can(path, os.W_OK):
            raise PathError(f"{key}: {_who()} cannot write it; {owner_hint(path)}")
    elif not _can(folder, os.W_OK | os.X_OK):
        raise PathError(f"{key}: {_who()} cannot create files in {folder}; "
                        f"{owner_hint(folder)}")


def check_executable(key: str, path: str | None) -> None:
    if path is not None and not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise PathError(f"{key} = {path}: not an executable file")


#: What knocker's own action scripts (etc/scripts) hand their work to: the
#: one found beside the path they were run by, or beside the file a link
#: there leads to.
SCRIPT_HELPERS = ("knocker-nft",)


def check_program(key: str, path: str | None, runs_as: tuple[int, int] | None = None) -> None:
    """
    An action program: executable, and out of reach (L{check_trusted}); so
    is a L{SCRIPT_HELPERS} file beside it, which the shipped scripts run
    (the folder's check alone would let a careless mode on it through).
    That one is root's alone, even for a daemon with a user of its own:
    root runs it too (the firewall units, nft-setup by hand), so whoever
    could change it, the daemon's user included, would run code as root.
    """
    check_executable(key, path)
    if path is None:
        return
    check_trusted(key, path, runs_as)
    folders = dict.fromkeys(os.path.dirname(p) for p in (os.path.abspath(path),
                                                            os.path.realpath(path)))
    for folder in folders:
        for helper in SCRIPT_HELPERS:
            beside = os.path.join(folder, helper)
            if not os.path.lexists(beside):
                continue
            check_trusted(key, beside, (0, 0), named=f"{path}, which runs {beside}",
                          stake=f"what {os.path.basename(path)} runs, as the daemon and as "
                                f"root (the firewall units)")


def check_trusted(key: str, path: str, runs_as: tuple[int, int] | None = None,
                  stake: str | None = None, safe_folder: str = "/etc/knocker/scripts",
                  named: str | None = None) -> None:
    """
    Refuse a program the daemon runs, or the configuration that names the
    programs, when anyone but root and the daemon's own user could change
    it: whoever can would run code as the daemon (root, as a rule).  That
    is the file itself and every folder its path passes through as the
    kernel resolves it, links included (a link's folder, too: whoever can
    write there can point the link elsewhere), much as OpenSSH's
    StrictModes looks at what it trusts.

    A folder anyone may write to is fine when it is sticky (C{/tmp}):
    others cannot rename or remove what is not theirs in it.  A group may
    write only if it is root's group or the daemon's own.  POSIX ACLs are
    not read.

    @param runs_as: C{(uid, gid)} the daemon will run as (twistd's
        C{--uid}/C{--gid}); this process's by default.
    @param stake: what whoever could change C{path} would change (for the
        message); by default, what the daemon runs.
    @param safe_folder: where to move it instead (for the message).
    @param named: how the message names C{path} after C{key =}; by
        default, C{path} itself.
    @raise PathError: the first file or folder that will not do, and how
        to mend it.
    """
    uid, gid = runs_as if runs_as is not None else (os.geteuid(), os.getegid())
    users, groups = {0, uid}, {0, gid}
    stake = stake or f"what the daemon runs as {_name(uid)}"
    folders, real, links = _resolution(key, path)
    shown = f"{key} = {named or path}" + ("" if real == os.path.abspath(path) else
                                          f" (that is {real})")
    # A folder is mended by moving what is in it (its owner may be a user,
    # or root squashed by NFS), a file by chown.
    move = (f"move {os.path.basename(real)} into a folder only root can change, such as "
            f"{safe_folder}")
    for current in folders + [real]:
        try:
            info = os.stat(current)
        except OSError as error:
            raise PathError(f"{shown}: cannot look at {current} ({error.strerror})") from None
        mode = info.st_mode
        folder = current != real
        sticky = folder and mode & stat.S_ISVTX
        what = "folder" if folder or stat.S_ISDIR(mode) else "file"
        if info.st_uid not in users:
            mend = (move if folder else
                    f"make it root's (chown root: {current})"
                    + ("" if uid == 0 else f" or the daemon's (chown {_login(uid)}: {current})"))
            raise PathError(f"{shown}: the {what} {current} belongs to {_name(info.st_uid)}, "
                            f"who could change {stake}; {mend}")
        if not sticky and mode & stat.S_IWOTH:
            raise PathError(
                f"{shown}: anyone can change the {what} {current} (mode "
                f"{stat.S_IMODE(mode):04o}), and so {stake}; "
                f"run: chmod o-w {current}" + (f", or {move}" if folder else "")
            )
        if not sticky and mode & stat.S_IWGRP and info.st_gid not in groups:
            raise PathError(
                f"{shown}: group {_group(info.st_gid)} can change the {what} {current} (mode "
                f"{stat.S_IMODE(mode):04o}), and so {stake}; "
                f"run: chmod g-w {current}" + (f", or {move}" if folder else "")
            )
    for link in links:
        # In a sticky folder (/tmp) a link's owner may still replace it: the
        # folder's check above trusts the owners of what is in it.
        owner = os.lstat(link).st_uid
        if owner not in users and os.stat(os.path.dirname(link)).st_mode & stat.S_ISVTX:
            raise PathError(f"{shown}: the link {link} belongs to {_name(owner)}, who may "
                            f"point it elsewhere in its sticky folder, and so change {stake}; "
                            f"{move}")


def check_state_trusted(state_dir: str, runs_as: tuple[int, int] | None = None) -> None:
    """
    The state decides whom the daemon lets in (the client files and their
    counters): refuse a C{state-dir} that anyone but root and the daemon's
    user could change, as L{check_trusted} does a program.  One not made
    yet is made 0700 by the daemon itself.
    """
    if os.path.exists(state_dir):
        check_trusted("state-dir", state_dir, runs_as,
                      stake="which clients the daemon lets in", safe_folder="/var/lib")


def _resolution(key: str, path: str) -> tuple[list[str], str, list[str]]:
    """
    Every folder a name is looked up in while C{path} is resolved, links
    followed as the kernel follows them, the real path it ends at, and the
    links it passed through.
    """
    parts = os.path.abspath(path).split("/")[::-1]  # a stack: next part last
    current, folders, passed, links = "/", [], [], 0
    while parts:
        name = parts.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        if current not in folders:
            folders.append(current)
        candidate = os.path.join(current, name)
        if os.path.islink(candidate):
            links += 1
            if candidate not in passed:
                passed.append(candidate)
            if links > 40:  # as the kernel gives up (ELOOP)
                raise PathError(f"{key} = {path}: too many links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = "/"
            parts.extend(target.split("/")[::-1])
            continue
        current = candidate
    return folders, current, passed


def _name(uid: int) -> str:
    login = _login(uid)
    return f"uid {uid}" if login == str(uid) else f"user {login} (uid {uid})"


def _login(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def _group(gid: int) -> str:
    try:
        import grp

        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except (ImportError, KeyError):
        return f"gid {gid}"


def check_tls_keys(key: str, endpoint: str | None) -> None:
    """
    The private key an C{ssl:} endpoint (C{central}, C{admin}) serves with
    must not be readable by everyone: whoever reads it can pass for the
    server.  Its group may read it (root's key, group the daemon's, 0640).
    """
    from knocker.core.serverconfig import endpoint_fields

    if not endpoint:
        return
    try:
        fields = endpoint_fields(endpoint)
    except ValueError:
        return  # (refused where the endpoint is read, with its reason)
    if not fields or fields[0] != ("ssl",):
        return
    for field in fields[2:]:
        if len(field) == 2 and field[0] == "privateKey":
            path = field[1]
            try:
                mode = stat.S_IMODE(os.stat(path).st_mode)
            except OSError:
                return  # (Twisted says so as it listens)
            if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
                raise PathError(
                    f"{key}: its private key {path} can be read or changed by others "
                    f"(mode {mode:04o}), who could then pass for this server; run: chmod 0640 "
                    f"{path} (group: the daemon's, if it is not root)")


def check_paths(config) -> None:
    """
    @raise PathError: the first path that will not do.
    """
    check_state_dir(config.state_dir)
    check_audit_log(config.audit_path, config.audit_log is not None)
    check_tls_keys("central", config.central)
    check_tls_keys("admin", config.admin)
    # (Who may change it was judged as the options were read, knowing
    # twistd's --uid: L{knocker.daemon.tap.check_programs}.)
    check_executable("on-check", config.on_check)
