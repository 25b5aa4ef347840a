"""An archive read in parts by worker processes: unpack and verify on every core.

The one loop (:func:`oxbak.restore._run`) runs in this process over the archive's table
of contents, as for ``unpack --only``: it admits every entry, decides every path, creates
the directories and hands each file over. The members are read by workers. Each takes a
part of the archive (frames that begin where a member the TOC lists begins, up to where
the next part begins), checks that the part holds exactly the members the TOC lists
there, in order and as recorded, writes the files the loop handed over into the staging
directory, and hashes them. The digests come back in order and the loop checks them;
hardlinks, symlinks, directory metadata and the commit stay in this process, after every
part is done. A worker never chooses a path: it writes the records the loop admitted, in
the parts the loop closed after admitting them.

Every byte from the end of the manifest to the TOC is read by some worker, so an archive
passes here exactly when it passes a front-to-back read: nothing is hidden between the
members the TOC lists.
"""

from __future__ import annotations

import contextlib
import itertools
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from . import format as fmt
from .compress import FrameReader
from .envelope import EnvelopeInfo
from .errors import ArchiveError, CorruptArchiveError, IntegrityError
from .manifest import Index, Manifest
from .paths import shown
from .reader import ArchiveReader
from .source import TocSource, header_of, same_member
from .staging import Destination, HashOnly, StagingDir
from .tarfmt import REGULAR, Header
from .toc import Record, records_of
from .workers import Workers, available_cores, in_worker, report
from .xattrs import Xattrs

__all__ = ["PartsReader"]

#: Tar bytes a part holds at least (the part ends at the first frame start after them).
PART_BYTES = 4 << 20


class _Task(NamedTuple):
    """A part: tar bytes *start*–*stop*, holding *members* members from TOC record *first*.

    *ids* holds the owner (uid, gid) the loop chose for each file, in order; none when the
    files are only hashed.
    """

    start: int
    stop: int
    first: tuple[int, int]  # (block, index in the block) of its first record
    members: int
    ids: array[int] | None


class _Done(NamedTuple):
    """A part read: the digest of each of its files, and the attributes not restored."""

    digests: bytes
    failed: dict[str, dict[bytes, list[bytes]]]


