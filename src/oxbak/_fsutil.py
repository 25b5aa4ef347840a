"""The filesystem calls the pack and unpack sides share: libc extras, durability, clean-up.

``renameat2`` and ``syncfs`` are not in the :mod:`os` module; they are reached through
the C library already loaded into the process. Everything here works on paths or
descriptors and knows nothing of archives.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from .digest import hexdigest

if TYPE_CHECKING:
    import ctypes

# ctypes is imported where it is used: `oxbak cat`, `list` and `verify` import the
# staging module (for HashOnly) but never swap or sync a directory (~5 ms).

NAME_MAX = 255
PATH_MAX = 4096  # including the terminating NUL
WRITEBACK_STEP = 8 << 20  # large files are handed to the disk every this many bytes
RANDOM = 1 + 8  # the "." and the random part tempfile adds to a prefix

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, for renameat2 and syncfs.

    The process's own symbols include libc; ``ctypes.util.find_library`` would run
    ``ldconfig`` and cost milliseconds at every start.
    """
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _renameat2(a: bytes, b: bytes, flags: int, a_dir: int, b_dir: int) -> bool:
    """renameat2(2) with *flags*; False where the kernel or filesystem lacks it."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is None:
        return False
    if fn(a_dir, a, b_dir, b, flags) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fsdecode(a), None, os.fsdecode(b))


def exchange(a: str, b: str) -> bool:
    """Swap two directories in one step (RENAME_EXCHANGE); False if unavailable."""
    return _renameat2(os.fsencode(a), os.fsencode(b), _RENAME_EXCHANGE, _AT_FDCWD, _AT_FDCWD)


def move_noreplace(
    src: bytes, dst: bytes, *, src_dir_fd: int = _AT_FDCWD, dst_dir_fd: int = _AT_FDCWD
) -> None:
    """Rename *src* to *dst*, failing with EEXIST if *dst* exists.

    Where RENAME_NOREPLACE is missing, the check and the rename are two steps: a name
    that appears between them is replaced, as a plain rename would.
    """
    if _renameat2(src, dst, _RENAME_NOREPLACE, src_dir_fd, dst_dir_fd):
        return
    try:
        os.stat(dst, dir_fd=None if dst_dir_fd == _AT_FDCWD else dst_dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(
            src,
            dst,
            src_dir_fd=None if src_dir_fd == _AT_FDCWD else src_dir_fd,
            dst_dir_fd=None if dst_dir_fd == _AT_FDCWD else dst_dir_fd,
        )
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(dst))


def syncfs(path: str) -> None:
    """Make everything written on *path*'s filesystem durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs_fd(fd)
    finally:
        os.close(fd)


def syncfs_fd(fd: int) -> None:
    """:func:`syncfs` on an open descriptor (``sync`` where syncfs is missing)."""
    fn = getattr(_libc(), "syncfs", None)
    if fn is None or fn(fd) != 0:
        os.sync()


def syncfs_function() -> Callable[[int], int] | None:
    """The raw C syncfs, for a background thread that must not touch Python objects."""
    return cast("Callable[[int], int] | None", getattr(_libc(), "syncfs", None))


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


def fsync_dir(path: str | bytes) -> None:
    """Make a rename or creation in directory *path* durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(root: str | bytes) -> None:
    """Delete *root* and everything under it, as far as possible, without recursion.

    ``shutil.rmtree`` recurses once per level; a hostile archive's deep tree would end it
    with a RecursionError and leave the staging directory behind. Directories are made
    writable first, since a restored tree may hold read-only ones.
    """
    stack: list[tuple[str, bool]] = [(os.fsdecode(root), False)]
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
    room = NAME_MAX - around
    if len(raw) <= room:
        return base
    return os.fsdecode(raw[: room - 17]) + "~" + hexdigest(raw)[:16]


def lock_dir(path: str | bytes) -> int:
    """Open directory *path* and hold an exclusive ``flock`` on it; return the descriptor.

    The lock lives as long as the process (or until the descriptor is closed), which is
    how :func:`unlocked` tells a running unpack's directories from a killed one's.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlocked(path: str | bytes) -> bool:
    """True if directory *path* exists and no live process holds its lock."""
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


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def prctl(option: int, value: int) -> None:
    """Set a process attribute with the prctl system call (a no-op without the C library)."""
    fn = getattr(_libc(), "prctl", None)
    if fn is not None:
        fn(option, value, 0, 0, 0)
