"""unpack(), verify(), cat() and list_entries(): one loop from an archive source into a sink.

(The module is called ``restore`` so that ``oxbak.unpack`` is always the function, never a
submodule shadowing it.)

Every entry a source hands out (:mod:`oxbak.source`) goes through one rule set first —
name, order, parent, type, declared bounds, hardlink targets (:class:`_Rules`). The loop
then sends the entries a command wants to a destination, hashing every file as it goes,
and checks the archive's own index (the TOC, or a version-1 ``index.jsonl``) and totals.
Only after all of that does ``unpack`` commit the staged tree; ``verify`` runs the same
loop into :class:`HashOnly` and reports every problem it finds instead of stopping at the
first; ``list_entries`` runs the rules alone; ``cat`` sends one file to a stream.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple, cast

from . import format as fmt
from .chain import ChainSource, link_problems, open_chain
from .commit import Mode
from .digest import Hasher
from .digest import digest as digest_of
from .envelope import IdentityFile
from .errors import (
    ArchiveError,
    CorruptArchiveError,
    DestinationError,
    InputError,
    IntegrityError,
    LimitExceededError,
    OxbakError,
    UnsafeArchiveError,
)
from .locations import Archive
from .manifest import IncrementalManifest, Index, Manifest, Totals, sections
from .owners import OwnerMode, Owners
from .parts import PartsReader
from .paths import (
    check_path,
    display,
    link_stays_inside,
    member_name,
    parse_member_name,
    shown,
    sort_key,
)
from .patterns import Excludes
from .source import (
    ArchiveSource,
    TocSource,
    header_of,
    metadata_key,
    open_source,
    record_key,
)
from .staging import Destination, HashOnly, StagingDir
from .tarfmt import DIRECTORY, HARDLINK, REGULAR, SYMLINK, Header
from .toc import DIR, FROM_BASE, KIND_NAMES, MISSING, IncrementalTocHeader, Record
from .workers import available_cores
from .xattrs import Xattrs

DIR_CODE = DIR[0]
_PREFIX = fmt.TREE_PREFIX.encode() + b"/"

__all__ = [
    "EntryInfo",
    "Selection",
    "UnpackResult",
    "VerifyResult",
    "cat",
    "list_entries",
    "unpack",
    "verify",
]

logger = logging.getLogger("oxbak")

Progress = Callable[[int, int], None]
_KIND = {REGULAR: "file", DIRECTORY: "dir", SYMLINK: "symlink", HARDLINK: "hardlink"}
_KIND_NAMES = ("file", "dir", "symlink", "hardlink")
_FILE, _DIR, _SYMLINK, _HARDLINK = range(4)
_CODES = {"file": _FILE, "dir": _DIR, "symlink": _SYMLINK, "hardlink": _HARDLINK}
_NO_DIGEST = bytes(fmt.DIGEST_SIZE)


@dataclass
class VerifyResult:
    """What :func:`verify` found. ``ok`` is true when ``problems`` is empty.

    ``changed`` and ``missing`` name what could not be captured when it was packed; a
    directory in ``missing`` ends with ``/``: its contents could not be read in full.
    """

    manifest: Manifest | None
    problems: list[str] = field(default_factory=list)
    entries: int = 0
    bytes: int = 0
    partial: bool = False
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    #: An incremental archive (FORMAT.md §11): its base's id, and how many of its files
    #: are the base's content, which only a check of the whole chain can read.
    base: str | None = None
    unchanged: int = 0
    #: How many archives were verified: more than one for a chain (then ``base`` is None:
    #: every file's content was checked, in the archive that stores it).
    archives: int = 1

    @property
    def ok(self) -> bool:
        """True when the archive is intact (it may still be partial: see ``partial``)."""
        return not self.problems


@dataclass
class UnpackResult:
    """What :func:`unpack` restored (``changed`` and ``missing`` as in :class:`VerifyResult`)."""

    dest: str
    manifest: Manifest
    entries: int
    bytes: int
    partial: bool = False
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


@dataclass
class _Seen:
    """What the loop saw, for the index and totals checks.

    One column per field, not one tuple per entry: the index is only checked at the end,
    so this is kept for every entry, and columns take about 120 bytes less each.
    Entry ``i`` is ``paths[i]``, ``_KIND_NAMES[kinds[i]]``, ``sizes[i]``, the ``i``-th
    digest in ``digests`` (zeros for a directory) and ``metas[i]``, a keyed hash of what
    else its TOC record must agree on (:func:`~oxbak.source.metadata_key`).
    """

    paths: list[bytes] = field(default_factory=list)
    kinds: bytearray = field(default_factory=bytearray)
    sizes: array[int] = field(default_factory=lambda: array("q"))
    digests: bytearray = field(default_factory=bytearray)
    metas: array[int] = field(default_factory=lambda: array("q"))
    totals: Totals = field(default_factory=Totals)
    links: dict[bytes, bytes] = field(default_factory=dict)
    sections: dict[bytes, int] = field(default_factory=dict)
    unchanged: int = 0  # FROM_BASE records of an incremental's TOC (no member here)

    def add(self, rel: bytes, kind: int, size: int, digest: bytes, meta: int) -> None:
        """Remember one entry, in archive order."""
        self.paths.append(rel)
        self.kinds.append(kind)
        self.sizes.append(size)
        self.digests += digest
        self.metas.append(meta)

    def files(self) -> set[bytes]:
        """The paths of the regular files seen so far."""
        return {rel for rel, kind in zip(self.paths, self.kinds, strict=True) if kind == _FILE}

    def records(self) -> Iterator[tuple[bytes, str, int, bytes, int]]:
        """``(path, kind, size, digest, meta)`` for every entry, in archive order."""
        digests = memoryview(self.digests)
        step = fmt.DIGEST_SIZE
        at = 0
        for rel, kind, size, meta in zip(
            self.paths, self.kinds, self.sizes, self.metas, strict=True
        ):
            yield rel, _KIND_NAMES[kind], size, bytes(digests[at : at + step]), meta
            at += step


class _Rules:
    """The one rule set every entry passes, whichever source it comes from.

    Names (:func:`~oxbak.paths.parse_member_name`), strict order, a parent that is an
    earlier directory, no data but in files, the manifest's declared bounds, a hardlink
    naming an earlier file, a symlink target that can be created. It counts the totals and
    sections as it goes, into *seen*.
    """

    def __init__(self, manifest: Manifest, seen: _Seen, *, files: bool = False) -> None:
        declared = manifest.totals
        self.max_entries = declared.entries
        self.max_bytes = declared.bytes
        self.seen = seen
        # The paths hardlinks may name. The loop builds it from *seen* at the first
        # hardlink: most trees have none, and a set of every file path costs ~32 bytes per
        # entry. ``list``, which keeps nothing else, keeps it from the start.
        self.files: set[bytes] | None = set() if files else None
        self.stack: list[bytes] = []
        self.previous: list[bytes] | None = None
        self.count = 0

    def admit(self, header: Header) -> tuple[bytes, str, bytes]:
        """Check *header*; return its relative path, its kind and its link target."""
        rel = parse_member_name(header.name)
        kind = _KIND[header.typeflag]
        return rel, kind, self.place(header.name, rel, kind, header.size, header.linkname)

    def admit_record(self, path: bytes, kind: str, size: int, target: bytes) -> bytes:
        """Check a TOC record; return its link target as :meth:`admit` does.

        Its member is read, if at all, only later, and must then match the record.
        """
        check_path(path)
        if kind == "hardlink":
            target = member_name(target)
        return self.place(_PREFIX + path, path, kind, size, target)

    def place(self, name: bytes, rel: bytes, kind: str, size: int, linkname: bytes) -> bytes:
        """The rules on an entry named *name* (at *rel*); return its link target."""
        key = rel.split(b"/") if rel else []  # sort_key(rel) as a list: same order, no copy
        parent = rel.rpartition(b"/")[0]
        stack = self.stack
        if self.previous is None:
            if not rel and kind != "dir":
                raise CorruptArchiveError(f"tree member 'tree/' is a {kind}, not a directory")
            if rel or kind != "dir":
                raise CorruptArchiveError(
                    f"first tree member is {shown(name)!r}, not the root directory tree/"
                )
        else:
            if key <= self.previous:
                what = "duplicate entry" if key == self.previous else "entry out of order"
                raise UnsafeArchiveError(f"refusing member {shown(name)!r}: {what}")
            while stack and stack[-1] != parent:
                stack.pop()
            if not stack:
                raise UnsafeArchiveError(
                    f"refusing member {shown(name)!r}: its parent is not a directory "
                    f"earlier in the archive"
                )
        self.previous = key
        self.count += 1
        if self.count > self.max_entries:
            raise LimitExceededError(
                f"archive holds more entries than its manifest declares ({self.max_entries})"
            )
        if kind != "file" and size:
            raise CorruptArchiveError(f"member {shown(name)!r}: a {kind} with data")
        totals = self.seen.totals
        if kind == "dir":
            totals.directories += 1
            stack.append(rel)
            return b""
        per_dir = self.seen.sections
        per_dir[parent] = per_dir.get(parent, 0) + 1
        if kind == "file":
            if totals.bytes + size > self.max_bytes:
                raise LimitExceededError(
                    f"member {shown(name)!r} ({size} bytes) takes the archive "
                    f"beyond the {self.max_bytes} bytes its manifest declares"
                )
            totals.files += 1
            totals.bytes += size
            if self.files is not None:
                self.files.add(rel)
            return b""
        if kind == "hardlink":
            target = _hardlink_target(name, linkname)
            if self.files is None:
                self.files = self.seen.files()
            if target not in self.files:
                raise UnsafeArchiveError(
                    f"refusing hardlink {shown(name)!r}: target "
                    f"{shown(linkname)!r} is not an earlier file of the archive"
                )
            totals.hardlinks += 1
            return target
        target = linkname
        if not target or b"\0" in target:
            raise UnsafeArchiveError(f"refusing symlink {shown(name)!r}: empty or invalid target")
        if len(target) >= fmt.MAX_PATH_BYTES:  # symlink(2) takes at most 4095 bytes
            raise LimitExceededError(
                f"refusing symlink {shown(name)!r}: target is {len(target)} bytes, "
                f"limit {fmt.MAX_PATH_BYTES - 1}"
            )
        totals.symlinks += 1
        return target

    def end(self) -> None:
        """After the last entry: the archive must have had a tree."""
        if self.previous is None:
            raise CorruptArchiveError("archive holds no tree (the root directory tree/ is missing)")


class Selection:
    """Which entries a partial restore writes: ``--only`` paths and ``--exclude`` patterns.

    An entry is selected when it is one of the *only* paths, lies under one, or is a
    directory on the way to one (so parents are created), and neither it nor a directory
    above it matches an *exclude* pattern (a pattern with ``/`` matches the relative path,
    others a name at any depth, as in ``pack --exclude``). No *only* path means all.
    """

    def __init__(
        self, only: Sequence[bytes] = (), excludes: Sequence[str] = (), *, links: bool = True
    ) -> None:
        self.only: set[bytes] = set()
        self._ancestors: set[bytes] = set()  # directories on the way to an *only* path
        self._firsts: set[bytes] = set()  # first components of the *only* paths
        paths = [_normalized(path) for path in only]
        if b"" not in paths:  # the root ("." or "/") selects everything: no filter
            for path in paths:
                self.add(path)
        self.excludes = Excludes(excludes)
        self.matched: set[bytes] = set()
        self.written: set[bytes] = set()  # files written, for hardlinks to name
        #: Whether a selected hardlink needs its target written (not for ``cat``).
        self.links = links
        self.entries = 0
        self.bytes = 0

    def add(self, path: bytes) -> None:
        """Select *path* too."""
        self.only.add(path)
        parts = path.split(b"/")
        self._firsts.add(parts[0])
        self._ancestors.update(b"/".join(parts[:n]) for n in range(1, len(parts)))

    def note(self, kind: str, size: int) -> None:
        """Count an entry written."""
        self.entries += 1
        if kind == "file":
            self.bytes += size

    def covers(self, rel: bytes) -> bool:
        """Whether *rel* is one of the *only* paths or lies under one (not just on the way)."""
        return rel in self.only or bool(self._only(rel))

    def __call__(self, rel: bytes, is_dir: bool = False) -> bool:
        """Whether the entry at *rel* (a directory if *is_dir*) is to be written."""
        if not rel:
            return True
        if self.only:
            hit = self._only(rel)
            if hit is None:
                return False
        else:
            hit = b""
        if self.excludes and self._excluded(rel, is_dir):
            return False
        if hit:
            self.matched.add(hit)
        return True

    def _only(self, rel: bytes) -> bytes | None:
        """The *only* path that selects *rel* (``b""`` for an ancestor of one), or None."""
        if rel.partition(b"/")[0] not in self._firsts:
            return None  # most entries of a large tree, decided at once
        if rel in self.only:
            return rel
        if rel in self._ancestors:
            return b""
        at = rel.rfind(b"/")
        while at > 0:
            prefix = rel[:at]
            if prefix in self.only:
                return prefix
            at = rel.rfind(b"/", 0, at)
        return None

    def _excluded(self, rel: bytes, is_dir: bool) -> bool:
        # An entry under an excluded directory is left out with it (as in pack's scan).
        excluded = self.excludes.excluded
        at = rel.find(b"/")
        while at > 0:
            if excluded(rel[:at], True):
                return True
            at = rel.find(b"/", at + 1)
        return excluded(rel, is_dir)

    def missed(self) -> list[bytes]:
        """The *only* paths that selected nothing."""
        return sorted(self.only - self.matched)

    def pull_in_targets(self, source: TocSource) -> None:
        """Add the targets of selected hardlinks, so that they can be restored."""
        code = HARDLINK[0]
        for block in source.blocks():
            if code not in block.kinds:
                continue  # most blocks, and whole trees, have no hardlink
            for path, kind, target in zip(block.paths, block.kinds, block.targets, strict=True):
                if kind == code and self(path) and not self(target):
                    self.add(target)
                    self.matched.add(target)


def _normalized(path: bytes) -> bytes:
    """A path as the user wrote it, relative to the tree root (``./a/`` is ``a``)."""
    path = posixpath.normpath(b"/" + path).lstrip(b"/")
    return b"" if path == b"." else path


def _run(
    source: ArchiveSource,
    dest: Destination,
    problems: list[str],
    progress: Progress | None,
    select: Selection | None = None,
    owners: Owners | None = None,
) -> tuple[Manifest, _Seen, list[Record]]:
    """The one loop. Raises on structural faults; appends content mismatches to *problems*.

    *owners* maps each entry's owner to this machine's ids (unpack); without, the ids are
    handed to *dest* as stored.
    """
    manifest = source.manifest
    seen = _Seen()
    rules = _Rules(manifest, seen)
    totals = seen.totals
    max_bytes = rules.max_bytes
    reads_everything = source.reads_everything
    hash_only = HashOnly()
    report_at = 0
    later: list[tuple[bytes, bytes]] = []  # files written elsewhere: path, packed digest
    remember = seen.add
    # What each member's TOC record must agree on, for the index check at the end; a
    # source read through its TOC has no other index to check against.
    key = _metadata_hash if reads_everything else _no_hash
    read = source.read
    where = source.where
    for header, record in source.entries():
        if header is None:  # a TOC record: the header it stands for is built if it is read
            assert record is not None
            rel, kind = record.path, record.kind
            target = rules.admit_record(rel, kind, record.size, record.target)
            if select is not None and not select(rel, kind == "dir"):
                remember(rel, _CODES[kind], record.size, _NO_DIGEST, 0)
                continue
            header = header_of(record)
        else:
            rel, kind, target = rules.admit(header)
        wanted = select is None or select(rel, kind == "dir")
        if wanted and kind != "file":
            read(header)  # from a TOC: the member at the record's offset must be this one
        if wanted and select is not None:
            select.note(kind, header.size)
        uid, gid = header.uid, header.gid
        if owners is not None and wanted and kind != "hardlink":
            uid, gid = owners.ids(rel, uid, gid, header.uname, header.gname)
        if kind == "dir":
            if wanted:
                dest.directory(rel, header.mode, header.mtime_ns, uid, gid, header.xattrs)
            remember(rel, _DIR, 0, _NO_DIGEST, key(header, b""))
            continue
        if kind == "file":
            sink = dest if wanted else hash_only if reads_everything else None
            if sink is None:
                digest = _NO_DIGEST
            else:
                chunks = read(header)
                if progress is not None and header.size >= fmt.FRAME_TARGET:
                    # The file's bytes are counted (in totals) already: its own progress
                    # is shown as it goes, not only once it is done.
                    chunks = _counted(chunks, totals.bytes - header.size, max_bytes, progress)
                written = sink.file(
                    rel,
                    header.mode,
                    header.mtime_ns,
                    uid,
                    gid,
                    chunks,
                    header.xattrs,
                )
                if written is None:  # by a worker: checked below, once it has reported
                    assert record is not None
                    later.append((rel, record.digest))
                    digest = _NO_DIGEST
                else:
                    digest = written
                    if record is not None and digest != record.digest:
                        problems.append(
                            f"{where()}digest mismatch for {shown(rel)!r}: content is not "
                            f"what was packed"
                        )
                if wanted and select is not None:
                    select.written.add(rel)
            remember(rel, _FILE, header.size, digest, key(header, b""))
            if progress is not None and totals.bytes >= report_at:
                progress(totals.bytes, max_bytes)
                report_at = totals.bytes + (1 << 20)
            continue
        digest = digest_of(target)
        if record is not None and digest != record.digest:
            problems.append(
                f"{where()}digest mismatch for {shown(rel)!r}: content is not what was packed"
            )
        if kind == "hardlink":
            if wanted:
                if select is not None and select.links and target not in select.written:
                    # An encrypted archive is a stream even from a file: only adding helps.
                    how = "" if source.envelope else (
                        ", or read the archive from a file so that oxbak can pull it in"
                    )
                    raise OxbakError(
                        f"cannot restore hardlink {shown(rel)!r} without its target "
                        f"{shown(target)!r}, which this selection leaves out (add it{how})"
                    )
                dest.hardlink(rel, target)
            remember(rel, _HARDLINK, 0, digest, key(header, target))
        else:
            if wanted:
                seen.links[rel] = target
                dest.symlink(rel, target, header.mtime_ns, uid, gid, header.xattrs)
            remember(rel, _SYMLINK, 0, digest, key(header, target))
    rules.end()
    for (rel, expected), digest in zip(later, dest.digests(), strict=True):
        if digest != expected:
            problems.append(
                f"{where()}digest mismatch for {shown(rel)!r}: content is not what was packed"
            )
    if progress is not None:
        progress(totals.bytes, totals.bytes)  # the manifest's bytes are a bound; this is all
    final, records = source.final()
    # Records beyond what the manifest accounts for (stored entries, plus files it says
    # could not be captured) would only cost memory: the index is bounded by it too.
    limit = manifest.totals.entries + manifest.changed
    if reads_everything:
        flagged = _check_index(final, records, seen, problems, limit)
    else:
        flagged = list(records)
        _check_flags(final, flagged, problems)
    source.finish()
    _check_totals(manifest, final, seen, problems)
    return manifest, seen, flagged


def _metadata_hash(header: Header, target: bytes) -> int:
    return hash(metadata_key(header, target))


def _no_hash(header: Header, target: bytes) -> int:
    return 0


def _counted(
    chunks: Iterable[memoryview], done: int, total: int, progress: Progress
) -> Iterator[memoryview]:
    """*chunks*, reporting ``progress(done, total)`` as each has been consumed."""
    for chunk in chunks:
        yield chunk
        done += len(chunk)
        progress(done, total)


def _hardlink_target(name: bytes, linkname: bytes) -> bytes:
    try:
        return parse_member_name(linkname)
    except ArchiveError as exc:
        raise UnsafeArchiveError(
            f"refusing hardlink {shown(name)!r}: target {shown(linkname)!r} "
            f"is not inside the archive's tree"
        ) from exc


def _check_index(
    index: Index, records: Iterator[Record], seen: _Seen, problems: list[str], limit: int
) -> list[Record]:
    """Compare the index (or TOC) with what was seen; return its changed/missing records."""
    flagged: list[Record] = []
    stored = seen.records()
    count = absent = 0
    # An incremental's TOC describes the whole tree: its FROM_BASE records have no member
    # here, so the rules that checked every member's name, order and parent are applied to
    # them against the records around them (a stack of directories, as in _Rules).
    incremental = isinstance(index, IncrementalTocHeader)
    previous: list[bytes] | None = None
    dirs: list[bytes] = []
    for record in records:
        count += 1
        if count > limit:
            raise LimitExceededError(
                f"the archive's index holds more records than the manifest accounts for "
                f"({limit})"
            )
        if incremental:
            _place_record(record, previous, dirs)
            previous = record.path.split(b"/") if record.path else []
        if record.from_base:
            _count_from_base(record, seen)
            continue
        if record.changed or record.missing:
            flagged.append(record)
        if record.absent:
            absent += 1
            continue  # a missing file has no member (a missing directory has one)
        got = next(stored, None)
        path = record.path
        if got is None:
            problems.append(f"index lists {shown(path)!r}, which the archive does not hold")
            continue
        rel, kind, size, digest, meta = got
        if rel != path or kind != record.kind:
            problems.append(
                f"index lists {record.kind} {shown(path)!r} where the archive holds "
                f"{kind} {shown(rel)!r}"
            )
            continue
        if size != record.size:
            problems.append(
                f"size mismatch for {shown(rel)!r}: index says {record.size}, archive holds {size}"
            )
        if kind != "dir" and digest != record.digest:
            problems.append(f"digest mismatch for {shown(rel)!r}: content is not what was packed")
        if (
            record.meta
            and hash(record_key(record)) != meta
            and hash(record_key(record, names=True)) != meta
        ):
            problems.append(
                f"table of contents disagrees with the member of {shown(rel)!r} (mode, owner, "
                f"mtime, link target or offset)"
            )
    for rel, _, _, _, _ in stored:
        problems.append(f"{shown(rel)!r} is in the archive but not in its index")
    if count != index.entries:
        problems.append(f"index header declares {index.entries} records, it holds {count}")
    if isinstance(index, IncrementalTocHeader):
        stored_count = count - seen.unchanged - absent
        if (index.stored, index.unchanged) != (stored_count, seen.unchanged):
            problems.append(
                f"table of contents header declares {index.stored} stored and "
                f"{index.unchanged} unchanged records, it holds {stored_count} and "
                f"{seen.unchanged}"
            )
    _check_flags(index, flagged, problems)
    return flagged


def _place_record(record: Record, previous: list[bytes] | None, dirs: list[bytes]) -> None:
    """Order and parent of a record of an incremental's TOC; *dirs* is the directory stack.

    Stored records are checked again against their members by the loop's rules; a
    FROM_BASE record has no member, and this is its only check.
    """
    path = record.path
    key = path.split(b"/") if path else []
    if previous is None:
        if path or record.kind != "dir":
            raise CorruptArchiveError("table of contents does not start with the root directory")
    else:
        check_path(path)
        if key <= previous:
            raise UnsafeArchiveError(
                f"table of contents: record {shown(path)!r} is a duplicate or out of order"
            )
        parent = path.rpartition(b"/")[0]
        while dirs and dirs[-1] != parent:
            dirs.pop()
        if not dirs:
            raise UnsafeArchiveError(
                f"table of contents: the parent of {shown(path)!r} is not an earlier directory"
            )
    if record.kind == "dir":
        dirs.append(path)


def _count_from_base(record: Record, seen: _Seen) -> None:
    """A FROM_BASE file: counted in the whole tree's totals; its content is not here."""
    seen.unchanged += 1
    seen.totals.files += 1
    seen.totals.bytes += record.size
    parent = record.path.rpartition(b"/")[0]
    seen.sections[parent] = seen.sections.get(parent, 0) + 1


