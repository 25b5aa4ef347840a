"""unpack() and verify(): one loop from the archive (source) into a destination (sink).

(The module is called ``restore`` so that ``oxbak.unpack`` is always the function, never a
submodule shadowing it.)

The loop enforces every rule a member must obey — name, order, parent, type, declared
bounds — hashes every file as it goes to the destination, then checks the integrity index
record by record and the manifest's totals. Only after all of that does ``unpack`` commit
the staged tree; ``verify`` runs the same loop into :class:`HashOnly` and reports every
problem it finds instead of stopping at the first.
"""

from __future__ import annotations

import logging
import os
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import format as fmt
from .destinations import Destination, HashOnly, Mode, StagingDir
from .digest import digest as digest_of
from .errors import (
    ArchiveError,
    CorruptArchiveError,
    DestinationError,
    IntegrityError,
    LimitExceededError,
    OxbakError,
    UnsafeArchiveError,
)
from .manifest import Index, IndexRecord, Manifest, Totals, sections
from .paths import display, link_stays_inside, parse_member_name, shown
from .reader import Archive, ArchiveReader, open_archive
from .tarfmt import DIRECTORY, HARDLINK, REGULAR, SYMLINK, Header

__all__ = ["UnpackResult", "VerifyResult", "unpack", "verify"]

logger = logging.getLogger("oxbak")

Progress = Callable[[int, int], None]
_KIND = {REGULAR: "file", DIRECTORY: "dir", SYMLINK: "symlink", HARDLINK: "hardlink"}
_KIND_NAMES = ("file", "dir", "symlink", "hardlink")
_FILE, _DIR, _SYMLINK, _HARDLINK = range(4)
_NO_DIGEST = bytes(fmt.DIGEST_SIZE)


@dataclass
class VerifyResult:
    """What :func:`verify` found. ``ok`` is true when ``problems`` is empty."""

    manifest: Manifest | None
    problems: list[str] = field(default_factory=list)
    entries: int = 0
    bytes: int = 0
    partial: bool = False
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the archive is intact (it may still be partial: see ``partial``)."""
        return not self.problems


@dataclass
class UnpackResult:
    """What :func:`unpack` restored."""

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
    Entry ``i`` is ``paths[i]``, ``_KIND_NAMES[kinds[i]]``, ``sizes[i]`` and the ``i``-th
    digest in ``digests`` (zeros for a directory).
    """

    paths: list[bytes] = field(default_factory=list)
    kinds: bytearray = field(default_factory=bytearray)
    sizes: array[int] = field(default_factory=lambda: array("q"))
    digests: bytearray = field(default_factory=bytearray)
    totals: Totals = field(default_factory=Totals)
    links: dict[bytes, bytes] = field(default_factory=dict)
    sections: dict[bytes, int] = field(default_factory=dict)

    def add(self, rel: bytes, kind: int, size: int, digest: bytes) -> None:
        """Remember one entry, in archive order."""
        self.paths.append(rel)
        self.kinds.append(kind)
        self.sizes.append(size)
        self.digests += digest

    def files(self) -> set[bytes]:
        """The paths of the regular files seen so far."""
        return {rel for rel, kind in zip(self.paths, self.kinds, strict=True) if kind == _FILE}

    def records(self) -> Iterator[tuple[bytes, str, int, bytes]]:
        """``(path, kind, size, digest)`` for every entry, in archive order."""
        digests = memoryview(self.digests)
        step = fmt.DIGEST_SIZE
        at = 0
        for rel, kind, size in zip(self.paths, self.kinds, self.sizes, strict=True):
            yield rel, _KIND_NAMES[kind], size, bytes(digests[at : at + step])
            at += step


