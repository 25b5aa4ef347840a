"""diff(): what differs between an archive and a directory, in one pass over both.

Both sides come in the archive's entry order (depth-first pre-order, siblings sorted by
the bytes of their names, :func:`~oxbak.paths.sort_key`): the archive's entries from
:func:`~oxbak.restore.list_entries` (from a seekable archive, its table of contents
alone), the directory's from :func:`~oxbak.scan.scan_tree`. So one merge-join finds every
difference; the join holds one entry of each side at a time and no map of either tree
(what each side keeps for itself is theirs: the scan its compact columns, as for
``pack``; ``list_entries`` what its rules need).

What is compared, entry by entry:

- the type (file, dir, symlink, hardlink): when it differs, nothing else is;
- a file's permission bits, size and mtime, and with ``content=True`` its content: each
  file in the directory is read in chunks, hashed (BLAKE3) and compared with the digest
  the archive holds, so a file whose bytes changed under the same size and mtime (bit
  rot, an edit that restored the mtime) is found. A file of another size differs in
  content without being read;
- a directory's permission bits and mtime (a directory's mtime moves when an entry is
  added to it or removed, so such a change shows on the directory as well);
- a symlink's target and mtime (its permission bits are always 0777 on Linux);
- a hardlink's target, which is the first path of its inode in entry order on both sides
  (that is how ``pack`` and the scan record hardlinks). The inode's permissions, size,
  mtime and content belong to that first path, a file on both sides, and are compared
  there, so a hardlink differs only by what it is linked to.

Not compared: ownership (uid, gid, owner names): an archive unpacked by another user than
root belongs to whoever unpacked it, so owners would differ everywhere; extended
attributes and ACLs (the archive's may be partly unrestorable where it is unpacked: a
filesystem without them, ``trusted.*`` without root); nor ctime, inode numbers, access
times. Sockets, FIFOs and devices in the directory are left
out, as ``pack`` leaves them out.

Where the archive's digests come from. A seekable version-2 archive read from a file has
them in its table of contents, which is all that is read. A pipe (``-``) or a version-1
archive has them only in the index at its end, so it is read front to back through the
restore loop, with a sink (:class:`_Sink`) that hashes each file as it passes and joins it
there; at the end the loop checks those hashes and every other rule against the
archive's index, as ``verify`` does. Only then are the changes handed out: they are held
until the archive has been checked (memory in proportion to the changes), so a damaged
archive gives an error, not a diff. The same holds without ``content``: a stream is
always read and checked whole, and the directory's files are read only with ``content``.

Files the archive's table of contents lists as *missing* (scanned, but gone before
``pack`` could read them) are not in the archive: one present in the directory is
``added``, with ``missing`` set; one absent from the directory is no difference. A
directory listed as missing is in the archive, but not its contents (``pack`` could not
read them): what the directory holds is ``added`` with ``missing`` set too.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal, cast

from . import format as fmt
from .chain import ChainSource
from .digest import Hasher
from .envelope import IdentityFile
from .errors import IntegrityError, SourceError
from .locations import Archive
from .paths import display, sort_key
from .restore import Selection, _open_toc, _run, list_entries
from .scan import Entry, scan_tree
from .source import ArchiveSource, TocSource
from .staging import HashOnly
from .xattrs import Xattrs

__all__ = ["Change", "Stat", "Status", "diff"]

#: ``added``: only in the directory; ``removed``: only in the archive; ``modified``: in
#: both, and different.
Status = Literal["added", "removed", "modified"]

_CHUNK = 1 << 20  # bytes read from a file at a time when hashing it


@dataclass(frozen=True, slots=True)
class Stat:
    """An entry as one side holds it.

    ``size`` is 0 but for files; ``target`` is a symlink's target or a hardlink's target
    path (relative to the tree root), ``b""`` otherwise. A hardlink's ``mode``, ``size``
    and ``mtime_ns`` are 0: they are its inode's, compared at the inode's first path.
    """

    type: str
    mode: int
    size: int
    mtime_ns: int
    target: bytes = b""


@dataclass(frozen=True, slots=True)
class Change:
    """One difference. ``path`` is relative to the tree root (``b""`` for the root itself).

    ``archive`` is the entry in the archive (None when ``added``), ``disk`` the entry in
    the directory (None when ``removed``). ``fields`` names what differs, for
    ``modified``: a subset of ``type``, ``mode``, ``size``, ``mtime``, ``target``,
    ``content``, in that order. ``missing`` marks an ``added`` path that the archive lists
    as missing, or that lies in a directory it lists as missing: it vanished or could not
    be read while the archive was packed.
    """

    status: Status
    path: bytes
    archive: Stat | None
    disk: Stat | None
    fields: tuple[str, ...] = ()
    missing: bool = False

    @property
    def name(self) -> str:
        """The path for people (see :func:`oxbak.paths.display`); ``.`` for the root."""
        return display(self.path) if self.path else "."

    @property
    def type(self) -> str:
        """The entry's type: in the directory when ``added``, else in the archive."""
        side = self.disk if self.archive is None else self.archive
        assert side is not None  # a change has at least one side
        return side.type