def _check_flags(index: Index, flagged: list[Record], problems: list[str]) -> None:
    changed = sum(1 for r in flagged if r.changed)
    missing = sum(1 for r in flagged if r.missing)
    if index.partial != bool(flagged) or index.changed != changed or index.missing != missing:
        problems.append("index header's partial/changed/missing counts disagree with its records")


def _check_totals(manifest: Manifest, index: Index, seen: _Seen, problems: list[str]) -> None:
    actual = seen.totals
    if (
        isinstance(manifest, IncrementalManifest)
        and isinstance(index, IncrementalTocHeader)
        and manifest.base.deleted != index.deleted
    ):
        problems.append(
            f"manifest and table of contents disagree on the files deleted since the "
            f"base ({manifest.base.deleted} and {index.deleted})"
        )
    if index.totals != actual:
        problems.append(
            f"index totals {_fmt_totals(index.totals)} disagree with the archive's "
            f"{_fmt_totals(actual)}"
        )
    if manifest.partial is None:
        return  # the manifest holds the scan's bounds, not exact totals
    if manifest.totals != actual:
        problems.append(
            f"manifest totals {_fmt_totals(manifest.totals)} disagree with the archive's "
            f"{_fmt_totals(actual)}"
        )
    if manifest.sections != sections(seen.sections):
        problems.append("manifest sections disagree with the archive's directories")
    if manifest.partial != index.partial:
        problems.append("manifest and index disagree on whether the archive is partial")


