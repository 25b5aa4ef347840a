"""Tree → entries: one ``lstat`` per entry, in archive order, never following a symlink."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import SourceError
from .format import EntryType
from .paths import display, sort_key

__all__ = ["Entry", "Scan", "scan_tree"]


@dataclass(slots=True)
class Entry:
    """One tree entry as the scan saw it. ``path`` is relative to the root, ``b""`` for it."""

    path: bytes
    kind: EntryType
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    uid: int
    gid: int
    target: bytes = b""  # symlink target, or a hardlink's first path
    dev: int = 0
    nlink: int = 1


@dataclass(slots=True)
class Scan:
    """The result of scanning a tree."""

    root: bytes
    entries: list[Entry] = field(default_factory=list)
    skipped: list[bytes] = field(default_factory=list)


def _excluded(rel: bytes, name: bytes, patterns: Sequence[str]) -> bool:
    if not patterns:
        return False
    rel_s = os.fsdecode(rel)
    name_s = os.fsdecode(name)
    for pattern in patterns:
        subject = rel_s if "/" in pattern.strip("/") else name_s
        if fnmatch.fnmatchcase(subject, pattern.strip("/")):
            return True
    return False


def scan_tree(root: str | os.PathLike[str], excludes: Sequence[str] = ()) -> Scan:
    """Walk *root* depth-first with siblings sorted by name bytes (the archive's order).

    Sockets, FIFOs and devices are collected in ``skipped``; a second path of an inode
    already seen becomes a ``hardlink`` entry naming the first.

    :raises SourceError: if *root* is not a readable directory, or a subdirectory cannot
        be listed.
    """
    root_b = os.fsencode(root)
    try:
        st = os.stat(root_b)
    except OSError as exc:
        raise SourceError(f"cannot pack {display(root_b)!r}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"cannot pack {display(root_b)!r}: not a directory")
    result = Scan(root=root_b)
    result.entries.append(_entry(b"", "dir", st))
    first_of_inode: dict[tuple[int, int], bytes] = {}
    entries = result.entries
    # An explicit stack of pending directories keeps the walk in pre-order without recursion
    # depth limits: children are pushed in reverse so they pop in sorted order.
    pending: list[Entry] = []
    _list_dir(root_b, b"", excludes, pending, result)
    while pending:
        entry = pending.pop()
        entries.append(entry)
        if entry.kind == "dir":
            _list_dir(root_b, entry.path, excludes, pending, result)
        elif entry.nlink > 1:
            # Decided here, in archive order: the first path of an inode is the file.
            key = (entry.dev, entry.ino)
            first = first_of_inode.setdefault(key, entry.path)
            if first != entry.path:
                entry.kind, entry.target, entry.size = "hardlink", first, 0
        elif entry.kind == "symlink":
            try:
                entry.target = os.readlink(root_b + b"/" + entry.path)
            except OSError as exc:
                raise SourceError(
                    f"cannot read symlink {display(entry.path)!r}: {exc.strerror}"
                ) from exc
    result.skipped.sort(key=sort_key)
    return result


def _list_dir(
    root: bytes,
    rel: bytes,
    excludes: Sequence[str],
    pending: list[Entry],
    result: Scan,
) -> None:
    """Push the sorted children of directory *rel* on *pending* (reversed: pop in order).

    Entries are made here, from the lstat, so nothing larger waits on the stack; a second
    path of an inode becomes a hardlink when it is popped, in archive order. Special files
    go to ``result.skipped``.
    """
    path = os.path.join(root, rel) if rel else root
    try:
        with os.scandir(path) as it:
            children = sorted((e.name, e) for e in it)
    except OSError as exc:
        raise SourceError(
            f"cannot list directory {display(rel or b'.')!r}: {exc.strerror}"
        ) from exc
    batch: list[Entry] = []
    prefix = rel + b"/" if rel else b""
    for name, dirent in children:
        child = prefix + name
        if excludes and _excluded(child, name, excludes):
            continue
        try:
            st = dirent.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # vanished between listing and lstat: it was never part of the scan
        except OSError as exc:
            raise SourceError(f"cannot stat {display(child)!r}: {exc.strerror}") from exc
        kind = _KINDS.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            result.skipped.append(child)
        elif kind == "file":
            # The common case, built inline: this loop runs once per file of the tree.
            batch.append(
                Entry(
                    child,
                    "file",
                    st.st_mode & 0o7777,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    st.st_ino,
                    st.st_uid,
                    st.st_gid,
                    b"",
                    st.st_dev,
                    st.st_nlink,
                )
            )
        else:
            batch.append(_entry(child, kind, st))
    pending.extend(reversed(batch))


_KINDS: dict[int, EntryType] = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
}


def _entry(rel: bytes, kind: EntryType, st: os.stat_result, *, target: bytes = b"") -> Entry:
    return Entry(
        path=rel,
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        size=st.st_size if kind == "file" else 0,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        ino=st.st_ino,
        uid=st.st_uid,
        gid=st.st_gid,
        target=target,
        dev=st.st_dev,
        nlink=st.st_nlink if kind == "file" else 1,
    )
