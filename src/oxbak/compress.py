"""zstd framing: the writer's frames and a strictly checked, bounded reader.

This module is the only one that touches :mod:`zstandard`; its ``ZstdError`` becomes
:class:`~oxbak.errors.CorruptArchiveError` here.

python-zstandard's ``stream_reader`` reports neither a stream cut short inside its last
frame nor, by itself, where one frame ends and the next begins. :class:`FrameWalker` sits
between the raw file and the decompressor and follows the frame layout of RFC 8878 as the
bytes go by (frame headers, block headers, checksums, skippable frames), so the reader
knows at the end of input whether it stopped exactly on a frame boundary, and refuses a
window larger than :data:`~oxbak.format.MAX_WINDOW_SIZE` before allocating it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator
from typing import Protocol

import zstandard

from . import format as fmt
from .errors import CorruptArchiveError, InputError, LimitExceededError, OutputError

__all__ = ["FrameWalker", "Output", "ZstdReader", "ZstdWriter"]

_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK = 0xFFFFFFF0
_READ_SIZE = 128 * 1024
_AHEAD_PIECE = 1 << 20
_JOB_SIZE = 4 << 20
_AHEAD_DEPTH = 4


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Output(Protocol):
    """What :class:`ZstdWriter` writes to: a binary file object (seekable if rewritten)."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int | None:
        """Write *data*; return how many bytes were taken."""

    def flush(self) -> None:
        """Push buffered bytes to the operating system."""

    def seek(self, offset: int, whence: int = 0, /) -> int:
        """Move the position (only used to rewrite frame 1 of a seekable output)."""


def skippable_frame(total: int) -> bytes:
    """A skippable frame of *total* bytes (header included), its content all zeros."""
    if total < 8:
        raise ValueError("a skippable frame needs at least 8 bytes")
    return (
        fmt.SKIPPABLE_MAGIC.to_bytes(4, "little")
        + (total - 8).to_bytes(4, "little")
        + bytes(total - 8)
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


class ZstdWriter:
    """Writes the frames of an archive to a binary file object it does not own.

    ``write_first`` puts member 1 in a frame of its own, followed by the manifest reserve;
    ``write`` feeds the multithreaded main frame; ``finish`` ends it. ``rewrite_first``
    replaces frame 1 and resizes the reserve so no later byte moves (seekable outputs only).
    """

    def __init__(self, out: Output, *, level: int, threads: int) -> None:
        self._out = out
        self._level = level
        self._one_shot = zstandard.ZstdCompressor(level=level, write_checksum=True)
        # threads >= 1 always: zstd's multithreaded output does not depend on the number of
        # workers, so --threads never changes the archive's bytes.
        # 4 MiB jobs (zstd's default at level 3 is larger): measured here, peak memory of a
        # 60k-file pack is ~56 MB against ~78 MB at the default; 1 MiB jobs saved another
        # 16 MB but cost ~25% of the throughput on large files (benchmarks/NOTES.md).
        params = zstandard.ZstdCompressionParameters.from_level(
            level,
            threads=max(threads, 1),
            job_size=_JOB_SIZE,
            write_checksum=True,
            write_content_size=False,
        )
        compressor = zstandard.ZstdCompressor(compression_params=params)
        self._sink = _WriteAll(out)
        self._stream = compressor.stream_writer(
            self._sink,  # type: ignore[arg-type]  # any object with write() is accepted
            closefd=False,
            write_size=1 << 20,
        )
        self._first_len = 0
        self.bytes_out = 0

    def write_first(self, data: bytes) -> None:
        """Write frame 1 (member 1's tar bytes) and the reserve after it."""
        frame = self._one_shot.compress(data)
        self._first_len = len(frame) + fmt.MANIFEST_RESERVE
        with _writing():
            self._sink.write(frame + skippable_frame(fmt.MANIFEST_RESERVE))

    def rewrite_first(self, data: bytes) -> bool:
        """Replace frame 1 in place with *data* compressed; False if it does not fit."""
        frame = self._one_shot.compress(data)
        room = self._first_len - len(frame)
        if room < 8:
            return False
        with _writing():
            self._out.seek(0)
            self._sink.write(frame + skippable_frame(room))
            self._out.seek(0, os.SEEK_END)
        return True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Compress *data* into the main frame."""
        try:
            with _writing():
                self._stream.write(data)
        except zstandard.ZstdError as exc:
            raise OutputError(f"zstd compression failed: {exc}") from exc

    def finish(self) -> None:
        """End the main frame and flush everything to the output."""
        try:
            with _writing():
                # close() ends the frame; flush(FLUSH_FRAME) first would start another.
                self._stream.close()  # type: ignore[no-untyped-call]  # untyped in the stub
        except zstandard.ZstdError as exc:
            raise OutputError(f"zstd compression failed: {exc}") from exc
        self.bytes_out = self._first_len + self._stream.tell()


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
            raise CorruptArchiveError("archive is empty")
        if self._state != "magic" or self._buf:
            raise CorruptArchiveError("archive is truncated: the last zstd frame is incomplete")

    def _walk(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            if self._state == "skip":
                step = min(self._want, end - pos)
                self._want -= step
                pos += step
                if self._want == 0:
                    self._after_skip()
                continue
            need = self._want - len(self._buf)
            chunk = data[pos : pos + need]
            pos += len(chunk)
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
        self._state, self._want = "magic", 4

    def _on_field(self, field: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(field, "little")
            if magic == _ZSTD_MAGIC:
                self._state, self._want = "fhd", 1
            elif magic & _SKIPPABLE_MASK == fmt.SKIPPABLE_MAGIC:
                self._state, self._want = "skippable", 4
            elif self.frames == 0:
                raise CorruptArchiveError("not a zstd stream (is this an .oxbak archive?)")
            else:
                raise CorruptArchiveError(
                    f"unexpected bytes after zstd frame {self.frames} (trailing garbage)"
                )
        elif state == "skippable":
            self._skip(int.from_bytes(field, "little"), "frame_end")
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
        if single:
            fcs_len = (1, 2, 4, 8)[fhd >> 6]
            fcs = int.from_bytes(header[len(header) - fcs_len :], "little")
            window = fcs + (256 if fcs_len == 2 else 0)
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
        self._reader = decompressor.stream_reader(
            self.walker,  # type: ignore[arg-type]
            read_size=_READ_SIZE,
            read_across_frames=True,
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

    def check_end(self) -> None:
        """After the last byte was read: the stream must end on a complete frame."""
        rest = self.read(1)
        if rest:
            raise CorruptArchiveError("data follows the end of the tar archive")
        self.walker.check_end()