class PartsReader:
    """The source and the destination the loop runs with when workers read the members.

    Use as a context manager: the workers are forked on entry and are gone on exit (killed
    on an error, before anything is removed from the staging directory).
    """

    reads_everything = False
    envelope: EnvelopeInfo | None = None

    def __init__(
        self,
        toc: TocSource,
        dest: Destination,
        threads: int,
        *,
        write: bool,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """*threads* workers (0: one per CPU), or fewer: one per part expected at most."""
        self.toc = toc
        self._tree_start = _tree_start(toc)
        parts = (toc.toc_offset - self._tree_start) // PART_BYTES + 1
        self.processes = max(1, min(threads if threads > 0 else available_cores(), parts))
        self.progress = progress
        self.manifest: Manifest = toc.manifest
        self.name = toc.name
        self.dest = dest
        self.write = write
        self._workers: Workers[_Task, _Done] | None = None
        self._tasks: list[_Task] = []  # submitted, results not yet taken (in-process: all)
        self._ids = array("I")
        self._links: list[tuple[bytes, bytes]] = []
        self._frames: FrameReader | None = None  # the parts' reader, in the process reading
        self.bytes_done = 0

    def __enter__(self) -> PartsReader:
        if self.processes > 1:
            self._workers = Workers(self.processes, self._read_part, self._progress)
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if self._workers is not None:
            self._workers.close(kill=exc is not None)
            self._workers = None
        if self._frames is not None:
            self._frames.close()
            self._frames = None

    # -- the source ------------------------------------------------------------------------
    def where(self) -> str:
        """Nothing: there is one archive."""
        return ""

    def entries(self) -> Iterator[tuple[Header | None, Record | None]]:
        """The TOC's records; a part is handed to a worker once the loop is past it."""
        toc = self.toc
        if self.progress is not None:
            self.progress(0, self.manifest.totals.bytes)  # counted as each part is done
        starts = set(toc.frames.table.d_starts)
        start = self._tree_start
        first: tuple[int, int] | None = None
        members = 0
        for header, record in toc.entries():
            assert record is not None
            at = record.offset
            if members and at in starts and at - start >= PART_BYTES:
                assert first is not None
                self._submit(_Task(start, at, first, members, self._take_ids()))
                start, first, members = at, None, 0
            if first is None:
                first = toc.at
            members += 1
            yield header, record
        if first is not None or toc.toc_offset > start:
            self._submit(_Task(start, toc.toc_offset, first or (0, 0), members, self._take_ids()))

    def read(self, entry: Header) -> Iterable[memoryview]:
        """Nothing here: the member is read and checked by the worker of its part."""
        return ()

    def final(self) -> tuple[Index, Iterator[Record]]:
        """The TOC header, and the changed or missing records."""
        return self.toc.final()

    def finish(self) -> None:
        """After the TOC: the end-of-archive marker, and nothing else (as a stream's end)."""
        toc = self.toc
        reader = ArchiveReader(toc.frames.stream(toc.toc_end), name=self.name, offset=toc.toc_end)
        with contextlib.closing(reader):
            reader.finish()

    # -- the destination -------------------------------------------------------------------
    def directory(
        self, path: bytes, mode: int, mtime_ns: int, uid: int, gid: int, xattrs: Xattrs = ()
    ) -> None:
        """Create it now: the files in it are written once the loop is past them."""
        self.dest.directory(path, mode, mtime_ns, uid, gid, xattrs)

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
        """Leave the file to the worker of its part; its digest comes from :meth:`digests`."""
        if self.write:
            self._ids.append(uid)
            self._ids.append(gid)
        return None

    def hardlink(self, path: bytes, target: bytes) -> None:
        """Link once every part is done: the target is written by a worker."""
        self._links.append((path, target))

    def symlink(
        self, path: bytes, target: bytes, mtime_ns: int, uid: int, gid: int, xattrs: Xattrs = ()
    ) -> None:
        """Leave it to the destination, which creates symlinks last."""
        self.dest.symlink(path, target, mtime_ns, uid, gid, xattrs)

    def digests(self) -> Iterator[bytes]:
        """The digest of every file :meth:`file` left to a worker, in order."""
        step = fmt.DIGEST_SIZE
        while self._tasks:
            task = self._tasks.pop(0)
            done = self._workers.take() if self._workers is not None else self._read_part(task)
            if isinstance(self.dest, StagingDir):
                self.dest.xattrs.add(done.failed)
            for at in range(0, len(done.digests), step):
                yield done.digests[at : at + step]
        if self.progress is not None:
            self.progress(self.bytes_done, self.bytes_done)  # all there was

    def finish_links(self) -> None:
        """Create the hardlinks, now that every file is written."""
        for path, target in self._links:
            self.dest.hardlink(path, target)
        self._links = []

    def _progress(self, nbytes: int) -> None:
        """*nbytes* more of the files' bytes are written (or hashed)."""
        self.bytes_done += nbytes
        if self.progress is not None:
            self.progress(self.bytes_done, self.manifest.totals.bytes)

    # -- the parts -------------------------------------------------------------------------
    def _take_ids(self) -> array[int] | None:
        ids, self._ids = self._ids, array("I")
        return ids if self.write else None

    def _submit(self, task: _Task) -> None:
        self._tasks.append(task)
        if self._workers is not None:
            self._workers.submit(task)

    def _read_part(self, task: _Task) -> _Done:
        """Read one part (in a worker): its members against their records, its files."""
        toc = self.toc
        if self._frames is None:
            # One decompression thread, made in the process that reads (none is forked):
            # the worker parses, hashes and writes meanwhile. More would only hold more
            # frames in memory in every worker.
            self._frames = FrameReader(toc.frames.source, toc.frames.table, threads=1)
        reader = ArchiveReader(
            self._frames.stream(task.start, ahead=True, until=task.stop),
            name=self.name,
            offset=task.start,
        )
        with contextlib.closing(reader):
            return self._members(task, reader, _records_from(toc, task.first))

    def _members(self, task: _Task, reader: ArchiveReader, records: Iterator[Record]) -> _Done:
        dest: Destination = self.dest if self.write else _HASH_ONLY
        digests = bytearray()
        ids = iter(task.ids) if task.ids is not None else itertools.repeat(0)
        unreported = 0
        tell = report if in_worker() else self._progress
        for record in itertools.islice(records, task.members):
            expected = header_of(record)
            found = reader.next_header()
            if found is None or found.offset != record.offset or not same_member(found, expected):
                raise _mismatch(record, expected, found)
            if expected.typeflag != REGULAR:
                continue
            uid, gid = next(ids), next(ids)
            chunks = reader.data(expected.size)
            if expected.size >= _REPORT_STEP:
                chunks = _told(chunks, tell)  # its progress as it goes
                unreported -= expected.size
            digest = dest.file(
                record.path,
                expected.mode,
                expected.mtime_ns,
                uid,
                gid,
                chunks,
                expected.xattrs,
            )
            assert digest is not None
            digests += digest
            unreported += expected.size
            if unreported >= _REPORT_STEP:
                tell(unreported)
                unreported = 0
        if reader.position != task.stop:
            found = reader.next_header()
            what = (
                f"member {shown(found.name)!r}"
                if found is not None and found.offset < task.stop
                else "data"
            )
            raise CorruptArchiveError(
                f"{what} at offset {reader.position} is not in the table of contents"
            )
        if unreported:
            tell(unreported)
        failed = self.dest.xattrs.take() if isinstance(self.dest, StagingDir) else {}
        return _Done(bytes(digests), failed)


_HASH_ONLY = HashOnly()
_REPORT_STEP = 1 << 20  # progress is reported every this many bytes of files


def _told(chunks: Iterable[memoryview], tell: Callable[[int], None]) -> Iterator[memoryview]:
    """*chunks*, telling the size of each once it has been consumed."""
    for chunk in chunks:
        yield chunk
        tell(len(chunk))


def _mismatch(record: Record, expected: Header, found: Header | None) -> ArchiveError:
    """What is wrong where the member at a record's place is not the one it describes.

    Worded, and classed, as a front-to-back read reports the same fault, which it finds
    comparing the members it read with the TOC at the end. The rest of a part is not read
    past a member out of place.
    """
    path = record.path
    if found is None:
        return CorruptArchiveError(f"index lists {shown(path)!r}, which the archive does not hold")
    if found.offset < record.offset:
        return CorruptArchiveError(f"{shown(found.name)!r} is in the archive but not in its index")
    if found.offset > record.offset:
        return CorruptArchiveError(
            f"table of contents places {shown(path)!r} at offset {record.offset}, where no "
            f"member starts"
        )
    name = found.name
    if expected.typeflag == b"5" and not name.endswith(b"/"):
        name += b"/"
    if name != expected.name or found.typeflag != expected.typeflag:
        return CorruptArchiveError(
            f"index lists {record.kind} {shown(path)!r} where the archive holds "
            f"{shown(found.name)!r} (type {found.typeflag.decode('latin-1')!r})"
        )
    if found.size != expected.size:
        return CorruptArchiveError(
            f"size mismatch for {shown(path)!r}: index says {record.size}, archive holds "
            f"{found.size}"
        )
    return IntegrityError(
        [
            f"table of contents disagrees with the member of {shown(path)!r} (mode, owner, "
            f"mtime, link target, attributes or offset)"
        ]
    )


def _tree_start(toc: TocSource) -> int:
    """Where the tree's first member begins: right after the manifest member."""
    reader = ArchiveReader(toc.frames.stream(0), name=toc.name)
    with contextlib.closing(reader):
        reader.read_manifest()
        return reader.position


def _records_from(toc: TocSource, first: tuple[int, int]) -> Iterator[Record]:
    """The records with a member, from record *first* on (as :meth:`TocSource.entries`)."""
    number, index = first
    for block_number in range(number, len(toc.header.blocks)):
        block = toc.block(block_number)
        for record in itertools.islice(records_of(block), index, None):
            if not record.absent:
                yield record
        index = 0
