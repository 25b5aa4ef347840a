"""Putting a staged, verified tree in place, and cleaning up after a killed unpack.

Each unpack works in one directory of its own, the *box*, on DEST's filesystem: beside
DEST, or inside it where DEST is a mount point. The box holds the staged tree
(``tree/``) and, while a commit that takes several steps runs, its journal and what it
moves out of DEST. The box is locked while its unpack lives, so :func:`recover` (which
every unpack runs first) only ever touches a killed one's.

Where DEST is an ordinary directory (or absent) the commit is one step: ``tree/`` is
renamed onto DEST, or swapped with it (``renameat2`` RENAME_EXCHANGE). That changes DEST's
inode, which cannot work where DEST is a **mount point** (the kernel refuses to rename
one: EBUSY, or EXDEV from beside it) and is wrong where DEST is the **current directory**
(the shell would be left in a deleted directory). There the commit exchanges DEST's
*contents* instead: DEST's top-level entries move into ``old/`` and the staged ones into
DEST, one rename each. That is several steps, so a journal listing them is made durable
first: from then on the commit is decided, and :func:`recover` completes it after a kill
at any moment, leaving exactly the new tree. Before the journal exists, a kill leaves
exactly the old tree.

A box inside DEST changes DEST's own modification time as it comes and goes, so its name
carries the time DEST must have once it is gone (the old one until the commit is decided,
then the new one); :func:`recover` sets it back after removing the box.

``--merge`` replaces entries one rename at a time, each backed up into the box first, and
is rolled back on error (:func:`_merge`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from dataclasses import dataclass
from typing import Literal

from ._fsutil import (
    RANDOM,
    exchange,
    fsync_dir,
    move_noreplace,
    remove_tree,
    side_name,
    syncfs,
    unlocked,
)
from .errors import DestinationError
from .paths import display

__all__ = ["Mode", "Plan", "plan", "recover"]

Mode = Literal["new", "replace", "merge"]

STAGE_PREFIX = ".oxbak-stage-"
OLD_PREFIX = ".oxbak-old-"
MERGE_PREFIX = ".oxbak-merge-"  # merge backups of earlier versions, beside DEST
_PREFIXES = (STAGE_PREFIX, OLD_PREFIX, MERGE_PREFIX)
TREE = "tree"
_ASIDE = "old"
_BACKUP = "backup"
_JOURNAL = "journal"
_JOURNAL_VERSION = 1
_STAMP_ROOM = 22  # "t", up to 20 digits of nanoseconds, "."
# A filesystem's own directory at its root (ext2/3/4): never part of a restored state, so
# a commit into a mount point leaves it where it is unless the archive has one.
_LOST_FOUND = b"lost+found"


@dataclass(frozen=True)
class Plan:
    """Where an unpack of *dest* works and how it will commit.

    *in_place*: commit by exchanging DEST's contents (a mount point, or the current
    directory). *workdir*: where the box goes, on DEST's own filesystem (DEST itself for
    a mount point). *stamp*: DEST's modification time when the box is inside it.
    """

    dest: str
    mode: Mode
    workdir: str
    in_place: bool
    mount_point: bool
    stamp: int | None = None

    def name(self, prefix: str) -> str:
        """The start of a working name of this DEST: *prefix*, DEST's name, a dot."""
        around = len(prefix) + RANDOM + _STAMP_ROOM
        return prefix + side_name(os.path.basename(self.dest), around) + "."

    def box_prefix(self, stamp: int | None) -> str:
        """The start of a box's name, with *stamp* in it when the box is inside DEST."""
        return self.name(STAGE_PREFIX) + (f"t{stamp}." if stamp is not None else "")

    def ours(self, name: bytes) -> bool:
        """True for a working name of an unpack of this DEST (never part of its tree)."""
        return any(name.startswith(os.fsencode(self.name(p))) for p in _PREFIXES)

    def contents(self) -> list[bytes]:
        """DEST's top-level entries that belong to its tree, sorted.

        Inside a mount point, an unpack's own working names are not part of it, nor is
        the filesystem's ``lost+found``.
        """
        names = os.listdir(os.fsencode(self.dest))
        if not self.mount_point:
            return sorted(names)
        return sorted(n for n in names if not (self.ours(n) or n == _LOST_FOUND))