def _fmt_totals(t: Totals) -> str:
    return (
        f"(files={t.files}, hardlinks={t.hardlinks}, directories={t.directories}, "
        f"symlinks={t.symlinks}, bytes={t.bytes})"
    )


def _flag_lists(flagged: list[Record]) -> tuple[list[str], list[str]]:
    changed = [display(r.path) for r in flagged if r.changed]
    # A directory whose contents could not be read is named as such, with a "/".
    missing = [
        display(r.path or b".") + "/" if r.kind == "dir" else display(r.path)
        for r in flagged
        if r.missing
    ]
    return changed, missing


def _default_threads(threads: int) -> int:
    return threads if threads > 0 else available_cores()


def verify(
    archive: Archive | Sequence[Archive],
    *,
    progress: Progress | None = None,
    threads: int = 0,
    identities: Sequence[IdentityFile] = (),
) -> VerifyResult:
    """Run every check of :func:`unpack` without writing anything.

    Returns a :class:`VerifyResult` naming every problem found; a damaged archive is a
    result, not an exception. An archive file is read in parts by *threads* worker
    processes (0: one per CPU; 1: in this process, its frames decompressed ahead).

    An incremental archive alone is checked for what it stores, and its records of
    unchanged files for consistency. A chain (a list or tuple: the full archive, then
    each incremental on the one before) is checked whole: that it is one, each archive
    completely as if alone, and each link (every unchanged file is a file of the same
    size and digest in the base, the deletions counted right). Problems name the archive.

    An encrypted archive is decrypted with *identities*; a damaged envelope is a problem
    found, like any damage.

    :raises OxbakError: only if the archive cannot be opened at all.
    :raises IdentityError: it is encrypted and *identities* cannot open it.
    """
    if isinstance(archive, (list, tuple)) and len(archive) > 1:
        return _verify_chain(archive, progress, threads)
    archive = _single(archive)
    problems: list[str] = []
    result = VerifyResult(manifest=None, problems=problems)
    try:
        # An incremental is checked by itself: its members against its records, its
        # FROM_BASE records for consistency only (their content is in its chain).
        with open_source(
            archive,
            threads=_default_threads(threads),
            identities=identities,
            incremental=True,
            parts=_default_threads(threads) > 1,
        ) as source:
            result.manifest = source.manifest
            parts = _parts(source, HashOnly(), threads, progress, write=False)
            if parts is None:
                manifest, seen, flagged = _run(source, HashOnly(), problems, progress)
            else:
                with parts:
                    manifest, seen, flagged = _run(parts, parts, problems, None)
    except ArchiveError as exc:
        problems.append(str(exc))
        return result
    result.manifest = manifest
    result.entries = seen.totals.entries
    result.bytes = seen.totals.bytes
    result.changed, result.missing = _flag_lists(flagged)
    result.partial = bool(flagged)
    if isinstance(manifest, IncrementalManifest):
        result.base = manifest.base.id
        result.unchanged = seen.unchanged
    for path, target in seen.links.items():
        if not link_stays_inside(path, target, seen.links.get):
            logger.info("symlink %r points outside the tree (%r)", display(path), display(target))
    return result


