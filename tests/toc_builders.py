"""Craft version-2 (seekable) ``.oxbak`` archives byte by byte, without oxbak's writer.

A version-2 archive (``docs/FORMAT.md`` §1, §5) is the pax tar stream of :mod:`builders`
cut into independent zstd frames, whose last member ``toc.msgpack`` is the table of
contents, followed by a skippable footer frame locating the TOC and the zstd
seekable-format seek table. :func:`build_v2` lays one out from a list of
:class:`builders.Entry` objects, every number derived here from the format document (the
constants below are FORMAT.md's, not imported from oxbak), the TOC columns encoded with
``msgspec.msgpack`` directly, so that a bug in oxbak's writer or TOC encoder cannot hide a
bug in its reader.

Each stage has a hook that receives the stage's value and the :class:`V2` being built
(everything computed so far) and returns the value to use instead, so a test breaks
exactly one thing::

    v2 = build_v2(entries, records=lambda recs, v2: [...])      # lie in the TOC records
    v2 = build_v2(entries, footer=lambda f, v2: {**f, "toc_size": 1})
    archive = v2.data

Stages, in order, with their hooks:

``members``      tree members (root first): list of :class:`Entry` or raw member bytes
``manifest``     the manifest object (a dict, encoded as JSON; version 2)
``records``      TOC records: one dict per entry with absolute values (:func:`record_of`)
``columns``      ``(block number, dict of the 15 columns)`` after delta coding
``block``        ``(block number, encoded block bytes)``
``refs``         the header's block list: ``[first, offset, length, entries]`` lists
``header``       the TOC header map (a dict)
``header_bytes`` the length prefix and the encoded header
``toc_data``     the TOC member's whole data (prefix, header, blocks)
``toc_member``   the TOC member's header block (name, size, …)
``chunks``       the decompressed content of each data frame (moving frame boundaries)
``frames``       the compressed data frames
``footer``       the footer object (a dict, encoded as JSON)
``footer_frame`` the footer's skippable frame
``seek_entries`` ``(compressed, decompressed)`` per frame, the footer's included
``seek_table``   the seek table frame
``file``         the whole file
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import blake3
import msgspec

from builders import END, Entry, frame, manifest_for, member, ustar_header

__all__ = [
    "BLOCK",
    "DIGEST_SIZE",
    "FOOTER_MAGIC",
    "FRAME_SPLIT",
    "FRAME_TARGET",
    "KIND_CODES",
    "SEEKABLE_MAGIC",
    "SEEK_TABLE_MAGIC",
    "V2",
    "build_v2",
    "digest",
    "encode_columns",
    "footer_frame",
    "toc_header_of",
    "missing_record",
    "record_of",
    "seek_table",
    "stream_truth",
    "toc_member",
]

BLOCK: Final = 512
DIGEST_SIZE: Final = 32
FOOTER_MAGIC: Final = 0x184D2A5B
SEEK_TABLE_MAGIC: Final = 0x184D2A5E
SEEKABLE_MAGIC: Final = 0x8F92EAB1
FRAME_TARGET: Final = 1024 * 1024
FRAME_SPLIT: Final = 4 * 1024 * 1024
TOC_BLOCK_ENTRIES: Final = 4096
TOC_BLOCK_NAME_BYTES: Final = 1024 * 1024
KIND_CODES: Final = {"file": ord("0"), "dir": ord("5"), "symlink": ord("2"), "hardlink": ord("1")}
CHANGED, MISSING = 1, 2
#: The TOC member's mtime (the writer uses the manifest's created_at).
TOC_MTIME: Final = 1_704_067_200
#: Column names, in the order FORMAT.md §5 lists them; the delta-coded ones.
COLUMNS: Final = (
    "paths",
    "kinds",
    "modes",
    "uids",
    "gids",
    "users",
    "groups",
    "sizes",
    "mtimes",
    "ctimes",
    "inodes",
    "targets",
    "digests",
    "flags",
    "offsets",
)
DELTA: Final = ("ctimes", "inodes", "offsets")

Hook = Callable[[Any, "V2"], Any]
_msgpack = msgspec.msgpack.Encoder()


def digest(data: bytes) -> bytes:
    """BLAKE3-256 of *data* (raw 32 bytes), as the TOC's ``digests`` column holds it."""
    return blake3.blake3(data).digest()


