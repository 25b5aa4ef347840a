"""Tree → entries: one ``lstat`` per entry, in archive order, never following a symlink."""

from __future__ import annotations

import errno
import logging
import os
import stat
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from . import format as fmt
from .errors import SourceError
from .format import EntryType
from .manifest import Totals
from .paths import display, sort_key
from .patterns import Excludes
from .xattrs import Xattrs, encoded_size
from .xattrs import read as read_xattrs

__all__ = ["Entry", "Scan", "scan_tree"]

logger = logging.getLogger("oxbak")


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
    xattrs: Xattrs = ()  # extended attributes (none for a hardlink: its file has them)


_KIND_NAMES: tuple[EntryType, ...] = ("file", "dir", "symlink", "hardlink")
_FILE, _DIR, _SYMLINK, _HARDLINK = range(4)


class Scan:
    """The result of scanning a tree: its entries in archive order, and what was skipped.

    Entries are kept one column per field and handed out as :class:`Entry` objects one at
    a time. A tree of a million entries is held for the whole pack, and as objects each
    took about 380 bytes; as columns, about 130 (most of it the path).
    """

    def __init__(self, root: bytes) -> None:
        self.root = root
        self.skipped: list[bytes] = []
        #: The archive being replaced, where it lies inside the tree (left out).
        self.archive_itself: list[bytes] = []
        #: Directories whose contents could not be read in full (``partial`` scans):
        #: path -> what went wrong, e.g. ``could not be listed (Permission denied)``.
        self.unreadable: dict[bytes, str] = {}
        self.paths: list[bytes] = []
        self.kinds = bytearray()
        self.modes = array("I")
        self.sizes = array("q")
        # Nanosecond times fit 64 bits from 1678 to 2262; ext4 stores times up to 2446,
        # so a column widens to a list when a time beyond that turns up.
        self.mtimes: array[int] | list[int] = array("q")
        self.ctimes: array[int] | list[int] = array("q")
        self.inos = array("Q")
        self.uids = array("I")
        self.gids = array("I")
        self.targets: list[bytes] = []
        #: Extended attributes by entry number: most entries have none.
        self.xattrs: dict[int, Xattrs] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def link_targets(self) -> frozenset[bytes]:
        """The files that hardlinks of this scan point to (each group's first path)."""
        return frozenset(
            target
            for target, kind in zip(self.targets, self.kinds, strict=True)
            if kind == _HARDLINK
        )

    def __iter__(self) -> Iterator[Entry]:
        return self.entries(0, len(self.paths))

    def entries(self, start: int, stop: int) -> Iterator[Entry]:
        """Entries *start* to *stop* (excluded), in archive order."""
        names = _KIND_NAMES
        xattrs = self.xattrs.get
        part = slice(start, stop)
        for n, (path, kind, mode, size, mtime, ctime, ino, uid, gid, target) in enumerate(
            zip(
                self.paths[part],
                self.kinds[part],
                self.modes[part],
                self.sizes[part],
                self.mtimes[part],
                self.ctimes[part],
                self.inos[part],
                self.uids[part],
                self.gids[part],
                self.targets[part],
                strict=True,
            ),
            start,
        ):
            yield Entry(
                path, names[kind], mode, size, mtime, ctime, ino, uid, gid, target, xattrs(n, ())
            )

    def add(self, path: bytes, kind: int, st: os.stat_result, target: bytes = b"") -> None:
        """Append one entry (its size counts only for a file)."""
        self.paths.append(path)
        self.kinds.append(kind)
        self.modes.append(st.st_mode & 0o7777)
        self.sizes.append(st.st_size if kind == _FILE else 0)
        try:
            self.mtimes.append(st.st_mtime_ns)
        except OverflowError:
            self.mtimes = _widened(self.mtimes, st.st_mtime_ns)
        try:
            self.ctimes.append(st.st_ctime_ns)
        except OverflowError:
            self.ctimes = _widened(self.ctimes, st.st_ctime_ns)
        self.inos.append(st.st_ino)
        self.uids.append(st.st_uid)
        self.gids.append(st.st_gid)
        self.targets.append(target)

    def read_xattrs(self, path: bytes) -> None:
        """Read the extended attributes of the entry just added, at *path* on disk.

        One that cannot be read, or takes more than the format allows, is named in a
        warning, and the entry is packed without them: the pack goes on.
        """
        rel = self.paths[-1]
        try:
            found, left_out = read_xattrs(path)
        except OSError as exc:
            logger.warning(
                "cannot read the extended attributes of %r (%s); packed without them",
                display(rel) if rel else ".",
                exc.strerror or exc,
            )
            return
        for name in left_out:
            logger.warning(
                "extended attribute %r of %r not stored: oxbak stores user.*, trusted.*, "
                "security.* and POSIX ACLs only",
                display(name),
                display(rel) if rel else ".",
            )
        if found and encoded_size(found) > fmt.MAX_XATTR_BYTES:
            logger.warning(
                "the extended attributes of %r take more than %d bytes; packed without them",
                display(rel) if rel else ".",
                fmt.MAX_XATTR_BYTES,
            )
        elif found:
            self.xattrs[len(self.paths) - 1] = found

    def totals(self) -> Totals:
        """What the scan found, counted as the manifest counts it."""
        kinds = self.kinds
        return Totals(
            files=kinds.count(_FILE),
            hardlinks=kinds.count(_HARDLINK),
            directories=kinds.count(_DIR),
            symlinks=kinds.count(_SYMLINK),
            bytes=sum(self.sizes),
        )

    def per_dir(self) -> dict[bytes, int]:
        """``{directory: entries directly in it}``, directories themselves not counted."""
        counts: dict[bytes, int] = {}
        for path, kind in zip(self.paths, self.kinds, strict=True):
            if kind != _DIR:
                parent = path.rpartition(b"/")[0]
                counts[parent] = counts.get(parent, 0) + 1
        return counts

    def symlinks(self) -> dict[bytes, bytes]:
        """``{path: target}`` of every symlink."""
        return {
            path: target
            for path, kind, target in zip(self.paths, self.kinds, self.targets, strict=True)
            if kind == _SYMLINK
        }