def _verify_chain(
    archives: Sequence[Archive], progress: Progress | None, threads: int
) -> VerifyResult:
    """:func:`verify` of a chain: its links from the TOCs, then each archive in full."""
    problems: list[str] = []
    result = VerifyResult(manifest=None, problems=problems, archives=len(archives))
    try:
        with open_chain(archives) as chain:
            names = [source.name for source in chain.sources]
            problems += link_problems(chain.sources)
    except (ArchiveError, InputError) as exc:
        problems.append(str(exc))  # not a chain, or a TOC that cannot be read: no more
        return result
    for name, archive in zip(names, archives, strict=True):
        alone = verify(archive, progress=progress, threads=threads)
        problems += [p if p.startswith(f"{name}: ") else f"{name}: {p}" for p in alone.problems]
    # The tree is the last archive's: its counts, and what it could not capture.
    result.manifest = alone.manifest
    result.entries, result.bytes = alone.entries, alone.bytes
    result.partial, result.changed, result.missing = alone.partial, alone.changed, alone.missing
    return result


def _single(archive: Archive | Sequence[Archive]) -> Archive:
    """*archive*, or the one archive of a list or tuple (a str is a sequence too)."""
    if not isinstance(archive, (list, tuple)):
        return cast(Archive, archive)
    if len(archive) != 1:
        raise InputError("no archive given" if not archive else "more than one archive given")
    one: Archive = archive[0]
    return one