def diff(
    archive: Archive | Sequence[Archive],
    directory: str | os.PathLike[str],
    *,
    content: bool = False,
    excludes: Sequence[str] = (),
    identities: Sequence[IdentityFile] = (),
) -> Iterator[Change]:
    """Every difference between *archive* and *directory*, in entry order.

    Compares types, permission bits, sizes, mtimes and link targets (see the module's
    documentation for the details, and for what is not compared: ownership); with
    *content*, also each file's content, hashing the file in *directory* and comparing it
    with the archive's digest. Nothing yielded means they are the same.

    From a seekable archive read from a file, only its table of contents is read and the
    changes come as they are found. From a pipe or a version-1 archive, the whole archive
    is read and checked first (as :func:`~oxbak.restore.verify` does), then the changes
    come.

    An incremental archive is compared as the whole tree its table of contents describes
    (the digests of unchanged files are in it too). A chain (a list or tuple, the full
    archive first) is checked to be one, its links from the TOCs, and its last tree is
    compared.

    :param excludes: leave out paths matching these patterns on both sides, as
        ``pack --exclude`` does (a pattern with ``/`` matches the relative path, others a
        name at any depth; an excluded directory takes its subtree with it).
    :param identities: identity files for an encrypted archive, which is read as a
        stream, whole, like a pipe.
    :raises SourceError: *directory* is missing, not a directory, or something in it
        cannot be listed or read.
    :raises ArchiveError: the archive is damaged or unsafe.
    :raises InputError: the archive cannot be read.
    """
    root = os.fsencode(directory)
    _check_directory(root)
    # Selection applies patterns as restore does; stripped of slashes they match exactly
    # what the scan's own patterns match (the scan strips them too).
    select = Selection((), excludes, links=False) if excludes else None
    one = archive if not isinstance(archive, (list, tuple)) else None
    start = None if one is None else _position(cast(Archive, one))
    with _open_toc(archive, identities) as source:
        if isinstance(source, ChainSource):
            source = source.last
        if not isinstance(source, TocSource):
            yield from _streamed(source, directory, content, excludes, select)
            return
        missing = _missing_paths(source, select)
    if start is not None:
        cast(BinaryIO, one).seek(start)  # list_entries reads this file object again from there
    join = _Join(root, scan_tree(directory, excludes, xattrs=False), content, missing)
    push = join.push
    for e in list_entries(archive):
        if select is None or select(e.path):
            yield from push(e.path, e.type, e.mode, e.size, e.mtime_ns, e.target, e.digest)
    yield from join.rest()