def plan(dest: str | os.PathLike[str], mode: Mode) -> Plan:
    """Check that *dest* can take an unpack in *mode*, and decide how it will go."""
    dest_s = os.path.abspath(os.fspath(dest))
    parent = os.path.dirname(dest_s)
    if not os.path.isdir(parent):
        raise DestinationError(f"cannot unpack into {dest_s!r}: {parent!r} is not a directory")
    try:
        st = os.lstat(dest_s)
    except FileNotFoundError:
        return Plan(dest_s, mode, parent, in_place=False, mount_point=False)
    if stat.S_ISLNK(st.st_mode):
        raise DestinationError(f"cannot unpack into {dest_s!r}: it is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        raise DestinationError(f"cannot unpack into {dest_s!r}: it exists and is not a directory")
    mount = is_mount_point(dest_s)
    here = False
    with contextlib.suppress(OSError):
        here = os.path.samefile(dest_s, os.getcwd())
    result = Plan(
        dest_s,
        mode,
        dest_s if mount else parent,
        in_place=mount or here,
        mount_point=mount,
        stamp=st.st_mtime_ns if mount else None,
    )
    if mode == "new" and result.contents():
        raise DestinationError(
            f"cannot unpack into {dest_s!r}: it is not empty (use --replace or --merge)"
        )
    return result


def is_mount_point(path: str) -> bool:
    """True if *path* is where a filesystem is mounted, bind mounts included.

    ``os.path.ismount`` compares devices and misses a bind mount of a directory of the
    same filesystem, which the kernel still refuses to rename; the mount table knows.
    """
    if os.path.ismount(path):
        return True
    real = os.fsencode(os.path.realpath(path))
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            table = fh.read()
    except OSError:
        return False
    for line in table.splitlines():
        fields = line.split(b" ")
        if len(fields) > 4 and _unescape(fields[4]) == real:
            return True
    return False


def _unescape(field: bytes) -> bytes:
    """A mountinfo path: space, tab, newline and backslash are written as octal escapes."""
    if b"\\" not in field:
        return field
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)


# -- putting the staged tree in place ------------------------------------------------------
def put_in_place(p: Plan, box: str, *, same_owner: bool) -> list[str]:
    """Commit the staged, durable, verified ``box/tree`` to DEST; return what to delete.

    Up to the commit point a failure leaves DEST as it was. What is returned (the box,
    holding the old tree or nothing of use; an old tree moved aside) is no longer part of
    anything: :func:`clean_up` removes it.
    """
    root = os.path.join(box, TREE)
    if p.mode == "merge" and os.path.isdir(p.dest):
        _merge(p, box)
    elif p.in_place:
        _exchange_contents(p, box, same_owner=same_owner)
    elif p.mode == "replace" and os.path.lexists(p.dest):
        aside = _swap(p, root)
        if aside != root:
            return [aside, box]
    else:
        try:
            os.rename(root, p.dest)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise DestinationError(
                    f"cannot unpack into {p.dest!r}: it appeared or was filled meanwhile"
                ) from exc
            raise
    return [box]


def clean_up(p: Plan, leftovers: list[str]) -> None:
    """Delete *leftovers* (from :func:`put_in_place`); DEST keeps the time it was given.

    A box inside DEST is first renamed to carry that time (the commit gave DEST the
    archive root's): a box removed by :func:`recover` then gives DEST that time back.
    """
    stamp = None
    if p.workdir == p.dest:
        stamp = os.stat(p.dest).st_mtime_ns
        box = leftovers[-1]
        suffix = os.path.basename(box)[len(p.box_prefix(p.stamp)) :]
        renamed = os.path.join(p.workdir, p.box_prefix(stamp) + suffix)
        os.rename(box, renamed)
        leftovers[-1] = renamed
    for tree in leftovers:
        remove_tree(tree)
    if stamp is not None:
        _set_mtime(p.dest, stamp)


def abandon(p: Plan, box: str) -> None:
    """Delete a box whose commit did not happen; DEST keeps the time it had.

    A box whose journal is still there holds an exchange that was decided and could not
    be undone: it is left for :func:`recover`, which completes it.
    """
    if os.path.lexists(os.path.join(box, _JOURNAL)):
        return
    remove_tree(box)
    if p.workdir == p.dest and p.stamp is not None:
        _set_mtime(p.dest, p.stamp)


def _set_mtime(path: str, mtime_ns: int) -> None:
    os.utime(path, ns=(os.stat(path).st_atime_ns, mtime_ns))


