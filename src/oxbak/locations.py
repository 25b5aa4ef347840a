"""Where archives are read from and written to: a path, ``-``, an S3 URL, a file object.

This module is the one place that opens an archive, and the one place that turns an
``OSError`` of opening or finishing it into :class:`~oxbak.errors.InputError` or
:class:`~oxbak.errors.OutputError`. ``-`` means standard input or output here exactly as
on the command line. An ``s3://`` URL is handed to :mod:`oxbak._s3` (imported only then:
boto3 takes ~150 ms to load), which gives the same two things a file gives and translates
the service's errors the same way.

- Reading, it hands out a forward stream for reading front to back and, when the input
  allows it, random access for reading only the parts a command needs (see
  :class:`~oxbak.compress.SeekTable`).
- Writing to a path, the archive appears whole or not at all: it is written to a locked
  temp file beside the path, made durable, then linked (or with *force*, renamed) into
  place; a temp file left by a killed pack is removed by the next pack to the same path.
  Writing to S3, it is a multipart upload completed only after the last byte, on the
  condition that the key is still free unless *force*, and aborted on any error.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, BinaryIO, Protocol

from .errors import InputError, OutputError, OutputExistsError

if TYPE_CHECKING:
    from ._s3 import S3Object, Upload

# The writing side imports tempfile, logging and the shared fs helpers (ctypes)
# where it runs: the reading commands, `oxbak info` first, never need them (~8 ms).

__all__ = [
    "ARCHIVE_MODE",
    "Archive",
    "Input",
    "Sink",
    "check_absent",
    "is_s3_url",
    "open_input",
    "open_output",
    "s3_endpoint",
    "set_s3_endpoint",
]

#: Permission bits of a new archive file, as restic and borg make theirs.
ARCHIVE_MODE = 0o600
_TEMP_SUFFIX = ".oxbak-tmp"
_TEMP_AROUND = 1 + 1 + 8 + len(_TEMP_SUFFIX)  # ".", ".", tempfile's random part, suffix

#: What the API accepts as an archive: a path, ``"-"``, ``"s3://BUCKET/KEY"``, or a binary
#: file object.
Archive = str | os.PathLike[str] | BinaryIO

_S3_SCHEME = "s3://"
_s3_endpoint_url: str | None = None


def is_s3_url(archive: object) -> bool:
    """Whether *archive* names an object in S3 (a path that starts so: ``./s3:/…``)."""
    return isinstance(archive, str) and archive.startswith(_S3_SCHEME)


def set_s3_endpoint(url: str | None) -> None:
    """Use the S3-compatible service at *url* for ``s3://`` URLs (``--endpoint-url``).

    None (the default) leaves it to the AWS configuration: ``AWS_ENDPOINT_URL`` or AWS.
    """
    global _s3_endpoint_url
    _s3_endpoint_url = url or None


def s3_endpoint() -> str | None:
    """The endpoint :func:`set_s3_endpoint` chose, if any."""
    return _s3_endpoint_url


def _s3_backend(error: type[InputError] | type[OutputError]) -> ModuleType:
    """The S3 backend; boto3 is an optional dependency (the ``s3`` extra)."""
    try:
        from . import _s3
    except ImportError as exc:
        if not (exc.name or "").startswith(("boto3", "botocore")):
            raise
        raise error("s3:// URLs need boto3: pip install 'oxbak[s3]'") from exc
    return _s3


class _FdAccess:
    """Random access to an open regular file by ``pread`` (safe from several threads)."""

    #: Readable by processes forked from this one (``pread`` shares no file offset).
    forkable = True

    def __init__(self, fd: int, base: int, size: int) -> None:
        self._fd = fd
        self._base = base
        self.size = size

    def pread(self, size: int, offset: int, /) -> bytes:
        return os.pread(self._fd, min(size, max(self.size - offset, 0)), self._base + offset)


class _SeekAccess:
    """Random access to a seekable file object without a descriptor (e.g. ``BytesIO``)."""

    #: Not from processes forked from this one: the file object's position is shared.
    forkable = False

    def __init__(self, fh: BinaryIO, base: int, size: int) -> None:
        self._fh = fh
        self._base = base
        self._lock = threading.Lock()
        self.size = size

    def pread(self, size: int, offset: int, /) -> bytes:
        with self._lock:
            self._fh.seek(self._base + offset)
            return self._fh.read(min(size, max(self.size - offset, 0)))


class Readable(Protocol):
    """What the stream readers read an archive from, front to back."""

    def read(self, size: int = -1, /) -> bytes:
        """Some bytes (at most *size*); ``b""`` at the end."""


@dataclass
class Input:
    """An opened archive.

    *stream* reads it forward from its start; *random*, when not None, at any offset.
    """

    name: str
    stream: Readable
    random: _FdAccess | _SeekAccess | S3Object | None


@contextlib.contextmanager
def open_input(archive: Archive) -> Iterator[Input]:
    """Open *archive* for reading: a path, ``"-"`` for standard input, or a file object.

    A file object is read from its current position and is not closed.

    :raises InputError: the archive cannot be opened.
    """
    if isinstance(archive, (str, os.PathLike)):
        path = os.fspath(archive)
        if path == "-":
            yield _wrap(sys.stdin.buffer, "<stdin>")
            return
        if is_s3_url(path):
            s3 = _s3_backend(InputError)
            obj = s3.open_object(path)
            yield Input(path, s3.S3Stream(obj), obj)
            return
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise InputError(f"cannot open archive {path!r}: {exc.strerror}") from exc
        with fh:
            yield _wrap(fh, path)
    else:
        yield _wrap(archive, str(getattr(archive, "name", "<stream>")))


def _wrap(fh: BinaryIO, name: str) -> Input:
    try:
        fd = fh.fileno()
    except (OSError, io.UnsupportedOperation, AttributeError):
        fd = -1
    try:
        if fd >= 0:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return Input(name, fh, None)  # a pipe, a terminal, a socket: forward only
            base = fh.tell()
            return Input(name, fh, _FdAccess(fd, base, st.st_size - base))
        if fh.seekable():
            base = fh.tell()
            end = fh.seek(0, os.SEEK_END)
            fh.seek(base)
            return Input(name, fh, _SeekAccess(fh, base, end - base))
    except OSError as exc:
        raise InputError(f"cannot read archive {name!r}: {exc.strerror or exc}") from exc
    return Input(name, fh, None)


@dataclass
class Sink:
    """An archive being written.

    *stream* takes the bytes; *size* is known once a file is in place (None for a stream).
    """

    name: str
    stream: BinaryIO | _EagerWriteback | Upload
    size: int | None = None


def check_absent(path: str | os.PathLike[str], *, force: bool) -> None:
    """Refuse early to write over *path*, unless *force* (checked again at the end).

    :raises OutputExistsError: *path* exists.
    :raises OutputError: *path* is a directory: nothing could replace it; for an S3 URL,
        the bucket cannot be written to.
    """
    if is_s3_url(path):
        _s3_backend(OutputError).check_absent(path, force=force)
        return
    if os.path.isdir(path) and not os.path.islink(path):
        raise OutputError(f"cannot write the archive to {os.fspath(path)!r}: it is a directory")
    if not force and os.path.lexists(path):
        raise OutputExistsError(f"{os.fspath(path)!r} already exists")


@contextlib.contextmanager
def open_output(
    target: Archive,
    *,
    force: bool = False,
    mode: int = ARCHIVE_MODE,
    size_hint: int | None = None,
) -> Iterator[Sink]:
    """Open where an archive goes: a path or S3 URL (atomically), ``"-"``, a file object.

    A file at a path gets permission bits *mode* exactly (0600 by default: a backup holds
    whatever secrets the state holds). A file object (and stdout) is written to as a
    stream and not closed; what was written to it stays there if the block raises: a
    stream cannot be taken back. *size_hint*, about the most the archive can take, lets
    an upload choose parts large enough for S3's 10,000.

    :raises OutputExistsError: the path exists and *force* is false.
    :raises OutputError: the archive cannot be created or finished.
    """
    if isinstance(target, (str, os.PathLike)):
        path = os.fspath(target)
        if is_s3_url(path):
            with _s3_backend(OutputError).upload(path, force=force, size_hint=size_hint) as upload:
                sink = Sink(path, upload)
                yield sink
            sink.size = upload.size
            return
        if path != "-":
            with _atomic(path, force=force, mode=mode) as stream:
                sink = Sink(path, stream)
                yield sink
            sink.size = os.stat(path).st_size
            return
        target = sys.stdout.buffer
    yield Sink("-", target)


@contextlib.contextmanager
def _atomic(path: str, *, force: bool, mode: int) -> Iterator[_EagerWriteback]:
    """A temp file beside *path*, locked while in use; renamed over *path* on success."""
    import logging
    import tempfile

    from ._fsutil import fsync_dir, side_name

    logger = logging.getLogger("oxbak")
    directory = os.path.dirname(os.path.abspath(path))
    tag = side_name(os.path.basename(path), _TEMP_AROUND)
    _remove_stale_temps(directory, tag)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{tag}.", suffix=_TEMP_SUFFIX)
    except OSError as exc:
        raise OutputError(f"cannot create a file in {directory!r}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w+b", closefd=False) as fh:
            yield _EagerWriteback(fh, fd)
            fh.flush()
            os.fsync(fd)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # no-clobber: fails if something appeared meanwhile
            except FileExistsError as exc:
                raise OutputExistsError(
                    f"{path!r} already exists"
                ) from exc
    except OSError as exc:
        _unlink_quietly(tmp)
        raise OutputError(f"cannot write {path!r}: {exc.strerror or exc}") from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise
    finally:
        os.close(fd)
    # The archive is in place and complete: what follows can only warn.
    try:
        if not force:
            os.unlink(tmp)
        fsync_dir(directory)
    except OSError as exc:
        logger.warning(
            "%r is written, but finishing up failed (%s); a leftover temp file is removed "
            "by the next pack to the same name",
            path,
            exc.strerror or exc,
        )


class _EagerWriteback:
    """The temp file of a pack, handed to the disk every few MiB as it grows.

    The fsync before the rename then waits for the last few MiB, not the whole archive.
    """

    def __init__(self, fh: BinaryIO, fd: int) -> None:
        from ._fsutil import WRITEBACK_STEP, start_writeback

        self._fh = fh
        self._fd = fd
        self._written = 0
        self._flushed = 0
        self._step = WRITEBACK_STEP
        self._start_writeback = start_writeback

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        n = self._fh.write(data)
        self._written += n
        if self._written - self._flushed >= self._step:
            self._fh.flush()
            self._start_writeback(self._fd, self._flushed, self._written - self._flushed)
            self._flushed = self._written
        return n

    def flush(self) -> None:
        self._fh.flush()


def _remove_stale_temps(directory: str, tag: str) -> None:
    """Delete temp files of earlier packs to the same output that were killed."""
    prefix = f".{tag}."
    try:
        names = [
            n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(_TEMP_SUFFIX)
        ]
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live pack holds it
        else:
            _unlink_quietly(path)
        finally:
            os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