@dataclass
class V2:
    """One built archive and every intermediate value, for tests to compute lies from.

    ``stream`` holds the tree members as the tar stream carries them (what a correct
    reader restores); ``offsets`` maps each :class:`Entry` member's path to where its first
    header block starts in the tar stream.
    """

    stream: list[Entry | bytes] = field(default_factory=list)
    offsets: dict[bytes, int] = field(default_factory=dict)
    manifest_size: int = 0  # bytes of frame 1 (the manifest member)
    tree_end: int = 0  # where the tree's members end (the TOC member starts here)
    records: list[dict[str, Any]] = field(default_factory=list)
    blocks: list[bytes] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)
    toc_data: bytes = b""
    toc_offset: int = 0
    toc_size: int = 0
    tar: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    footer: dict[str, Any] = field(default_factory=dict)
    seek_entries: list[tuple[int, int]] = field(default_factory=list)
    data: bytes = b""

    def record(self, path: bytes) -> dict[str, Any]:
        """The (first) record of *path*."""
        return next(r for r in self.records if r["path"] == path)

    def frame_starts(self) -> list[int]:
        """The tar-stream offset where each data frame starts."""
        out, at = [], 0
        for chunk in self.chunks:
            out.append(at)
            at += len(chunk)
        return out


def _entry_size(e: Entry) -> int:
    if e.kind != "file":
        return 0 if e.size is None else e.size
    return len(e.data) if e.size is None else e.size


def _mtime_ns(e: Entry) -> int:
    return e.mtime_ns if e.mtime_ns is not None else e.mtime * 1_000_000_000


def record_of(e: Entry, offset: int, n: int = 0) -> dict[str, Any]:
    """The TOC record of *e*, exactly what FORMAT.md §5 says its member implies.

    Values are absolute (delta coding happens per block). *n* varies the informational
    ``ctime`` and ``ino``. ``e.index`` holds overrides (a lie in the TOC only).
    """
    if e.kind == "file":
        dig = digest(e.data)
    elif e.kind in ("symlink", "hardlink"):
        dig = digest(e.target)
    else:
        dig = bytes(DIGEST_SIZE)
    mtime = _mtime_ns(e)
    rec: dict[str, Any] = {
        "path": e.path,
        "kind": e.kind,
        "mode": e.effective_mode & 0o7777,
        "uid": e.uid,
        "gid": e.gid,
        "user": "root" if e.uid == 0 else f"u{e.uid}",
        "group": "root" if e.gid == 0 else f"g{e.gid}",
        "size": _entry_size(e) if e.kind == "file" else 0,
        "mtime": mtime,
        "ctime": mtime + 1000 + n,
        "ino": 5000 + 3 * n,
        "target": e.target if e.kind in ("symlink", "hardlink") else b"",
        "digest": dig,
        "flags": 0,
        "offset": offset,
    }
    rec.update(e.index)
    return rec


def missing_record(path: bytes, *, mtime: int = 1_700_000_000) -> dict[str, Any]:
    """The record of a file that vanished before it could be read: no member, offset 0."""
    return {
        "path": path,
        "kind": "file",
        "mode": 0o644,
        "uid": 0,
        "gid": 0,
        "user": "root",
        "group": "root",
        "size": 0,
        "mtime": mtime * 1_000_000_000,
        "ctime": mtime * 1_000_000_000,
        "ino": 77,
        "target": b"",
        "digest": bytes(DIGEST_SIZE),
        "flags": MISSING,
        "offset": 0,
    }


def _deltas(values: list[int]) -> list[int]:
    return [b - a for a, b in zip([0, *values], values, strict=False)]


