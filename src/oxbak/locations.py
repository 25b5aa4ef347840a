"""Where archives are read from: a path, ``-`` (standard input) or a binary file object.

This module is the one place that opens an archive for reading, and the one place that
turns an ``OSError`` of opening it into :class:`~oxbak.errors.InputError`. What it hands
out is a forward stream for reading front to back and, when the input allows it, random
access for reading only the parts a command needs (see :mod:`oxbak.compress`'s
:class:`~oxbak.compress.SeekTable`).
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .errors import InputError

__all__ = ["Archive", "Input", "open_input"]

#: What the API accepts as an archive to read: a path, ``"-"``, or a binary file object.
Archive = str | os.PathLike[str] | BinaryIO


class _FdAccess:
    """Random access to an open regular file by ``pread`` (safe from several threads)."""

    def __init__(self, fd: int, base: int, size: int) -> None:
        self._fd = fd
        self._base = base
        self.size = size

    def pread(self, size: int, offset: int, /) -> bytes:
        return os.pread(self._fd, min(size, max(self.size - offset, 0)), self._base + offset)


class _SeekAccess:
    """Random access to a seekable file object without a descriptor (e.g. ``BytesIO``)."""

    def __init__(self, fh: BinaryIO, base: int, size: int) -> None:
        self._fh = fh
        self._base = base
        self._lock = threading.Lock()
        self.size = size

    def pread(self, size: int, offset: int, /) -> bytes:
        with self._lock:
            self._fh.seek(self._base + offset)
            return self._fh.read(min(size, max(self.size - offset, 0)))


@dataclass
class Input:
    """An opened archive.

    *stream* reads it forward from its start; *random*, when not None, at any offset.
    """

    name: str
    stream: BinaryIO
    random: _FdAccess | _SeekAccess | None


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
