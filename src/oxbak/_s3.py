"""Archives in S3 or an S3-compatible object store: ``s3://BUCKET/KEY``.

:mod:`oxbak.locations` imports this module only when it is given such a URL, so that a
command on a local file never loads boto3. Everything that talks to the service is here,
and so is the translation of its failures into :class:`~oxbak.errors.InputError`,
:class:`~oxbak.errors.OutputError` and :class:`~oxbak.errors.OutputExistsError`: one line
naming the object and the fault, never a botocore traceback.

Credentials, region and endpoint come from the standard AWS chain (environment, shared
files, instance roles); :func:`oxbak.locations.set_s3_endpoint` (``--endpoint-url``)
overrides the endpoint.

Reading (:class:`S3Object`): the ``pread(size, offset)`` and ``size`` that the seekable
readers use on a file, served by ranged GETs through a small cache of the ranges fetched.
A miss fetches at least :data:`MIN_FETCH`; a read that starts where the last one ended
doubles that window, up to :data:`MAX_FETCH`, so a whole archive costs one request per
few MiB while ``info`` fetches one window at each end. Threads that need a range another
thread is already fetching wait for it rather than fetching it again. Every GET after the
first carries ``If-Match`` with the ETag the first one saw: an object replaced while it
is read is an error, never a mix of two archives.

Writing (:class:`Upload`): a multipart upload whose parts are sent by a background thread
as the archive grows, at most one part being sent, one waiting and one filling, so
memory does not grow with the archive. The object appears only when the upload is
completed, after the last byte. Unless the pack replaces the object on purpose, the
completion carries ``If-None-Match: *``: an object that appeared meanwhile (another pack
racing for the key) is never overwritten; the upload is aborted and this pack is told
the key exists. Any error, Ctrl-C or SIGTERM aborts the upload. A ``kill -9`` leaves an
incomplete upload and no object: the next pack to the key says so, and
:func:`abort_uploads` (``oxbak abort-uploads``) removes it.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import hashlib
import logging
import os
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import boto3
import botocore.config
import botocore.exceptions

from ._version import __version__
from .errors import InputError, OutputError, OutputExistsError

__all__ = [
    "MAX_FETCH",
    "MAX_PARTS",
    "MIN_FETCH",
    "PART_SIZE",
    "S3Object",
    "Stats",
    "Upload",
    "UploadInfo",
    "abort_uploads",
    "check_absent",
    "open_object",
    "parse_url",
    "stats",
    "upload",
]

logger = logging.getLogger("oxbak")

_MiB = 1 << 20
#: The least a read that misses the cache fetches: the first frame of an archive, or its
#: footer, seek table and TOC header, in one request each.
MIN_FETCH = 64 * 1024
#: The most one GET fetches when reads follow one another (a whole archive).
MAX_FETCH = 8 * _MiB
#: Ranges kept after they were read (least recently used ones are dropped first).
_CACHE_BYTES = 32 * _MiB
#: S3's limits on a multipart upload: parts, and the bytes of one part.
MAX_PARTS = 10_000
MIN_PART = 5 * _MiB
MAX_PART = 5 * 1024 * _MiB
#: Bytes per part by default (OXBAK_S3_PART_SIZE, in MiB, changes it): 10,000 parts make
#: an archive of up to 156.25 GiB. A pack whose tree could make a larger one uses larger
#: parts, chosen before the first byte is sent.
PART_SIZE = 16 * _MiB
_PART_ENV = "OXBAK_S3_PART_SIZE"
#: Part buffers of an upload: one filling, one waiting, one being sent.
_BUFFERS = 3
#: A GET whose body breaks off is tried this many times in all.
_GET_ATTEMPTS = 3
_CHECKSUM_FIELDS = (
    "ChecksumCRC32",
    "ChecksumCRC32C",
    "ChecksumCRC64NVME",
    "ChecksumSHA1",
    "ChecksumSHA256",
)


@dataclass
class Stats:
    """Requests made and bytes moved by this process (the tests count them)."""

    gets: int = 0
    bytes_read: int = 0
    parts: int = 0
    bytes_written: int = 0

    def reset(self) -> None:
        """Start counting again from zero."""
        self.gets = self.bytes_read = self.parts = self.bytes_written = 0


#: What this process fetched and sent.
stats = Stats()
_stats_lock = threading.Lock()


def _count(*, gets: int = 0, read: int = 0, parts: int = 0, written: int = 0) -> None:
    with _stats_lock:
        stats.gets += gets
        stats.bytes_read += read
        stats.parts += parts
        stats.bytes_written += written


# ------------------------------------------------------------------------------ URLs, client


def parse_url(url: str, *, prefix: bool = False) -> tuple[str, str]:
    """``s3://BUCKET/KEY`` → (bucket, key). With *prefix*, the key may be empty.

    :raises ValueError: not such a URL (the message says what is wrong).
    """
    if not url.startswith("s3://"):
        raise ValueError("an S3 URL starts with s3://")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise ValueError("it names no bucket (s3://BUCKET/KEY)")
    if not prefix:
        if not key:
            raise ValueError("it names a bucket, not an object (s3://BUCKET/KEY)")
        if key.endswith("/"):
            raise ValueError("it ends with '/': it names a prefix, not an object")
    return bucket, key


_clients: dict[tuple[object, ...], Any] = {}
_clients_lock = threading.Lock()


def _client(error: type[InputError] | type[OutputError] = InputError) -> Any:
    """One S3 client per configuration (endpoint and AWS environment), made on first use.

    :raises InputError: (or *error*) the configuration is unusable, e.g. a bad endpoint.
    """
    from .locations import s3_endpoint

    endpoint = s3_endpoint()
    # botocore reads its settings from the environment when a client is made.
    key = (endpoint, *sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            config = botocore.config.Config(user_agent_extra=f"oxbak/{__version__}")
            try:
                client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
            except (botocore.exceptions.BotoCoreError, ValueError) as exc:
                raise error(f"cannot use S3: {_fault(exc)}") from exc
            _clients[key] = client
    return client


def _endpoint_of(client: Any) -> str:
    url = str(client.meta.endpoint_url)
    match = re.match(r"[a-z0-9+.-]+://[^/]+", url, re.IGNORECASE)
    return match.group(0) if match else url


def _code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _status(exc: BaseException) -> int:
    if isinstance(exc, botocore.exceptions.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def _fault(exc: BaseException, client: Any = None) -> str:
    """What went wrong, in a few words (the object is named by the caller)."""
    b = botocore.exceptions
    if isinstance(exc, b.NoCredentialsError):
        return (
            "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE)"
        )
    if isinstance(exc, (b.EndpointConnectionError, b.ConnectTimeoutError)):
        where = _endpoint_of(client) if client is not None else "the S3 endpoint"
        return f"cannot reach {where}"
    if isinstance(exc, b.ReadTimeoutError):
        return "the service stopped answering (read timed out)"
    if isinstance(exc, (b.ConnectionClosedError, b.ResponseStreamingError)):
        return "the connection to the service broke off"
    if isinstance(exc, b.ClientError):
        code = _code(exc)
        message = str(exc.response.get("Error", {}).get("Message", "") or "")
        status = _status(exc)
        known = {
            "NoSuchBucket": "no such bucket",
            "NoSuchKey": "no such key",
            "InvalidAccessKeyId": "access denied: the access key is not known (check the "
            "credentials)",
            "SignatureDoesNotMatch": "access denied: the signature does not match (check the "
            "secret key)",
            "AccessDenied": "access denied",
            "AllAccessDisabled": "access denied",
            "ExpiredToken": "the credentials have expired",
            "InvalidToken": "the session token is not valid",
            "NoSuchUpload": "the upload was aborted meanwhile (by another client, `oxbak "
            "abort-uploads` or a lifecycle rule)",
            "InvalidBucketName": "not a valid bucket name",
            "EntityTooLarge": "the part or object is larger than the service accepts",
            "EntityTooSmall": "a part is smaller than the service accepts",
        }
        if code in known:
            return known[code]
        if status == 403 or code == "403":
            return "access denied"
        if status == 404 or code == "404":
            return "not found"
        if message:
            return f"{code}: {message}" if code else message
        return f"HTTP {status or code}"
    if isinstance(exc, b.BotoCoreError):
        return str(exc)
    return str(exc) or type(exc).__name__


_BOTO_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
)


def _fail_reading(url: str, exc: BaseException, client: Any, what: str = "read") -> NoReturn:
    raise InputError(f"cannot {what} {url!r}: {_fault(exc, client)}") from exc


def _fail_writing(url: str, exc: BaseException, client: Any) -> NoReturn:
    raise OutputError(f"cannot write {url!r}: {_fault(exc, client)}") from exc


# ------------------------------------------------------------------------------ reading


class S3Object:
    """Random access to one object by ranged GETs: ``size`` and ``pread(size, offset)``.

    Safe from several threads (the seekable readers decompress frames in a pool).
    """

    #: Not from processes forked from this one: they would share its connections.
    forkable = False

    def __init__(self, url: str) -> None:
        try:
            bucket, key = parse_url(url)
        except ValueError as exc:
            raise InputError(f"cannot open archive {url!r}: {exc}") from exc
        self.url = url
        self.bucket = bucket
        self.key = key
        self._client = _client()
        self._lock = threading.Lock()
        # start -> bytes, least recently used first; ranges may overlap.
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._cached = 0
        # start -> (end, set when the fetch is over): ranges being fetched.
        self._pending: dict[int, tuple[int, threading.Event]] = {}
        self._window = MIN_FETCH
        self._last_end = -1  # where the last read ended
        self._planned_end = -1  # where the last fetch ends
        self.etag: str | None = None
        self.size = 0
        self._open()

    def _open(self) -> None:
        """The first window, which also tells the object's size and ETag."""
        try:
            response = self._request(0, MIN_FETCH)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "InvalidRange" or _status(exc) == 416:
                return  # an empty object: the reader says "archive is empty"
            _fail_reading(self.url, exc, self._client, "open archive")
        except _BOTO_ERRORS as exc:
            _fail_reading(self.url, exc, self._client, "open archive")
        match = re.fullmatch(r"bytes \d+-\d+/(\d+)", str(response.get("ContentRange", "")))
        length = int(response.get("ContentLength", 0))
        if match is None and length > MIN_FETCH:
            # A service that ignores Range would send whole archives for every read.
            response["Body"].close()
            raise InputError(
                f"cannot open archive {self.url!r}: the service does not honor ranged reads"
            )
        self.size = int(match.group(1)) if match else length
        self.etag = response.get("ETag")
        try:
            data = self._body(response, 0, min(MIN_FETCH, self.size))
        except _BOTO_ERRORS as exc:
            _fail_reading(self.url, exc, self._client, "open archive")
        self._store(0, data)
        self._last_end = 0

    def _request(self, start: int, end: int) -> Any:
        """A GET of bytes [start, end), counted."""
        extra = {"IfMatch": self.etag} if self.etag else {}
        _count(gets=1)
        return self._client.get_object(
            Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{end - 1}", **extra
        )

    def _body(self, response: Any, start: int, end: int) -> bytes:
        data: bytes = response["Body"].read()
        _count(read=len(data))
        if len(data) != end - start:
            raise InputError(
                f"cannot read {self.url!r}: {len(data)} bytes came for a range of {end - start}"
            )
        return data

    def _fetch(self, start: int, end: int) -> bytes:
        for attempt in range(1, _GET_ATTEMPTS + 1):
            try:
                return self._body(self._request(start, end), start, end)
            except (
                botocore.exceptions.ResponseStreamingError,
                botocore.exceptions.IncompleteReadError,
                botocore.exceptions.ReadTimeoutError,
                botocore.exceptions.ConnectionClosedError,
            ) as exc:
                # botocore retries a request, not a body that breaks off half-way.
                if attempt == _GET_ATTEMPTS:
                    _fail_reading(self.url, exc, self._client)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) == "PreconditionFailed" or _status(exc) == 412:
                    raise InputError(
                        f"cannot read {self.url!r}: the object was replaced while it was read"
                    ) from exc
                _fail_reading(self.url, exc, self._client)
            except _BOTO_ERRORS as exc:
                _fail_reading(self.url, exc, self._client)
        raise AssertionError("unreachable")

    def _store(self, start: int, data: bytes) -> None:
        """Keep a fetched range (with the lock held), dropping the least recent ones."""
        if not data:
            return
        old = self._cache.pop(start, None)
        if old is not None:
            self._cached -= len(old)
        self._cache[start] = data
        self._cached += len(data)
        while self._cached > _CACHE_BYTES and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= len(dropped)

    def _covering(self, pos: int) -> tuple[int, bytes] | None:
        for start, data in self._cache.items():
            if start <= pos < start + len(data):
                self._cache.move_to_end(start)
                return start, data
        return None

    def pread(self, size: int, offset: int, /) -> bytes:
        """Up to *size* bytes at *offset* (fewer only at the end of the object)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        pieces = []
        pos = offset
        while pos < end:
            piece = self._piece(pos, end, end)
            pieces.append(piece)
            pos += len(piece)
        with self._lock:
            self._last_end = end
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def read_some(self, size: int, offset: int) -> bytes:
        """Between 1 and *size* bytes at *offset* (``b""`` at the end), for a stream.

        What is cached is handed out without a request; a miss fetches the read-ahead
        window, not *size*: the reader asks for 128 KiB whatever it needs.
        """
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        data = self._piece(offset, end, offset + 1)
        with self._lock:
            self._last_end = offset + len(data)
        return data

    def _piece(self, pos: int, end: int, need: int) -> bytes:
        """Bytes from *pos*, at most to *end*: cached ones, or one new fetch.

        A fetch covers at least [pos, need) and the read-ahead window.
        """
        while True:
            with self._lock:
                hit = self._covering(pos)
                if hit is not None:
                    start, data = hit
                    stop = min(end, start + len(data))
                    if start == pos and stop == start + len(data):
                        return data
                    return data[pos - start : stop - start]
                waiting = next(
                    (event for s, (e, event) in self._pending.items() if s <= pos < e), None
                )
                if waiting is None:
                    start, stop = self._plan(pos, need)
                    done = threading.Event()
                    self._pending[start] = (stop, done)
                    break
            waiting.wait()
        try:
            data = self._fetch(start, stop)
        finally:
            with self._lock:
                del self._pending[start]
                done.set()
        with self._lock:
            self._store(start, data)
        return data[pos - start : min(end, stop) - start]

    def _plan(self, pos: int, need: int) -> tuple[int, int]:
        """The range to fetch for a miss at *pos*, reaching *need* (with the lock held).

        It may end sooner, where a range cached or being fetched begins.
        """
        # Frames read ahead by several threads miss in turn at the end of the range the
        # previous miss is fetching: that is a sequential read too.
        sequential = pos in (self._last_end, self._planned_end)
        self._window = min(self._window * 2, MAX_FETCH) if sequential else MIN_FETCH
        stop = min(max(need, pos + self._window), self.size)
        # Not into a range that is cached or on its way: the caller takes those bytes
        # from there next.
        for other in (*self._cache, *self._pending):
            if pos < other < stop:
                stop = other
        start = pos
        if stop == self.size and stop - start < self._window:
            # Near the end, fetch the window before it too: the footer and the seek table
            # are read backwards from the last bytes.
            start = max(0, stop - self._window)
            for other, data in self._cache.items():
                if other < pos and start < other + len(data):
                    start = min(pos, other + len(data))
            for other, (other_end, _) in self._pending.items():
                if other < pos and start < other_end:
                    start = min(pos, other_end)
        self._planned_end = stop
        return start, stop


class S3Stream:
    """An object read front to back (for the stream readers), through its cache."""

    def __init__(self, obj: S3Object) -> None:
        self._obj = obj
        self._pos = 0
        self.name = obj.url

    def read(self, size: int = -1, /) -> bytes:
        """Some bytes from where the last read ended; ``b""`` at the end."""
        data = self._obj.read_some(size if size > 0 else MAX_FETCH, self._pos)
        self._pos += len(data)
        return data


def open_object(url: str) -> S3Object:
    """The object at *url*, opened by fetching its first window.

    :raises InputError: no such bucket or key, no access, the service cannot be reached.
    """
    return S3Object(url)


# ------------------------------------------------------------------------------ writing


def part_size_for(size_hint: int | None) -> int:
    """The part size for an archive of at most about *size_hint* bytes.

    :raises OutputError: OXBAK_S3_PART_SIZE is not a number of MiB S3 accepts, or the
        archive could exceed what 10,000 parts of the largest size hold.
    """
    size = PART_SIZE
    setting = os.environ.get(_PART_ENV, "").strip()
    if setting:
        try:
            size = int(setting) * _MiB
        except ValueError:
            size = 0
        if not MIN_PART <= size <= MAX_PART:
            raise OutputError(
                f"{_PART_ENV}={setting!r}: give the part size in MiB, "
                f"{MIN_PART // _MiB} to {MAX_PART // _MiB}"
            )
    if size_hint is not None and size_hint > size * MAX_PARTS:
        needed = -(-size_hint // MAX_PARTS)
        size = -(-needed // _MiB) * _MiB
        if size > MAX_PART:
            raise OutputError(
                f"an archive of up to {size_hint:,} bytes cannot be uploaded: S3 takes at "
                f"most {MAX_PARTS:,} parts of {MAX_PART // _MiB:,} MiB"
            )
    return size


class Upload:
    """A multipart upload being written: :meth:`write`, then :meth:`finish` or :meth:`abort`."""

    def __init__(self, url: str, *, force: bool, part_size: int) -> None:
        try:
            bucket, key = parse_url(url)
        except ValueError as exc:
            raise OutputError(f"cannot write the archive to {url!r}: {exc}") from exc
        self.url = url
        self.bucket = bucket
        self.key = key
        self.force = force
        self.part_size = part_size
        #: Bytes taken so far (the object's size once it is complete).
        self.size = 0
        self._client = _client(OutputError)
        # As s3transfer does: with the default checksum setting, every part carries a
        # CRC32 the service checks, and the completion names each part's.
        self._checksum = self._client.meta.config.request_checksum_calculation != ("when_required")
        extra = {"ChecksumAlgorithm": "CRC32"} if self._checksum else {}
        try:
            response = self._client.create_multipart_upload(Bucket=bucket, Key=key, **extra)
        except _BOTO_ERRORS as exc:
            _fail_writing(url, exc, self._client)
        self.upload_id: str = response["UploadId"]
        # Part buffers, made as needed and used again: one filling, one waiting, one being
        # sent. Reused, they keep memory at three parts; a new buffer for every part, freed
        # by the sending thread, fragments the heap and memory creeps up with the archive.
        self._spare: queue.Queue[bytearray] = queue.Queue()
        self._made = 0
        self._fill: bytearray | None = None
        self._used = 0
        self._count = 0  # parts cut
        self._parts: dict[int, dict[str, Any]] = {}
        self._md5s: dict[int, bytes] = {}
        self._queue: queue.Queue[tuple[int, bytearray, int] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._failed = threading.Event()
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._send_parts, name="oxbak-s3", daemon=True)
        self._thread.start()

    # -- the stream FrameWriter writes to ---------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Take *data*; a part is handed to the sending thread each time one fills."""
        self._check()
        view = memoryview(data).cast("B")
        self.size += len(view)
        while view:
            if self._fill is None:
                self._fill = self._empty_buffer()
                self._used = 0
            piece = view[: self.part_size - self._used]
            self._fill[self._used : self._used + len(piece)] = piece
            self._used += len(piece)
            view = view[len(piece) :]
            if self._used == self.part_size:
                self._hand_over(self._fill, self._used)
                self._fill = None
        return len(data)

    def _empty_buffer(self) -> bytearray:
        while True:
            self._check()
            try:
                return self._spare.get(block=self._made == _BUFFERS, timeout=0.1)
            except queue.Empty:
                if self._made < _BUFFERS:
                    self._made += 1
                    return bytearray(self.part_size)

    def flush(self) -> None:
        """Nothing: parts leave as they fill; the last one at :meth:`finish`."""

    def _check(self) -> None:
        if self._failed.is_set():
            assert self._error is not None
            _fail_writing(self.url, self._error, self._client)

    def _hand_over(self, part: bytearray, length: int) -> None:
        if self._count == MAX_PARTS:
            raise OutputError(
                f"cannot write {self.url!r}: the archive outgrew S3's {MAX_PARTS:,} parts of "
                f"{self.part_size // _MiB} MiB ({_PART_ENV} sets the part size in MiB)"
            )
        self._count += 1
        self._put((self._count, part, length))

    def _put(self, item: tuple[int, bytearray, int] | None) -> None:
        # Bounded: wait while a part is being sent and another waits; not forever if the
        # sending thread failed meanwhile.
        while True:
            self._check()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _send_parts(self) -> None:
        """The sending thread: each part in turn, until None or the first failure."""
        while True:
            item = self._queue.get()
            if item is None or self._closed:
                return
            number, buffer, length = item
            body = buffer if length == len(buffer) else bytes(memoryview(buffer)[:length])
            self._busy = True
            try:
                extra = {"ChecksumAlgorithm": "CRC32"} if self._checksum else {}
                response = self._client.upload_part(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    PartNumber=number,
                    Body=body,
                    **extra,
                )
                part = {"PartNumber": number, "ETag": response["ETag"]}
                part.update({k: response[k] for k in _CHECKSUM_FIELDS if k in response})
                self._parts[number] = part
                self._md5s[number] = hashlib.md5(body, usedforsecurity=False).digest()
                _count(parts=1, written=len(body))
                self._spare.put(buffer)
            except BaseException as exc:  # handed to the writing thread, raised there
                self._error = exc
                self._failed.set()
                return
            finally:
                self._busy = False

    # -- the end ----------------------------------------------------------------------------
    def finish(self) -> None:
        """Send the last part and complete the upload: the object appears, whole.

        :raises OutputExistsError: without *force*, an object appeared at the key meanwhile.
        """
        if self._used or self._count == 0:
            self._hand_over(self._fill or bytearray(), self._used)
            self._fill = None
        self._put(None)
        while self._thread.is_alive():
            self._thread.join(0.1)
        self._check()
        parts = [self._parts[n] for n in range(1, self._count + 1)]
        extra = {} if self.force else {"IfNoneMatch": "*"}
        try:
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": parts},
                **extra,
            )
        except _BOTO_ERRORS as exc:
            if self._is_ours():
                # Completed, but the answer was lost and botocore's retry was refused (the
                # upload is gone, or the object is there): the object is this upload's.
                self._closed = True
                return
            code, status = _code(exc), _status(exc)
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (
                409,
                412,
            ):
                self.abort()
                raise OutputExistsError(f"{self.url!r} already exists") from exc
            _fail_writing(self.url, exc, self._client)
        self._closed = True

    def _is_ours(self) -> bool:
        """Whether the object at the key is the one this upload made (by its ETag)."""
        digest = hashlib.md5(
            b"".join(self._md5s[n] for n in range(1, self._count + 1)), usedforsecurity=False
        )
        expected = f'"{digest.hexdigest()}-{self._count}"'
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self.key)
        except _BOTO_ERRORS:
            return False
        return bool(head.get("ETag") == expected and head.get("ContentLength") == self.size)

    def abort(self) -> None:
        """Abort the upload: its parts are deleted and no object appears (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        busy = self._busy
        self._abort_upload()
        if busy:
            # A part being sent as the upload was aborted may still land; S3 says to
            # abort again once no part is in flight.
            self._thread.join(5)
            self._abort_upload()

    def _abort_upload(self) -> None:
        try:
            self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
            )
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "NoSuchUpload":
                return
            self._warn_left(exc)
        except botocore.exceptions.BotoCoreError as exc:
            self._warn_left(exc)

    def _warn_left(self, exc: BaseException) -> None:
        logger.warning(
            "could not abort the incomplete upload to %s (%s); no object was made, and "
            "`oxbak abort-uploads %s` removes its parts",
            self.url,
            _fault(exc, self._client),
            self.url,
        )


def check_absent(url: str, *, force: bool) -> None:
    """Before a pack: the bucket must be there and, without *force*, the key must not.

    Also notes incomplete uploads to the same key left by earlier packs. Checked again
    when the upload completes (``If-None-Match``); this only fails early.

    :raises OutputExistsError: the object exists and *force* is false.
    :raises OutputError: no such bucket, no access, the service cannot be reached.
    """
    try:
        bucket, key = parse_url(url)
    except ValueError as exc:
        raise OutputError(f"cannot write the archive to {url!r}: {exc}") from exc
    client = _client(OutputError)
    try:
        # A GET, unlike a HEAD, says why it failed: no bucket, a wrong key or secret.
        listing = client.list_multipart_uploads(Bucket=bucket, Prefix=key)
    except botocore.exceptions.ClientError as exc:
        if _code(exc) not in ("AccessDenied", "NotImplemented"):
            _fail_writing(url, exc, client)
        listing = {}  # not allowed to list uploads: nothing to note
    except _BOTO_ERRORS as exc:
        _fail_writing(url, exc, client)
    left = [u for u in listing.get("Uploads", []) if u.get("Key") == key]
    if left:
        logger.warning(
            "%s has %d incomplete upload(s) started before this pack (one still running, "
            "or killed); `oxbak abort-uploads %s` removes them",
            url,
            len(left),
            url,
        )
    if force:
        return
    try:
        client.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if _status(exc) == 404 or _code(exc) in ("404", "NoSuchKey"):
            return
        if _status(exc) == 403:
            return  # may not read objects: the completion's condition still holds
        _fail_writing(url, exc, client)
    except _BOTO_ERRORS as exc:
        _fail_writing(url, exc, client)
    raise OutputExistsError(f"{url!r} already exists")


@contextlib.contextmanager
def upload(url: str, *, force: bool, size_hint: int | None = None) -> Iterator[Upload]:
    """An upload to *url*, completed when the block ends, aborted if it raises.

    :raises OutputExistsError: without *force*, an object appeared at *url* meanwhile.
    :raises OutputError: the upload cannot be made or completed.
    """
    sink = Upload(url, force=force, part_size=part_size_for(size_hint))
    try:
        yield sink
        sink.finish()
    except BaseException:
        sink.abort()
        raise


# ------------------------------------------------------------------------------ leftovers


@dataclass
class UploadInfo:
    """An incomplete multipart upload."""

    url: str
    upload_id: str
    initiated: _dt.datetime | None
    parts: int
    bytes: int


def abort_uploads(url: str, *, older_than: float = 0.0, dry_run: bool = False) -> list[UploadInfo]:
    """Find incomplete uploads under the prefix *url* names and abort them.

    Only those started at least *older_than* seconds ago (an upload still being written
    is aborted too otherwise: its pack then fails, and no object appears). With
    *dry_run*, nothing is aborted.

    :raises InputError: no such bucket, no access, the service cannot be reached.
    """
    try:
        bucket, prefix = parse_url(url, prefix=True)
    except ValueError as exc:
        raise InputError(f"cannot list uploads under {url!r}: {exc}") from exc
    client = _client()
    now = _dt.datetime.now(tz=_dt.UTC)
    found: list[UploadInfo] = []
    try:
        listed = [
            item
            for page in client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for item in page.get("Uploads", [])
        ]
        # In key order, as S3 lists them (not every service does).
        listed.sort(key=lambda item: (item["Key"], str(item.get("Initiated", ""))))
        for item in listed:
            initiated = item.get("Initiated")
            if (
                older_than > 0
                and initiated is not None
                and (now - initiated).total_seconds() < older_than
            ):
                continue
            key, upload_id = item["Key"], item["UploadId"]
            parts = size = 0
            try:
                for page in client.get_paginator("list_parts").paginate(
                    Bucket=bucket, Key=key, UploadId=upload_id
                ):
                    for part in page.get("Parts", []):
                        parts += 1
                        size += int(part.get("Size", 0))
            except botocore.exceptions.ClientError as exc:
                if _code(exc) == "NoSuchUpload":
                    continue  # completed or aborted since it was listed
                raise
            found.append(UploadInfo(f"s3://{bucket}/{key}", upload_id, initiated, parts, size))
            if not dry_run:
                try:
                    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                except botocore.exceptions.ClientError as exc:
                    if _code(exc) != "NoSuchUpload":  # gone meanwhile: completed or aborted
                        raise
    except _BOTO_ERRORS as exc:
        raise InputError(f"cannot list uploads under {url!r}: {_fault(exc, client)}") from exc
    return found