def _widened(column: array[int] | list[int], value: int) -> list[int]:
    """*column* as a list, with *value* appended: for values no 64-bit column holds."""
    wide = list(column)
    wide.append(value)
    return wide


def scan_tree(
    root: str | os.PathLike[str],
    excludes: Sequence[str] | Excludes = (),
    *,
    one_file_system: bool = False,
    exclude_caches: bool = False,
    xattrs: bool = True,
    partial: bool = False,
    skip: tuple[int, int] | None = None,
) -> Scan:
    """Walk *root* depth-first with siblings sorted by name bytes (the archive's order).

    Sockets, FIFOs and devices are collected in ``skipped``; a second path of an inode
    already seen becomes a ``hardlink`` entry naming the first.

    With *one_file_system*, a directory on another filesystem (a mount point under
    *root*) is kept, empty, and not entered, as ``tar --one-file-system`` does. With
    *exclude_caches*, a directory holding a valid ``CACHEDIR.TAG`` keeps only that file,
    as ``tar --exclude-caches`` does (https://bford.info/cachedir/). With *xattrs*, the
    extended attributes (ACLs included) of every file, directory and symlink are read too.

    With *partial* (``pack``), a subdirectory that cannot be listed, or holds an entry
    that cannot be stat'ed, is kept with what could be read and named in ``unreadable``,
    as restic does, instead of failing the scan: one unreadable directory should not cost
    the whole archive. *root* itself must be listable either way.

    A file whose ``(st_dev, st_ino)`` is *skip* (the archive being replaced, when it lies
    inside *root*) is left out and named in ``skipped``, as tar does with "file is the
    archive; not dumped".

    :raises SourceError: if *root* is not a readable directory, or (without *partial*) a
        subdirectory cannot be listed.
    """
    root_b = os.fsencode(root)
    rules = excludes if isinstance(excludes, Excludes) else Excludes(excludes)
    try:
        st = os.stat(root_b)
    except OSError as exc:
        raise SourceError(f"cannot pack {display(root_b)!r}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"cannot pack {display(root_b)!r}: not a directory")
    result = Scan(root_b)
    result.add(b"", _DIR, st)
    if xattrs:
        result.read_xattrs(root_b)
    root_dev = st.st_dev
    add = result.add
    skipped = result.skipped
    first_of_inode: dict[tuple[int, int], bytes] = {}
    unreadable = result.unreadable if partial else None
    # Depth-first with an explicit stack (no recursion limit): each level holds a
    # directory's sorted names and where it is in them, nothing more. A child is stat'ed
    # when it is reached, so a directory of a million files never holds a million stats.
    top = iter([_CACHE_TAG]) if exclude_caches and _is_cache(root_b) else None
    stack: list[tuple[bytes, Iterator[bytes]]] = [(b"", top or _sorted_names(root_b, b""))]
    while stack:
        rel, names = stack[-1]
        prefix = rel + b"/" if rel else b""
        for name in names:
            child = prefix + name
            try:
                st = os.lstat(root_b + b"/" + child)
            except FileNotFoundError:
                continue  # vanished between listing and lstat: it was never part of the scan
            except OSError as exc:
                if unreadable is None:
                    raise SourceError(f"cannot stat {display(child)!r}: {exc.strerror}") from exc
                # Its kind is unknown, so it cannot be recorded itself: its directory is.
                unreadable.setdefault(
                    rel, f"could not be read in full ({display(child)!r}: {exc.strerror})"
                )
                continue
            kind = _KINDS.get(stat.S_IFMT(st.st_mode))
            if rules and rules.excluded(child, kind == _DIR):
                continue
            if kind == _FILE:
                if skip is not None and (st.st_dev, st.st_ino) == skip:
                    result.archive_itself.append(child)
                    continue
                if st.st_nlink > 1:
                    # Decided here, in archive order: the first path of an inode is the file.
                    first = first_of_inode.setdefault((st.st_dev, st.st_ino), child)
                    if first != child:
                        add(child, _HARDLINK, st, first)
                        continue
                add(child, _FILE, st)
                if xattrs:
                    result.read_xattrs(root_b + b"/" + child)
            elif kind == _DIR:
                add(child, _DIR, st)
                if xattrs:
                    result.read_xattrs(root_b + b"/" + child)
                if one_file_system and st.st_dev != root_dev:
                    continue  # a mount point: kept, not entered
                names_of = _sorted_names(root_b, child, unreadable)
                if exclude_caches and _is_cache(root_b + b"/" + child):
                    names_of = iter([_CACHE_TAG])
                stack.append((child, names_of))
                break  # its entries come next; this level resumes after them
            elif kind == _SYMLINK:
                try:
                    target = os.readlink(root_b + b"/" + child)
                except OSError as exc:
                    raise SourceError(
                        f"cannot read symlink {display(child)!r}: {exc.strerror}"
                    ) from exc
                add(child, _SYMLINK, st, target)
                if xattrs:
                    result.read_xattrs(root_b + b"/" + child)
            else:
                skipped.append(child)
        else:
            stack.pop()
    skipped.sort(key=sort_key)
    return result


_CACHE_TAG = b"CACHEDIR.TAG"
_CACHE_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


def _is_cache(directory: bytes) -> bool:
    """Whether *directory* holds a ``CACHEDIR.TAG`` that starts with the signature."""
    try:
        fd = os.open(directory + b"/" + _CACHE_TAG, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.read(fd, len(_CACHE_SIGNATURE)) == _CACHE_SIGNATURE
    except OSError:
        return False
    finally:
        os.close(fd)


def _sorted_names(
    root: bytes, rel: bytes, unreadable: dict[bytes, str] | None = None
) -> Iterator[bytes]:
    """The names in directory *rel*, sorted by their bytes (the archive's order).

    With *unreadable*, a directory that cannot be listed has no names, and why is noted
    there under *rel*.
    """
    try:
        return iter(sorted(os.listdir(root + b"/" + rel if rel else root)))
    except OSError as exc:
        if unreadable is not None and rel:
            gone = exc.errno in (errno.ENOENT, errno.ENOTDIR)
            unreadable[rel] = (
                "vanished before it could be listed"
                if gone
                else f"could not be listed ({exc.strerror})"
            )
            return iter(())
        raise SourceError(
            f"cannot list directory {display(rel or b'.')!r}: {exc.strerror}"
        ) from exc


_KINDS: dict[int, int] = {
    stat.S_IFREG: _FILE,
    stat.S_IFDIR: _DIR,
    stat.S_IFLNK: _SYMLINK,
}
