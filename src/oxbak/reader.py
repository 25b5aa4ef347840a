"""Archive → manifest, members and index: the *source* side of unpack, verify, info, list.

:class:`ArchiveReader` parses the tar stream itself, strictly, over
:class:`~oxbak.compress.ZstdReader`: every header checksum is verified, a bad header is an
error (never a silent end of archive), pax headers are bounded, and nothing but zero
padding may follow the end-of-archive marker. Memory stays bounded: member data is handed
out in pieces of at most 1 MiB straight from the decompression buffer.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from . import format as fmt
from .compress import ZstdReader
from .errors import CorruptArchiveError, LimitExceededError, ManifestError, OxbakError
from .manifest import (
    Index,
    IndexRecord,
    Manifest,
    decode_index_header,
    decode_index_record,
    decode_manifest,
)
from .paths import display, parse_member_name, shown
from .tarfmt import (
    PAX,
    REGULAR,
    Header,
    check_pax_size,
    decode_pax,
    is_zero_block,
    known_pax_size,
    padding,
    parse_header,
)

__all__ = ["ArchiveReader", "EntryInfo", "list_entries", "open_archive", "read_manifest"]

_BLOCK = fmt.BLOCK_SIZE
_READ = 1 << 20
_MANIFEST_MEMBER = fmt.MANIFEST_NAME.encode()
_INDEX_MEMBER = fmt.INDEX_NAME.encode()

Archive = str | os.PathLike[str] | BinaryIO


@contextlib.contextmanager
def open_archive(archive: Archive) -> Iterator[ArchiveReader]:
    """Open *archive* (a path, ``"-"`` for standard input, or a binary file object)."""
    if isinstance(archive, (str, os.PathLike)):
        path = os.fspath(archive)
        if path == "-":
            with contextlib.closing(ArchiveReader(sys.stdin.buffer, name="<stdin>")) as reader:
                yield reader
            return
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise OxbakError(f"cannot open archive {path!r}: {exc.strerror}") from exc
        with fh, contextlib.closing(ArchiveReader(fh, name=path)) as reader:
            yield reader
    else:
        name = getattr(archive, "name", "<stream>")
        with contextlib.closing(ArchiveReader(archive, name=name)) as reader:
            yield reader


class ArchiveReader:
    """Reads one archive front to back: ``read_manifest``, ``members``, ``index``, ``finish``."""

    def __init__(self, raw: BinaryIO, *, name: str = "<stream>") -> None:
        self.name = name
        self._z = ZstdReader(raw)
        self._buf = b""
        self._pos = 0
        self._offset = 0  # decompressed bytes consumed before _buf
        self._pending = 0  # unread data + padding of the current member
        self._chunk = 16 * 1024
        self._index_header: Header | None = None
        self.manifest: Manifest | None = None

    # -- buffer -----------------------------------------------------------------------
    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _fill(self, n: int) -> bool:
        """Make at least *n* bytes available; False at the end of the stream."""
        while len(self._buf) - self._pos < n:
            more = self._z.read(max(self._chunk, n))
            # Start small so `info` decompresses little; grow for throughput after that.
            self._chunk = min(self._chunk * 2, _READ)
            if not more:
                return False
            self._offset += self._pos
            self._buf = self._buf[self._pos :] + more
            self._pos = 0
        return True

    def _take(self, n: int) -> bytes:
        if not self._fill(n):
            raise self._premature(
                f"archive is truncated: the tar stream ends inside a member "
                f"(at byte {self._offset + len(self._buf)})"
            )
        data = self._buf[self._pos : self._pos + n]
        self._pos += n
        return data

    def _skip(self, n: int) -> None:
        while n:
            if not self._fill(1):
                raise self._premature("archive is truncated: the tar stream ends inside a member")
            step = min(n, self._available())
            self._pos += step
            n -= step

    def _premature(self, message: str) -> CorruptArchiveError:
        """The error for a tar stream that ended early: a zstd-level cause comes first."""
        self._z.check_end()  # raises if the archive is empty or its last frame is cut
        return CorruptArchiveError(message)

    # -- members ----------------------------------------------------------------------
    def _next_header(self) -> Header | None:
        """The next member's header (pax applied), or None at the end-of-archive marker."""
        pending = self._pending
        self._pending = 0
        if len(self._buf) - self._pos >= pending:
            self._pos += pending
        else:
            self._skip(pending)
        pax: dict[bytes, bytes] | None = None
        while True:
            if len(self._buf) - self._pos < _BLOCK and not self._fill(_BLOCK):
                raise self._premature(
                    "archive is truncated: the tar end-of-archive marker is missing"
                )
            pos = self._pos
            block = self._buf[pos : pos + _BLOCK]
            self._pos = pos + _BLOCK
            size = known_pax_size(block)
            owner = fmt.PAX_HEADER_NAME
            if size is None:
                if is_zero_block(block):
                    if pax is not None:
                        raise CorruptArchiveError("pax header is not followed by a member")
                    self._end_of_archive()
                    return None
                header = parse_header(block, pax)
                if header.typeflag != PAX:
                    self._pending = header.size + -header.size % _BLOCK  # data + padding
                    return header
                size, owner = header.size, header.name
                check_pax_size(size, owner)
            if pax is not None:
                raise CorruptArchiveError("two pax headers in a row")
            end = pos + _BLOCK + size + -size % _BLOCK
            if len(self._buf) >= end:  # the records and their padding are all here
                data = self._buf[pos + _BLOCK : pos + _BLOCK + size]
                self._pos = end
            else:
                data = self._take(size)
                self._skip(padding(size))
            pax = decode_pax(data, owner)

    def _end_of_archive(self) -> None:
        block = self._take(_BLOCK) if self._fill(_BLOCK) else b""
        if not is_zero_block(block):
            raise CorruptArchiveError("tar end-of-archive marker is incomplete or followed by data")
        consumed = self._offset + self._pos
        slack = -consumed % fmt.RECORD_SIZE
        rest = self._buf[self._pos :]
        while len(rest) < slack + 1:
            more = self._z.read(_READ)
            if not more:
                break
            rest += more
        if len(rest) > slack or rest.count(0) != len(rest):
            raise CorruptArchiveError("data follows the tar end-of-archive marker")
        self._buf, self._pos = b"", 0
        self._z.check_end()

    def read_manifest(self) -> Manifest:
        """Decode member 1, which must be ``manifest.json``; checks format and version.

        :raises ManifestError: no manifest first, or a malformed one.
        :raises UnsupportedVersionError: the archive is from a newer format version.
        """
        header = self._next_header()
        if header is None:
            raise ManifestError("archive has no manifest.json (it holds no members)")
        if header.name == _MANIFEST_MEMBER and header.typeflag != REGULAR:
            raise ManifestError("manifest.json is not a regular file member")
        if header.name != _MANIFEST_MEMBER:
            raise ManifestError(
                f"first member is {shown(header.name[:200])!r}, not {fmt.MANIFEST_NAME}"
            )
        if header.size > fmt.MAX_MANIFEST_BYTES:
            raise LimitExceededError(
                f"manifest.json is {header.size} bytes, limit {fmt.MAX_MANIFEST_BYTES}"
            )
        data = self._take(header.size)
        self._skip(padding(header.size))
        self._pending = 0
        self.manifest = decode_manifest(data)
        return self.manifest

    def members(self) -> Iterator[Header]:
        """Tree members in archive order, up to (not including) the index.

        Data not read with :meth:`data` is skipped. Names are *not* validated here: that
        is the unpack loop's job, with the rest of its rules.
        """
        self._z.read_ahead()
        while True:
            header = self._next_header()
            if header is None:
                raise CorruptArchiveError("archive has no index.jsonl (it ends after the tree)")
            if header.name == _INDEX_MEMBER:
                if header.typeflag != REGULAR:
                    raise CorruptArchiveError("index.jsonl is not a regular file member")
                self._index_header = header
                return
            if header.name == _MANIFEST_MEMBER:
                raise ManifestError("archive holds a second manifest.json")
            yield header

    def data(self, size: int) -> Iterable[memoryview]:
        """The current member's *size* data bytes, in pieces; its padding is skipped later."""
        pos = self._pos
        if len(self._buf) - pos >= size:
            # The common case for small files: the whole member is already decompressed.
            self._pos = pos + size
            self._pending -= size
            return (memoryview(self._buf)[pos : pos + size],)
        return self._data_pieces(size)

    def _data_pieces(self, size: int) -> Iterator[memoryview]:
        left = size
        while left:
            if not self._fill(1):
                raise self._premature("archive is truncated: the tar stream ends inside a member")
            step = min(left, self._available(), _READ)
            view = memoryview(self._buf)[self._pos : self._pos + step]
            self._pos += step
            left -= step
            self._pending -= step
            yield view

    def index(self) -> tuple[Index, Iterator[IndexRecord]]:
        """After :meth:`members` ends: the index header and an iterator over its records."""
        header = self._index_header
        if header is None:
            raise CorruptArchiveError("index.jsonl was not reached")
        lines = self._lines(header.size)
        first = next(lines, None)
        if first is None:
            raise CorruptArchiveError("index.jsonl is empty")
        return decode_index_header(first), (
            decode_index_record(line, n) for n, line in enumerate(lines, 1)
        )

    def _lines(self, size: int) -> Iterator[bytes]:
        partial = b""
        for view in self.data(size):
            chunk = partial + bytes(view)
            lines = chunk.split(b"\n")
            partial = lines.pop()
            if max(len(partial), max(map(len, lines), default=0)) > fmt.MAX_INDEX_LINE_BYTES:
                raise LimitExceededError(
                    f"index.jsonl has a line longer than {fmt.MAX_INDEX_LINE_BYTES} bytes"
                )
            yield from lines
        if partial:
            raise CorruptArchiveError("index.jsonl does not end with a newline")

    def finish(self) -> None:
        """After the index: the end-of-archive marker, then the end of the zstd stream."""
        if self._next_header() is not None:
            raise CorruptArchiveError("archive has members after index.jsonl")

    def close(self) -> None:
        """Stop background decompression (the archive file is the opener's to close)."""
        self._z.close()

    @property
    def bytes_in(self) -> int:
        """Compressed bytes read so far."""
        return self._z.walker.bytes_in


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """One tree entry as ``list`` shows it. ``path`` is relative to the tree root."""

    path: bytes
    type: str
    mode: int
    size: int
    mtime_ns: int
    target: bytes = b""

    @property
    def name(self) -> str:
        """The path for people (see :func:`oxbak.paths.display`); ``.`` for the root."""
        return display(self.path) if self.path else "."


_KINDS = {b"0": "file", b"5": "dir", b"2": "symlink", b"1": "hardlink"}


def read_manifest(archive: Archive) -> Manifest:
    """The manifest of *archive*, checked; decompresses only the start of the archive.

    :raises ArchiveError: no manifest first, a malformed one, or a newer format version.
    """
    with open_archive(archive) as reader:
        return reader.read_manifest()


def list_entries(archive: Archive) -> Iterator[EntryInfo]:
    """Every tree entry of *archive* in order, without extracting or hashing anything.

    Names are checked as unpack checks them; a hostile name raises instead of printing.
    """
    with open_archive(archive) as reader:
        reader.read_manifest()
        for header in reader.members():
            rel = parse_member_name(header.name)
            kind = _KINDS[header.typeflag]
            target = header.linkname
            if kind == "hardlink":
                target = parse_member_name(target)
            yield EntryInfo(rel, kind, header.mode, header.size, header.mtime_ns, target)
        _, records = reader.index()
        for _ in records:
            pass
        reader.finish()