def unpack(
    archive: Archive | Sequence[Archive],
    dest: str | os.PathLike[str],
    *,
    mode: Mode = "new",
    owner: OwnerMode = "name",
    same_owner: bool | None = None,
    allow_external_symlinks: bool = False,
    only: Sequence[str | bytes] = (),
    excludes: Sequence[str] = (),
    threads: int = 0,
    xattrs: bool = True,
    progress: Progress | None = None,
    identities: Sequence[IdentityFile] = (),
) -> UnpackResult:
    """Restore *archive* into *dest*, all or nothing.

    *archive* may be a chain (a list or tuple): a full archive, then incrementals, each
    packed with the one before as its base. The chain is checked from the archives'
    manifests and tables of contents before anything is created; the last archive's tree
    is restored, each unchanged file's content read from the archive of the chain that
    stores it and checked against the last archive's digest.

    Everything is extracted into a private staging directory beside *dest* and verified
    (zstd checksums, every digest in the archive's index, its totals) before *dest* is
    touched. Then, by *mode*:

    - ``"new"``: *dest* must not exist or be empty; the staged tree is renamed into place.
    - ``"replace"``: the staged tree and *dest* are swapped in one step; the old tree is
      deleted only after the new one is durable.
    - ``"merge"``: the archive's entries replace same-named ones in *dest*, one rename each.

    :param owner: whose the restored entries are, when running as root: ``"name"`` (the
        default, as tar does) gives each the owner of its stored user and group names on
        this machine, or its stored ids where a name is unknown or not stored;
        ``"numeric"`` the stored ids; ``"none"`` leaves them to the current user. Anyone
        but root cannot give files away: then nothing is changed, and one warning says
        so if the archive's owners are not the current user.
    :param same_owner: the older form: False is ``owner="none"``.

    :param only: restore just these paths (relative to the tree root; a directory with
        everything under it), with the directories leading to them and the targets of
        their hardlinks. From a seekable archive only the frames holding them are read;
        from a stream everything is read and checked, and only they are written.
    :param excludes: leave out entries matching these patterns (as ``pack --exclude``).
    :param threads: cores to use (0: every CPU this process may run on). An archive file
        is read in parts by as many worker processes (:mod:`oxbak.parts`); 1 reads it in
        this process, with a decompression thread.
    :param xattrs: restore extended attributes and POSIX ACLs where DEST's filesystem
        takes them (``trusted.*`` and ``security.*`` only as root); what cannot be set is
        named in warnings, and the restore goes on.
    :param identities: identity files to decrypt an encrypted archive with (age secret
        keys or ssh private keys); its plaintext is read as a stream, held in memory a
        few MiB at a time, and written nowhere but the staging directory.
    :raises ArchiveError: the archive is damaged or unsafe (nothing was changed).
    :raises IdentityError: it is encrypted and *identities* cannot open it.
    :raises DestinationError: *dest* cannot take it (nothing was changed).
    """
    if mode not in ("new", "replace", "merge"):
        raise OxbakError(f"unknown unpack mode {mode!r}")
    owners = Owners("none" if same_owner is False else owner)
    select = None
    if only or excludes:
        select = Selection([os.fsencode(p) for p in only], excludes)
    with _open(
        archive,
        whole=not only,
        threads=_default_threads(threads),
        identities=identities,
        parts=select is None and _default_threads(threads) > 1,
    ) as source:
        # The manifest is read and its version checked (a chain: every link) before
        # anything is created.
        manifest = source.manifest
        toc = source.last if isinstance(source, ChainSource) else source
        if select is not None and isinstance(toc, TocSource):
            select.pull_in_targets(toc)
        staging = StagingDir(dest, mode=mode, same_owner=owners.chown, xattrs=xattrs)
        try:
            staging.ensure_room(manifest.totals.bytes, manifest.totals.entries)
            problems: list[str] = []
            parts = _parts(source, staging, threads, progress)
            with parts or contextlib.nullcontext():
                if parts is None:
                    manifest, seen, flagged = _run(
                        source, staging, problems, progress, select, owners
                    )
                else:
                    manifest, seen, flagged = _run(parts, parts, problems, None, select, owners)
                    parts.finish_links()
            if problems:
                raise IntegrityError(problems)
            if select is not None and select.missed():
                raise OxbakError(
                    "not in the archive: " + ", ".join(repr(display(p)) for p in select.missed())
                )
            if mode == "merge":
                conflicts = staging.merge_conflicts(
                    (rel, kind)
                    for rel, kind, _, _, _ in seen.records()
                    if select is None or select(rel, kind == "dir")
                )
                if conflicts:
                    raise DestinationError(
                        "; ".join(conflicts[:3])
                        + (f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else "")
                    )
            _check_links(seen.links, staging, allow_external_symlinks)
            staging.finish()
            for warning in staging.commit() + staging.xattrs.warnings() + owners.warnings():
                logger.warning("%s", warning)
        except OSError as exc:
            staging.abort()
            raise DestinationError(
                f"cannot unpack into {staging.dest!r}: {exc.strerror or exc}"
            ) from exc
        except ArchiveError as exc:
            staging.abort()
            if isinstance(source, ChainSource):
                raise source.named(exc) from exc
            raise
        except BaseException:
            staging.abort()
            raise
    changed, missing = _flag_lists(flagged)
    if select is None:
        entries, nbytes = seen.totals.entries, seen.totals.bytes
    else:
        entries, nbytes = select.entries, select.bytes
    return UnpackResult(
        dest=staging.dest,
        manifest=manifest,
        entries=entries,
        bytes=nbytes,
        partial=bool(flagged),
        changed=changed,
        missing=missing,
    )


