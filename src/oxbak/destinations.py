"""Where an archive's entries go: a private staging directory, or nowhere (hash only).

:class:`StagingDir` writes every entry under a fresh directory beside DEST and, once the
unpack loop has verified everything, commits it (rename into place, atomic swap, or merge)
or removes it. :class:`HashOnly` accepts the same calls and writes nothing: it is how
``verify`` runs the very loop ``unpack`` runs.

Paths are decided once: ``self._path(rel)`` is the only place a member's on-disk path is
formed, and every ``open``, ``chmod``, ``utime``, ``link`` and ``symlink`` receives that
path. Staging holds no symlink until the very end, so no path used during extraction can
pass through one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import stat
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal, Protocol, cast

from . import format as fmt
from .digest import Hasher, hexdigest
from .errors import DestinationError, LimitExceededError
from .paths import display, shown
from .xattrs import Applier, Xattrs

if TYPE_CHECKING:
    import ctypes

# ctypes and tempfile are imported where they are used: `oxbak cat`, `list` and `verify`
# import this module (for HashOnly) but never create or swap a directory (~5 ms).

__all__ = [
    "Destination",
    "HashOnly",
    "Mode",
    "StagingDir",
    "current_umask",
    "fsync_dir",
    "recover",
    "remove_tree",
    "start_writeback",
]

Mode = Literal["new", "replace", "merge"]

STAGE_PREFIX = ".oxbak-stage-"
OLD_PREFIX = ".oxbak-old-"
MERGE_PREFIX = ".oxbak-merge-"
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_RENAME_EXCHANGE = 2
_PATH_MAX = 4096  # including the terminating NUL
WRITEBACK_STEP = 8 << 20  # large files are handed to the disk every this many bytes
BACKGROUND_SYNC_STEP = 32 << 20  # staged bytes (4 KiB counted per entry) between syncfs kicks
_ENTRY_COST = 4096
_NAME_MAX = 255
_RANDOM = 1 + 8  # the "." and the random part tempfile adds


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
    ) -> bytes:
        """Write a file from *chunks*; return the digest of what was written."""

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

    def hardlink(self, path: bytes, target: bytes) -> None:
        """Nothing to create."""

    def symlink(
        self, path: bytes, target: bytes, mtime_ns: int, uid: int, gid: int, xattrs: Xattrs = ()
    ) -> None:
        """Nothing to create."""

    def finish(self) -> None:
        """Nothing to finish."""


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, for renameat2 and syncfs (not in the os module).

    The process's own symbols include libc; ``ctypes.util.find_library`` would run
    ``ldconfig`` and cost milliseconds at every start.
    """
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _exchange(a: str, b: str) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); False if absent."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), a)


def _syncfs(path: str) -> None:
    """Make everything written on *path*'s filesystem durable."""
    fn = getattr(_libc(), "syncfs", None)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if fn is None or fn(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    fn = getattr(_libc(), "sync_file_range", None)
    if fn is not None:
        import ctypes

        fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        fn.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int] | None", fn)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing *length* bytes at *offset* of *fd* to disk, now.

    Only a head start for the fsync or syncfs that makes the data durable later: that one
    then waits for the last few MiB instead of everything. Failure is ignored for the
    same reason.
    """
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: str) -> None:
    """Make a rename or creation in directory *path* durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(root: str) -> None:
    """Delete *root* and everything under it, as far as possible, without recursion.

    ``shutil.rmtree`` recurses once per level; a hostile archive's deep tree would end it
    with a RecursionError and leave the staging directory behind. Directories are made
    writable first, since a restored tree may hold read-only ones.
    """
    stack: list[tuple[str, bool]] = [(root, False)]
    while stack:
        path, emptied = stack.pop()
        if emptied:
            with contextlib.suppress(OSError):
                os.rmdir(path)
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            with contextlib.suppress(OSError):
                os.unlink(path)
            continue
        with contextlib.suppress(OSError):
            if st.st_mode & 0o700 != 0o700:
                os.chmod(path, 0o700)
        stack.append((path, True))
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, False))
                    else:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
        except OSError:
            continue


