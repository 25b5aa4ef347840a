"""The manifest (member 1) and the integrity index (the last member), as msgspec Structs.

This module is the only place that touches msgspec: its ``DecodeError`` and
``ValidationError`` become :class:`~oxbak.errors.ManifestError` or
:class:`~oxbak.errors.CorruptArchiveError` here.

Decoding is strict about types (``strict=True``: a boolean is not a version, a string is
not a number) but ignores unknown fields, so a version-1 reader opens archives from later
version-1 writers that added optional fields (msgspec's schema-evolution rules).
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterable, Mapping

import msgspec

from . import format as fmt
from .errors import CorruptArchiveError, ManifestError, UnsupportedVersionError
from .paths import display, sort_key

__all__ = [
    "BaseRef",
    "IncrementalManifest",
    "Compression",
    "Index",
    "IndexRecord",
    "Manifest",
    "Section",
    "Totals",
    "decode_index_header",
    "decode_index_record",
    "decode_manifest",
    "encode",
    "encode_lines",
    "encode_manifest",
    "now_utc",
    "sections",
]

from .format import EntryType


class _Base(msgspec.Struct, omit_defaults=False, kw_only=True):
    """Common settings: keyword-only construction; unknown fields are ignored on decode."""


class Section(_Base):
    """One directory that directly holds files or symlinks, as the old backup listed them."""

    name: str
    entry_count: int


class Totals(_Base):
    """Counts of what the archive holds."""

    files: int = 0
    hardlinks: int = 0
    directories: int = 0
    symlinks: int = 0
    bytes: int = 0

    @property
    def entries(self) -> int:
        """All tree entries, the root directory included."""
        return self.files + self.hardlinks + self.directories + self.symlinks


class Compression(_Base):
    """How the archive was compressed."""

    algorithm: str = "zstd"
    level: int = fmt.DEFAULT_LEVEL
    checksum: bool = True


class Manifest(_Base):
    """The archive's first member: what it is, when and from what it was made."""

    format: str
    version: int
    created_at: str
    oxbak_version: str
    source: str = ""
    sections: list[Section] = []
    totals: Totals = msgspec.field(default_factory=Totals)
    compression: Compression = msgspec.field(default_factory=Compression)
    labels: dict[str, str] = {}
    skipped: int = 0
    partial: bool | None = False
    changed: int = 0


class BaseRef(_Base):
    """What an incremental archive's manifest says of its base (FORMAT.md §11)."""

    id: str  # BLAKE3-256 hex of the base's TOC member data as stored
    created_at: str
    deleted: int = 0


class IncrementalManifest(Manifest):
    """The manifest of a version-3 archive: a :class:`Manifest` that names its base.

    A subclass rather than an optional field, so that a full archive's manifest is
    encoded exactly as before (no ``"base": null``).
    """

    # Required in effect: a manifest without it keeps this empty id, which is refused.
    base: BaseRef = msgspec.field(default_factory=lambda: BaseRef(id="", created_at=""))


class _Header(msgspec.Struct):
    """Just enough of a manifest to gate on its format name and version."""

    format: str
    version: int


class Index(_Base):
    """Header line of the integrity index."""

    format: str
    version: int
    digest: str
    entries: int
    partial: bool
    changed: int = 0
    missing: int = 0
    totals: Totals = msgspec.field(default_factory=Totals)


class IndexRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One tree entry in the integrity index."""

    path: str | None = None
    path_b64: bytes | None = None
    type: EntryType
    size: int = 0
    digest: str | None = None
    changed: bool = False
    missing: bool = False

    @property
    def raw_path(self) -> bytes:
        """The entry's path as the bytes it has on disk."""
        if self.path_b64 is not None:
            return self.path_b64
        return os.fsencode(self.path or "")

    @classmethod
    def for_path(
        cls,
        path: bytes,
        type: EntryType,
        *,
        size: int = 0,
        digest: str | None = None,
        changed: bool = False,
        missing: bool = False,
    ) -> IndexRecord:
        """A record whose path is ``path`` when valid UTF-8, else ``path_b64``: lossless."""
        try:
            text: str | None = path.decode("utf-8")
            raw: bytes | None = None
        except UnicodeDecodeError:
            text, raw = None, path
        return cls(
            path=text,
            path_b64=raw,
            type=type,
            size=size,
            digest=digest,
            changed=changed,
            missing=missing,
        )


_encoder = msgspec.json.Encoder(order="deterministic")
_header_decoder = msgspec.json.Decoder(_Header)
_manifest_decoder = msgspec.json.Decoder(Manifest)
_incremental_decoder = msgspec.json.Decoder(IncrementalManifest)
_index_decoder = msgspec.json.Decoder(Index)
_record_decoder = msgspec.json.Decoder(IndexRecord)