def _open(
    archive: Archive | Sequence[Archive],
    *,
    whole: bool,
    threads: int,
    identities: Sequence[IdentityFile],
    parts: bool = False,
) -> contextlib.AbstractContextManager[ArchiveSource]:
    """One archive's source, or a chain's (*archive* a list or tuple of several)."""
    if isinstance(archive, (list, tuple)) and len(archive) > 1:
        return open_chain(archive, threads=threads, identities=identities)
    return open_source(
        _single(archive), whole=whole, threads=threads, identities=identities, parts=parts
    )


def _parts(
    source: ArchiveSource,
    dest: Destination,
    threads: int,
    progress: Progress | None,
    *,
    write: bool = True,
) -> PartsReader | None:
    """Workers to read *source* in parts, or None to read it here.

    Only a source opened for them: a full archive, read whole through its TOC.
    """
    if not isinstance(source, TocSource) or source.incremental or not source.reads_parts:
        return None
    return PartsReader(source, dest, threads, write=write, progress=progress)


class EntryInfo(NamedTuple):
    """One tree entry as ``list`` shows it. ``path`` is relative to the tree root.

    Owner names, the digest, ``ctime_ns`` and ``ino`` come from the archive's table of
    contents; they are empty (zero) when it was read as a stream or is a version-1 archive.
    (A named tuple: a listing makes one per entry, and it is the cheapest immutable record.)
    """

    path: bytes
    type: str
    mode: int
    size: int
    mtime_ns: int
    target: bytes = b""
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    digest: bytes = b""
    ctime_ns: int = 0
    ino: int = 0
    #: A file of an incremental unchanged since its base: the archive that stores its
    #: content, its name when a chain is listed, ``"base"`` when the incremental is
    #: listed alone. Empty for what the archive listed (a chain's last) stores itself.
    archive: str = ""

    @property
    def name(self) -> str:
        """The path for people (see :func:`oxbak.paths.display`); ``.`` for the root."""
        return display(self.path) if self.path else "."


