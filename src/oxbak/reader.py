"""The tar stream of an archive, parsed strictly: manifest, members, then the index or TOC.

:class:`ArchiveReader` parses the tar stream itself, strictly, over decompressed bytes
(a :class:`~oxbak.compress.ZstdReader` for a stream, a
:class:`~oxbak.compress.FrameStream` for frames of a seekable file): every header checksum
is verified, a bad header is an error (never a silent end of archive), pax headers are
bounded, and nothing but zero padding may follow the end-of-archive marker. Memory stays
bounded: member data is handed out in pieces of at most 1 MiB straight from the
decompression buffer.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO, Protocol

from . import format as fmt
from .compress import ZstdReader
from .envelope import IdentityFile, open_archive
from .errors import CorruptArchiveError, LimitExceededError, ManifestError, NotAnArchiveError
from .manifest import (
    Index,
    IndexRecord,
    Manifest,
    decode_index_header,
    decode_index_record,
    decode_manifest,
)
from .paths import shown
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
from .toc import Record, TocHeader, decode_block, decode_header

__all__ = ["ArchiveReader", "read_manifest"]

_BLOCK = fmt.BLOCK_SIZE
_READ = 1 << 20
_MANIFEST_MEMBER = fmt.MANIFEST_NAME.encode()
_INDEX_MEMBER = fmt.INDEX_NAME.encode()
_TOC_MEMBER = fmt.TOC_NAME.encode()

Archive = str | os.PathLike[str] | BinaryIO


class Decompressed(Protocol):
    """Decompressed bytes, read forward.

    A :class:`~oxbak.compress.ZstdReader` or a :class:`~oxbak.compress.FrameStream`.
    """

    @property
    def bytes_in(self) -> int:
        """Compressed bytes read so far."""

    def read(self, size: int) -> bytes:
        """Some bytes; ``b""`` at the end.

        At most *size* from a stream; from frames, the rest of the current frame.
        """

    def read_ahead(self) -> None:
        """Decompress ahead of the reader from now on, where supported."""

    def check_end(self) -> None:
        """Raise unless the input ended exactly after its last frame."""

    def close(self) -> None:
        """Stop background work."""


class ArchiveReader:
    """Reads a tar stream forward: ``read_manifest``, ``members``, ``records``, ``finish``.

    *stream* is the decompressed archive from its start, or from a member's first header
    block with *offset* saying where that is in the tar stream.
    """

    def __init__(self, stream: Decompressed, *, name: str = "<stream>", offset: int = 0) -> None:
        self.name = name
        self._z = stream
        self._buf = b""
        self._pos = 0
        self._offset = offset  # tar stream offset of _buf[0]
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

    def read_exact(self, n: int) -> bytes:
        """The next *n* bytes of the tar stream (for the TOC's blocks)."""
        return self._take(n)

    # -- members ----------------------------------------------------------------------
    @property
    def data_offset(self) -> int:
        """Offset in the tar stream of the next byte to read.

        Right after :meth:`next_header`, that is where the member's data starts.
        """
        return self._offset + self._pos

    @property
    def position(self) -> int:
        """Offset in the tar stream of the next unread byte (unread data included)."""
        return self._offset + self._pos + self._pending

    def skip_to(self, offset: int) -> None:
        """Go forward to *offset* (where a member's first header block starts).

        What lies between is passed over by the next :meth:`next_header`, as the rest of
        the current member is.
        """
        gap = offset - self.position
        if gap < 0:
            raise ValueError(f"cannot go back from {self.position} to {offset}")
        self._pending += gap

    def next_header(self) -> Header | None:
        """The next member's header (pax applied), or None at the end-of-archive marker.

        Its ``offset`` is where its first header block starts in the tar stream.
        """
        pending = self._pending
        self._pending = 0
        if len(self._buf) - self._pos >= pending:
            self._pos += pending
        else:
            self._skip(pending)
        start = self._offset + self._pos
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
                    header.offset = start
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
        if self._fill(_BLOCK):
            try:
                parse_header(self._buf[self._pos : self._pos + _BLOCK], None)
            except CorruptArchiveError as exc:
                # The block decompressed (zstd damage is not this): oxbak always starts
                # with a ustar header of its own, so anything else is another kind of file.
                raise NotAnArchiveError(
                    f"not an oxbak archive: it does not start with {fmt.MANIFEST_NAME} "
                    f"({exc})"
                ) from exc
        header = self.next_header()
        if header is None:
            raise ManifestError("archive has no manifest.json (it holds no members)")
        if header.name == _MANIFEST_MEMBER and header.typeflag != REGULAR:
            raise ManifestError("manifest.json is not a regular file member")
        if header.name != _MANIFEST_MEMBER:
            raise NotAnArchiveError(
                f"not an oxbak archive: its first member is {shown(header.name[:200])!r}, "
                f"not {fmt.MANIFEST_NAME}"
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
        """Tree members in archive order, up to (not including) the index or TOC.

        Data not read with :meth:`data` is skipped. Names are *not* validated here: that
        is the unpack loop's job, with the rest of its rules.
        """
        assert self.manifest is not None, "read_manifest() comes first"
        last = _TOC_MEMBER if self.manifest.version >= fmt.FIRST_SEEKABLE_VERSION else _INDEX_MEMBER
        self._z.read_ahead()
        while True:
            header = self.next_header()
            if header is None:
                raise CorruptArchiveError(
                    f"archive has no {last.decode()} (it ends after the tree)"
                )
            if header.name == last:
                if header.typeflag != REGULAR:
                    raise CorruptArchiveError(f"{last.decode()} is not a regular file member")
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

    @property
    def stream(self) -> Decompressed:
        """The decompressed bytes this reader parses."""
        return self._z

    @property
    def index_size(self) -> int:
        """The data size of the index or TOC member (after :meth:`members`)."""
        if self._index_header is None:
            raise CorruptArchiveError("the end of the tree was not reached")
        return self._index_header.size

    @property
    def index_offset(self) -> int:
        """Where the index or TOC member starts in the tar stream (after :meth:`members`)."""
        if self._index_header is None:
            raise CorruptArchiveError("the end of the tree was not reached")
        return self._index_header.offset

    def records(self) -> tuple[Index, Iterator[Record]]:
        """After :meth:`members` ends: the TOC (or index) header and its records."""
        header = self._index_header
        if header is None:
            raise CorruptArchiveError("the end of the tree was not reached")
        if header.name == _TOC_MEMBER:
            return self._toc(header.size)
        lines = self._lines(header.size)
        first = next(lines, None)
        if first is None:
            raise CorruptArchiveError("index.jsonl is empty")
        return decode_index_header(first), (
            _from_index(decode_index_record(line, n)) for n, line in enumerate(lines, 1)
        )

    def toc_header(self, size: int, *, incremental: bool = False) -> tuple[TocHeader, int]:
        """The TOC header, bounded before it is read, and the bytes it took.

        Called right after the TOC member's header; *size* is the member's data size.
        *incremental*: the archive is of version 3 (FORMAT.md §11).
        """
        if size < 4:
            raise CorruptArchiveError("table of contents is truncated")
        prefix = self._take(4)
        (length,) = struct.unpack("<I", prefix)
        if length > fmt.MAX_TOC_HEADER_BYTES or 4 + length > size:
            raise LimitExceededError(
                f"table of contents header is {length} bytes, more than its member holds "
                f"or the limit {fmt.MAX_TOC_HEADER_BYTES}"
            )
        header, used = decode_header(prefix + self._take(length), incremental=incremental)
        self._pending -= used
        if used + sum(ref.length for ref in header.blocks) != size:
            raise CorruptArchiveError("table of contents blocks do not fill its member")
        return header, used

    def _toc(self, size: int) -> tuple[TocHeader, Iterator[Record]]:
        # Only a version-3 archive's TOC may hold FROM_BASE records and their counts.
        manifest = self.manifest
        incremental = manifest is not None and manifest.version >= fmt.INCREMENTAL_VERSION
        header, _ = self.toc_header(size, incremental=incremental)

        def blocks() -> Iterator[Record]:
            for n, ref in enumerate(header.blocks):
                data = self._take(ref.length)
                self._pending -= ref.length
                yield from decode_block(data, ref, n, incremental=incremental)

        return header, blocks()

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
        if self.next_header() is not None:
            raise CorruptArchiveError("archive has members after its index")

    def close(self) -> None:
        """Stop background decompression (the archive file is the opener's to close)."""
        self._z.close()

    @property
    def bytes_in(self) -> int:
        """Compressed bytes read so far."""
        return self._z.bytes_in


def _from_index(record: IndexRecord) -> Record:
    """A version-1 index record as a :class:`~oxbak.toc.Record` (without metadata)."""
    digest = b""
    text = record.digest
    if text is not None and len(text) == 2 * fmt.DIGEST_SIZE and text == text.lower():
        with contextlib.suppress(ValueError):
            digest = bytes.fromhex(text)
    return Record(
        path=record.raw_path,
        kind=record.type,
        size=record.size,
        digest=digest,
        changed=record.changed,
        missing=record.missing,
        meta=False,
    )


def read_manifest(archive: Archive, *, identities: Sequence[IdentityFile] = ()) -> Manifest:
    """The manifest of *archive*, checked; decompresses only the start of the archive.

    An encrypted archive is decrypted with *identities* as far as its first frame.

    :raises ArchiveError: no manifest first, a malformed one, or a newer format version.
    :raises IdentityError: the archive is encrypted and *identities* cannot open it.
    """
    with open_archive(archive, identities) as (inp, _):
        reader = ArchiveReader(ZstdReader(inp.stream), name=inp.name)
        with contextlib.closing(reader):
            return reader.read_manifest()
