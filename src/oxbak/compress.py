"""zstd framing: the writer's frames, the seek table, and strictly checked, bounded readers.

This module is the only one that touches :mod:`zstandard`; its ``ZstdError`` becomes
:class:`~oxbak.errors.CorruptArchiveError` (or ``OutputError`` when writing) here.

:class:`FrameWriter` compresses the frames the writer cuts, in parallel, and ends the
file with the footer and the seek table. :class:`ZstdReader` reads any archive front to
back; :class:`SeekTable`, :class:`FrameReader` and :class:`FrameStream` read a seekable
one at any offset, frame by frame, each frame checked against the table.

python-zstandard's ``stream_reader`` reports neither a stream cut short inside its last
frame nor, by itself, where one frame ends and the next begins. :class:`FrameWalker` sits
between the raw file and the decompressor and follows the frame layout of RFC 8878 as the
bytes go by (frame headers, block headers, checksums, skippable frames), so the reader
knows at the end of input whether it stopped exactly on a frame boundary, and refuses a
window larger than :data:`~oxbak.format.MAX_WINDOW_SIZE` before allocating it.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import queue
import struct
import threading
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import zstandard

from . import format as fmt
from .errors import (
    CorruptArchiveError,
    InputError,
    LimitExceededError,
    NotAnArchiveError,
    OutputError,
)

if TYPE_CHECKING:
    # Imported where a pool starts: `oxbak info` never needs one (it costs ~3 ms).
    from concurrent.futures import Future, ThreadPoolExecutor

__all__ = [
    "FrameReader",
    "FrameWalker",
    "FrameWriter",
    "Output",
    "SeekTable",
    "ZstdReader",
    "encode_seek_table",
]

_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK = 0xFFFFFFF0
_READ_SIZE = 128 * 1024
_AHEAD_PIECE = 1 << 20
_TRAILER_MAGICS = (fmt.FOOTER_MAGIC, fmt.SEEK_TABLE_MAGIC)
_TRAILER_LIMIT = 64 << 20  # a seek table of ~8M frames; larger ones are not kept
_AHEAD_DEPTH = 4


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Output(Protocol):
    """What :class:`FrameWriter` writes to: a binary file object, written front to back."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int | None:
        """Write *data*; return how many bytes were taken."""

    def flush(self) -> None:
        """Push buffered bytes to the operating system."""


def skippable_frame(total: int, *, magic: int = fmt.SKIPPABLE_MAGIC, content: bytes = b"") -> bytes:
    """A skippable frame of *total* bytes (header included): *content*, then zeros."""
    if total < 8 + len(content):
        raise ValueError("a skippable frame needs 8 bytes more than its content")
    return (
        magic.to_bytes(4, "little")
        + (total - 8).to_bytes(4, "little")
        + content
        + bytes(total - 8 - len(content))
    )


class _WriteAll:
    """Wraps the caller's output so that a short write is completed or reported.

    A raw (unbuffered) file object may accept fewer bytes than offered, e.g. when the
    disk fills; python-zstandard does not look at the count, so it is checked here.
    """

    def __init__(self, out: Output) -> None:
        self._out = out

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        total = len(view)
        while view:
            n = self._out.write(view)
            if not n:
                raise OutputError("cannot write the archive: the output accepted no bytes")
            view = view[n:]
        return total

    def flush(self) -> None:
        self._out.flush()