def now_utc() -> str:
    """The pack time as RFC 3339 UTC, taken from ``SOURCE_DATE_EPOCH`` when it is set."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None and epoch.strip().isdigit():
        moment = _dt.datetime.fromtimestamp(int(epoch), tz=_dt.UTC)
    else:
        moment = _dt.datetime.now(tz=_dt.UTC).replace(microsecond=0)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def encode_manifest(manifest: Manifest, *, size: int | None = None) -> bytes:
    """Encode *manifest* as JSON, padded with spaces to *size* bytes when given.

    :raises ValueError: if the encoding is longer than *size*.
    """
    data = _encoder.encode(manifest) + b"\n"
    if size is None:
        return data + b" " * fmt.MANIFEST_SLACK
    if len(data) > size:
        raise ValueError(f"manifest grew to {len(data)} bytes, beyond its {size}-byte slot")
    return data + b" " * (size - len(data))


def encode(obj: msgspec.Struct) -> bytes:
    """Encode an index Struct as one JSON line (deterministic key order)."""
    return _encoder.encode(obj) + b"\n"


def encode_lines(objs: Iterable[msgspec.Struct]) -> bytes:
    """Encode index Structs as JSON lines: the same bytes as :func:`encode` of each, joined."""
    return _encoder.encode_lines(objs)


def decode_manifest(data: bytes) -> Manifest:
    """Decode and check a manifest: format name, version gate, then strict types.

    :raises UnsupportedVersionError: the archive is from a newer format version.
    :raises ManifestError: anything else wrong with it.
    """
    try:
        header = _header_decoder.decode(data)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
        raise ManifestError(f"manifest.json is malformed: {exc}") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest.json is not valid JSON: {exc}") from exc
    if header.format != fmt.FORMAT_NAME:
        raise ManifestError(
            f"manifest.json declares format {header.format!r}, not {fmt.FORMAT_NAME!r}"
        )
    if header.version < 1:
        raise ManifestError(f"manifest.json declares invalid format version {header.version}")
    if header.version > fmt.INCREMENTAL_VERSION:
        raise UnsupportedVersionError(
            f"archive format version {header.version} is newer than this oxbak supports "
            f"(version {fmt.INCREMENTAL_VERSION}); upgrade oxbak to read it"
        )
    decoder = (
        _incremental_decoder if header.version >= fmt.INCREMENTAL_VERSION else _manifest_decoder
    )
    try:
        manifest = decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # ValidationError included
        raise ManifestError(f"manifest.json is malformed: {exc}") from exc
    _check_counts(manifest)
    return manifest


def _check_counts(manifest: Manifest) -> None:
    t = manifest.totals
    for name, value in (
        ("totals.files", t.files),
        ("totals.hardlinks", t.hardlinks),
        ("totals.directories", t.directories),
        ("totals.symlinks", t.symlinks),
        ("totals.bytes", t.bytes),
        ("skipped", manifest.skipped),
        ("changed", manifest.changed),
        ("base.deleted", manifest.base.deleted if isinstance(manifest, IncrementalManifest) else 0),
    ):
        if value < 0:
            raise ManifestError(f"manifest.json is malformed: {name} is negative ({value})")
    if isinstance(manifest, IncrementalManifest) and not _is_digest_hex(manifest.base.id):
        raise ManifestError("manifest.json is malformed: base.id is not a BLAKE3-256 hex digest")
    if t.directories < 1:
        raise ManifestError("manifest.json is malformed: totals.directories is 0")


def _is_digest_hex(text: str) -> bool:
    return len(text) == 2 * fmt.DIGEST_SIZE and all(c in "0123456789abcdef" for c in text)


def decode_index_header(line: bytes) -> Index:
    """Decode the index's header line.

    :raises CorruptArchiveError: if it is not a version-1 index header.
    """
    try:
        index = _index_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # ValidationError included
        raise CorruptArchiveError(f"index.jsonl header is malformed: {exc}") from exc
    if index.format != fmt.INDEX_FORMAT_NAME or index.version != fmt.INDEX_VERSION:
        raise CorruptArchiveError(
            f"index.jsonl has format {index.format!r} version {index.version}, "
            f"expected {fmt.INDEX_FORMAT_NAME!r} version {fmt.INDEX_VERSION}"
        )
    if index.digest != fmt.DIGEST_NAME:
        raise CorruptArchiveError(f"index.jsonl uses unknown digest {index.digest!r}")
    return index


def decode_index_record(line: bytes, number: int) -> IndexRecord:
    """Decode one record line (*number* counts from 1 after the header, for messages).

    :raises CorruptArchiveError: if the line is malformed.
    """
    try:
        record = _record_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # ValidationError included
        raise CorruptArchiveError(f"index.jsonl record {number} is malformed: {exc}") from exc
    if (record.path is None) == (record.path_b64 is None):
        raise CorruptArchiveError(
            f"index.jsonl record {number} must have exactly one of path and path_b64"
        )
    return record


def sections(counts: Mapping[bytes, int]) -> list[Section]:
    """Sections from {directory path: entries directly in it}, in the entry order.

    A section's name is the directory's path relative to the root, ``.`` for the root.
    """
    return [
        Section(name=display(path) if path else ".", entry_count=counts[path])
        for path in sorted(counts, key=sort_key)
    ]