def columns_of(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The 15 columns of one block (FORMAT.md §5), delta-coded where the format says."""
    users: dict[int, str] = {}
    groups: dict[int, str] = {}
    for r in records:
        users[r["uid"]] = r["user"]
        groups[r["gid"]] = r["group"]
    kinds = bytes(
        r["kind"] if isinstance(r["kind"], int) else KIND_CODES[r["kind"]] for r in records
    )
    return {
        "paths": [r["path"] for r in records],
        "kinds": kinds,
        "modes": [r["mode"] for r in records],
        "uids": [r["uid"] for r in records],
        "gids": [r["gid"] for r in records],
        "users": dict(sorted(users.items())),
        "groups": dict(sorted(groups.items())),
        "sizes": [r["size"] for r in records],
        "mtimes": [r["mtime"] for r in records],
        "ctimes": _deltas([r["ctime"] for r in records]),
        "inodes": _deltas([r["ino"] for r in records]),
        "targets": [r["target"] for r in records],
        "digests": b"".join(r["digest"] for r in records),
        "flags": bytes(r["flags"] for r in records),
        "offsets": _deltas([r["offset"] for r in records]),
    }


def encode_columns(columns: dict[str, Any]) -> bytes:
    """A block: the msgpack array of the columns' values, in the dict's order."""
    return _msgpack.encode(list(columns.values()))


def footer_frame(content: bytes, *, magic: int = FOOTER_MAGIC) -> bytes:
    """The footer's skippable frame around *content*."""
    return struct.pack("<II", magic, len(content)) + content


def seek_table(
    entries: Sequence[tuple[int, int]],
    *,
    count: int | None = None,
    descriptor: int = 0,
    magic: int = SEEK_TABLE_MAGIC,
) -> bytes:
    """The zstd seekable format's seek table frame (no checksums unless *descriptor* says)."""
    body = b"".join(struct.pack("<II", c, d) for c, d in entries)
    body += struct.pack(
        "<IBI", len(entries) if count is None else count, descriptor, SEEKABLE_MAGIC
    )
    return struct.pack("<II", magic, len(body)) + body


def _groups(records: Sequence[dict[str, Any]], block_entries: int) -> list[list[dict[str, Any]]]:
    """Records cut into blocks: *block_entries* each, or fewer once names pass 1 MiB."""
    groups: list[list[dict[str, Any]]] = []
    group: list[dict[str, Any]] = []
    name_bytes = 0
    for r in records:
        group.append(r)
        name_bytes += len(r["path"]) + len(r["target"])
        if len(group) >= block_entries or name_bytes >= TOC_BLOCK_NAME_BYTES:
            groups.append(group)
            group, name_bytes = [], 0
    if group:
        groups.append(group)
    return groups


def toc_header_of(records: Sequence[dict[str, Any]], refs: list[list[Any]]) -> dict[str, Any]:
    """The TOC header that *records* (stored in blocks *refs*) imply: counts and totals."""
    totals = {"files": 0, "hardlinks": 0, "directories": 0, "symlinks": 0, "bytes": 0}
    plural = {"file": "files", "dir": "directories", "symlink": "symlinks", "hardlink": "hardlinks"}
    for r in records:
        if r["flags"] & MISSING and r["kind"] != "dir":
            continue  # a missing file has no member (a missing directory has one)
        if r["kind"] in plural:
            totals[plural[r["kind"]]] += 1
        if r["kind"] == "file":
            totals["bytes"] += r["size"]
    changed = sum(1 for r in records if r["flags"] & CHANGED)
    missing = sum(1 for r in records if r["flags"] & MISSING)
    return {
        "format": "oxbak-toc",
        "version": 1,
        "digest": "blake3-256",
        "entries": len(records),
        "partial": bool(changed or missing),
        "changed": changed,
        "missing": missing,
        "totals": totals,
        "blocks": refs,
    }


def toc_member(
    records: Sequence[dict[str, Any]], *, block_entries: int = TOC_BLOCK_ENTRIES
) -> tuple[bytes, int]:
    """A whole, honest ``toc.msgpack`` member for *records* (header block, data, padding),
    and the size of its data: to plant a second table of contents somewhere."""
    blocks = [encode_columns(columns_of(g)) for g in _groups(records, block_entries)]
    refs, at = [], 0
    for group, data in zip(_groups(records, block_entries), blocks, strict=True):
        refs.append([group[0]["path"], at, len(data), len(group)])
        at += len(data)
    packed = _msgpack.encode(toc_header_of(records, refs))
    data = struct.pack("<I", len(packed)) + packed + b"".join(blocks)
    head = ustar_header(b"toc.msgpack", size=len(data), mode=0o644, mtime=TOC_MTIME)
    return head + data + bytes(-len(data) % BLOCK), len(data)


def _tree_chunks(members: list[bytes], sizes: list[int], target: int) -> list[bytes]:
    """Cut the tree's members into frames as FORMAT.md §1 says.

    A frame ends before a member once it holds at least *target* bytes, and inside a
    member's data at every multiple of ``FRAME_SPLIT`` from the data's start.
    """
    chunks: list[bytes] = []
    cur = bytearray()
    for raw, size in zip(members, sizes, strict=True):
        if len(cur) >= target:
            chunks.append(bytes(cur))
            cur = bytearray()
        head = len(raw) - size - (-size % BLOCK) if size and size <= len(raw) else len(raw)
        cur += raw[:head]
        data = raw[head:]
        done = 0
        while len(data) - done > FRAME_SPLIT:
            cur += data[done : done + FRAME_SPLIT]
            done += FRAME_SPLIT
            if done < size:
                chunks.append(bytes(cur))
                cur = bytearray()
        cur += data[done:]
    if cur:
        chunks.append(bytes(cur))
    return chunks


def _hook(hooks: dict[str, Hook], name: str, value: Any, v2: V2) -> Any:
    fn = hooks.get(name)
    return value if fn is None else fn(value, v2)


def build_v2(
    entries: Sequence[Entry | bytes],
    *,
    root: Entry | None = None,
    block_entries: int = TOC_BLOCK_ENTRIES,
    frame_target: int = FRAME_TARGET,
    toc_name: bytes = b"toc.msgpack",
    descriptor: int = 0,
    **hooks: Hook,
) -> V2:
    """A version-2 archive of *entries* (in the order given, after the root ``tree/``).

    Items are :class:`Entry` objects, or raw member bytes inserted verbatim (no record).
    An entry with ``in_index=False`` is in the tar stream but has no TOC record; one with
    ``counted=False`` is left out of the manifest's totals. *block_entries* records go in
    a TOC block (the writer's 4096 by default; fewer gives several blocks). *hooks* are
    the stage hooks listed in the module docstring.
    """
    unknown = set(hooks) - {
        "members", "manifest", "records", "columns", "block", "refs", "header",
        "header_bytes", "toc_data", "toc_member", "chunks", "frames", "footer",
        "footer_frame", "seek_entries", "seek_table", "file",
    }  # fmt: skip
    if unknown:
        raise TypeError(f"unknown hooks {sorted(unknown)}")
    v2 = V2()
    root_entry = root if root is not None else Entry("dir", b"")
    v2.stream = _hook(hooks, "members", [root_entry, *entries], v2)

    # -- frame 1: the manifest; its totals and sections are those of the stream's entries.
    tree_entries = [e for e in v2.stream[1:] if isinstance(e, Entry)]
    manifest = msgspec.json.decode(manifest_for(tree_entries, version=2, partial=None))
    manifest = _hook(hooks, "manifest", manifest, v2)
    manifest_member = member(b"manifest.json", msgspec.json.encode(manifest, order="deterministic"))
    v2.manifest_size = len(manifest_member)

    # -- the tree's members, and where each starts.
    raws: list[bytes] = []
    sizes: list[int] = []
    at = v2.manifest_size
    records: list[dict[str, Any]] = []
    for n, e in enumerate(v2.stream):
        raw = e if isinstance(e, bytes) else e.to_member()
        if isinstance(e, Entry):
            v2.offsets.setdefault(e.path, at)
            if e.in_index:
                records.append(record_of(e, at, n))
            sizes.append(len(e.data) if e.kind == "file" and e.size is None else 0)
        else:
            sizes.append(0)
        raws.append(raw)
        at += len(raw)
    v2.tree_end = at
    v2.records = records = _hook(hooks, "records", records, v2)

    # -- the TOC: blocks of columns, then the header that lists them.
    blocks: list[bytes] = []
    refs: list[list[Any]] = []
    offset = 0
    for number, recs in enumerate(_groups(records, block_entries)):
        columns = _hook(hooks, "columns", (number, columns_of(recs)), v2)[1]
        data = _hook(hooks, "block", (number, encode_columns(columns)), v2)[1]
        blocks.append(data)
        refs.append([recs[0]["path"], offset, len(data), len(recs)])
        offset += len(data)
    v2.blocks = blocks
    refs = _hook(hooks, "refs", refs, v2)
    header = toc_header_of(records, refs)
    v2.header = header = _hook(hooks, "header", header, v2)
    packed = _msgpack.encode(header)
    head_bytes = _hook(hooks, "header_bytes", struct.pack("<I", len(packed)) + packed, v2)
    toc_data = _hook(hooks, "toc_data", head_bytes + b"".join(blocks), v2)
    v2.toc_data = toc_data
    v2.toc_offset = v2.tree_end
    v2.toc_size = len(toc_data)
    toc_head = ustar_header(toc_name, size=len(toc_data), mode=0o644, mtime=TOC_MTIME)
    toc_head = _hook(hooks, "toc_member", toc_head, v2)

    # -- frames: manifest alone; the tree; the TOC's header; each block; the end.
    chunks = [manifest_member, *_tree_chunks(raws, sizes, frame_target)]
    toc_chunks = [toc_head + toc_data[: len(head_bytes)]]
    at = len(head_bytes)
    for data in blocks:
        toc_chunks.append(toc_data[at : at + len(data)])
        at += len(data)
    if at < len(toc_data):  # a hook made the data longer than its parts
        toc_chunks[-1] += toc_data[at:]
    toc_chunks[-1] += bytes(-len(toc_data) % BLOCK) + END
    chunks += toc_chunks
    v2.chunks = chunks = _hook(hooks, "chunks", chunks, v2)
    v2.tar = b"".join(chunks)
    v2.frames = frames = _hook(hooks, "frames", [frame(c) for c in chunks], v2)

    # -- the footer and the seek table.
    v2.footer = _hook(
        hooks,
        "footer",
        {
            "format": "oxbak-footer",
            "version": 1,
            "toc_offset": v2.toc_offset,
            "toc_size": v2.toc_size,
        },
        v2,
    )
    footer_raw = _hook(hooks, "footer_frame", footer_frame(msgspec.json.encode(v2.footer)), v2)
    entries_sizes = [(len(f), len(c)) for f, c in zip(frames, chunks, strict=False)]
    if footer_raw:
        entries_sizes.append((len(footer_raw), 0))
    v2.seek_entries = _hook(hooks, "seek_entries", entries_sizes, v2)
    table = _hook(hooks, "seek_table", seek_table(v2.seek_entries, descriptor=descriptor), v2)
    v2.data = _hook(hooks, "file", b"".join(frames) + footer_raw + table, v2)
    return v2


def stream_truth(stream: Sequence[Entry | bytes]) -> dict[bytes, Entry]:
    """The tree a correct reader of the tar stream restores: path -> its (first) entry."""
    out: dict[bytes, Entry] = {}
    for e in stream:
        if isinstance(e, Entry):
            out.setdefault(e.path, e)
    return out
