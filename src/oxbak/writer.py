"""pack(): a directory tree → one ``.oxbak`` archive, streamed, atomic, reproducible."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import functools
import grp
import io
import logging
import os
import pwd
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, NamedTuple

from . import format as fmt
from ._version import __version__
from .chain import RecordWalk
from .compress import FrameWriter, Output
from .digest import Hasher
from .digest import digest as digest_of
from .envelope import encrypting, parse_recipients
from .errors import OxbakError
from .locations import ARCHIVE_MODE, Archive, check_absent, open_output
from .manifest import (
    BaseRef,
    Compression,
    IncrementalManifest,
    Manifest,
    Totals,
    encode_manifest,
    now_utc,
    sections,
)
from .paths import display, link_stays_inside, member_name
from .patterns import Excludes
from .scan import Entry, Scan, scan_tree
from .source import TocSource, no_toc, open_source
from .tarfmt import DIRECTORY, HARDLINK, REGULAR, SYMLINK, encode_header, file_header, padding
from .toc import (
    CHANGED,
    FROM_BASE,
    MISSING,
    IncrementalTocHeader,
    Record,
    TocBuilder,
    TocHeader,
    encode_footer,
)
from .workers import Workers, available_cores

__all__ = ["PackResult", "default_output_name", "pack"]

logger = logging.getLogger("oxbak")

Progress = Callable[[int, int], None]
BaseCheck = Literal["metadata", "content"]

_CHUNK = 1 << 20
_MANIFEST_MEMBER = fmt.MANIFEST_NAME.encode()
_TOC_MEMBER = fmt.TOC_NAME.encode()
_TREE = fmt.TREE_PREFIX.encode() + b"/"
_RECENT_NS = 2_000_000_000  # a file modified this recently is read twice
_ZEROS = bytes(512)
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# Frames of small entries per part of work: small enough to share a tree's work among
# many workers, large enough that handing a part out costs little beside packing it.
_PART_FRAMES = 2


@dataclass
class PackResult:
    """What :func:`pack` did.

    ``manifest`` is what the archive's first member says (the scan's counts); ``totals``
    counts what was stored, as the archive's table of contents does.
    """

    output: str
    manifest: Manifest
    entries: int
    bytes_in: int
    bytes_out: int
    seconds: float
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    #: Entries the exclude patterns left out (an excluded directory counts once).
    excluded: int = 0
    #: An incremental pack: the base's id, and files stored / taken from it / deleted.
    base_id: str | None = None
    stored: int = 0
    unchanged: int = 0
    deleted: int = 0

    @property
    def partial(self) -> bool:
        """True when some entry could not be captured consistently (exit code 3).

        In ``missing``, a directory whose contents could not be read in full is named
        with a trailing ``/``: it is in the archive, without what could not be read.
        """
        return bool(self.changed or self.missing)


def default_output_name(source: str | os.PathLike[str], *, encrypted: bool = False) -> str:
    """``<basename of source>-<UTC timestamp>.oxbak``, e.g. ``state-20261124T051430Z.oxbak``.

    Encrypted: the same with ``.age`` added (``….oxbak.age``), as ``age`` names its files.
    """
    base = os.path.basename(os.path.normpath(os.path.abspath(source))) or "root"
    stamp = _dt.datetime.now(tz=_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{base}-{stamp}.oxbak" + (".age" if encrypted else "")


def pack(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str] | BinaryIO | None = None,
    *,
    level: int = fmt.DEFAULT_LEVEL,
    threads: int = 0,
    excludes: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    force: bool = False,
    mode: int = ARCHIVE_MODE,
    one_file_system: bool = False,
    exclude_caches: bool = False,
    xattrs: bool = True,
    progress: Progress | None = None,
    recipients: Sequence[str] = (),
    base: Archive | None = None,
    base_check: BaseCheck = "metadata",
) -> PackResult:
    """Pack the directory *source* into one archive.

    :param output: a path (written atomically: temp file beside it, fsync, rename),
        ``"-"`` for standard output, a binary file object (written as a stream; not
        closed), or None for :func:`default_output_name` in the current directory.
    :param level: zstd level, 1–19.
    :param threads: cores to use (0: every CPU this process may run on): with more than
        one, worker processes pack the small files and threads compress the large ones
        (1: one process). The bytes do not depend on it.
    :param excludes: patterns with gitignore's meaning (:mod:`oxbak.patterns`). An
        excluded directory is left out with everything in it.
    :param labels: free ``key=value`` strings stored in the manifest.
    :param force: replace an existing *output* (only once the new archive is complete).
    :param mode: permission bits of an archive written to a path (0600 by default).
    :param one_file_system: keep directories on other filesystems (mount points), empty.
    :param exclude_caches: of a directory holding a valid ``CACHEDIR.TAG``, keep the tag.
    :param xattrs: store extended attributes and POSIX ACLs (``user.*``, ``trusted.*``,
        ``security.*``; one that cannot be read is named in a warning).
    :param progress: called with (bytes done, bytes total) as the files' bytes are
        compressed and written, not as they are read (reading runs ahead); the total is
        what the scan found, and the last call is (total, total).
    :param recipients: public keys to encrypt to (``age1…``, ``ssh-ed25519 …``,
        ``ssh-rsa …``): the archive is then written inside an age envelope, which any
        one of the matching identities opens (the ``age`` tool too). Its default name
        ends ``.oxbak.age``.
    :param base: an archive (path or location) to pack against: the result is an
        incremental archive (FORMAT.md §11) holding only the files that changed since
        it. Only the base's table of contents is read, so it must be seekable.
    :param base_check: ``"metadata"``: a file whose size, mode, times and inode equal
        the base's record is not read (unless its timestamps are too recent to trust);
        ``"content"``: every file is read and compared by digest (for filesystems whose
        inodes or ctimes are not stable).
    :raises SourceError: *source* cannot be read.
    :raises RecipientError: a recipient is not a public key oxbak can encrypt to.
    :raises OutputExistsError: *output* exists and *force* is false.
    """
    if not fmt.MIN_LEVEL <= level <= fmt.MAX_LEVEL:
        raise OxbakError(f"zstd level {level} is out of range {fmt.MIN_LEVEL}–{fmt.MAX_LEVEL}")
    if threads <= 0:
        threads = available_cores()
    started = time.monotonic()
    # Keys are checked before anything is scanned or created.
    keys = parse_recipients(recipients) if recipients else None
    if base_check not in ("metadata", "content"):
        raise OxbakError(f"base check {base_check!r} is neither 'metadata' nor 'content'")
    if base is not None and recipients:
        raise OxbakError(
            "an incremental archive cannot be encrypted: a chain is read through its "
            "archives' tables of contents, which the age envelope hides (encrypt full "
            "archives, or the chain's files where they are kept)"
        )
    # The base is read (its TOC, and its id) before the scan, and stays open until the
    # archive is written: its records are read as the pack reaches their paths.
    with _opened_base(base) as prior:
        if output is None:
            output = default_output_name(source, encrypted=keys is not None)
        old_output: tuple[int, int] | None = None
        if isinstance(output, (str, os.PathLike)) and os.fspath(output) != "-":
            check_absent(output, force=force)  # before the scan: it may take a while
            with contextlib.suppress(OSError):
                st = os.stat(output)
                old_output = (st.st_dev, st.st_ino)  # --force over it: never pack it into itself
        rules = Excludes(excludes)
        scan = scan_tree(
            source,
            rules,
            one_file_system=one_file_system,
            exclude_caches=exclude_caches,
            xattrs=xattrs,
            partial=True,
            skip=old_output,
        )
        for rel in scan.archive_itself:
            logger.warning("skipping %r: it is the archive being replaced", display(rel))
        for pattern in rules.unused():
            logger.warning("exclude pattern %r matched nothing", pattern)
        if not 0 <= mode <= 0o7777:
            raise OxbakError(f"archive mode {mode:o} is not a set of permission bits")
        bound = _size_bound(scan)
        if keys is not None:
            bound += bound // (64 << 10) * 16 + (64 << 10)  # age: a tag per 64 KiB, the header
        with open_output(output, force=force, mode=mode, size_hint=bound) as sink:
            if keys is None:
                result = _write(
                    scan, sink.stream, level, threads, labels or {}, progress, prior, base_check
                )
            else:
                # The envelope wraps the sink's bytes: only ciphertext reaches any location.
                with encrypting(sink.stream, keys) as sealed:
                    result = _write(scan, sealed, level, threads, labels or {}, progress)
                result.bytes_out = sealed.bytes_out
        result.output = sink.name
        result.excluded = rules.count
        if sink.size is not None:
            result.bytes_out = sink.size
        result.seconds = time.monotonic() - started
        return result


@dataclass
class _Prior:
    """What an incremental pack knows of its base: its TOC, id and time.

    Its records are read as the pack needs them, in entry order (:class:`RecordWalk`),
    never held all at once: a base of millions of files costs no memory to speak of.
    """

    source: TocSource
    id: str
    created_at: str


@contextlib.contextmanager
def _opened_base(base: Archive | None) -> Iterator[_Prior | None]:
    """The base, read through its table of contents only, for the length of the pack.

    None for a full pack.

    :raises InputError: it cannot be read through its TOC (a pipe, an encrypted or
        version-1 archive: it would have to be read whole, for a few records).
    :raises CorruptArchiveError: it is a file cut short (no seek table at its end).
    """
    if base is None:
        yield None
        return
    with open_source(base, whole=False, incremental=True) as source:
        if not isinstance(source, TocSource):
            raise no_toc(
                source,
                base,
                f"base {source.name} cannot be used: only an unencrypted archive file of "
                f"version 2 or later is read through its table of contents",
            )
        yield _Prior(source, source.toc_id(), source.manifest.created_at)


def _size_bound(scan: Scan) -> int:
    """About the most bytes the archive of *scan* can take (an upload sizes its parts by it).

    The files' bytes (the writer never stores more than the scan found), a header and
    padding per entry with room for a pax header, the manifest and the TOC, and zstd's
    worst case for data that does not compress (ZSTD_compressBound: 1/256 more).
    """
    return (sum(scan.sizes) + 2048 * len(scan) + (1 << 20)) * 257 // 256


class _Packer:
    """The state of one pack: the frame writer, the TOC, what went wrong."""

    def __init__(
        self,
        root: bytes,
        writer: FrameWriter,
        budget: int,
        toc: TocBuilder,
        unreadable: Mapping[bytes, str] | None = None,
        prior: _Prior | None = None,
        walk: RecordWalk | None = None,
        base_check: BaseCheck = "metadata",
        linked: frozenset[bytes] = frozenset(),
    ) -> None:
        self.root = root
        self.prefix = root + b"/"
        self.writer = writer
        self.toc = toc
        self.totals = Totals()  # of what is stored, as stored
        self.changed: list[bytes] = []
        self.missing: list[bytes] = []  # directories end with "/"
        self.unreadable = unreadable or {}  # directories the scan could not read in full
        self.bytes_in = 0
        # The manifest is written first and never rewritten, so the stream must stay
        # within the bytes it declares: budget is what the rest of the scan may still use.
        self.budget = budget
        self.prior = prior
        self.walk = walk  # the base's records, asked for in entry order
        self.content_check = base_check == "content"
        self.linked = linked  # files that hardlinks of this scan point to: always stored
        self.unchanged = 0
        if prior is not None:
            # The base's manifest time was taken before it read any file: a timestamp not
            # older than that by a tick may hide a change made after the base's read.
            self.trusted_before = _created_ns(prior.created_at) - fmt.RACY_WINDOW_NS

    def begin_member(self, size: int = 0) -> int:
        """Cut the frame if a large member starts; return the member's offset.

        *size* is the member's data size; the offset is where it starts in the tar stream.
        Frames of small members are cut where the plan says (:func:`_plan`), not here.
        """
        writer = self.writer
        if size >= fmt.FRAME_TARGET and writer.frame_bytes:
            writer.cut(self.bytes_in)
        return writer.position

    def end_member(self, size: int) -> None:
        """A large member ends its last frame too: small entries never share its frames."""
        if size >= fmt.FRAME_TARGET:
            self.writer.cut(self.bytes_in)

    def write_data(self, data: bytes | memoryview, done: int, size: int) -> None:
        """Write member data whose first byte is byte *done* of the member's *size* bytes.

        The frame is cut at every multiple of ``FRAME_SPLIT`` into the member's data (not
        at its end), so the cut points depend on the sizes alone.
        """
        writer = self.writer
        view = memoryview(data)
        while view:
            room = fmt.FRAME_SPLIT - done % fmt.FRAME_SPLIT
            piece = view[:room]
            writer.write(piece)
            done += len(piece)
            view = view[len(piece) :]
            if done % fmt.FRAME_SPLIT == 0 and done < size:
                writer.cut(self.bytes_in + done)  # progress: part of a large file

    def record(
        self,
        entry: Entry,
        digest: bytes,
        offset: int,
        *,
        changed: bool = False,
        missing: bool = False,
        from_base: bool = False,
    ) -> None:
        self.toc.add(
            entry.path,
            entry.kind,
            entry.mode,
            entry.uid,
            entry.gid,
            0 if missing else entry.size,
            entry.mtime_ns,
            entry.ctime_ns,
            entry.ino,
            entry.target,
            digest,
            (CHANGED if changed else 0)
            | (MISSING if missing else 0)
            | (FROM_BASE if from_base else 0),
            offset,
            _owner_names,
            () if missing else entry.xattrs,
        )

    def absorb(self, done: _Done, at: int) -> None:
        """Count a part packed apart; its members (if any here) start at offset *at*."""
        if done.records is not None:
            self.toc.extend(done.records, at)
        totals, more = self.totals, done.totals
        totals.files += more.files
        totals.hardlinks += more.hardlinks
        totals.directories += more.directories
        totals.symlinks += more.symlinks
        totals.bytes += more.bytes
        self.bytes_in += done.bytes_in
        self.unchanged += done.unchanged
        self.changed += done.changed
        self.missing += done.missing

    def store(self, entry: Entry) -> None:
        """Count *entry*, now in the archive, in the totals and its directory's section."""
        totals = self.totals
        kind = entry.kind
        if kind == "dir":
            totals.directories += 1
            return
        if kind == "file":
            totals.files += 1
            totals.bytes += entry.size
        elif kind == "symlink":
            totals.symlinks += 1
        else:
            totals.hardlinks += 1

    def add_simple(self, entry: Entry) -> None:
        offset = self.begin_member()
        uname, gname = _header_names(entry.uid, entry.gid)
        if entry.kind == "dir":
            header = encode_header(
                member_name(entry.path, is_dir=True),
                typeflag=DIRECTORY,
                mode=entry.mode,
                mtime_ns=entry.mtime_ns,
                uid=entry.uid,
                gid=entry.gid,
                xattrs=entry.xattrs,
                names=_owner_names,
                uname=uname,
                gname=gname,
            )
            digest = b""
        else:
            if entry.kind == "symlink":
                typeflag, link = SYMLINK, entry.target
            else:
                typeflag, link = HARDLINK, member_name(entry.target)
            header = encode_header(
                member_name(entry.path),
                typeflag=typeflag,
                mode=entry.mode,
                mtime_ns=entry.mtime_ns,
                uid=entry.uid,
                gid=entry.gid,
                linkname=link,
                xattrs=entry.xattrs,
                names=_owner_names,
                uname=uname,
                gname=gname,
            )
            digest = digest_of(entry.target)
        self.writer.write(header)
        self.store(entry)
        unread = self.unreadable.get(entry.path) if entry.kind == "dir" else None
        self.record(entry, digest, offset, missing=unread is not None)
        if unread is not None:
            self._lose_contents(entry, unread)

    def _lose_contents(self, entry: Entry, why: str) -> None:
        """Name a directory whose contents could not be read in full, and say why.

        Its own metadata was read (lstat), so its member is stored, and its TOC record is
        flagged missing: restored, it is empty of what could not be read (FORMAT.md §5).
        """
        name = display(entry.path) if entry.path else "."
        logger.warning("directory %r %s; archived without what could not be read", name, why)
        self.missing.append(entry.path + b"/" if entry.path else b"./")

    def _compare_with(self, entry: Entry) -> Record | None:
        """The base record *entry* must be read and compared with, if any.

        Returns None either way when it need not be read against the base: it is then
        recorded FROM_BASE here (unchanged by the quick check) or stored.
        """
        walk = self.walk
        if walk is None:
            return None
        record = walk.find(entry.path)
        if (
            record is None
            or record.kind != "file"
            or record.changed
            or record.missing
            or record.size != entry.size
            or entry.path in self.linked  # hardlink members link to a member of their own
        ):
            return None
        if self.content_check:
            return record
        if record.mtime_ns != entry.mtime_ns:
            return None  # its content was written since: stored without reading it twice
        if (
            record.mode != entry.mode
            or record.ctime_ns != entry.ctime_ns
            or record.ino != entry.ino
        ):
            # Perhaps only its metadata changed (chmod, chown, attributes, a copy put back
            # in place): its content decides, and a file that kept it is not stored again.
            return record
        if entry.mtime_ns >= self.trusted_before or entry.ctime_ns >= self.trusted_before:
            return record  # racy: the stat cannot tell, the content must
        self._from_base(entry, record)
        return None

    def _from_base(self, entry: Entry, record: Record) -> None:
        """Record *entry* as the base's content with its own metadata: no member."""
        self.unchanged += 1
        self.store(entry)
        self.record(entry, record.digest, 0, from_base=True)

    def add_file(self, entry: Entry, scanned_rest: int) -> None:
        unchanged_count = self.unchanged
        compare = self._compare_with(entry)
        if self.unchanged != unchanged_count:
            return  # unchanged by the quick check: not even opened
        try:
            fd = os.open(self.prefix + entry.path, _OPEN_FLAGS)
        except OSError as exc:
            self._lose(entry, exc)
            return
        try:
            if entry.size <= fmt.SMALL_FILE_MAX:
                try:
                    self._add_small(entry, fd, scanned_rest, compare)
                except OSError as exc:  # read whole before a byte of it is written
                    self._lose(entry, exc)
            else:
                if compare is not None and self._same_large(entry, fd, compare):
                    self._from_base(entry, compare)
                    return
                self._add_large(entry, fd, scanned_rest)
        finally:
            os.close(fd)

    def _same_large(self, entry: Entry, fd: int, record: Record) -> bool:
        """Whether a large file, read once without storing it, is the base's content.

        Only when it did not change while it was read and still has the scanned stat; a
        file that differs is then read again to be stored (twice the reads, for files
        the quick check could not clear).
        """
        try:
            before = os.fstat(fd)
            hasher = Hasher()
            done = 0
            while done < before.st_size:
                chunk = os.pread(fd, min(_CHUNK, before.st_size - done), done)
                if not chunk:
                    return False
                hasher.update(chunk)
                done += len(chunk)
            after = os.fstat(fd)
        except OSError:
            return False  # the store path reads it again and says what went wrong
        stable = (before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (
            after.st_size,
            after.st_mtime_ns,
            after.st_ctime_ns,
        ) and (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (
            entry.size,
            entry.mtime_ns,
            entry.ctime_ns,
        )
        return stable and hasher.digest(fmt.DIGEST_SIZE) == record.digest

    def _lose(self, entry: Entry, exc: OSError | None, why: str = "") -> None:
        """Record *entry* as missing, and say why.

        Like restic: one unreadable file does not cost the whole archive (pack exits 3).
        """
        if not why:
            gone = exc is None or exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR)
            why = "vanished before it could be read" if gone else f"could not be read ({_why(exc)})"
        logger.warning("file %r %s; not in the archive", display(entry.path), why)
        self.missing.append(entry.path)
        self.record(entry, b"", 0, missing=True)

    def _fits(self, size: int, scanned_rest: int) -> bool:
        return self.bytes_in + size + scanned_rest <= self.budget

    def _add_small(
        self, entry: Entry, fd: int, scanned_rest: int, compare: Record | None = None
    ) -> None:
        # One pread of size + 1 shows growth; the fstat after it shows any change since the
        # scan (size, mtime, ctime, inode). Equal on both sides: a consistent copy.
        data = os.pread(fd, entry.size + 1, 0)
        st = os.fstat(fd)
        consistent = (
            len(data) == entry.size == st.st_size
            and st.st_mtime_ns == entry.mtime_ns
            and st.st_ctime_ns == entry.ctime_ns
            and st.st_ino == entry.ino
        )
        if consistent and time.time_ns() - st.st_mtime_ns < _RECENT_NS:
            # Timestamps move in coarse ticks, so a rewrite of the same size just now may
            # not show in the stat: a file changed that recently must also read the same
            # twice.
            consistent = os.pread(fd, entry.size + 1, 0) == data
        if not consistent:
            data, st, consistent = self._reread(fd)
            if not stat.S_ISREG(st.st_mode):
                self._lose(entry, None, "is no longer a regular file")
                return
            entry.size, entry.mtime_ns = len(data), st.st_mtime_ns
            entry.ctime_ns = st.st_ctime_ns
            entry.mode = stat.S_IMODE(st.st_mode)
            if not self._fits(len(data), scanned_rest):
                self._lose(entry, None, "grew beyond its scanned size")
                return
        digest = digest_of(data)
        if compare is not None and consistent and digest == compare.digest:
            # Read again (racy, or --base-check content), and the base's content after all.
            self._from_base(entry, compare)
            return
        size = len(data)
        offset = self.begin_member(size)
        writer = self.writer
        writer.write(
            file_header(
                _TREE + entry.path,
                entry.mode,
                size,
                entry.mtime_ns,
                entry.uid,
                entry.gid,
                entry.xattrs,
                _owner_names,
                *_header_names(entry.uid, entry.gid),
            )
        )
        if size <= fmt.FRAME_SPLIT:
            writer.write(data)
        else:
            self.write_data(data, 0, size)
        if size % 512:
            writer.write(_ZEROS[: 512 - size % 512])
        self.bytes_in += size  # before the cut: its frame completes this file
        self.end_member(size)
        self.store(entry)
        self.record(entry, digest, offset, changed=not consistent)
        if not consistent:
            self._warn_changed(entry)

    def _reread(self, fd: int) -> tuple[bytes, os.stat_result, bool]:
        """Read until two stats around a read agree, a few times at most."""
        data = b""
        st = os.fstat(fd)
        for attempt in range(fmt.READ_ATTEMPTS):
            if attempt:
                time.sleep(0.005 * attempt)
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                return data, before, False
            data = _read_all(fd, before.st_size + 1)
            st = os.fstat(fd)
            if len(data) == st.st_size == before.st_size and (st.st_mtime_ns, st.st_ctime_ns) == (
                before.st_mtime_ns,
                before.st_ctime_ns,
            ):
                return data, st, True
        return data, st, False

    def _warn_changed(self, entry: Entry) -> None:
        logger.warning(
            "file %r changed while it was read; archived as read, marked changed",
            display(entry.path),
        )
        self.changed.append(entry.path)

    def _add_large(self, entry: Entry, fd: int, scanned_rest: int) -> None:
        try:
            st0 = os.fstat(fd)
        except OSError as exc:
            self._lose(entry, exc)
            return
        size = st0.st_size
        if not self._fits(size, scanned_rest):
            self._lose(entry, None, "grew beyond its scanned size")
            return
        entry.size, entry.mtime_ns = size, st0.st_mtime_ns
        entry.ctime_ns = st0.st_ctime_ns
        entry.mode = stat.S_IMODE(st0.st_mode)
        offset = self.begin_member(size)
        uname, gname = _header_names(entry.uid, entry.gid)
        self.writer.write(
            encode_header(
                member_name(entry.path),
                typeflag=REGULAR,
                mode=entry.mode,
                size=size,
                mtime_ns=entry.mtime_ns,
                uid=entry.uid,
                gid=entry.gid,
                xattrs=entry.xattrs,
                names=_owner_names,
                uname=uname,
                gname=gname,
            )
        )
        hasher = Hasher()
        done = 0
        failed: OSError | None = None
        while done < size:
            # Pieces end on the frame cuts, so no piece is split by write_data.
            want = min(_CHUNK, size - done, fmt.FRAME_SPLIT - done % fmt.FRAME_SPLIT)
            chunk = b""
            if failed is None:
                try:
                    chunk = os.read(fd, want)
                except OSError as exc:  # the header is out: pad, and say so below
                    failed = exc
            if not chunk:
                chunk = bytes(want)  # shrank under us: pad, and say so below
            hasher.update(chunk)
            self.write_data(chunk, done, size)
            done += len(chunk)
        self.writer.write(bytes(padding(size)))
        self.bytes_in += size  # before the cut: its frame completes this file
        self.end_member(size)
        self.store(entry)
        try:
            st1 = os.fstat(fd)
        except OSError as exc:
            failed = failed or exc
        same = failed is None and (st1.st_size, st1.st_mtime_ns, st1.st_ctime_ns) == (
            size,
            st0.st_mtime_ns,
            st0.st_ctime_ns,
        )
        self.record(entry, hasher.digest(fmt.DIGEST_SIZE), offset, changed=not same)
        if failed is not None:
            logger.warning(
                "file %r could not be read to the end (%s); archived padded with zeros, "
                "marked changed",
                display(entry.path),
                _why(failed),
            )
            self.changed.append(entry.path)
        elif not same:
            self._warn_changed(entry)


class _Part(NamedTuple):
    """Entries ``start``–``stop`` of the scan, packed as one piece of work.

    A *solo* part is one file of ``FRAME_TARGET`` bytes or more, in frames of its own.
    Otherwise the part is a few frames of small entries, cut before each entry of *cuts*.
    *nbytes* is what the scan found in its files: what its members may hold.
    """

    start: int
    stop: int
    cuts: tuple[int, ...]
    nbytes: int
    solo: bool


def _plan(scan: Scan) -> list[_Part]:
    """Where the archive's frames and parts of work begin: from the scan alone.

    Nothing read later moves a cut, so the bytes of the archive do not depend on how the
    parts are shared out, and a worker can pack a part without the parts before it. A
    frame of small entries ends at the first entry after ``FRAME_TARGET`` bytes of tar
    stream (a header block per entry, the data padded to blocks; pax records not counted).
    """
    parts: list[_Part] = []
    start = fill = nbytes = 0
    cuts: list[int] = []
    target, per_part, block = fmt.FRAME_TARGET, _PART_FRAMES, fmt.BLOCK_SIZE
    for n, size in enumerate(scan.sizes):  # a file's size; 0 for other entries
        if size >= target:
            if n > start:
                parts.append(_Part(start, n, tuple(cuts), nbytes, False))
            parts.append(_Part(n, n + 1, (), size, True))
            start, fill, nbytes, cuts = n + 1, 0, 0, []
            continue
        if fill >= target:
            if len(cuts) + 1 < per_part:
                cuts.append(n)
            else:
                parts.append(_Part(start, n, tuple(cuts), nbytes, False))
                start, nbytes, cuts = n, 0, []
            fill = 0
        fill += block + size + -size % block
        nbytes += size
    if len(scan) > start:
        parts.append(_Part(start, len(scan), tuple(cuts), nbytes, False))
    return parts


@dataclass
class _Done:
    """A part packed: its frames (unless written already) and what it adds to the TOC."""

    frames: bytes
    sizes: list[tuple[int, int]]
    records: TocBuilder | None
    totals: Totals
    bytes_in: int
    unchanged: int
    changed: list[bytes]
    missing: list[bytes]


class _Work:
    """Packs the parts of one plan, here or in a worker (which has all of this already)."""

    def __init__(
        self,
        scan: Scan,
        level: int,
        prior: _Prior | None,
        walk: RecordWalk | None,
        base_check: BaseCheck,
        linked: frozenset[bytes],
    ) -> None:
        self.scan = scan
        self.level = level
        self.prior = prior
        self.walk = walk
        self.base_check = base_check
        self.linked = linked

    def __call__(self, part: _Part) -> _Done:
        """Pack *part* into frames of its own, for another process to write and count."""
        frames = io.BytesIO()
        writer = FrameWriter(frames, level=self.level, threads=1)
        records = TocBuilder(None)
        done = self.pack(part, writer, 0, records)
        writer.cut()
        done.frames, done.sizes, done.records = frames.getvalue(), writer.frame_sizes, records
        return done

    def pack(self, part: _Part, writer: FrameWriter, bytes_in: int, toc: TocBuilder) -> _Done:
        """Write *part*'s members to *writer*, its records to *toc*.

        *bytes_in* counts the file bytes before it.
        """
        scan = self.scan
        packer = _Packer(
            scan.root,
            writer,
            bytes_in + part.nbytes,
            toc,
            scan.unreadable,
            self.prior,
            self.walk,
            self.base_check,
            self.linked,
        )
        packer.bytes_in = bytes_in
        scanned_rest = part.nbytes
        cuts = iter(part.cuts)
        cut = next(cuts, -1)
        for n, entry in enumerate(scan.entries(part.start, part.stop), part.start):
            if n == cut:
                writer.cut(packer.bytes_in)
                cut = next(cuts, -1)
            if entry.kind == "file":
                scanned_rest -= entry.size
                packer.add_file(entry, scanned_rest)
            else:
                packer.add_simple(entry)
        return _Done(
            b"",
            [],
            None,
            packer.totals,
            packer.bytes_in - bytes_in,
            packer.unchanged,
            packer.changed,
            packer.missing,
        )


@contextlib.contextmanager
def _doing(work: _Work, parts: list[_Part], processes: int) -> Iterator[Iterator[_Done] | None]:
    """The packed *parts*, in order, from *processes* workers; None for one: pack here."""
    if processes <= 1:
        yield None
        return
    with Workers(processes, work) as workers:
        yield workers.map(parts)


def _why(exc: OSError | None) -> str:
    return str(exc.strerror or exc) if exc is not None else "unknown error"


@functools.lru_cache(maxsize=1024)
def _owner_names(uid: int, gid: int) -> tuple[str, str]:
    """The user and group names of *uid* and *gid* on this machine (``""``: none)."""
    try:
        user = pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        user = ""
    try:
        group = grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        group = ""
    return user, group


@functools.lru_cache(maxsize=1024)
def _header_names(uid: int, gid: int) -> tuple[bytes, bytes]:
    """The owner names for the ustar ``uname``/``gname`` fields: both, or neither.

    A name that is not ASCII or longer than the field's 32 bytes (rare) leaves both out:
    a reader then restores the ids, and the pair stays what the TOC's names say.
    """
    user, group = _owner_names(uid, gid)
    both = user + group
    if not both.isascii() or "\0" in both or len(user) > 32 or len(group) > 32:
        return b"", b""
    return user.encode(), group.encode()


def _read_all(fd: int, limit: int) -> bytes:
    """Up to *limit* bytes from the start of *fd* (pread: the file offset is not used)."""
    data = os.pread(fd, limit, 0)
    if 0 < len(data) < limit:
        parts = [data]
        got = len(data)
        while got < limit:
            more = os.pread(fd, limit - got, got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
    return data


def _write(
    scan: Scan,
    out: Output,
    level: int,
    threads: int,
    labels: Mapping[str, str],
    progress: Progress | None,
    prior: _Prior | None = None,
    base_check: BaseCheck = "metadata",
) -> PackResult:
    for rel in scan.skipped:
        logger.warning("skipping %r: not a file, directory or symlink", display(rel))
    _warn_external_links(scan)
    totals = scan.totals()
    fields = dict(
        format=fmt.FORMAT_NAME,
        version=fmt.FORMAT_VERSION,
        created_at=now_utc(),
        oxbak_version=__version__,
        source=display(os.path.basename(os.path.normpath(os.path.abspath(scan.root)))),
        sections=sections(scan.per_dir()),
        totals=totals,
        compression=Compression(level=level),
        labels=dict(sorted(labels.items())),
        skipped=len(scan.skipped),
        partial=None,
        changed=0,
    )
    manifest: Manifest
    linked: frozenset[bytes] = frozenset()
    deleted = None
    walk = None
    if prior is None:
        manifest = Manifest(**fields)  # type: ignore[arg-type]
    else:
        # Deletions are implied by absence from the whole-tree TOC (FORMAT.md §11).
        deleted = RecordWalk(prior.source).passed_over(scan.paths)
        walk = RecordWalk(prior.source)
        linked = scan.link_targets()
        fields["version"] = fmt.INCREMENTAL_VERSION
        manifest = IncrementalManifest(
            **fields,  # type: ignore[arg-type]
            base=BaseRef(id=prior.id, created_at=prior.created_at, deleted=deleted),
        )
    manifest_data = encode_manifest(manifest)
    mtime_ns = _created_ns(manifest.created_at)
    total = totals.bytes
    plan = _plan(scan)
    work = _Work(scan, level, prior, walk, base_check, linked)
    ranges = [part for part in plan if not part.solo]
    # An incremental pack reads its base's records in order, so in this process only.
    processes = min(threads, len(ranges)) if prior is None else 1
    # Progress is counted where frames leave the compressor, in file bytes read into them.
    on_written = None if progress is None else lambda done: progress(done, total)
    spool = tempfile.SpooledTemporaryFile(max_size=1 << 20)  # noqa: SIM115
    # Workers are forked before the compression threads start: a fork copies one thread.
    with spool, _doing(work, ranges, processes) as results:  # closed on every path
        writer = FrameWriter(out, level=level, threads=threads, progress=on_written)
        try:
            writer.write(_member_bytes(_MANIFEST_MEMBER, manifest_data, mtime_ns))
            writer.cut()
            writer.drain()  # the archive starts now, whatever the first part takes
            toc = TocBuilder(spool)
            packer = _Packer(scan.root, writer, 0, toc)
            for part in plan:
                if results is None or part.solo:
                    # Here, into the archive: a large file's frames are compressed by this
                    # process's threads. The frames end where the plan says, wherever the
                    # part is packed.
                    packer.absorb(work.pack(part, writer, packer.bytes_in, toc), 0)
                    writer.cut(packer.bytes_in)
                else:
                    done = next(results)
                    at = writer.position
                    writer.emit(done.frames, done.sizes, packer.bytes_in + done.bytes_in)
                    packer.absorb(done, at)
            header = _write_toc(packer, spool, mtime_ns, deleted)
        except BaseException:
            writer.close(wait=False)
            raise
    if progress is not None:
        progress(total, total)  # done, whatever vanished on the way
    return PackResult(
        output="",
        manifest=manifest,
        entries=header.totals.entries,
        bytes_in=packer.bytes_in,
        bytes_out=writer.bytes_out,
        seconds=0.0,
        changed=[display(p) for p in packer.changed],
        missing=[display(p) for p in packer.missing],
        skipped=[display(p) for p in scan.skipped],
        totals=header.totals,
        base_id=None if prior is None else prior.id,
        stored=header.stored if isinstance(header, IncrementalTocHeader) else 0,
        unchanged=packer.unchanged,
        deleted=deleted or 0,
    )


def _write_toc(
    packer: _Packer,
    spool: tempfile.SpooledTemporaryFile[bytes],
    mtime_ns: int,
    deleted: int | None,
) -> TocHeader:
    """The TOC member (a frame for its header, one per block), the end, the footer.

    *spool* holds the blocks *packer*'s TOC builder has encoded.
    """
    toc = packer.toc
    toc.flush()
    final = packer.totals
    # A full archive's header is a plain TocHeader: its bytes are those of version 2.
    kind = TocHeader if deleted is None else IncrementalTocHeader
    header = kind(
        format=fmt.TOC_FORMAT_NAME,
        version=fmt.TOC_VERSION,
        digest=fmt.DIGEST_NAME,
        # Missing files have a record but no member; missing directories have both.
        entries=sum(ref.entries for ref in toc.refs),
        partial=bool(packer.changed or packer.missing),
        changed=len(packer.changed),
        missing=len(packer.missing),
        totals=final,
    )
    if isinstance(header, IncrementalTocHeader):
        entries = header.entries
        header.unchanged = packer.unchanged
        header.stored = entries - packer.unchanged - _absent_files(packer)
        header.deleted = deleted or 0
    head = toc.header(header)
    size = len(head) + spool.tell()
    writer = packer.writer
    writer.cut()
    toc_offset = writer.position
    writer.write(
        encode_header(_TOC_MEMBER, typeflag=REGULAR, mode=0o644, size=size, mtime_ns=mtime_ns)
    )
    writer.write(head)
    spool.seek(0)
    for ref in toc.refs:
        writer.cut()
        writer.write(spool.read(ref.length))
    writer.write(bytes(padding(size) + 2 * fmt.BLOCK_SIZE))
    writer.finish(encode_footer(toc_offset, size))
    return header


def _absent_files(packer: _Packer) -> int:
    """Missing files: records without a member (missing directories have one)."""
    return sum(1 for path in packer.missing if not path.endswith(b"/"))


def _member_bytes(name: bytes, data: bytes, mtime_ns: int) -> bytes:
    header = encode_header(name, typeflag=REGULAR, mode=0o644, size=len(data), mtime_ns=mtime_ns)
    return header + data + bytes(padding(len(data)))


def _created_ns(created_at: str) -> int:
    # fromisoformat is C code; strptime would import and compile its parser on every pack.
    moment = _dt.datetime.fromisoformat(created_at)
    return int(moment.timestamp()) * 1_000_000_000


def _warn_external_links(scan: Scan) -> None:
    links = scan.symlinks()
    for path, target in links.items():
        if not link_stays_inside(path, target, links.get):
            logger.warning(
                "symlink %r points outside the tree (%r); unpack will refuse it unless "
                "--allow-external-symlinks is given",
                display(path),
                display(target),
            )