def list_entries(
    archive: Archive | Sequence[Archive],
    paths: Sequence[str | bytes] = (),
    *,
    identities: Sequence[IdentityFile] = (),
) -> Iterator[EntryInfo]:
    """Every tree entry of *archive* in order, without extracting or hashing anything.

    From a seekable version-2 archive only the table of contents is read. Entries pass the
    rules ``unpack`` applies (names, order, parents, bounds); a hostile one raises
    instead of printing. With *paths*, only those entries (a directory: its subtree).

    An incremental archive lists its whole tree, each file unchanged since its base
    marked (:attr:`EntryInfo.archive`); a chain (a list or tuple, full archive first) is
    checked first, and each such file names the archive that stores it.

    An encrypted archive (decrypted with *identities*) is read as a stream, whole.

    :raises OxbakError: a path of *paths* that is not in the archive (after the others).
    """
    select = Selection([os.fsencode(p) for p in paths]) if paths else None
    with _open_toc(archive, identities) as source:
        rules = _Rules(source.manifest, _Seen(), files=True)
        if isinstance(source, ChainSource):
            yield from _list_toc(source.last, rules, select, source.holder)
        elif isinstance(source, TocSource):
            yield from _list_toc(
                source, rules, select, _in_base if source.incremental else None
            )
        else:
            yield from _list_stream(source, rules, select)
        rules.end()
        if source.reads_everything:
            _, records = source.final()
            for _ in records:
                pass
            source.finish()
    if select is not None and select.missed():
        raise OxbakError(
            "not in the archive: " + ", ".join(repr(display(p)) for p in select.missed())
        )


def _list_stream(
    source: ArchiveSource, rules: _Rules, select: Selection | None
) -> Iterator[EntryInfo]:
    """``list_entries`` from the tar headers as they come."""
    for header, _ in source.entries():
        assert header is not None  # a stream hands out tar headers
        rel, kind, target = rules.admit(header)
        if select is not None and not (select(rel) and select.covers(rel)):
            continue
        yield EntryInfo(
            rel,
            kind,
            header.mode,
            header.size,
            header.mtime_ns,
            target,
            header.uid,
            header.gid,
            header.uname,
            header.gname,
        )


def _in_base(path: bytes, size: int, digest: bytes) -> str:
    """Where an incremental listed alone has an unchanged file's content: its base."""
    return "base"


def _open_toc(
    archive: Archive | Sequence[Archive],
    identities: Sequence[IdentityFile],
    *,
    threads: int = 1,
    links: bool = True,
) -> contextlib.AbstractContextManager[ArchiveSource]:
    """An archive read through its TOC when it can be (``list``, ``diff``, ``cat``).

    A chain (a list or tuple of several) is checked first; with *links*, every link
    from the TOCs (:func:`~oxbak.chain.link_problems`), else only as far as the entries
    asked for resolve. Read as a stream, an incremental is refused.
    """
    if isinstance(archive, (list, tuple)) and len(archive) > 1:
        return _checked_chain(archive, threads, links)
    return _toc_or_stream(_single(archive), identities, threads)


@contextlib.contextmanager
def _checked_chain(
    archives: Sequence[Archive], threads: int, links: bool
) -> Iterator[ArchiveSource]:
    with open_chain(archives, threads=threads) as chain:
        problems = link_problems(chain.sources) if links else []
        if problems:
            raise IntegrityError(problems)
        yield chain


@contextlib.contextmanager
def _toc_or_stream(
    archive: Archive, identities: Sequence[IdentityFile], threads: int
) -> Iterator[ArchiveSource]:
    with open_source(
        archive, whole=False, threads=threads, identities=identities, incremental=True
    ) as source:
        if source.manifest.version >= fmt.INCREMENTAL_VERSION and not isinstance(
            source, TocSource
        ):
            # Read as a stream, an incremental shows only its members: not its tree.
            raise OxbakError(
                f"{source.name} is an incremental archive: its tree is read from its table "
                f"of contents, which needs the archive as a file (not a pipe, not encrypted)"
            )
        yield source


def _list_toc(
    source: TocSource,
    rules: _Rules,
    select: Selection | None,
    holder: Callable[[bytes, int, bytes], str] | None = None,
) -> Iterator[EntryInfo]:
    """``list_entries`` from the TOC's columns, without a tar header or a record per entry.

    The same rules apply (:meth:`_Rules.admit_record`); only the objects are fewer.
    *holder* names the archive storing an unchanged file of an incremental.
    """
    admit = rules.admit_record
    names = KIND_NAMES
    step = fmt.DIGEST_SIZE
    for block in source.blocks():
        users, groups, digests = block.users, block.groups, block.digests
        columns = zip(
            block.paths,
            block.kinds,
            block.flags,
            block.sizes,
            block.targets,
            block.modes,
            block.mtimes,
            block.uids,
            block.gids,
            block.ctimes,
            block.inodes,
            strict=True,
        )
        for i, (path, code, flags, size, target, mode, mtime, uid, gid, ctime, ino) in enumerate(
            columns
        ):
            if flags & MISSING and code != DIR_CODE:
                continue  # a file scanned, but never stored: no member, nothing to list
            kind = names[code]
            admit(path, kind, size, target)
            if select is not None and not (select(path) and select.covers(path)):
                continue
            digest = b"" if code == DIR_CODE else digests[i * step : i * step + step]
            yield EntryInfo(
                path,
                kind,
                mode,
                size,
                mtime,
                target,
                uid,
                gid,
                users.get(uid, ""),
                groups.get(gid, ""),
                digest,
                ctime,
                ino,
                holder(path, size, digest) if holder and flags & FROM_BASE else "",
            )