def side_name(base: str, around: int) -> str:
    """*base*, shortened if need be, for a name beside it that adds *around* bytes.

    Staging, backup and temp names embed DEST's or OUT's name; for a name near NAME_MAX
    (255 bytes) that would not fit. The shortened form keeps a prefix and adds a digest
    of the whole name, so it is the same every time (``recover`` finds it) and two long
    names that share a prefix still differ.
    """
    raw = os.fsencode(base)
    room = _NAME_MAX - around
    if len(raw) <= room:
        return base
    return os.fsdecode(raw[: room - 17]) + "~" + hexdigest(raw)[:16]


def recover(dest: str | os.PathLike[str]) -> list[str]:
    """Clean up after an unpack of *dest* that was killed; return what was done.

    A staging directory or merge backup nobody holds is deleted. A moved-aside old tree
    (left only where the atomic swap is unavailable) is moved back if DEST is missing,
    else deleted.
    """
    dest_s = os.path.abspath(os.fspath(dest))
    parent, base = os.path.split(dest_s)
    actions: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return actions
    for name in sorted(names):
        for prefix in (STAGE_PREFIX, OLD_PREFIX, MERGE_PREFIX):
            if not name.startswith(prefix + side_name(base, len(prefix) + _RANDOM) + "."):
                continue
            path = os.path.join(parent, name)
            if not _unlocked(path):
                continue
            if prefix == OLD_PREFIX and not os.path.lexists(dest_s):
                os.rename(path, dest_s)
                actions.append(f"restored {dest_s!r} from {name!r}")
            else:
                remove_tree(path)
                actions.append(f"removed leftover {name!r}")
    return actions