class FrameWriter:
    """Writes the tar stream as independent zstd frames, then the footer and the seek table.

    The caller decides where frames end (:meth:`cut`); this class compresses each frame
    on its own, in a pool of *threads* threads when there is more than one (libzstd runs
    without the GIL), and writes the frames in order. Every frame is compressed alone with
    the same parameters, so the bytes do not depend on *threads*.

    *progress* is called with the *done* count given to :meth:`cut` once that frame has
    been compressed and written: that is the work that takes the time, and the caller's
    writes run ahead of it by up to ``2 * threads`` frames.
    """

    def __init__(
        self,
        out: Output,
        *,
        level: int,
        threads: int,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._sink = _WriteAll(out)
        self._level = level
        # The frame being filled, as the pieces written (joined once, at the cut): no
        # copy per piece into a growing buffer. Pieces are bytes or views of bytes.
        self._parts: list[bytes | memoryview] = []
        self._size = 0
        self._offset = 0  # decompressed bytes in the frames already cut
        self._sizes: list[tuple[int, int]] = []  # (compressed, decompressed) per frame
        # (the frame being compressed, its size, the caller's done count when it was cut)
        self._pending: collections.deque[tuple[Future[bytes], int, int]] = collections.deque()
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        if threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(threads, "oxbak-zstd")
        self._depth = 2 * threads
        self._progress = progress
        self._done = 0
        self.bytes_out = 0

    @property
    def position(self) -> int:
        """Offset in the tar stream of the next byte written."""
        return self._offset + self._size

    @property
    def frame_bytes(self) -> int:
        """Decompressed bytes in the frame being filled."""
        return self._size

    @property
    def frame_sizes(self) -> list[tuple[int, int]]:
        """(compressed, decompressed) size of every frame written so far."""
        return self._sizes

    def emit(self, frames: bytes, sizes: Sequence[tuple[int, int]], done: int) -> None:
        """Write *frames*, compressed elsewhere with this writer's parameters, of *sizes*.

        The frame being filled must be empty: they follow the frames cut before them.
        """
        assert not self._size, "frames compressed elsewhere follow a cut"
        self.drain()
        with _writing():
            self._sink.write(frames)
        self._sizes.extend(sizes)
        self._offset += sum(size for _, size in sizes)
        self.bytes_out += len(frames)
        self._done = done
        self._report(done)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append *data* to the current frame (a bytearray is copied: it could change)."""
        self._parts.append(bytes(data) if isinstance(data, bytearray) else data)
        self._size += len(data)

    def cut(self, done: int | None = None) -> None:
        """End the current frame here (nothing happens if it is empty).

        *done* is the caller's count of the work complete once this frame is written (for
        a pack, the file bytes read into it and the frames before); None keeps the last.
        """
        if done is not None:
            self._done = done
        if not self._size:
            return
        data = b"".join(self._parts)
        self._parts = []
        self._size = 0
        self._offset += len(data)
        if self._pool is None:
            self._emit(self._compress(data), len(data))
            self._report(self._done)
            return
        self._pending.append((self._pool.submit(self._compress, data), len(data), self._done))
        while len(self._pending) > self._depth:
            self._drain_one()

    def drain(self) -> None:
        """Write every frame cut so far (the caller is about to wait on something else)."""
        while self._pending:
            self._drain_one()

    def _compress(self, data: bytes) -> bytes:
        compressor: zstandard.ZstdCompressor | None = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(
                level=self._level, write_checksum=True, write_content_size=True
            )
            self._local.compressor = compressor
        try:
            return compressor.compress(data)
        except zstandard.ZstdError as exc:
            raise OutputError(f"zstd compression failed: {exc}") from exc

    def _drain_one(self) -> None:
        future, size, done = self._pending.popleft()
        self._emit(future.result(), size)
        self._report(done)

    def _report(self, done: int) -> None:
        if self._progress is not None:
            self._progress(done)

    def _emit(self, frame: bytes, size: int) -> None:
        with _writing():
            self._sink.write(frame)
        self._sizes.append((len(frame), size))
        self.bytes_out += len(frame)

    def finish(self, footer: bytes) -> None:
        """End the last frame; write *footer* in a skippable frame, then the seek table."""
        self.cut()
        self.drain()
        self.close()
        footer_frame = skippable_frame(8 + len(footer), magic=fmt.FOOTER_MAGIC, content=footer)
        self._emit(footer_frame, 0)
        table = encode_seek_table(self._sizes)
        with _writing():
            self._sink.write(table)
            self._sink.flush()
        self.bytes_out += len(table)

    def close(self, *, wait: bool = True) -> None:
        """Stop the compression threads; pending frames are dropped.

        Without *wait*, a frame being compressed is left to finish in the background: at
        a high level that takes seconds, and an interrupted pack must stop at once.
        """
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None


def encode_seek_table(sizes: Sequence[tuple[int, int]]) -> bytes:
    """The seek table frame of the zstd seekable format for frames of *sizes*.

    One entry (compressed size, decompressed size) per frame, no checksums, then the
    footer: the number of frames, the descriptor byte (0) and the seekable magic.
    """
    body = b"".join(struct.pack("<II", c, d) for c, d in sizes)
    body += struct.pack("<IBI", len(sizes), 0, fmt.SEEKABLE_MAGIC)
    return struct.pack("<II", fmt.SEEK_TABLE_MAGIC, len(body)) + body


@contextlib.contextmanager
def _writing() -> Iterator[None]:
    """Turn an OSError of the output into OutputError, naming the fault."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write the archive: {exc.strerror or exc}") from exc