def _run(
    reader: ArchiveReader,
    dest: Destination,
    problems: list[str],
    progress: Progress | None,
) -> tuple[Manifest, _Seen, list[IndexRecord]]:
    """The one loop. Raises on structural faults; appends content mismatches to *problems*."""
    manifest = reader.manifest if reader.manifest is not None else reader.read_manifest()
    declared = manifest.totals
    max_entries = declared.entries
    max_bytes = declared.bytes
    seen = _Seen()
    totals = seen.totals
    # The paths hardlinks may name, built at the first hardlink: most trees have none,
    # and a set of every file path costs ~32 bytes per entry.
    files: set[bytes] | None = None
    stack: list[bytes] = []
    previous: list[bytes] | None = None
    report_at = 0
    count = 0
    per_dir = seen.sections
    remember = seen.add
    for header in reader.members():
        rel = parse_member_name(header.name)
        kind = _KIND[header.typeflag]
        key = rel.split(b"/") if rel else []  # sort_key(rel) as a list: same order, no copy
        parent = rel.rpartition(b"/")[0]
        if previous is None:
            if not rel and kind != "dir":
                raise CorruptArchiveError(f"tree member 'tree/' is a {kind}, not a directory")
            if rel or kind != "dir":
                raise CorruptArchiveError(
                    f"first tree member is {shown(header.name)!r}, not the root directory tree/"
                )
        else:
            if key <= previous:
                what = "duplicate entry" if key == previous else "entry out of order"
                raise UnsafeArchiveError(f"refusing member {shown(header.name)!r}: {what}")
            while stack and stack[-1] != parent:
                stack.pop()
            if not stack:
                raise UnsafeArchiveError(
                    f"refusing member {shown(header.name)!r}: its parent is not a directory "
                    f"earlier in the archive"
                )
        previous = key
        count += 1
        if count > max_entries:
            raise LimitExceededError(
                f"archive holds more entries than its manifest declares ({max_entries})"
            )
        if kind != "file" and header.size:
            raise CorruptArchiveError(f"member {shown(header.name)!r}: a {kind} with data")
        if kind == "dir":
            totals.directories += 1
            stack.append(rel)
            dest.directory(rel, header.mode, header.mtime_ns, header.uid, header.gid)
            remember(rel, _DIR, 0, _NO_DIGEST)
            continue
        per_dir[parent] = per_dir.get(parent, 0) + 1
        if kind == "file":
            if totals.bytes + header.size > max_bytes:
                raise LimitExceededError(
                    f"member {shown(header.name)!r} ({header.size} bytes) takes the archive "
                    f"beyond the {max_bytes} bytes its manifest declares"
                )
            totals.files += 1
            totals.bytes += header.size
            digest = dest.file(
                rel, header.mode, header.mtime_ns, header.uid, header.gid, reader.data(header.size)
            )
            if files is not None:
                files.add(rel)
            remember(rel, _FILE, header.size, digest)
            if progress is not None and totals.bytes >= report_at:
                progress(totals.bytes, max_bytes)
                report_at = totals.bytes + (1 << 20)
        elif kind == "hardlink":
            target = _hardlink_target(header)
            if files is None:
                files = seen.files()
            if target not in files:
                raise UnsafeArchiveError(
                    f"refusing hardlink {shown(header.name)!r}: target "
                    f"{shown(header.linkname)!r} is not an earlier file of the archive"
                )
            totals.hardlinks += 1
            dest.hardlink(rel, target)
            remember(rel, _HARDLINK, 0, _hash(target))
        else:
            target = header.linkname
            if not target or b"\0" in target:
                raise UnsafeArchiveError(
                    f"refusing symlink {shown(header.name)!r}: empty or invalid target"
                )
            if len(target) >= fmt.MAX_PATH_BYTES:  # symlink(2) takes at most 4095 bytes
                raise LimitExceededError(
                    f"refusing symlink {shown(header.name)!r}: target is {len(target)} bytes, "
                    f"limit {fmt.MAX_PATH_BYTES - 1}"
                )
            totals.symlinks += 1
            seen.links[rel] = target
            dest.symlink(rel, target, header.mtime_ns, header.uid, header.gid)
            remember(rel, _SYMLINK, 0, _hash(target))
    if previous is None:
        raise CorruptArchiveError("archive holds no tree (the root directory tree/ is missing)")
    index, records = reader.index()
    # Records beyond what the manifest accounts for (stored entries, plus files it says
    # could not be captured) would only cost memory: the index is bounded by it too.
    kept = _check_index(index, records, seen, problems, declared.entries + manifest.changed)
    reader.finish()
    _check_totals(manifest, index, seen, problems)
    return manifest, seen, kept


def _hardlink_target(header: Header) -> bytes:
    try:
        return parse_member_name(header.linkname)
    except ArchiveError as exc:
        raise UnsafeArchiveError(
            f"refusing hardlink {shown(header.name)!r}: target {shown(header.linkname)!r} "
            f"is not inside the archive's tree"
        ) from exc


def _hash(data: bytes) -> bytes:
    return digest_of(data)


def _check_index(
    index: Index, records: Iterator[IndexRecord], seen: _Seen, problems: list[str], limit: int
) -> list[IndexRecord]:
    """Compare the index with what was seen; return its changed/missing records."""
    flagged: list[IndexRecord] = []
    stored = seen.records()
    count = 0
    for record in records:
        count += 1
        if count > limit:
            raise LimitExceededError(
                f"index.jsonl holds more records than the manifest accounts for ({limit})"
            )
        if record.changed or record.missing:
            flagged.append(record)
        if record.missing:
            continue
        got = next(stored, None)
        path = record.raw_path
        if got is None:
            problems.append(f"index lists {shown(path)!r}, which the archive does not hold")
            continue
        rel, kind, size, digest = got
        if rel != path or kind != record.type:
            problems.append(
                f"index lists {record.type} {shown(path)!r} where the archive holds "
                f"{kind} {shown(rel)!r}"
            )
            continue
        if size != record.size:
            problems.append(
                f"size mismatch for {shown(rel)!r}: index says {record.size}, archive holds {size}"
            )
        if kind != "dir" and (record.digest is None or digest.hex() != record.digest):
            problems.append(f"digest mismatch for {shown(rel)!r}: content is not what was packed")
    for rel, _, _, _ in stored:
        problems.append(f"{shown(rel)!r} is in the archive but not in its index")
    if count != index.entries:
        problems.append(f"index header declares {index.entries} records, it holds {count}")
    changed = sum(1 for r in flagged if r.changed)
    missing = sum(1 for r in flagged if r.missing)
    if index.partial != bool(flagged) or index.changed != changed or index.missing != missing:
        problems.append("index header's partial/changed/missing counts disagree with its records")
    return flagged