class _HeldBack:
    """Writes a file's bytes to *out*, always keeping the last piece back until released."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.held: bytes | memoryview = b""
        self.hasher = Hasher()
        self.size = 0

    def feed(self, chunks: Iterable[memoryview]) -> bytes:
        for chunk in chunks:
            self.hasher.update(chunk)
            self.size += len(chunk)
            if self.held:
                self.out.write(self.held)
            # The sources hand out views of immutable bytes: holding one is safe.
            self.held = chunk
        return self.hasher.digest(fmt.DIGEST_SIZE)

    def release(self) -> None:
        if self.held:
            self.out.write(self.held)
        self.held = b""


class _CatSink(HashOnly):
    """The destination of ``cat`` on a stream: the one file goes to a :class:`_HeldBack`."""

    def __init__(self, path: bytes, out: _HeldBack) -> None:
        self.path = path
        self.held = out
        self.kind = ""

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
        if path != self.path:
            return super().file(path, mode, mtime_ns, uid, gid, chunks)
        self.kind = "file"
        return self.held.feed(chunks)

    def directory(
        self, path: bytes, mode: int, mtime_ns: int, uid: int, gid: int, xattrs: Xattrs = ()
    ) -> None:
        if path == self.path:
            self.kind = "dir"

    def hardlink(self, path: bytes, target: bytes) -> None:
        if path == self.path:
            self.kind = "hardlink"

    def symlink(
        self, path: bytes, target: bytes, mtime_ns: int, uid: int, gid: int, xattrs: Xattrs = ()
    ) -> None:
        if path == self.path:
            self.kind = "symlink"


def cat(
    archive: Archive | Sequence[Archive],
    path: str | bytes,
    out: BinaryIO,
    *,
    threads: int = 0,
    identities: Sequence[IdentityFile] = (),
) -> int:
    """Write the content of the file at *path* in *archive* to *out*; return its size.

    From a seekable version-2 archive only the frames holding the file (and the table of
    contents) are read. The file's digest is checked before its last piece is written: on
    a mismatch nothing more is written and :class:`~oxbak.errors.IntegrityError` is raised,
    so a consumer of *out* sees a failure, not a complete file. A hardlink gives its
    target's content.

    Of an incremental archive, a file it stores is read from it; a file unchanged since
    its base needs the chain (*archive* a list or tuple, the full archive first), and is
    read from the archive that stores it.

    :raises OxbakError: *path* is not a file of the archive.
    """
    rel = os.fsencode(path).strip(b"/")
    parse_member_name(member_name(rel))  # the same name rules as every member
    held = _HeldBack(out)
    with _open_toc(
        archive, identities, threads=_default_threads(threads), links=False
    ) as source:
        chain = source if isinstance(source, ChainSource) else None
        if chain is not None:
            source = chain.last
        if isinstance(source, TocSource):
            record = _file_record(source, rel)
            if record.from_base:
                if chain is None:
                    raise OxbakError(
                        f"{source.name}: {display(rel)!r} is unchanged since its base: its "
                        f"content is in the archives before it (oxbak cat {source.name} "
                        f"PATH --base FULL [--base INC]…)"
                    )
                source, record = chain.locate(record)
            digest = held.feed(source.read(header_of(record)))
            if digest != record.digest:
                raise IntegrityError(
                    [f"digest mismatch for {shown(record.path)!r}: content is not what was packed"]
                )
        else:
            sink = _CatSink(rel, held)
            problems: list[str] = []
            _run(source, sink, problems, None, Selection([rel], links=False))
            if problems:
                raise IntegrityError(problems)
            _check_kind(rel, sink.kind, source.envelope is not None)
    held.release()
    return held.size


def _file_record(source: TocSource, rel: bytes) -> Record:
    record = source.find(rel)
    if record is None:
        raise OxbakError(f"not in the archive: {display(rel)!r}")
    if record.kind == "hardlink":
        # The link's own member must say the same, and the rules of every hardlink hold:
        # it names an earlier file of the archive, inside the tree.
        link = header_of(record)
        source.read(link)
        target = _hardlink_target(link.name, link.linkname)
        found = source.find(target) if sort_key(target) < sort_key(rel) else None
        if found is None or found.kind != "file":
            raise UnsafeArchiveError(
                f"refusing hardlink {shown(link.name)!r}: target {shown(link.linkname)!r} is "
                f"not an earlier file of the archive"
            )
        record = found
    _check_kind(rel, record.kind)
    if record.missing:
        raise OxbakError(f"{display(rel)!r} could not be read when the archive was packed")
    return record


def _check_kind(rel: bytes, kind: str, encrypted: bool = False) -> None:
    if kind == "":
        raise OxbakError(f"not in the archive: {display(rel)!r}")
    if kind == "hardlink":
        # An encrypted archive is read as a stream even from a file: only the target helps.
        how = "" if encrypted else "read the archive from a file (not a pipe) to follow it, or "
        raise OxbakError(f"{display(rel)!r} is a hardlink; {how}cat its target")
    if kind != "file":
        what = "directory" if kind == "dir" else kind
        raise OxbakError(f"{display(rel)!r} is a {what}, not a file")


def _check_links(links: dict[bytes, bytes], staging: StagingDir, allow_external: bool) -> None:
    if allow_external:
        return
    # In a merge, links already in DEST take part in resolution too.
    merging = staging.mode == "merge" and os.path.isdir(staging.dest)
    dest_b = os.fsencode(staging.dest)

    def lookup(path: bytes) -> bytes | None:
        if path in links:
            return links[path]
        if not merging:
            return None
        try:
            return os.readlink(dest_b + b"/" + path)
        except OSError:
            return None

    for path, target in links.items():
        if not link_stays_inside(path, target, lookup):
            raise UnsafeArchiveError(
                f"refusing symlink {shown(path)!r} -> {shown(target)!r}: it points outside "
                f"the destination (use --allow-external-symlinks to restore it anyway)"
            )
