"""Where an archive's entries go: a private staging directory, or nowhere (hash only).

:class:`StagingDir` writes every entry into a fresh directory on DEST's filesystem and,
once the unpack loop has verified everything, hands it to :mod:`oxbak.commit` to be put
in place, or removes it. :class:`HashOnly` accepts the same calls and writes nothing: it
is how ``verify`` runs the very loop ``unpack`` runs.

Paths are decided once: ``self._path(rel)`` is the only place a member's on-disk path is
formed, and every ``open``, ``chmod``, ``utime``, ``link`` and ``symlink`` receives that
path. Staging holds no symlink until the very end, so no path used during extraction can
pass through one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from typing import Protocol

from . import format as fmt
from ._fsutil import (
    PATH_MAX,
    WRITEBACK_STEP,
    current_umask,
    fsync_dir,
    lock_dir,
    start_writeback,
    syncfs,
    syncfs_function,
)
from .commit import TREE, Mode, abandon, clean_up, plan, put_in_place, recover
from .digest import Hasher
from .errors import DestinationError, LimitExceededError
from .paths import display, shown
from .xattrs import Applier, Xattrs

__all__ = ["Destination", "HashOnly", "Mode", "StagingDir"]

BACKGROUND_SYNC_STEP = 32 << 20  # staged bytes (4 KiB counted per entry) between syncfs kicks
_ENTRY_COST = 4096
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Destination(Protocol):
    """The sink of the unpack loop. Paths are relative to the tree root; ``b""`` is it."""

    def directory(
        self, path: bytes, mode: int, mtime_ns: int, uid: int, gid: int, xattrs: Xattrs = ()
    ) -> None:
        """Create a directory (its mode, mtime and attributes are applied at :meth:`finish`)."""

    def file(
        self,
        path: bytes,
        mode: int,
        mtime_ns: int,
        uid: int,
        gid: int,
        chunks: Iterable[memoryview],
        xattrs: Xattrs = (),
    ) -> bytes | None:
        """Write a file from *chunks*; return the digest of what was written.

        None: the file is written elsewhere (by a worker process), and its digest comes
        later, from :meth:`digests`.
        """

    def digests(self) -> Iterator[bytes]:
        """The digests of the files :meth:`file` returned None for, in order, once written."""

    def hardlink(self, path: bytes, target: bytes) -> None:
        """Link *path* to the earlier file *target*."""

    def symlink(
        self, path: bytes, target: bytes, mtime_ns: int, uid: int, gid: int, xattrs: Xattrs = ()
    ) -> None:
        """Record a symlink; it is created at :meth:`finish`, after everything else."""

    def finish(self) -> None:
        """Create the deferred symlinks and apply directory modes and times."""


class HashOnly:
    """A destination that writes nothing and only hashes: the sink of ``verify``."""

    def directory(
        self, path: bytes, mode: int, mtime_ns: int, uid: int, gid: int, xattrs: Xattrs = ()
    ) -> None:
        """Nothing to create."""

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
        """Hash *chunks*."""
        hasher = Hasher()
        for chunk in chunks:
            hasher.update(chunk)
        return hasher.digest(fmt.DIGEST_SIZE)

    def digests(self) -> Iterator[bytes]:
        """None: every file was hashed as it came."""
        return iter(())

    def hardlink(self, path: bytes, target: bytes) -> None:
        """Nothing to create."""

    def symlink(
        self, path: bytes, target: bytes, mtime_ns: int, uid: int, gid: int, xattrs: Xattrs = ()
    ) -> None:
        """Nothing to create."""

    def finish(self) -> None:
        """Nothing to finish."""


class StagingDir:
    """Writes into a private directory on DEST's filesystem; :meth:`commit` or :meth:`abort`.

    The tree is staged at ``tree/`` in the unpack's box (:mod:`oxbak.commit`), which is
    locked (``flock``) while this process lives, so :func:`recover` never removes the
    staging area of a running unpack.
    """

    def __init__(
        self, dest: str | os.PathLike[str], *, mode: Mode, same_owner: bool, xattrs: bool = True
    ) -> None:
        # same_owner: chown each entry to the ids the loop hands over (oxbak.owners).
        recover(dest)
        self.plan = plan(dest, mode)
        self.dest = self.plan.dest
        self.mode = mode
        self.same_owner = same_owner and os.geteuid() == 0
        self.xattrs = Applier(xattrs)
        self.parent = self.plan.workdir
        try:
            import tempfile

            self.box = tempfile.mkdtemp(
                prefix=self.plan.box_prefix(self.plan.stamp), dir=self.parent
            )
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise DestinationError(
                    f"cannot unpack into {self.dest!r}: its filesystem is mounted read-only"
                ) from exc
            raise DestinationError(
                f"cannot create a staging directory in {self.parent!r}: {exc.strerror}"
            ) from exc
        self.root = os.path.join(self.box, TREE)
        self._root_b = os.fsencode(self.root)
        self._lock = -1
        self._unsynced = 0
        self._flusher: threading.Thread | None = None
        try:
            self._lock = lock_dir(self.box)
            os.mkdir(self.root, 0o700)
        except OSError as exc:
            self._release()
            abandon(self.plan, self.box)
            raise DestinationError(
                f"cannot lock the staging directory in {self.parent!r}: {exc.strerror}"
            ) from exc
        self._dirs: list[tuple[bytes, int, int, int, int, Xattrs]] = []
        self._links: list[tuple[bytes, bytes, int, int, int, Xattrs]] = []
        self._umask = current_umask()
        self.committed = False

    def _path(self, rel: bytes) -> bytes:
        path = self._root_b + b"/" + rel if rel else self._root_b
        if len(path) >= PATH_MAX:
            # The format allows 4096-byte member names, but the kernel takes at most 4095
            # bytes per path, staging directory included: say which member, not ENAMETOOLONG.
            raise LimitExceededError(
                f"refusing member {shown(rel)!r}: its path is too long to create in "
                f"{self.parent!r} ({len(path)} bytes with the staging directory)"
            )
        return path

    def directory(
        self, path: bytes, mode: int, mtime_ns: int, uid: int, gid: int, xattrs: Xattrs = ()
    ) -> None:
        """Create the directory privately; its mode, mtime and attributes come at the end.

        (A default ACL set now would be inherited by everything created in it.)
        """
        if path:
            os.mkdir(self._path(path), 0o700)
        self._dirs.append((path, mode, mtime_ns, uid, gid, xattrs))

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
        """Create the file exclusively, write and hash *chunks*, set mode and mtime."""
        target = self._path(path)
        perm = mode & 0o1777  # setuid and setgid never survive a restore
        # Writable by its owner until its attributes are on (user.* needs it without root).
        fd = os.open(target, _WRITE_FLAGS, perm | 0o200 if xattrs else perm)
        try:
            hasher = Hasher()
            offset = flushed = 0
            for chunk in chunks:
                hasher.update(chunk)
                while chunk:
                    written = os.write(fd, chunk)
                    chunk = chunk[written:]
                    offset += written
                if offset - flushed >= WRITEBACK_STEP:
                    # The commit's syncfs then waits for the tail, not for every byte.
                    start_writeback(fd, flushed, offset - flushed)
                    flushed = offset
            if self.same_owner:
                os.fchown(fd, uid, gid)  # before the attributes: it clears security.capability
            if xattrs:
                self.xattrs.plain(fd, path, xattrs)
            if perm & self._umask or self.same_owner or xattrs:
                os.fchmod(fd, perm)
            if xattrs:
                self.xattrs.acls(fd, path, xattrs)  # after chmod, which rewrites an ACL's mask
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        self._unsynced += offset + _ENTRY_COST
        if self._unsynced >= BACKGROUND_SYNC_STEP:
            self._sync_in_background()
        return hasher.digest(fmt.DIGEST_SIZE)

    def _sync_in_background(self) -> None:
        """Start flushing what is staged so far while extraction goes on.

        The commit's syncfs is what makes the tree durable; this only leaves it less to do
        (for 60k small files it fell from ~0.3 s to ~15 ms). Only the C library runs in the
        thread, on the lock's descriptor, and any failure is left to that final syncfs.
        """
        fn = syncfs_function()
        if fn is None or (self._flusher is not None and self._flusher.is_alive()):
            return
        self._unsynced = 0
        self._flusher = threading.Thread(
            target=fn, args=(self._lock,), name="oxbak-syncfs", daemon=True
        )
        self._flusher.start()

    def digests(self) -> Iterator[bytes]:
        """None: every file was written as it came."""
        return iter(())

    def hardlink(self, path: bytes, target: bytes) -> None:
        """Link to an earlier file of this archive (the loop checked that it is one)."""
        os.link(self._path(target), self._path(path), follow_symlinks=False)

    def symlink(
        self, path: bytes, target: bytes, mtime_ns: int, uid: int, gid: int, xattrs: Xattrs = ()
    ) -> None:
        """Defer the symlink to :meth:`finish`."""
        self._links.append((path, target, mtime_ns, uid, gid, xattrs))

    def finish(self) -> None:
        """Create symlinks last, then set directory modes, attributes and times, deepest first."""
        for path, target, mtime_ns, uid, gid, xattrs in self._links:
            where = self._path(path)
            os.symlink(target, where)
            if self.same_owner:
                os.lchown(where, uid, gid)
            if xattrs:
                self.xattrs.plain(where, path, xattrs)  # Linux refuses user.* on a symlink
            os.utime(where, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        for path, mode, mtime_ns, uid, gid, xattrs in reversed(self._dirs):
            where = self._path(path)
            if self.same_owner:
                os.lchown(where, uid, gid)
            if xattrs:
                self.xattrs.plain(where, path, xattrs)
            os.chmod(where, mode & 0o1777, follow_symlinks=False)
            if xattrs:
                self.xattrs.acls(where, path, xattrs)
            os.utime(where, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def ensure_room(self, nbytes: int, entries: int) -> None:
        """Refuse before extracting if DEST's filesystem cannot hold *nbytes* and *entries*."""
        st = os.statvfs(self.root)
        free = st.f_bavail * st.f_frsize
        if nbytes > free:
            raise DestinationError(
                f"not enough space for {self.dest!r}: the archive holds {nbytes} bytes, "
                f"the filesystem has {free} free"
            )
        if st.f_files and entries > st.f_favail:
            raise DestinationError(
                f"not enough inodes for {self.dest!r}: the archive holds {entries} entries, "
                f"the filesystem has {st.f_favail} free"
            )

    # -- commit ---------------------------------------------------------------------------
    def commit(self) -> list[str]:
        """Make the staged tree durable, then put it in place according to the mode.

        Up to the commit point a failure leaves DEST as it was (a merge is rolled back).
        After it, DEST holds the restored tree whatever happens, so later steps (syncing
        the directory of the working names, deleting the old tree) only return warnings.
        """
        if self._flusher is not None:
            self._flusher.join()
        syncfs(self.root)
        leftovers = put_in_place(self.plan, self.box, same_owner=self.same_owner)
        self.committed = True
        warnings: list[str] = []
        try:
            try:
                fsync_dir(self.plan.workdir)
            except OSError as exc:
                warnings.append(
                    f"{self.dest!r} is restored, but syncing its directory failed: {exc}"
                )
            self._release()
            clean_up(self.plan, leftovers)
        except KeyboardInterrupt:
            # The restore is done: an interrupt now only stops the clean-up.
            self._release()
            warnings.append(f"interrupted after {self.dest!r} was restored")
        except OSError as exc:
            warnings.append(f"{self.dest!r} is restored, but cleaning up failed: {exc}")
        left = [tree for tree in leftovers if os.path.lexists(tree)]
        if left:
            warnings.append(
                f"{left[0]!r} is left over; `oxbak recover {self.dest}` removes it"
            )
        return warnings

    def merge_conflicts(self, entries: Iterable[tuple[bytes, str]]) -> list[str]:
        """List the paths where DEST and the archive disagree on being a directory.

        A symlink in DEST where the archive has a directory counts too. This is checked
        before anything in DEST is touched.
        """
        problems: list[str] = []
        if not os.path.isdir(self.dest):
            return problems
        dest_b = os.fsencode(self.dest)
        for rel, kind in entries:
            if not rel:
                continue
            try:
                st = os.lstat(dest_b + b"/" + rel)
            except (FileNotFoundError, NotADirectoryError):
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if (kind == "dir") != is_dir:
                what = "a directory" if is_dir else "a non-directory"
                problems.append(
                    f"cannot merge {display(rel)!r}: DEST has {what} there, the archive a {kind}"
                )
        return problems

    def _release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock)
        self._lock = -1

    def abort(self) -> None:
        """Remove the staging directory and everything in it (nothing, once committed)."""
        self._release()
        if not self.committed:
            abandon(self.plan, self.box)