def _check_totals(manifest: Manifest, index: Index, seen: _Seen, problems: list[str]) -> None:
    actual = seen.totals
    if index.totals != actual:
        problems.append(
            f"index totals {_fmt_totals(index.totals)} disagree with the archive's "
            f"{_fmt_totals(actual)}"
        )
    if manifest.partial is None:
        return  # a streamed archive: its manifest holds the scan's bounds, not exact totals
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


def _flag_lists(flagged: list[IndexRecord]) -> tuple[list[str], list[str]]:
    changed = [display(r.raw_path) for r in flagged if r.changed]
    missing = [display(r.raw_path) for r in flagged if r.missing]
    return changed, missing


def verify(archive: Archive, *, progress: Progress | None = None) -> VerifyResult:
    """Run every check of :func:`unpack` without writing anything.

    Returns a :class:`VerifyResult` naming every problem found; a damaged archive is a
    result, not an exception.

    :raises OxbakError: only if the archive cannot be opened at all.
    """
    problems: list[str] = []
    with open_archive(archive) as reader:
        result = VerifyResult(manifest=None, problems=problems)
        try:
            manifest, seen, flagged = _run(reader, HashOnly(), problems, progress)
        except ArchiveError as exc:
            result.manifest = reader.manifest
            problems.append(str(exc))
            return result
    result.manifest = manifest
    result.entries = seen.totals.entries
    result.bytes = seen.totals.bytes
    result.changed, result.missing = _flag_lists(flagged)
    result.partial = bool(flagged)
    for path, target in seen.links.items():
        if not link_stays_inside(path, target, seen.links.get):
            logger.info("symlink %r points outside the tree (%r)", display(path), display(target))
    return result


def unpack(
    archive: Archive,
    dest: str | os.PathLike[str],
    *,
    mode: Mode = "new",
    same_owner: bool = False,
    allow_external_symlinks: bool = False,
    progress: Progress | None = None,
) -> UnpackResult:
    """Restore *archive* into *dest*, all or nothing.

    Everything is extracted into a private staging directory beside *dest* and verified
    (zstd checksums, every digest in the index, the manifest's totals) before *dest* is
    touched. Then, by *mode*:

    - ``"new"``: *dest* must not exist or be empty; the staged tree is renamed into place.
    - ``"replace"``: the staged tree and *dest* are swapped in one step; the old tree is
      deleted only after the new one is durable.
    - ``"merge"``: the archive's entries replace same-named ones in *dest*, one rename each.

    :raises ArchiveError: the archive is damaged or unsafe (nothing was changed).
    :raises DestinationError: *dest* cannot take it (nothing was changed).
    """
    if mode not in ("new", "replace", "merge"):
        raise OxbakError(f"unknown unpack mode {mode!r}")
    with open_archive(archive) as reader:
        # The manifest is read and its version checked before anything is created.
        manifest = reader.read_manifest()
        staging = StagingDir(dest, mode=mode, same_owner=same_owner)
        try:
            staging.ensure_room(manifest.totals.bytes, manifest.totals.entries)
            problems: list[str] = []
            manifest, seen, flagged = _run(reader, staging, problems, progress)
            if problems:
                raise IntegrityError(problems)
            if mode == "merge":
                conflicts = staging.merge_conflicts(
                    (rel, kind) for rel, kind, _, _ in seen.records()
                )
                if conflicts:
                    raise DestinationError(
                        "; ".join(conflicts[:3])
                        + (f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else "")
                    )
            _check_links(seen.links, staging, allow_external_symlinks)
            staging.finish()
            for warning in staging.commit():
                logger.warning("%s", warning)
        except OSError as exc:
            staging.abort()
            raise DestinationError(
                f"cannot unpack into {staging.dest!r}: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            staging.abort()
            raise
    changed, missing = _flag_lists(flagged)
    return UnpackResult(
        dest=staging.dest,
        manifest=manifest,
        entries=seen.totals.entries,
        bytes=seen.totals.bytes,
        partial=bool(flagged),
        changed=changed,
        missing=missing,
    )


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