def _stamp_of(p: Plan, name: str) -> int | None:
    """The time in a box's name (:meth:`Plan.box_prefix`), or None."""
    rest = name[len(p.name(STAGE_PREFIX)) :]
    stamp, dot, _ = rest.partition(".")
    if not dot or not stamp.startswith("t") or not stamp[1:].isdigit():
        return None
    return int(stamp[1:])


def _swap(p: Plan, root: str) -> str:
    """Swap the staged tree into DEST; return where the old tree now is."""
    if exchange(root, p.dest):
        return root
    # Two renames where the atomic swap is missing: a killed process leaves the old
    # tree at OLD_PREFIX…, and recover() puts it back.
    import tempfile

    aside = tempfile.mktemp(prefix=p.name(OLD_PREFIX), dir=p.workdir)
    os.rename(p.dest, aside)
    try:
        os.rename(root, p.dest)
    except BaseException:
        os.rename(aside, p.dest)
        raise
    return aside


def _exchange_contents(p: Plan, box: str, *, same_owner: bool) -> None:
    """Move DEST's entries aside and the staged ones in, under a journal (module doc)."""
    root = os.path.join(box, TREE)
    os.mkdir(os.path.join(box, _ASIDE), 0o700)
    staged = os.stat(root)
    xattrs = _root_xattrs(root)  # before the chmod below rewrites an ACL's mask
    os.chmod(root, 0o700)  # its entries move out, whatever the archive's root mode
    before = os.stat(p.dest)
    journal = _Journal(
        old=p.contents(),
        new=sorted(os.listdir(os.fsencode(root))),
        mode=stat.S_IMODE(staged.st_mode),
        uid=staged.st_uid if same_owner else -1,
        gid=staged.st_gid if same_owner else -1,
        mtime_ns=staged.st_mtime_ns,
        xattrs=xattrs,
    )
    try:
        journal.write(os.path.join(box, _JOURNAL))
    except BaseException:
        # Not durable, so not decided: without a journal the box is only a leftover.
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(box, _JOURNAL))
        raise
    # The commit point: from here on, recover() completes the exchange.
    moves: list[tuple[bytes, bytes]] = []
    try:
        journal.roll_forward(box, p.dest, moves)
        syncfs(p.dest)
    except BaseException as exc:
        try:
            for src, dst in reversed(moves):
                os.rename(dst, src)
            os.chmod(p.dest, stat.S_IMODE(before.st_mode))
            os.utime(p.dest, ns=(before.st_atime_ns, before.st_mtime_ns))
            os.unlink(os.path.join(box, _JOURNAL))
            fsync_dir(box)
        except OSError as again:
            fault = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
            raise DestinationError(
                f"restoring {p.dest!r} stopped half-way ({fault}) and could not be "
                f"undone ({again.strerror}); `oxbak recover {p.dest}` completes it"
            ) from exc
        raise


