"""Archive sources: what the restore loop reads entries and their bytes from.

A source mirrors :class:`~oxbak.staging.Destination` on the reading side. It hands
out the manifest, every tree entry in archive order (as a tar :class:`~oxbak.tarfmt.Header`
and, when it knows it already, the entry's TOC :class:`~oxbak.toc.Record`), the bytes of
an entry, and the final checks against the archive's own index. Two implementations:

- :class:`StreamSource` reads the tar stream front to back: from a pipe, from a
  version-1 archive, or from every frame of a seekable archive (decompressed in parallel
  ahead of the loop). Every member is read; the index or TOC comes last and is checked
  against everything seen.
- :class:`TocSource` reads a seekable version-2 archive from its table of contents and
  decompresses only the frames holding the entries it is asked for. Each entry it reads
  must agree with the tar header actually found at the offset its record gives.

Neither decides whether an entry is acceptable (names, order, parents, bounds, links):
that is :mod:`oxbak.restore`'s one rule set, applied to what either source hands out.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

from . import format as fmt
from .compress import FrameReader, FrameWalker, SeekTable, ZstdReader, parse_seek_table
from .digest import Hasher
from .envelope import EnvelopeInfo, IdentityFile, open_archive
from .errors import CorruptArchiveError, InputError, OxbakError
from .locations import Archive
from .manifest import Index, Manifest
from .paths import member_name, shown, sort_key
from .reader import ArchiveReader
from .tarfmt import REGULAR, Header, padding
from .toc import (
    KIND_CODES,
    Footer,
    Record,
    TocBlock,
    TocHeader,
    decode_columns,
    decode_footer,
    record_at,
    records_of,
)
from .xattrs import Xattrs

__all__ = [
    "ArchiveInfo",
    "ArchiveSource",
    "StreamSource",
    "TocSource",
    "no_toc",
    "open_source",
    "read_info",
]

_TOC_MEMBER = fmt.TOC_NAME.encode()
#: In forward reading, a gap up to this long is skipped in the stream already open;
#: past it, the stream is opened again at the entry (what lies between is not needed).
_FORWARD_SKIP = 4 * fmt.FRAME_TARGET


class ArchiveSource(Protocol):
    """What the restore loop reads from."""

    name: str
    manifest: Manifest
    #: True when every entry's bytes go by anyway (a stream): the loop then checks them all.
    reads_everything: bool
    #: What the archive's age header says, when it is encrypted.
    envelope: EnvelopeInfo | None

    def where(self) -> str:
        """What starts a message about the current entry's content.

        ``""`` for one archive (the command names it); in a chain, the name of the
        archive the content comes from.
        """

    def entries(self) -> Iterator[tuple[Header | None, Record | None]]:
        """Every tree entry in archive order.

        A stream hands out each tar header as it reads it; a TOC source hands out each
        record (the header it stands for is read only if the entry is).
        """

    def read(self, entry: Header) -> Iterable[memoryview]:
        """The data of *entry* (for a stream: the entry just handed out)."""

    def final(self) -> tuple[Index, Iterator[Record]]:
        """After the last entry: the index or TOC header and its records, for the checks."""

    def finish(self) -> None:
        """After the final checks: the end of the archive (for a stream)."""


class StreamSource:
    """A tar stream read front to back; its index or TOC comes at the end."""

    reads_everything = True

    def __init__(
        self,
        reader: ArchiveReader,
        manifest: Manifest,
        *,
        footer: Footer | None = None,
        starts: Sequence[int] = (),
        envelope: EnvelopeInfo | None = None,
    ) -> None:
        self.reader = reader
        self.name = reader.name
        self.manifest = manifest
        self.envelope = envelope
        # From a seekable input: the footer, read first, and where frames start; both are
        # checked against the stream at its end.
        self._footer = footer
        self._starts = starts

    def where(self) -> str:
        """Nothing: there is one archive."""
        return ""

    def entries(self) -> Iterator[tuple[Header | None, Record | None]]:
        """Tree members as they come."""
        for header in self.reader.members():
            yield header, None

    def read(self, entry: Header) -> Iterable[memoryview]:
        """The data of the member just handed out."""
        return self.reader.data(entry.size)

    def final(self) -> tuple[Index, Iterator[Record]]:
        """The index or TOC, read after the tree."""
        footer = self._footer
        reader = self.reader
        if footer is not None:
            _check_footer(footer, reader, self._starts)
        return reader.records()

    def finish(self) -> None:
        """The end-of-archive marker, then the end of the input.

        A version-2 archive read from a pipe must end with its footer and a seek table
        that describes the frames that went by: both are checked here, so an archive
        verified from a pipe is one that can also be read at random.
        """
        reader = self.reader
        reader.finish()
        stream = reader.stream
        if self.manifest.version >= fmt.FIRST_SEEKABLE_VERSION and isinstance(stream, ZstdReader):
            walker = stream.walker
            _check_trailer(walker, reader.index_offset, reader.index_size)


class TocSource:
    """A seekable version-2 archive, read through its table of contents."""

    reads_everything = False
    #: Always None: an encrypted archive is read as a stream.
    envelope: EnvelopeInfo | None = None
    #: Opened to be read whole, in parts, by workers (:mod:`oxbak.parts`).
    reads_parts = False

    def __init__(self, frames: FrameReader, manifest: Manifest, name: str) -> None:
        self.frames = frames
        self.manifest = manifest
        self.name = name
        #: Version 3: records may be FROM_BASE (FORMAT.md §11).
        self.incremental = manifest.version >= fmt.INCREMENTAL_VERSION
        table = frames.table
        footer = read_footer(frames)
        self.toc_offset = footer.toc_offset
        if footer.toc_offset >= table.d_total:
            raise CorruptArchiveError("footer locates the table of contents past the archive")
        start = table.frame_at(footer.toc_offset)
        if table.d_starts[start] != footer.toc_offset:
            raise CorruptArchiveError("the table of contents does not start a frame")
        cursor = ArchiveReader(
            frames.stream(footer.toc_offset), name=name, offset=footer.toc_offset
        )
        head = cursor.next_header()
        if head is None or head.name != _TOC_MEMBER or head.typeflag != REGULAR:
            raise CorruptArchiveError(
                f"footer does not locate {fmt.TOC_NAME} (offset {footer.toc_offset})"
            )
        if head.size != footer.toc_size:
            raise CorruptArchiveError("footer and table of contents disagree on its size")
        data_at = cursor.data_offset
        self._toc_at, self._toc_size = data_at, head.size
        #: Where the TOC member ends: the end-of-archive marker must follow.
        self.toc_end = data_at + head.size + padding(head.size)
        # Only the end-of-archive marker (and zeros to a 10240-byte record) may follow it:
        # a TOC planted inside some file's data would have the rest of the tree after it.
        end = data_at + head.size + padding(head.size) + 2 * fmt.BLOCK_SIZE
        if not end <= table.d_total <= end + -end % fmt.RECORD_SIZE:
            raise CorruptArchiveError("the table of contents is not the archive's last member")
        self.header, used = cursor.toc_header(head.size, incremental=self.incremental)
        self._blocks_at = data_at + used
        self._cursor: ArchiveReader | None = None
        self._firsts: list[tuple[bytes, ...]] | None = None
        self._flagged: list[Record] = []
        #: (block, index in the block) of the record :meth:`records` handed out last.
        self.at = (0, 0)
        #: Set by a reader that asks for entries in archive order (a chain's restore):
        #: frames are then decompressed ahead, and short gaps between entries skipped.
        self.forward = False

    # -- the table of contents -------------------------------------------------------------
    def block(self, number: int) -> TocBlock:
        """Block *number*, checked."""
        ref = self.header.blocks[number]
        at = self._blocks_at + ref.offset
        reader = ArchiveReader(self.frames.stream(at), name=self.name, offset=at)
        return decode_columns(
            reader.read_exact(ref.length), ref, number, incremental=self.incremental
        )

    def blocks(self) -> Iterator[TocBlock]:
        """Every block, checked, in archive order (the TOC's frames read one after another)."""
        refs = self.header.blocks
        if not refs:
            return
        reader = ArchiveReader(
            self.frames.stream(self._blocks_at), name=self.name, offset=self._blocks_at
        )
        for n, ref in enumerate(refs):
            yield decode_columns(
                reader.read_exact(ref.length), ref, n, incremental=self.incremental
            )

    def toc_id(self) -> str:
        """The archive's id (FORMAT.md §11): BLAKE3-256 hex of the TOC member's data.

        Read through the frames that hold the TOC only, whatever the archive's size.
        """
        reader = ArchiveReader(
            self.frames.stream(self._toc_at), name=self.name, offset=self._toc_at
        )
        hasher = Hasher()
        left = self._toc_size
        while left:
            piece = reader.read_exact(min(left, 1 << 20))
            hasher.update(piece)
            left -= len(piece)
        return hasher.digest(fmt.DIGEST_SIZE).hex()

    def records(self) -> Iterator[Record]:
        """Every record, in archive order; :attr:`at` says where the last one is."""
        for number, block in enumerate(self.blocks()):
            for index, record in enumerate(records_of(block)):
                self.at = (number, index)
                yield record

    def find(self, path: bytes) -> Record | None:
        """The record of *path*, decompressing only the block that can hold it."""
        if self._firsts is None:
            self._firsts = [sort_key(ref.first) for ref in self.header.blocks]
        key = sort_key(path)
        number = bisect.bisect_right(self._firsts, key) - 1
        if number < 0:
            return None
        block = self.block(number)
        try:
            return record_at(block, block.paths.index(path))
        except ValueError:
            return None

    # -- the source ------------------------------------------------------------------------
    def where(self) -> str:
        """Nothing: there is one archive."""
        return ""

    def entries(self) -> Iterator[tuple[Header | None, Record | None]]:
        """Every entry, from the TOC; flagged records are kept for :meth:`final`.

        An incremental's ``from_base`` records are handed out too; they have no member
        here (:meth:`read` refuses them), a chain reads their content from a base.
        """
        previous = 0
        limit = self.toc_offset
        for record in self.records():
            if record.from_base:
                yield None, record  # no member here: its content is in the chain
                continue
            if record.changed or record.missing:
                self._flagged.append(record)
                if record.absent:
                    continue  # a missing file: no member (a missing directory has one)
            if not previous < record.offset < limit or record.offset % fmt.BLOCK_SIZE:
                raise CorruptArchiveError(
                    f"table of contents places {shown(record.path)!r} at offset "
                    f"{record.offset}, outside the tree's members or out of order"
                )
            previous = record.offset
            yield None, record

    def read(self, entry: Header) -> Iterable[memoryview]:
        """Find the member at the entry's offset; it must be what the TOC says it is."""
        if not 0 < entry.offset < self.toc_offset or entry.offset % fmt.BLOCK_SIZE:
            raise CorruptArchiveError(
                f"table of contents places {shown(entry.name)!r} at offset {entry.offset}, "
                f"outside the tree's members"
            )
        cursor = self._cursor
        if (
            self.forward
            and cursor is not None
            and cursor.position < entry.offset <= cursor.position + _FORWARD_SKIP
        ):
            # Entries read in archive order with a few left out between: the frames
            # decompressed ahead are used, not decompressed again for the next entry.
            cursor.skip_to(entry.offset)
        elif cursor is None or cursor.position != entry.offset:
            forward = self.forward
            cursor = ArchiveReader(
                # A large member spans frames: decompress them ahead, in parallel, up to
                # its end. Its headers take a block or more, so every frame that starts
                # before this bound holds some of its data; the next member's frame would
                # be read for nothing (a last piece after a long pax header is read when
                # reached).
                self.frames.stream(
                    entry.offset,
                    ahead=forward or entry.size >= fmt.FRAME_TARGET,
                    until=-1 if forward else entry.offset + fmt.BLOCK_SIZE + entry.size,
                ),
                name=self.name,
                offset=entry.offset,
            )
            self._cursor = cursor
        found = cursor.next_header()
        if found is None or not same_member(found, entry):
            raise CorruptArchiveError(
                f"table of contents disagrees with the archive: its record of "
                f"{shown(entry.name)!r} does not match the member at offset {entry.offset}"
            )
        if entry.typeflag != REGULAR:
            return ()
        return cursor.data(entry.size)

    def final(self) -> tuple[Index, Iterator[Record]]:
        """The TOC header, and the changed or missing records seen on the way."""
        return self.header, iter(self._flagged)

    def finish(self) -> None:
        """Nothing: what was not asked for is not read."""


def header_of(record: Record) -> Header:
    """The tar header a TOC record stands for (what the member at its offset must be)."""
    kind = record.kind
    if kind == "hardlink":
        link = member_name(record.target)
    elif kind == "symlink":
        link = record.target
    else:
        link = b""
    return Header(
        member_name(record.path, is_dir=kind == "dir"),
        bytes((KIND_CODES[kind],)),
        record.mode,
        record.uid,
        record.gid,
        record.size if kind == "file" else 0,
        record.mtime_ns,
        link,
        record.offset,
        record.xattrs if kind != "hardlink" else (),
        record.user,
        record.group,
    )


def same_member(found: Header, expected: Header) -> bool:
    """Whether a header read from the tar stream is the member a record describes."""
    name = found.name
    if expected.typeflag == b"5" and not name.endswith(b"/"):
        name += b"/"
    return (
        name == expected.name
        and found.typeflag == expected.typeflag
        and found.size == expected.size
        and found.mode & 0o7777 == expected.mode
        and found.mtime_ns == expected.mtime_ns
        and found.uid == expected.uid
        and found.gid == expected.gid
        and found.linkname == expected.linkname
        and found.xattrs == expected.xattrs
        # Owner names: archives of earlier writers have none in their members.
        and (
            not (found.uname or found.gname)
            or (found.uname, found.gname) == (expected.uname, expected.gname)
        )
    )


def metadata_key(header: Header, target: bytes) -> bytes:
    """What a TOC record must agree on with its member besides path, type and size."""
    key = b"%d %d %d %d %d " % (
        header.mode & 0o7777,
        header.uid,
        header.gid,
        header.mtime_ns,
        header.offset,
    ) + target
    if header.uname or header.gname:
        key += _names_key(header.uname, header.gname)
    return key + _xattrs_key(header.xattrs) if header.xattrs else key


def record_key(record: Record, names: bool = False) -> bytes:
    """:func:`metadata_key` of the member *record* describes.

    With *names*, of a member that carries owner names (archives of earlier writers have
    none: either key is the member's).
    """
    key = b"%d %d %d %d %d " % (
        record.mode,
        record.uid,
        record.gid,
        record.mtime_ns,
        record.offset,
    ) + (record.target if record.kind in ("symlink", "hardlink") else b"")
    if names:
        key += _names_key(record.user, record.group)
    return key + _xattrs_key(record.xattrs) if record.xattrs else key


def _names_key(user: str, group: str) -> bytes:
    return b"\0\0" + user.encode("utf-8", "surrogateescape") + b"\0" + group.encode(
        "utf-8", "surrogateescape"
    )


def _xattrs_key(xattrs: Xattrs) -> bytes:
    # Length-prefixed, after a NUL no target holds: no two sets share a key.
    return b"\0" + b"".join(b"%d %s%d %s" % (len(n), n, len(v), v) for n, v in xattrs)


def _check_trailer(walker: FrameWalker, toc_offset: int, toc_size: int) -> None:
    """The footer and seek table at the end of a version-2 stream, against what went by."""
    trailer = walker.trailer
    last = walker.frames - 1
    if (
        len(trailer) < 2
        or trailer[-1][:2] != (last, fmt.SEEK_TABLE_MAGIC)
        or trailer[-2][:2] != (last - 1, fmt.FOOTER_MAGIC)
    ):
        raise CorruptArchiveError(
            "archive is truncated: it does not end with its footer and seek table"
        )
    sizes = parse_seek_table(trailer[-1][2])
    seen = walker.frame_sizes[:-1]
    if len(sizes) != len(seen) or any(
        csize != size or dsize != max(declared, 0)
        for (csize, dsize), (size, declared) in zip(sizes, seen, strict=False)
    ):
        raise CorruptArchiveError("seek table does not describe the archive's frames")
    # (A data frame that declares no content size is listed with 0 bytes: refused above.)
    starts = list(accumulate((max(declared, 0) for _, declared in seen), initial=0))
    footer = decode_footer(trailer[-2][2])
    if (footer.toc_offset, footer.toc_size) != (toc_offset, toc_size):
        raise CorruptArchiveError("footer does not locate the archive's table of contents")
    if toc_offset not in starts:
        raise CorruptArchiveError("the table of contents does not start a frame")


def _check_footer(footer: Footer, reader: ArchiveReader, starts: Sequence[int]) -> None:
    """The footer must locate the TOC member the stream holds, which starts a frame."""
    if (footer.toc_offset, footer.toc_size) != (reader.index_offset, reader.index_size):
        raise CorruptArchiveError("footer does not locate the archive's table of contents")
    if starts and footer.toc_offset not in starts:
        raise CorruptArchiveError("the table of contents does not start a frame")


def read_footer(frames: FrameReader) -> Footer:
    """The footer of a seekable archive: the frame just before the seek table."""
    table = frames.table
    last = len(table) - 1
    if last < 1 or table.d_sizes[last] != 0:
        raise CorruptArchiveError("archive has no footer before its seek table")
    raw = frames.source.pread(table.c_sizes[last], table.c_starts[last])
    magic = int.from_bytes(raw[:4], "little")
    if magic != fmt.FOOTER_MAGIC or int.from_bytes(raw[4:8], "little") != len(raw) - 8:
        raise CorruptArchiveError("archive's last frame before the seek table is not its footer")
    return decode_footer(raw[8:])


@contextlib.contextmanager
def open_source(
    archive: Archive,
    *,
    whole: bool = True,
    threads: int = 1,
    identities: Sequence[IdentityFile] = (),
    incremental: bool = False,
    parts: bool = False,
) -> Iterator[ArchiveSource]:
    """Open *archive* and check its manifest (format, version) before anything else.

    An incremental archive (version 3) is opened only with *incremental* (``info``,
    ``verify``, ``pack --base``, a chain's reader): a reader of one archive must not take
    an incremental for a whole tree.

    With *whole* (unpack, verify), every entry will be read: the source streams the whole
    archive, from its frames in parallel when it is seekable. Without, a seekable
    version-2 archive is read through its table of contents; other inputs are streamed,
    and so is the plaintext of an encrypted archive (decrypted with *identities*).

    With *parts* too, a seekable full archive (version 2) in a file is handed out through
    its table of contents all the same, for workers to read whole in parts
    (:mod:`oxbak.parts`).
    """
    with open_archive(archive, identities) as (inp, envelope):
        reader = ArchiveReader(ZstdReader(inp.stream), name=inp.name)
        with contextlib.closing(reader):
            manifest = reader.read_manifest()
            if manifest.version >= fmt.INCREMENTAL_VERSION and not incremental:
                raise OxbakError(
                    f"{inp.name} is an incremental archive: it holds only what changed "
                    f"since its base; give its whole chain, the full archive first "
                    f"(oxbak unpack FULL … {inp.name} DEST)"
                )
            table = None
            if inp.random is not None and manifest.version >= fmt.FIRST_SEEKABLE_VERSION:
                table = SeekTable.read(inp.random)
            if table is None:
                yield StreamSource(reader, manifest, envelope=envelope)
                return
        frames = FrameReader(inp.random, table, threads=threads)  # type: ignore[arg-type]
        with contextlib.closing(frames):
            forkable = getattr(inp.random, "forkable", False)
            if not whole or (parts and forkable and manifest.version < fmt.INCREMENTAL_VERSION):
                toc = TocSource(frames, manifest, inp.name)
                toc.reads_parts = whole
                yield toc
                return
            footer = read_footer(frames)
            full = ArchiveReader(frames.stream(0, ahead=True), name=inp.name)
            with contextlib.closing(full):
                full.read_manifest()
                starts = [s for s, n in zip(table.d_starts, table.d_sizes, strict=True) if n]
                yield StreamSource(full, manifest, footer=footer, starts=starts)


def no_toc(source: ArchiveSource, archive: Archive, refusal: str) -> OxbakError:
    """The error for *source*, opened without *whole*, that is no :class:`TocSource`.

    An unencrypted archive file of version 2 or later ends with a seek table unless it
    was cut short or damaged: that is said first. Otherwise (a pipe, an encrypted or a
    version-1 archive) *refusal*, as an :class:`InputError`.
    """
    if (
        source.envelope is None
        and source.manifest.version >= fmt.FIRST_SEEKABLE_VERSION
        and isinstance(archive, (str, os.PathLike))
        and os.path.isfile(archive)
    ):
        return CorruptArchiveError(
            f"{source.name}: archive is truncated or damaged: it does not end with a seek "
            f"table"
        )
    return InputError(refusal)


@dataclass
class ArchiveInfo:
    """What ``info`` shows: the manifest, and the TOC header when it could be read.

    ``toc`` is the final word on what the archive holds (exact totals, partial); it is
    None for a stream and for a version-1 archive, whose final status is known only after
    reading everything (``verify``).
    """

    manifest: Manifest
    toc: TocHeader | None
    #: What the age header says, when the archive is encrypted.
    envelope: EnvelopeInfo | None = None


def read_info(archive: Archive, *, identities: Sequence[IdentityFile] = ()) -> ArchiveInfo:
    """The manifest and, from a seekable archive, its TOC header.

    Only the first frame, the seek table, the footer and the TOC header's frame are read
    (of an encrypted archive: its header and the plaintext's first frame).

    :raises IdentityError: the archive is encrypted and *identities* cannot open it; its
        ``envelope`` says what the header does (the recipients' stanza types).
    """
    with open_source(archive, whole=False, identities=identities, incremental=True) as source:
        toc = source.header if isinstance(source, TocSource) else None
        return ArchiveInfo(source.manifest, toc, source.envelope)