def _check_directory(root: bytes) -> None:
    """Raise :class:`SourceError` for a missing *root* before the archive is opened."""
    try:
        st = os.stat(root)
    except OSError as exc:
        raise SourceError(f"cannot diff against {display(root)!r}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"cannot diff against {display(root)!r}: not a directory")


def _position(archive: Archive) -> int | None:
    """Where a seekable file object *archive* is now, to read it a second time from there."""
    if isinstance(archive, (str, os.PathLike)):
        return None
    try:
        return archive.tell() if archive.seekable() else None
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


def _missing_paths(source: TocSource, select: Selection | None) -> frozenset[bytes]:
    """The paths the TOC lists as missing (read only when its header counts some).

    ``list_entries`` does not say which are (it leaves out files that have no member), so
    they are read here.
    """
    if not source.header.missing:
        return frozenset()
    return frozenset(
        r.path for r in source.records() if r.missing and (select is None or select(r.path))
    )


def _was_missing(path: bytes, missing: frozenset[bytes]) -> bool:
    """Whether *path* is missing from the archive.

    It is when the archive lists it as missing, or lists a directory above it as missing
    (one whose contents could not be read when it was packed).
    """
    if not missing:
        return False
    if path in missing or b"" in missing:
        return True
    at = path.rfind(b"/")
    while at > 0:
        if path[:at] in missing:
            return True
        at = path.rfind(b"/", 0, at)
    return False


def _stat(kind: str, mode: int, size: int, mtime_ns: int, target: bytes) -> Stat:
    if kind == "hardlink":
        return Stat("hardlink", 0, 0, 0, target)
    return Stat(kind, mode, size, mtime_ns, target)


def _disk_stat(entry: Entry) -> Stat:
    return _stat(entry.kind, entry.mode, entry.size, entry.mtime_ns, entry.target)


class _Join:
    """The merge-join: the archive's entries pushed in order, the directory's pulled.

    Pushing rather than pulling the archive's side lets the same join run over
    ``list_entries`` (pulled by :func:`diff`) and inside the restore loop (which calls its
    sink, :class:`_Sink`).
    """

    def __init__(
        self, root: bytes, disk: Iterable[Entry], content: bool, missing: frozenset[bytes]
    ) -> None:
        self.root = root
        self.content = content
        self.missing = missing
        self.disk = iter(disk)
        self.buffer = bytearray(_CHUNK) if content else bytearray()
        self.next: Entry | None = None
        self.next_key: tuple[bytes, ...] | None = None
        self._advance()

    def _added(self, entry: Entry) -> Change:
        missing = _was_missing(entry.path, self.missing)
        return Change("added", entry.path, None, _disk_stat(entry), (), missing)

    def push(
        self,
        path: bytes,
        kind: str,
        mode: int,
        size: int,
        mtime_ns: int,
        target: bytes,
        digest: bytes,
    ) -> list[Change]:
        """The changes up to and including the archive's entry at *path*.

        *digest* is the archive's digest of a file's content (``b""`` when not known).
        """
        entry = self.next
        if entry is not None and entry.path == path:
            # The common case, decided without sort keys: both sides hold the path.
            self._advance()
            return self._compared(entry, kind, mode, size, mtime_ns, target, digest)
        changes: list[Change] = []
        key = sort_key(path)
        while entry is not None and self._key() < key:
            changes.append(self._added(entry))
            self._advance()
            entry = self.next
        if entry is not None and entry.path == path:
            self._advance()
            changes += self._compared(entry, kind, mode, size, mtime_ns, target, digest)
        else:
            changes.append(Change("removed", path, _stat(kind, mode, size, mtime_ns, target), None))
        return changes

    def rest(self) -> Iterator[Change]:
        """After the archive's last entry: what is left in the directory is added."""
        while self.next is not None:
            yield self._added(self.next)
            self._advance()

    def _advance(self) -> None:
        self.next = next(self.disk, None)
        self.next_key = None

    def _key(self) -> tuple[bytes, ...]:
        """The sort key of the next entry of the directory, computed once."""
        assert self.next is not None
        if self.next_key is None:
            self.next_key = sort_key(self.next.path)
        return self.next_key

    def _compared(
        self,
        d: Entry,
        kind: str,
        mode: int,
        size: int,
        mtime_ns: int,
        target: bytes,
        digest: bytes,
    ) -> list[Change]:
        """The archive's entry against the directory's at the same path."""
        if kind != d.kind:
            fields: tuple[str, ...] = ("type",)
        elif kind == "hardlink":
            fields = ("target",) if target != d.target else ()
        else:
            found: list[str] = []
            if kind != "symlink" and mode != d.mode:
                found.append("mode")
            if size != d.size:
                found.append("size")
            if mtime_ns != d.mtime_ns:
                found.append("mtime")
            if target != d.target:
                found.append("target")
            # Of another size, the content differs: no need to read it.
            if (
                kind == "file"
                and self.content
                and (size != d.size or self._digest(d.path) != digest)
            ):
                found.append("content")
            fields = tuple(found)
        if not fields:
            return []
        archived = _stat(kind, mode, size, mtime_ns, target)
        return [Change("modified", d.path, archived, _disk_stat(d), fields)]

    def _digest(self, path: bytes) -> bytes:
        """BLAKE3 of the file at *path*, read a chunk at a time into one reused buffer."""
        hasher = Hasher()
        full = self.root + b"/" + path
        try:
            # O_NOFOLLOW: the scan saw a file; a symlink put there since is not followed.
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                buffer = self.buffer
                view = memoryview(buffer)
                while n := os.readv(fd, [buffer]):
                    hasher.update(view[:n])
            finally:
                os.close(fd)
        except OSError as exc:
            raise SourceError(f"cannot read {display(path)!r}: {exc.strerror}") from exc
        return hasher.digest(fmt.DIGEST_SIZE)


class _Sink(HashOnly):
    """The restore loop's destination for a streamed archive: each entry joined as it passes.

    The loop hands files over as chunks; their digest is computed here (and returned,
    so that the loop checks it against the archive's index at the end).
    """

    def __init__(self, join: _Join) -> None:
        self.join = join
        self.changes: list[Change] = []

    def directory(
        self, path: bytes, mode: int, mtime_ns: int, uid: int, gid: int, xattrs: Xattrs = ()
    ) -> None:
        """Join a directory."""
        self.changes += self.join.push(path, "dir", mode, 0, mtime_ns, b"", b"")

    def file(
        self,
        path: bytes,
        mode: int,
        mtime_ns: int,
        uid: int,
        gid: int,
        chunks: Iterable[memoryview],
        xattrs: Xattrs = (),
    ) -> bytes:
        """Hash a file's chunks, join it, return its digest."""
        hasher = Hasher()
        size = 0
        for chunk in chunks:
            hasher.update(chunk)
            size += len(chunk)
        digest = hasher.digest(fmt.DIGEST_SIZE)
        self.changes += self.join.push(path, "file", mode, size, mtime_ns, b"", digest)
        return digest

    def hardlink(self, path: bytes, target: bytes) -> None:
        """Join a hardlink (its inode's mode and mtime are compared at its target)."""
        self.changes += self.join.push(path, "hardlink", 0, 0, 0, target, b"")

    def symlink(
        self, path: bytes, target: bytes, mtime_ns: int, uid: int, gid: int, xattrs: Xattrs = ()
    ) -> None:
        """Join a symlink (its mode is not compared)."""
        self.changes += self.join.push(path, "symlink", 0o777, 0, mtime_ns, target, b"")


def _streamed(
    source: ArchiveSource,
    directory: str | os.PathLike[str],
    content: bool,
    excludes: Sequence[str],
    select: Selection | None,
) -> Iterator[Change]:
    """The changes against an archive read front to back, once it has been checked."""
    root = os.fsencode(directory)
    join = _Join(root, scan_tree(directory, excludes, xattrs=False), content, frozenset())
    sink = _Sink(join)
    problems: list[str] = []
    _, _, flagged = _run(source, sink, problems, None, select)
    if problems:
        raise IntegrityError(problems)
    sink.changes += join.rest()
    # Which files are missing is known only now, from the index at the archive's end.
    missing = frozenset(r.path for r in flagged if r.missing)
    for change in sink.changes:
        if change.status == "added" and _was_missing(change.path, missing):
            change = dataclasses.replace(change, missing=True)
        yield change