@dataclass
class _Journal:
    """What a contents exchange will do, written before it starts (module doc).

    Names are DEST's top-level entries (*old*, moved into the box's ``old/``) and the
    staged ones (*new*, moved from ``tree/`` into DEST); *mode*, *uid*, *gid* and
    *mtime_ns* are the archive's root directory's, given to DEST at the end (ids of -1:
    ownership not restored), as are the attributes *xattrs* (see ``_ROOT_XATTRS``).
    """

    old: list[bytes]
    new: list[bytes]
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: list[tuple[str, bytes]]

    def write(self, path: str) -> None:
        """Write the journal whole and durably (temp file, fsync, rename, fsync dir)."""
        data = {
            "oxbak-journal": _JOURNAL_VERSION,
            "old": [n.hex() for n in self.old],
            "new": [n.hex() for n in self.new],
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "mtime_ns": self.mtime_ns,
            "xattrs": [[n, v.hex()] for n, v in self.xattrs],
        }
        temp = path + ".tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(data).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
        fsync_dir(os.path.dirname(path))

    @classmethod
    def read(cls, path: str) -> _Journal:
        """Read a journal :meth:`write` wrote; ValueError if it is not one."""
        with open(path, "rb") as fh:
            data = json.loads(fh.read())
        if not isinstance(data, dict) or data.get("oxbak-journal") != _JOURNAL_VERSION:
            raise ValueError("not a journal this version of oxbak wrote")
        try:
            journal = cls(
                old=[bytes.fromhex(n) for n in data["old"]],
                new=[bytes.fromhex(n) for n in data["new"]],
                mode=int(data["mode"]),
                uid=int(data["uid"]),
                gid=int(data["gid"]),
                mtime_ns=int(data["mtime_ns"]),
                xattrs=[(str(n), bytes.fromhex(v)) for n, v in data["xattrs"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed journal ({exc})") from exc
        if any(b"/" in n or n in (b"", b".", b"..") for n in journal.old + journal.new):
            raise ValueError("malformed journal (a name that is not one directory entry)")
        return journal

    def roll_forward(self, box: str, dest: str, moves: list[tuple[bytes, bytes]]) -> None:
        """Do what is left of the exchange; append each rename done to *moves*.

        Each name is in exactly one of two places, and every old entry is moved out
        before any new one moves in, so whatever step a kill interrupted, what is left
        to do can be read off the directories: this serves the live commit and
        :func:`recover` alike, and running it twice is harmless.
        """
        d = os.fsencode(dest) + b"/"
        s = os.fsencode(os.path.join(box, TREE)) + b"/"
        a = os.fsencode(os.path.join(box, _ASIDE)) + b"/"
        for name in self.old:
            if os.path.lexists(a + name):
                continue
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile by someone else
                os.rename(d + name, a + name)
                moves.append((d + name, a + name))
        for name in self.new:
            if not os.path.lexists(s + name):
                continue  # already in DEST
            if os.path.lexists(d + name):
                # Not the old tree's (that is all aside): created in DEST meanwhile. It
                # goes with the old tree, as it would have in a one-step swap.
                there = a + name
                number = 0
                while os.path.lexists(there):
                    number += 1
                    there = a + b"%d." % number + name
                os.rename(d + name, there)
                moves.append((d + name, there))
            move_noreplace(s + name, d + name)
            moves.append((s + name, d + name))
        if self.uid >= 0:
            os.chown(dest, self.uid, self.gid)
        os.chmod(dest, self.mode)
        _set_xattrs(dest, self.xattrs)  # after chmod, which rewrites an ACL's mask
        os.utime(dest, ns=(self.mtime_ns, self.mtime_ns))


# The attributes the staged root may have been given from the archive and DEST's own must
# then match. security.* is left alone: the kernel labels both directories itself.
_ROOT_XATTRS = ("user.", "trusted.", "system.posix_acl_")


def _root_xattrs(path: str) -> list[tuple[str, bytes]]:
    """The extended attributes (ACLs included) of *path* in those namespaces."""
    try:
        names = os.listxattr(path)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise
    return [(n, os.getxattr(path, n)) for n in sorted(names) if n.startswith(_ROOT_XATTRS)]


def _set_xattrs(path: str, xattrs: list[tuple[str, bytes]]) -> None:
    """Make *path*'s attributes in those namespaces exactly *xattrs*."""
    want = dict(xattrs)
    for name, _ in _root_xattrs(path):
        if name not in want:
            os.removexattr(path, name)
    for name, value in xattrs:
        os.setxattr(path, name, value)


# -- merge ---------------------------------------------------------------------------------
_Steps = list[tuple[str, bytes, bytes, "os.stat_result | None"]]


def _merge(p: Plan, box: str) -> None:
    # Iterative, depth-first: a recursion per level would fail on a deep tree. Each
    # directory is opened with O_NOFOLLOW and entries are renamed relative to that
    # descriptor, so no rename passes through a symlink in DEST. Every replaced entry
    # is first hard-linked into the box's backup directory, so an error half-way can be
    # rolled back; a kill leaves each entry old or new, never torn, and recover() then
    # removes the box.
    backup = os.fsencode(os.path.join(box, _BACKUP))
    os.mkdir(backup, 0o700)
    journal: _Steps = []
    try:
        _merge_into(p.dest, os.fsencode(os.path.join(box, TREE)), backup, journal)
    except BaseException as exc:
        problems = _roll_back(journal, backup)
        if problems:
            fault = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
            raise DestinationError(
                f"merge into {p.dest!r} failed ({fault}) and could not be fully "
                f"rolled back: " + "; ".join(problems[:3])
            ) from exc
        raise


def _merge_into(dest: str, root: bytes, backup: bytes, journal: _Steps) -> None:
    dest_b = os.fsencode(dest)
    todo: list[tuple[bytes, bytes, os.stat_result | None]] = [(b"", root, None)]
    while todo:
        rel, src, finished = todo.pop()
        where = dest_b + b"/" + rel if rel else dest_b
        fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if finished is not None:
                os.chmod(fd, stat.S_IMODE(finished.st_mode))
                os.utime(fd, ns=(finished.st_atime_ns, finished.st_mtime_ns))
                continue
            # Before anything in it changes: its mode and times, to roll back to.
            journal.append(("meta", where, b"", os.fstat(fd)))
            todo.append((rel, src, os.lstat(src)))
            for name in sorted(os.listdir(src), reverse=True):
                here = src + b"/" + name
                try:
                    there = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    there = None
                if there is not None and stat.S_ISDIR(there.st_mode) and os.path.isdir(here):
                    todo.append((rel + b"/" + name if rel else name, here, None))
                    continue
                if there is not None:
                    kept = backup + b"/%d" % len(journal)
                    os.link(name, kept, src_dir_fd=fd, follow_symlinks=False)
                # Files, links and new directories move in one rename: never torn.
                os.rename(here, name, dst_dir_fd=fd)
                journal.append(("added" if there is None else "replaced", where, name, None))
        finally:
            os.close(fd)


def _roll_back(journal: _Steps, backup: bytes) -> list[str]:
    """Undo a merge's steps in reverse order; return what could not be undone."""
    problems: list[str] = []
    for number in range(len(journal) - 1, -1, -1):
        action, where, name, before = journal[number]
        path = where + b"/" + name
        try:
            if action == "replaced":
                os.rename(backup + b"/%d" % number, path)
            elif action == "added":
                if os.path.isdir(path) and not os.path.islink(path):
                    remove_tree(path)
                else:
                    os.unlink(path)
            elif before is not None:
                os.chmod(where, stat.S_IMODE(before.st_mode))
                os.utime(where, ns=(before.st_atime_ns, before.st_mtime_ns))
        except OSError as exc:
            problems.append(f"{display(path)!r}: {exc.strerror}")
    return problems


# -- recover -------------------------------------------------------------------------------
def recover(dest: str | os.PathLike[str]) -> list[str]:
    """Clean up after an unpack of *dest* that was killed; return what was done.

    A box whose journal was written has its exchange completed first. A box nobody
    holds is deleted. A moved-aside old tree (left only where the atomic swap is
    unavailable) is moved back if DEST is missing, else deleted. Working names are looked
    for beside DEST and, for a mount point, inside it.
    """
    dest_s = os.path.abspath(os.fspath(dest))
    p = Plan(dest_s, "replace", os.path.dirname(dest_s), in_place=False, mount_point=False)
    actions: list[str] = []
    places = [p.workdir]
    if os.path.isdir(dest_s) and not os.path.islink(dest_s) and is_mount_point(dest_s):
        places.append(dest_s)
    for where in places:
        try:
            names = sorted(os.listdir(where))
        except OSError:
            continue
        stamp: int | None = None
        for name in names:
            path = os.path.join(where, name)
            if not p.ours(os.fsencode(name)) or not unlocked(path):
                continue
            if name.startswith(p.name(STAGE_PREFIX)):
                done = _complete(path, dest_s)
                if done is not None:
                    actions.append(f"completed the interrupted restore of {dest_s!r}")
                stamp = done if done is not None else _stamp_of(p, name)
            if name.startswith(p.name(OLD_PREFIX)) and not os.path.lexists(dest_s):
                os.rename(path, dest_s)
                actions.append(f"restored {dest_s!r} from {name!r}")
                continue
            remove_tree(path)
            actions.append(f"removed leftover {name!r}")
        if where == dest_s and stamp is not None:
            _set_mtime(dest_s, stamp)
    return actions


def _complete(box: str, dest: str) -> int | None:
    """Complete the exchange journaled in *box*, if any; return DEST's time to keep."""
    path = os.path.join(box, _JOURNAL)
    if not os.path.lexists(path):
        return None
    try:
        journal = _Journal.read(path)
    except (OSError, ValueError) as exc:
        raise DestinationError(f"cannot recover {dest!r}: {path!r}: {exc}") from exc
    journal.roll_forward(box, dest, [])
    syncfs(dest)
    return journal.mtime_ns