def _unlocked(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class StagingDir:
    """Writes into a private directory beside *dest*; :meth:`commit` or :meth:`abort`.

    The directory is locked (``flock``) while this process lives, so :func:`recover` never
    removes the staging area of a running unpack.
    """

    def __init__(
        self, dest: str | os.PathLike[str], *, mode: Mode, same_owner: bool, xattrs: bool = True
    ) -> None:
        # same_owner: chown each entry to the ids the loop hands over (oxbak.owners).
        self.dest = os.path.abspath(os.fspath(dest))
        self.mode = mode
        self.same_owner = same_owner and os.geteuid() == 0
        self.xattrs = Applier(xattrs)
        parent, base = os.path.split(self.dest)
        self.parent = parent
        if not os.path.isdir(parent):
            raise DestinationError(
                f"cannot unpack into {self.dest!r}: {parent!r} is not a directory"
            )
        _check_dest(self.dest, mode)
        recover(self.dest)
        try:
            import tempfile

            tag = side_name(base, len(STAGE_PREFIX) + _RANDOM)
            self.root = tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{tag}.", dir=parent)
        except OSError as exc:
            raise DestinationError(
                f"cannot create a staging directory in {parent!r}: {exc.strerror}"
            ) from exc
        self._root_b = os.fsencode(self.root)
        self._lock = -1
        self._unsynced = 0
        self._flusher: threading.Thread | None = None
        try:
            self._lock = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        except OSError as exc:
            self._release()
            remove_tree(self.root)
            raise DestinationError(
                f"cannot lock the staging directory in {parent!r}: {exc.strerror}"
            ) from exc
        self._dirs: list[tuple[bytes, int, int, int, int, Xattrs]] = []
        self._links: list[tuple[bytes, bytes, int, int, int, Xattrs]] = []
        self._umask = current_umask()
        self.committed = False

    def _path(self, rel: bytes) -> bytes:
        path = self._root_b + b"/" + rel if rel else self._root_b
        if len(path) >= _PATH_MAX:
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
        fn = getattr(_libc(), "syncfs", None)
        if fn is None or (self._flusher is not None and self._flusher.is_alive()):
            return
        self._unsynced = 0
        self._flusher = threading.Thread(
            target=fn, args=(self._lock,), name="oxbak-syncfs", daemon=True
        )
        self._flusher.start()

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

    # -- commit --------------------------------------------------------------------------
    def commit(self) -> list[str]:
        """Make the staged tree durable, then put it in place according to the mode.

        Up to the commit point a failure leaves DEST as it was (a merge is rolled back).
        After it, DEST holds the restored tree whatever happens, so later steps (syncing
        the parent directory, deleting the old tree) only return warnings.
        """
        if self._flusher is not None:
            self._flusher.join()
        _syncfs(self.root)
        old: str | None = None
        if self.mode == "merge" and os.path.isdir(self.dest):
            self._merge()
        elif self.mode == "replace" and os.path.lexists(self.dest):
            old = self._replace()
        else:
            self._rename_new()
        self.committed = True
        warnings: list[str] = []
        try:
            try:
                fsync_dir(self.parent)
            except OSError as exc:
                warnings.append(f"{self.dest!r} is restored, but syncing its parent failed: {exc}")
            self._release()
            if old is not None:
                remove_tree(old)
        except KeyboardInterrupt:
            # The restore is done: an interrupt now only stops the clean-up.
            self._release()
            warnings.append(f"interrupted after {self.dest!r} was restored")
        if old is not None and os.path.lexists(old):
            warnings.append(
                f"the old tree is left at {old!r}; `oxbak recover {self.dest}` removes it"
            )
        return warnings

    def _rename_new(self) -> None:
        try:
            os.rename(self.root, self.dest)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise DestinationError(
                    f"cannot unpack into {self.dest!r}: it appeared or was filled meanwhile"
                ) from exc
            raise

    def _replace(self) -> str:
        """Swap the staged tree into DEST; return where the old tree now is."""
        if _exchange(self.root, self.dest):
            return self.root
        # Two renames where the atomic swap is missing: a killed process leaves the old
        # tree at OLD_PREFIX…, and recover() puts it back.
        import tempfile

        tag = side_name(os.path.basename(self.dest), len(OLD_PREFIX) + _RANDOM)
        aside = tempfile.mktemp(
            prefix=f"{OLD_PREFIX}{tag}.",
            dir=self.parent,
        )
        os.rename(self.dest, aside)
        try:
            os.rename(self.root, self.dest)
        except BaseException:
            os.rename(aside, self.dest)
            raise
        return aside

    def _merge(self) -> None:
        # Iterative, depth-first: a recursion per level would fail on a deep tree. Each
        # directory is opened with O_NOFOLLOW and entries are renamed relative to that
        # descriptor, so no rename passes through a symlink in DEST. Every replaced entry
        # is first hard-linked into a backup directory, so an error half-way can be rolled
        # back; a kill leaves each entry old or new, never torn, and recover() then
        # removes the backup.
        import tempfile

        tag = side_name(os.path.basename(self.dest), len(MERGE_PREFIX) + _RANDOM)
        backup = os.fsencode(tempfile.mkdtemp(prefix=f"{MERGE_PREFIX}{tag}.", dir=self.parent))
        journal: list[tuple[str, bytes, bytes, os.stat_result | None]] = []
        # Locked like the staging directory, so recover() leaves a running merge's alone;
        # its own prefix, so recover() only ever deletes it (it is never an old tree).
        try:
            lock = os.open(backup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            remove_tree(os.fsdecode(backup))
            raise
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._merge_into(backup, journal)
        except BaseException as exc:
            problems = _roll_back(journal, backup)
            remove_tree(os.fsdecode(backup))
            if problems:
                fault = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
                raise DestinationError(
                    f"merge into {self.dest!r} failed ({fault}) and could not be fully "
                    f"rolled back: " + "; ".join(problems[:3])
                ) from exc
            raise
        finally:
            os.close(lock)
        remove_tree(os.fsdecode(backup))
        remove_tree(self.root)

    def _merge_into(
        self, backup: bytes, journal: list[tuple[str, bytes, bytes, os.stat_result | None]]
    ) -> None:
        dest_b = os.fsencode(self.dest)
        todo: list[tuple[bytes, bytes, os.stat_result | None]] = [(b"", self._root_b, None)]
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
        if not self.committed:
            remove_tree(self.root)
        self._release()


def _roll_back(
    journal: list[tuple[str, bytes, bytes, os.stat_result | None]], backup: bytes
) -> list[str]:
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
                    remove_tree(os.fsdecode(path))
                else:
                    os.unlink(path)
            elif before is not None:
                os.chmod(where, stat.S_IMODE(before.st_mode))
                os.utime(where, ns=(before.st_atime_ns, before.st_mtime_ns))
        except OSError as exc:
            problems.append(f"{display(path)!r}: {exc.strerror}")
    return problems


def _check_dest(dest: str, mode: Mode) -> None:
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise DestinationError(f"cannot unpack into {dest!r}: it is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        raise DestinationError(f"cannot unpack into {dest!r}: it exists and is not a directory")
    if mode == "new" and os.listdir(dest):
        raise DestinationError(
            f"cannot unpack into {dest!r}: it is not empty (use --replace or --merge)"
        )


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
