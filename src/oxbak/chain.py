"""Chains of archives (FORMAT.md §11): a full archive, then incrementals, each on the last.

Restoring an incremental needs every archive of its chain. :func:`open_chain` checks the
chain before anything is created (it reads only each archive's manifest and table of
contents) and hands out a :class:`ChainSource`: the last archive's tree, each unchanged
file's content read from the archive that stores it, to the restore loop as if it were
one archive.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from .envelope import EnvelopeInfo, IdentityFile
from .errors import ArchiveError, InputError, IntegrityError
from .locations import Archive
from .manifest import IncrementalManifest, Index, Manifest
from .paths import shown, sort_key
from .source import TocSource, header_of, no_toc, open_source
from .tarfmt import Header
from .toc import Record, TocBlock, record_at

__all__ = ["ChainSource", "RecordWalk", "check_chain", "link_problems", "open_chain"]

_T = TypeVar("_T")


class RecordWalk:
    """An archive's records, gone through once in path order to find the ones asked for.

    Every TOC is in entry order, and the paths asked for come in that order too (a tree
    being packed, or a subsequence of a later TOC's paths), so each lookup continues
    where the last one stopped: one merge-join, and no archive's records held in memory.
    A path asked for out of order is not found (reads nothing it should not).
    """

    def __init__(self, source: TocSource) -> None:
        self._blocks = _named(source, source.blocks())  # a TOC that cannot be decoded
        self._block: TocBlock | None = None
        self._paths: list[bytes] = []
        self._at = 0
        #: Records passed over without being asked for (:meth:`passed_over`).
        self._passed = 0
        self._next_block()

    def _next_block(self) -> None:
        self._block = next(self._blocks, None)
        self._paths = self._block.paths if self._block is not None else []
        self._at = 0

    def _seek(self, path: bytes) -> int | None:
        """Go to *path*'s record: its index in the current block, or None if absent."""
        # Walks the columns, not records: most entries are passed over, and the one asked
        # for is most often the next one (compared without sort keys).
        key: tuple[bytes, ...] | None = None
        while self._block is not None:
            paths, at = self._paths, self._at
            while at < len(paths):
                here = paths[at]
                if here == path:
                    self._passed += at - self._at
                    self._at = at + 1
                    return at
                if key is None:
                    key = sort_key(path)
                if sort_key(here) > key:
                    self._passed += at - self._at
                    self._at = at
                    return None
                at += 1
            self._passed += len(paths) - self._at
            self._next_block()
        return None

    def skip_to(self, path: bytes) -> bool:
        """Go past *path*'s record, without making it; whether there is one."""
        return self._seek(path) is not None

    def find(self, path: bytes) -> Record | None:
        """The record of *path*, if there is one."""
        at = self._seek(path)
        block = self._block
        return None if at is None or block is None else record_at(block, at)

    def passed_over(self, paths: Iterable[bytes]) -> int:
        """How many records have none of *paths* (given in order), to the last record."""
        for path in paths:
            self._seek(path)
        while self._block is not None:
            self._passed += len(self._paths) - self._at
            self._next_block()
        return self._passed


class ChainSource:
    """The tree of a chain's last archive, as one :class:`~oxbak.source.ArchiveSource`.

    Its entries are the last TOC's records, the whole tree. A stored entry is read from
    the last archive; a ``from_base`` file is resolved back through the bases to the one
    that stores it, and its content read there. At every step the base's record must be a
    file of the same size and digest; the member found must be what that record says,
    and the loop checks the content read against the digest, as for any entry.
    """

    reads_everything = False
    #: Always None: archives of a chain are read through their TOCs, never encrypted.
    envelope: EnvelopeInfo | None = None

    def __init__(self, sources: Sequence[TocSource], ids: Sequence[str]) -> None:
        self.sources = list(sources)
        #: Each archive's id (FORMAT.md §11), in chain order.
        self.ids = list(ids)
        self.first, self.last = self.sources[0], self.sources[-1]
        self.name = self.last.name
        self.manifest: Manifest = self.last.manifest
        for source in self.sources:
            source.forward = True  # each is read in archive order, with gaps
            if source is not self.first:
                source.frames.share_threads(self.first.frames)  # closed last: opened first
        self._walks = [RecordWalk(source) for source in self.sources[:-1]]
        self._record: Record | None = None
        self._holder = self.last

    def where(self) -> str:
        """The archive the current entry's content comes from, to start a message with."""
        return f"{self._holder.name}: "

    def named(self, exc: ArchiveError) -> ArchiveError:
        """*exc* naming the archive it is about: the last one, unless it names another."""
        return _in(self.last.name, exc, [source.name for source in self.sources])

    def entries(self) -> Iterator[tuple[Header | None, Record | None]]:
        """Every record of the last TOC (stored or from a base), in archive order."""
        for header, record in _named(self.last, self.last.entries()):
            self._record = record
            yield header, record

    def read(self, entry: Header) -> Iterable[memoryview]:
        """The entry just handed out: from the last archive, or from the base holding it."""
        record = self._record
        if record is None or not record.from_base:
            self._holder = self.last
            return _named(self.last, self.last.read(entry))
        source, holder = self.locate(record)
        self._holder = source
        try:
            chunks = source.read(header_of(holder))  # finds the member: reads frames now
        except ArchiveError as exc:
            raise _in(source.name, exc) from exc
        return _named(source, chunks)

    def holder(self, path: bytes, size: int, digest: bytes) -> str:
        """The name of the archive storing the content of an unchanged file of the last.

        Asked in archive order, as :meth:`read` is (``list`` asks it instead).
        """
        return self.locate(Record(path, "file", size, digest))[0].name

    def locate(self, record: Record) -> tuple[TocSource, Record]:
        """The archive storing the content of *record*, and its record there.

        *record* is a ``from_base`` record of the last archive; every link on the way is
        checked. Records are asked for in archive order.
        """
        path = record.path
        claimant = self.last
        for level in range(len(self._walks) - 1, -1, -1):
            base = self.sources[level]
            found = self._walks[level].find(path)
            fault = _fault(record, found)
            if fault:
                raise IntegrityError([_claim(claimant, base, path, fault)])
            assert found is not None
            if not found.from_base:
                return base, found
            claimant = base
        raise IntegrityError(  # the first archive is full: decoding refuses from_base there
            [f"{claimant.name}: {shown(path)!r} is recorded as unchanged, and no base holds it"]
        )

    def final(self) -> tuple[Index, Iterator[Record]]:
        """The last TOC's header and its flagged records."""
        return self.last.final()

    def finish(self) -> None:
        """Nothing: what was not asked for is not read."""


def _fault(record: Record, found: Record | None) -> str:
    """Why *found* cannot hold the content of *record*, a ``from_base`` record; or ``""``.

    *found* is the base's record of the same path, if it has one.
    """
    if found is None:
        return "which it does not hold"
    if found.kind != "file":
        return f"where it is a {found.kind}"
    if found.changed or found.missing:
        return "where it was not captured whole (changed or missing while packed)"
    if found.size != record.size or found.digest != record.digest:
        return "where its size or digest is not the same"
    return ""


def _claim(claimant: TocSource, base: TocSource, path: bytes, fault: str) -> str:
    return (
        f"{claimant.name}: {shown(path)!r} is recorded as unchanged since its base "
        f"{base.name}, {fault}"
    )


def link_problems(sources: Sequence[TocSource]) -> list[str]:
    """What is wrong with each link of a checked chain, from the TOCs alone.

    Each incremental against its base, one merge-join of the two TOCs: every
    ``from_base`` record must name a file of the same size and digest there (which is,
    by the same check one link down, stored in some archive before it), and as many of
    the base's records as the incremental says were deleted must have no record in it.
    With each archive verified alone (its members against its records), this verifies
    the chain: every file of every point of it is there, with the content recorded.
    """
    problems: list[str] = []
    for base, inc in itertools.pairwise(sources):
        walk = RecordWalk(base)
        for record in _named(inc, inc.records()):
            if not record.from_base:
                walk.skip_to(record.path)
                continue
            fault = _fault(record, walk.find(record.path))
            if fault:
                problems.append(_claim(inc, base, record.path, fault))
        deleted = walk.passed_over(())
        header = inc.header
        claimed = getattr(header, "deleted", None)
        if claimed != deleted:
            problems.append(
                f"{inc.name}: says {claimed} of its base's entries were deleted since; "
                f"{deleted} of {base.name}'s are not in it"
            )
    return problems


def _named(source: TocSource, items: Iterable[_T]) -> Iterator[_T]:
    """*items*; an error met while reading them names *source* (a chain has several)."""
    try:
        yield from items
    except ArchiveError as exc:
        raise _in(source.name, exc) from exc


def _in(name: str, exc: ArchiveError, names: Sequence[str] = ()) -> ArchiveError:
    """*exc*, its message starting with the archive's name.

    A message that names the archive, or one of *names*, already is left as it is.
    """
    starts = tuple(f"{n}{sep}" for n in (name, *names) for sep in (": ", " "))
    if isinstance(exc, IntegrityError):
        problems = [p if p.startswith(starts) else f"{name}: {p}" for p in exc.problems]
        return exc if problems == exc.problems else IntegrityError(problems)
    if str(exc).startswith(starts):
        return exc
    return type(exc)(f"{name}: {exc}")


@contextlib.contextmanager
def open_chain(
    archives: Sequence[Archive], *, threads: int = 1, identities: Sequence[IdentityFile] = ()
) -> Iterator[ChainSource]:
    """Open the archives of a chain, check that they form one, and hand out its tree.

    The first must be full; each next one's ``base.id`` must be the id of the one before
    it (its TOC member's BLAKE3-256, :meth:`~oxbak.source.TocSource.toc_id`). Only
    manifests and TOCs are read for this, before the caller creates anything; the TOCs
    bind the contents, which the restore checks as it reads them.

    :raises InputError: one line naming the archive that does not fit (or cannot be read
        through its TOC: a pipe, an encrypted or version-1 archive).
    :raises ArchiveError: an archive's manifest or TOC is damaged (named).
    """
    if not archives:
        raise InputError("a chain needs at least one archive")
    with contextlib.ExitStack() as stack:
        sources: list[TocSource] = []
        ids: list[str] = []
        previous = ""
        for n, archive in enumerate(archives):
            try:
                source = stack.enter_context(
                    open_source(
                        archive,
                        whole=False,
                        threads=threads,
                        identities=identities,
                        incremental=True,
                    )
                )
                if not isinstance(source, TocSource):
                    raise no_toc(
                        source,
                        archive,
                        f"{source.name} cannot be part of a chain: only an unencrypted "
                        f"archive file of version 2 or later is read through its table of "
                        f"contents",
                    )
                previous = _check_link(source, n, archives, previous)
            except ArchiveError as exc:
                raise _in(_name_of(archive), exc) from exc
            sources.append(source)
            ids.append(previous)
        yield ChainSource(sources, ids)


def _check_link(source: TocSource, n: int, archives: Sequence[Archive], previous: str) -> str:
    """Check that *source* follows the archive whose id is *previous*; return its own id."""
    manifest = source.manifest
    base = manifest.base.id if isinstance(manifest, IncrementalManifest) else None
    if n == 0 and base is not None:
        raise InputError(
            f"{source.name} is incremental (base {base[:16]}…): a chain starts with a full "
            f"archive"
        )
    if n > 0 and base is None:
        raise InputError(
            f"{source.name} is a full archive: after the first, a chain holds only "
            f"incrementals"
        )
    if base is not None and base != previous:
        raise InputError(
            f"{source.name} is not based on the archive before it "
            f"({_name_of(archives[n - 1])}): its base is {base[:16]}…, that archive is "
            f"{previous[:16]}… (give the archives in the order they were packed, none left "
            f"out)"
        )
    return source.toc_id()


def _name_of(archive: Archive) -> str:
    if isinstance(archive, (str, os.PathLike)):
        return os.fsdecode(archive)
    name = getattr(archive, "name", None)
    return name if isinstance(name, str) else "<archive>"


def check_chain(archives: Sequence[Archive]) -> list[str]:
    """Check that *archives* form one chain, in order (as :func:`open_chain`); their ids."""
    with open_chain(archives) as chain:
        return chain.ids