class FrameWalker:
    """A pass-through source that follows zstd frame structure and counts raw bytes.

    ``stream_reader`` pulls from it; every byte is walked exactly once. After the source is
    exhausted, :meth:`check_end` raises unless the stream ended on a frame boundary.
    """

    def __init__(self, raw: _Readable) -> None:
        self._raw = raw
        self.bytes_in = 0
        self.frames = 0
        self._state = "magic"
        self._want = 4
        self._buf = b""
        self._checksum = False
        self._last_block = False
        self._fhd = 0
        self._after = "block"
        self._eof = False
        #: The content size the last zstd frame header declared, if it declared one.
        self.content_size: int | None = None
        #: Per frame: its size, and the content size it declared (-1: none, or skippable).
        self.frame_sizes: list[tuple[int, int]] = []
        #: The last two skippable frames with the footer's or the seek table's magic:
        #: (frame number from 0, magic, content).
        self.trailer: list[tuple[int, int, bytes]] = []
        self._frame_len = 0
        self._magic = 0
        self._capture: bytearray | None = None

    def read(self, size: int = -1) -> bytes:
        """Read raw bytes from the underlying file, walking their frame structure."""
        try:
            data = self._raw.read(size if size and size > 0 else _READ_SIZE)
        except OSError as exc:
            raise InputError(f"cannot read the archive: {exc.strerror or exc}") from exc
        if not data:
            self._eof = True
            return b""
        self.bytes_in += len(data)
        self._walk(data)
        return data

    def check_end(self) -> None:
        """Raise unless the stream ended exactly after a complete frame."""
        if not self._eof:
            # Drain: whatever the decompressor did not need must still be walked.
            while self.read(_READ_SIZE):
                pass
        if self.frames == 0 and self.bytes_in == 0:
            raise NotAnArchiveError("not an oxbak archive: it is empty")
        if self._state != "magic" or self._buf:
            raise CorruptArchiveError("archive is truncated: the last zstd frame is incomplete")

    def _walk(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            if self._state == "skip":
                step = min(self._want, end - pos)
                if self._capture is not None:
                    self._capture += data[pos : pos + step]
                self._want -= step
                pos += step
                self._frame_len += step
                if self._want == 0:
                    self._after_skip()
                continue
            need = self._want - len(self._buf)
            chunk = data[pos : pos + need]
            pos += len(chunk)
            self._frame_len += len(chunk)
            self._buf += chunk
            if len(self._buf) == self._want:
                field, self._buf = self._buf, b""
                self._on_field(field)

    def _skip(self, count: int, then: str) -> None:
        self._after = then
        if count == 0:
            self._after_skip()
        else:
            self._state, self._want = "skip", count

    def _after_skip(self) -> None:
        following = self._after
        if following == "frame_end":
            self._end_frame()
        elif following == "checksum":
            self._state, self._want = "checksum", 4
        else:
            self._state, self._want = "block", 3

    def _end_frame(self) -> None:
        self.frames += 1
        skippable = self._magic != _ZSTD_MAGIC
        declared = -1 if skippable or self.content_size is None else self.content_size
        self.frame_sizes.append((self._frame_len, declared))
        self._frame_len = 0
        if self._capture is not None:
            frame = (self.frames - 1, self._magic, bytes(self._capture))
            self.trailer = [*self.trailer[-1:], frame]
            self._capture = None
        self._state, self._want = "magic", 4

    def _on_field(self, field: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(field, "little")
            self._magic = magic
            self.content_size = None
            if magic == _ZSTD_MAGIC:
                self._state, self._want = "fhd", 1
            elif magic & _SKIPPABLE_MASK == fmt.SKIPPABLE_MAGIC:
                self._state, self._want = "skippable", 4
            elif self.frames == 0:
                raise NotAnArchiveError("not an oxbak archive: it is not zstd-compressed")
            else:
                raise CorruptArchiveError(
                    f"unexpected bytes after zstd frame {self.frames} (trailing garbage)"
                )
        elif state == "skippable":
            length = int.from_bytes(field, "little")
            if self._magic in _TRAILER_MAGICS and length <= _TRAILER_LIMIT:
                self._capture = bytearray()
            self._skip(length, "frame_end")
        elif state == "fhd":
            fhd = field[0]
            fcs_flag, single = fhd >> 6, (fhd >> 5) & 1
            self._checksum = bool(fhd & 4)
            if fhd & 0x08:
                raise CorruptArchiveError("zstd frame header has its reserved bit set")
            self._fhd = fhd
            rest = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
            rest += (1 if single else 0, 2, 4, 8)[fcs_flag]
            self._state, self._want = "frame_header", rest
        elif state == "frame_header":
            self._check_window(field)
            self._state, self._want = "block", 3
        elif state == "block":
            header = int.from_bytes(field, "little")
            self._last_block = bool(header & 1)
            kind = (header >> 1) & 3
            size = header >> 3
            if kind == 3:
                raise CorruptArchiveError("zstd block of reserved type")
            if size > 128 * 1024:
                raise CorruptArchiveError("zstd block larger than 128 KiB")
            if not self._last_block:
                after = "block"
            else:
                after = "checksum" if self._checksum else "frame_end"
            self._skip(1 if kind == 1 else size, after)
        elif state == "checksum":
            self._end_frame()

    def _check_window(self, header: bytes) -> None:
        fhd = self._fhd
        single = (fhd >> 5) & 1
        fcs_len = (1 if single else 0, 2, 4, 8)[fhd >> 6]
        fcs: int | None = None
        if fcs_len:
            fcs = int.from_bytes(header[len(header) - fcs_len :], "little")
            fcs += 256 if fcs_len == 2 else 0
        self.content_size = fcs
        if single:
            window = fcs or 0
        else:
            desc = header[0]
            log = 10 + (desc >> 3)
            base = 1 << log
            window = base + (base >> 3) * (desc & 7)
        if window > fmt.MAX_WINDOW_SIZE:
            raise LimitExceededError(
                f"zstd frame {self.frames + 1} declares a {window}-byte window, "
                f"limit {fmt.MAX_WINDOW_SIZE}"
            )


class ZstdReader:
    """Decompressed bytes of an archive, read in bounded pieces, strictly checked.

    ``read(n)`` never returns more than *n* bytes, so memory does not grow with what the
    archive claims. :meth:`close` stops background work; the raw file is not closed.
    """

    def __init__(self, raw: _Readable) -> None:
        self.walker = FrameWalker(raw)
        self._queue: queue.Queue[bytes | BaseException] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._done = False
        decompressor = zstandard.ZstdDecompressor(max_window_size=fmt.MAX_WINDOW_SIZE)
        # The stub asks for IO[bytes]; any object with read() is accepted (documented).
        # A read ends where a frame ends (the next read goes on with the next frame): the
        # manifest, alone in frame 1, is read without decompressing into frame 2, whose
        # first block may need 128 KiB more input (a request more, from object storage).
        self._reader = decompressor.stream_reader(
            self.walker,  # type: ignore[arg-type]
            read_size=_READ_SIZE,
            read_across_frames=False,
            closefd=False,
        )

    def read(self, size: int) -> bytes:
        """Up to *size* decompressed bytes; ``b""`` at the end of the last frame.

        After :meth:`read_ahead`, pieces come from the background thread instead (at
        most ``_AHEAD_PIECE`` bytes each, whatever *size* asks).
        """
        if self._queue is not None:
            return self._next_piece()
        return self._decompress(size)

    def _decompress(self, size: int) -> bytes:
        try:
            return self._reader.read(size)
        except zstandard.ZstdError as exc:
            raise CorruptArchiveError(f"zstd data is corrupt: {exc}") from exc

    def read_ahead(self) -> None:
        """Decompress in a background thread from now on, a few pieces ahead.

        libzstd runs without the GIL, so decompressing the next piece overlaps with the
        caller's parsing, hashing and writing of this one. At most ``_AHEAD_DEPTH``
        pieces wait in the queue: memory stays bounded.
        """
        if self._queue is not None:
            return
        self._queue = queue.Queue(maxsize=_AHEAD_DEPTH)
        self._thread = threading.Thread(target=self._produce, name="oxbak-zstd", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        assert self._queue is not None
        while not self._stop.is_set():
            item: bytes | BaseException
            try:
                item = self._decompress(_AHEAD_PIECE)
            except BaseException as exc:  # handed to the reading thread, raised there
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return

    def _next_piece(self) -> bytes:
        assert self._queue is not None
        if self._done:
            return b""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if not item:
            self._done = True
            if self._thread is not None:
                self._thread.join()
        return item

    def close(self) -> None:
        """Stop the background thread, if any (the raw file is the caller's to close)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def bytes_in(self) -> int:
        """Compressed bytes read so far."""
        return self.walker.bytes_in

    def check_end(self) -> None:
        """After the last byte was read: the stream must end on a complete frame."""
        rest = self.read(1)
        if rest:
            raise CorruptArchiveError("data follows the end of the tar archive")
        self.walker.check_end()


class RandomAccess(Protocol):
    """An archive that can be read at any offset (see :mod:`oxbak.locations`)."""

    size: int

    def pread(self, size: int, offset: int, /) -> bytes:
        """Up to *size* bytes at *offset* (fewer only at the end of the file)."""


class SeekTable:
    """Where each frame of a seekable archive starts, compressed and decompressed.

    Built from the zstd seekable format's seek table at the end of the file, and checked
    before anything is allocated from it: the table must fit in the file, the frames it
    lists must add up to exactly the bytes before it, and no frame may claim to hold more
    than :data:`~oxbak.format.MAX_FRAME_BYTES`.
    """

    def __init__(self, sizes: Sequence[tuple[int, int]]) -> None:
        self.c_starts = array("q")
        self.d_starts = array("q")
        self.c_sizes = array("q")
        self.d_sizes = array("q")
        c = d = 0
        for csize, dsize in sizes:
            self.c_starts.append(c)
            self.d_starts.append(d)
            self.c_sizes.append(csize)
            self.d_sizes.append(dsize)
            c += csize
            d += dsize
        #: Compressed bytes covered by the frames (the seek table frame excluded).
        self.c_total = c
        #: Decompressed bytes of all frames: the length of the tar stream.
        self.d_total = d

    def __len__(self) -> int:
        return len(self.c_sizes)

    @classmethod
    def read(cls, source: RandomAccess) -> SeekTable | None:
        """The table of *source*, or None if it does not end with a seekable-format footer.

        :raises CorruptArchiveError: a table that is present but does not describe the file.
        """
        size = source.size
        if size < 17:
            return None
        tail = source.pread(9, size - 9)
        count, descriptor, magic = struct.unpack("<IBI", tail)
        if magic != fmt.SEEKABLE_MAGIC:
            return None
        # Only enough to bound the read; parse_seek_table checks the table, footer included.
        entry = 12 if descriptor & 0x80 else 8
        table_size = 8 + count * entry + 9
        if count > fmt.MAX_FRAMES or table_size > size:
            raise CorruptArchiveError(
                f"seek table declares {count} frames, more than the file can hold"
            )
        raw = source.pread(table_size, size - table_size)
        magic, length = struct.unpack_from("<II", raw)
        if magic != fmt.SEEK_TABLE_MAGIC or length != table_size - 8:
            raise CorruptArchiveError("seek table frame header is malformed")
        sizes = parse_seek_table(raw[8:])
        table = cls(sizes)
        if table.c_total != size - table_size:
            raise CorruptArchiveError(
                f"seek table frames add up to {table.c_total} bytes, the file holds "
                f"{size - table_size} before the table"
            )
        return table

    def frame_at(self, offset: int) -> int:
        """The frame holding the byte at *offset* of the tar stream."""
        if not 0 <= offset < self.d_total:
            raise CorruptArchiveError(
                f"offset {offset} lies outside the tar stream ({self.d_total} bytes)"
            )
        return bisect.bisect_right(self.d_starts, offset) - 1


def parse_seek_table(body: bytes) -> list[tuple[int, int]]:
    """The (compressed, decompressed) sizes a seek table frame's content lists, checked.

    :raises CorruptArchiveError: a malformed table, or an entry no frame can have.
    """
    if len(body) < 9:
        raise CorruptArchiveError("seek table is truncated")
    count, descriptor, magic = struct.unpack("<IBI", body[-9:])
    if magic != fmt.SEEKABLE_MAGIC:
        raise CorruptArchiveError("seek table does not end with the seekable format's magic")
    if descriptor & 0x7C:
        raise CorruptArchiveError("seek table descriptor has reserved bits set")
    entry = 12 if descriptor & 0x80 else 8
    if count > fmt.MAX_FRAMES or len(body) != count * entry + 9:
        raise CorruptArchiveError(f"seek table of {len(body)} bytes cannot list {count} frames")
    fields = struct.iter_unpack("<II" if entry == 8 else "<III", body[: count * entry])
    sizes = [(item[0], item[1]) for item in fields]
    for n, (csize, dsize) in enumerate(sizes):
        if csize < 8 or dsize > fmt.MAX_FRAME_BYTES:
            raise CorruptArchiveError(
                f"seek table entry {n}: frame of {csize} bytes holding {dsize} is not valid"
            )
    return sizes


class FrameReader:
    """Decompresses single frames of a seekable archive, checked one by one.

    Each frame must be exactly one complete zstd frame (or, where the table says it holds
    no data, one skippable frame) whose content is as long as the table says; its window
    and declared content size are checked before libzstd allocates anything, and libzstd
    checks its content checksum.
    """

    def __init__(self, source: RandomAccess, table: SeekTable, *, threads: int = 1) -> None:
        self.source = source
        self.table = table
        self.threads = max(threads, 1)
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._lender: FrameReader | None = None
        self._lock = threading.Lock()
        self.bytes_in = 0

    def share_threads(self, lender: FrameReader) -> None:
        """Decompress ahead in *lender*'s threads, not in threads of its own.

        For the archives of a chain, read together: each thread has its own malloc
        arena, where the frames it decompressed stay cached, so threads per archive
        would multiply the memory a restore holds (benchmarks/NOTES.md). *lender* must be
        closed last.
        """
        self._lender = lender

    def frame(self, index: int) -> bytes:
        """The decompressed content of frame *index*."""
        table = self.table
        csize, dsize = table.c_sizes[index], table.d_sizes[index]
        try:
            data = self.source.pread(csize, table.c_starts[index])
        except OSError as exc:
            raise InputError(f"cannot read the archive: {exc.strerror or exc}") from exc
        with self._lock:
            self.bytes_in += len(data)
        if len(data) != csize:
            raise CorruptArchiveError(f"archive is truncated inside zstd frame {index + 1}")
        magic = int.from_bytes(data[:4], "little")
        if dsize == 0 and magic & _SKIPPABLE_MASK == fmt.SKIPPABLE_MAGIC:
            if int.from_bytes(data[4:8], "little") != csize - 8:
                raise CorruptArchiveError(f"skippable frame {index + 1} is malformed")
            return b""
        walker = FrameWalker(_Bytes(data))
        walker.check_end()
        if walker.frames != 1 or magic != _ZSTD_MAGIC:
            raise CorruptArchiveError(
                f"zstd frame {index + 1}: the seek table does not match the frames found"
            )
        if walker.content_size is not None and walker.content_size != dsize:
            raise CorruptArchiveError(
                f"zstd frame {index + 1} declares {walker.content_size} bytes, "
                f"the seek table {dsize}"
            )
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = zstandard.ZstdDecompressor(max_window_size=fmt.MAX_WINDOW_SIZE)
            self._local.decompressor = decompressor
        try:
            out: bytes = decompressor.decompress(data, max_output_size=dsize)
        except zstandard.ZstdError as exc:
            raise CorruptArchiveError(f"zstd frame {index + 1} is corrupt: {exc}") from exc
        if len(out) != dsize:
            raise CorruptArchiveError(
                f"zstd frame {index + 1} holds {len(out)} bytes, the seek table says {dsize}"
            )
        return out

    def stream(self, offset: int, *, ahead: bool = False, until: int = -1) -> FrameStream:
        """The tar stream from *offset* on, decompressed frame by frame as it is read.

        With *ahead*, the next frames are decompressed in the background by the reader's
        threads (at most twice as many frames as threads wait), but none that starts at
        or after *until*, when given: the reader will not need it.
        """
        return FrameStream(self, offset, ahead=ahead, until=until)

    def submit(self, index: int) -> Future[bytes]:
        """Decompress frame *index* in one of *threads* background threads.

        The thread that reads the frames (parsing, hashing, writing) is not counted: on a
        large archive it spends most of its time waiting for frames (benchmarks/NOTES.md).
        """
        owner = self._lender or self
        if owner._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            owner._pool = ThreadPoolExecutor(owner.threads, "oxbak-unzstd")
        return owner._pool.submit(self.frame, index)

    def close(self) -> None:
        """Stop the background threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class _Bytes:
    """*data* as a readable stream, for :class:`FrameWalker`."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        if self._done:
            return b""
        self._done = True
        return self._data


class FrameStream:
    """Decompressed bytes of a seekable archive from some offset on, read forward.

    It offers what :class:`ZstdReader` offers, so the tar parser runs over either.
    """

    def __init__(self, frames: FrameReader, offset: int, *, ahead: bool, until: int = -1) -> None:
        self._frames = frames
        table = frames.table
        # Frames up to _stop are decompressed ahead; later ones only when read.
        self._stop = len(table) if until < 0 else bisect.bisect_left(table.d_starts, until)
        self._next = table.frame_at(offset) if offset < table.d_total else len(table)
        self._skip = offset - table.d_starts[self._next] if self._next < len(table) else 0
        self._data = b""
        self._ahead: collections.deque[Future[bytes]] = collections.deque()
        self._ahead_next = self._next
        self._parallel = ahead

    @property
    def bytes_in(self) -> int:
        """Compressed bytes read so far by the archive's frame reader."""
        return self._frames.bytes_in

    def _load(self) -> bool:
        table = self._frames.table
        while not self._data:
            if self._next >= len(table):
                return False
            if self._parallel:
                limit = min(self._stop, self._next + 2 * self._frames.threads)
                while self._ahead_next < limit:
                    self._ahead.append(self._frames.submit(self._ahead_next))
                    self._ahead_next += 1
                if self._ahead:
                    data = self._ahead.popleft().result()
                else:  # past *until*: nothing was decompressed ahead
                    data = self._frames.frame(self._next)
                    self._ahead_next = self._next + 1
            else:
                data = self._frames.frame(self._next)
            self._next += 1
            self._data = data[self._skip :] if self._skip else data
            self._skip = 0
        return True

    def read(self, size: int) -> bytes:
        """The rest of the current frame (at least *size* bytes unless it ends sooner).

        Whole frames are handed over as they are, not cut to *size*: a copy of every byte
        of a large archive costs more than the parsing around it, and a frame is bounded
        (``MAX_FRAME_BYTES``). ``b""`` after the last frame.
        """
        if not self._data and not self._load():
            return b""
        data, self._data = self._data, b""
        return data

    def read_ahead(self) -> None:
        """Nothing to start: frames are decompressed ahead as they are reached."""

    def check_end(self) -> None:
        """After the last byte was read: nothing may be left, in any frame."""
        if self.read(1):
            raise CorruptArchiveError("data follows the end of the tar archive")

    def close(self) -> None:
        """Drop frames decompressed ahead (the frame reader's threads are its own)."""
        for future in self._ahead:
            future.cancel()
        self._ahead.clear()
