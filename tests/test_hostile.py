"""Hostile archives: every refusal oxbak promises, each proven with a crafted archive.

Archives are built byte by byte with :mod:`builders` (never with oxbak's own writer), so
each one differs from a valid archive in exactly the way its case names. For every case
``unpack`` must raise the documented error class with a one-line message naming the
offending member, leave DEST exactly as it was (absent, or byte-for-byte unchanged with
``mode="replace"`` / ``"merge"``), leave no ``.oxbak-*`` staging directory, and write
nothing outside DEST (a canary directory next to DEST must not change); ``verify`` must
report the archive as not ok — except for intact archives refused only by unpack's
external-symlink policy, which ``verify`` need not flag. Controls at the end show the
builders' valid archives are accepted (by oxbak, GNU tar and tarfile), so each refusal is
caused by the one defect its case injects.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import pytest

import oxbak
from builders import (
    DROP,
    END,
    RECORD,
    ZSTD_MAGIC,
    Entry,
    blake,
    build_tar,
    decompress_all,
    device_member,
    dir_member,
    fifo_member,
    flip,
    frame,
    frame_declaring_content_size,
    frame_declaring_window,
    frames_of,
    index_bytes,
    manifest_bytes,
    manifest_for,
    member,
    oxbak_file,
    pax_header,
    skippable,
    symlink_member,
    totals_for,
    tree_order,
)
from oxbak.errors import (
    CorruptArchiveError,
    DestinationError,
    IntegrityError,
    LimitExceededError,
    ManifestError,
    NotAnArchiveError,
    OxbakError,
    UnsafeArchiveError,
    UnsupportedVersionError,
)
from pipelike import Unseekable

ErrorTypes = tuple[type[OxbakError], ...]
Mode = Literal["new", "replace", "merge"]

UNSAFE: ErrorTypes = (UnsafeArchiveError,)
CORRUPT: ErrorTypes = (CorruptArchiveError,)
MANIFEST: ErrorTypes = (ManifestError,)
NOT_ARCHIVE: ErrorTypes = (NotAnArchiveError,)
LIMIT: ErrorTypes = (LimitExceededError,)
INTEGRITY: ErrorTypes = (IntegrityError,)
# Where FORMAT.md says "refused" without naming the class, either of these is right.
REFUSED: ErrorTypes = (UnsafeArchiveError, CorruptArchiveError)

BIG = random.Random(1).randbytes(300_000)  # incompressible: frame 3 gets several blocks


# ============================================================================ archives


def arc(entries: Sequence[Entry | bytes] = (), **kw: Any) -> bytes:
    """A whole .oxbak file for *entries* (``build_tar`` keyword arguments pass through)."""
    return oxbak_file(build_tar(list(entries), **kw))


def base_entries() -> list[Entry]:
    """A small valid tree: a directory with files, a big file, a symlink and a hard link."""
    return [
        Entry.file(b"a.txt", b"alpha\n"),
        Entry.file(b"big.bin", BIG),
        Entry.dir(b"docs"),
        Entry.file(b"docs/readme.md", b"# readme\n" * 50),
        Entry.symlink(b"docs/to-readme", b"readme.md"),
        Entry.hardlink(b"docs/zz-hard", b"a.txt"),
    ]


def base_archive() -> bytes:
    """The valid archive of :func:`base_entries`."""
    return arc(base_entries())


def raw_manifest(raw: dict[str, bytes], **overrides: object) -> bytes:
    """A manifest whose fields in *raw* hold literal JSON text (``NaN``, ``1e999`` …)."""
    fields: dict[str, Any] = {k: f"@@{k}@@" for k in raw}
    fields.update(overrides)
    data = manifest_bytes(**fields)
    for key, text in raw.items():
        data = data.replace(b'"@@' + key.encode() + b'@@"', text)
    return data


def with_totals(entries: Sequence[Entry | bytes], **changes: int) -> bytes:
    """The archive of *entries* whose manifest totals are changed by *changes*."""
    totals = totals_for(entries)
    totals.update(changes)
    return arc(entries, manifest=manifest_for(entries, totals=totals))


def flip_in_tar(marker: bytes) -> Callable[[Path], bytes]:
    """Build the base tar, flip one byte inside *marker*'s data, then compress."""

    def build(_: Path) -> bytes:
        tar = build_tar(base_entries())
        at = tar.index(marker) + 3
        return oxbak_file(flip(tar, at, 0x01))

    return build


def zstd_mutation(fn: Callable[[bytes], bytes]) -> Callable[[Path], bytes]:
    """Apply *fn* to the valid base archive."""
    return lambda _: fn(base_archive())


def frames(data: bytes) -> tuple[Any, Any, Any]:
    """Frame 1, the reserve, frame 3 of an archive."""
    f1, f2, f3 = frames_of(data)
    return f1, f2, f3


def sandbox_abs(sb: Path, name: str) -> bytes:
    """An absolute path inside the sandbox (a write there escapes DEST but stays seen)."""
    return os.fsencode(sb / name)


# ============================================================================ cases


@dataclass(frozen=True)
class Case:
    """One hostile archive and the refusal it must meet."""

    id: str
    build: Callable[[Path], bytes]  # sandbox directory -> archive bytes
    raises: ErrorTypes
    names: tuple[str, ...] = ()  # every one must appear in the message
    kwargs: dict[str, Any] = field(default_factory=dict)
    verify_fails: bool = True  # False: an intact archive refused only by unpack's policy
    not_raises: ErrorTypes = ()
    names_fn: Callable[[Path], tuple[str, ...]] | None = None  # names that need the sandbox


def c(
    id: str,
    build: Callable[[Path], bytes],
    raises: ErrorTypes,
    names: tuple[str, ...] = (),
    **kw: Any,
) -> Case:
    """Shorthand for :class:`Case`."""
    return Case(id, build, raises, names, **kw)


def e(*entries: Entry | bytes, **kw: Any) -> Callable[[Path], bytes]:
    """A builder for the archive of *entries* (they go in the order given)."""
    return lambda _: arc(entries, **kw)


ALLOW = {"allow_external_symlinks": True}
DIR = Entry.dir
FILE = Entry.file
LINK = Entry.symlink
HARD = Entry.hardlink

PATH_CASES = [
    c("traversal-dotdot", e(FILE(b"../escaped", b"evil")), UNSAFE, ("../escaped",)),
    c(
        "traversal-nested",
        e(DIR(b"a"), FILE(b"a/../../escaped", b"evil")),
        UNSAFE,
        ("a/../../escaped",),
    ),
    c("traversal-dir", e(DIR(b"../escdir")), UNSAFE, ("../escdir",)),
    c(
        "traversal-pax-path",
        e(FILE(b"innocent", b"evil", pax=[(b"path", b"tree/../escaped")])),
        UNSAFE,
        ("../escaped",),
    ),
    c(
        "traversal-pax-path-long",
        e(FILE(b"../" * 40 + b"escaped", b"evil")),  # > 100 bytes: the name is in pax
        UNSAFE,
        ("../../escaped",),
    ),
    c(
        "traversal-ustar-prefix",
        e(FILE(b"../escaped", b"evil", name=b"escaped", prefix=b"tree/..")),
        UNSAFE,
        ("../escaped",),
    ),
    Case(
        "absolute-name",
        lambda sb: arc([FILE(b"abs", b"evil", name=sandbox_abs(sb, "abs-written"))]),
        UNSAFE,
        names_fn=lambda sb: (str(sb / "abs-written"),),
    ),
    Case(
        "absolute-pax-path",
        lambda sb: arc([FILE(b"abs", b"evil", pax=[(b"path", sandbox_abs(sb, "abs-written"))])]),
        UNSAFE,
        names_fn=lambda sb: (str(sb / "abs-written"),),
    ),
    Case(
        "absolute-dir",
        lambda sb: arc([DIR(b"abs", name=sandbox_abs(sb, "abs-dir") + b"/")]),
        UNSAFE,
        names_fn=lambda sb: (str(sb / "abs-dir"),),
    ),
    c("double-slash", e(FILE(b"abs", b"evil", name=b"tree//abs")), REFUSED, ("tree//abs",)),
    c("dot-component", e(FILE(b"dotted", b"x", name=b"tree/./dotted")), REFUSED, ("./dotted",)),
    c(
        "nul-in-pax-path",
        e(FILE(b"nul", b"x", pax=[(b"path", b"tree/nul\0byte")])),
        REFUSED,
        ("nul",),
    ),
    c("empty-name", e(FILE(b"", b"x", name=b"")), REFUSED),
    c("outside-tree", e(FILE(b"x", b"evil", name=b"other/x")), REFUSED, ("other/x",)),
    c("outside-tree-prefix-lookalike", e(FILE(b"x", b"e", name=b"treex/y")), REFUSED, ("treex/y",)),
    c("outside-tree-dot-slash", e(FILE(b"x", b"e", name=b"./tree/x")), REFUSED, ("./tree/x",)),
    c("tree-as-file", e(FILE(b"", b"x", name=b"tree")), REFUSED, ("tree",)),
    c(
        "component-too-long",
        e(FILE(b"n" * 256, b"x")),
        (LimitExceededError, UnsafeArchiveError, CorruptArchiveError),
        ("nnnnnnnn",),
    ),
    c(
        "path-too-long",
        e(FILE(b"/".join([b"d" * 200] * 21), b"x")),
        (LimitExceededError, UnsafeArchiveError, CorruptArchiveError),
        ("dddddddd",),
    ),
]

SYMLINK_CASES = [
    # Writing through a symlink: refused at the symlink by default (it points outside) …
    c(
        "symlink-write-through-default",
        e(LINK(b"esc", b"../canary"), FILE(b"esc/planted", b"evil")),
        REFUSED,
        ("esc",),
    ),
    # … and, with external symlinks allowed, at the member that would go through it.
    c(
        "symlink-write-through",
        e(LINK(b"esc", b"../canary"), FILE(b"esc/planted", b"evil")),
        REFUSED,
        ("esc/planted",),
        kwargs=ALLOW,
    ),
    c(
        "symlink-write-through-chain",
        e(LINK(b"a", b"b"), FILE(b"a/planted", b"evil"), LINK(b"b", b"../canary")),
        REFUSED,
        ("a/planted",),
        kwargs=ALLOW,
    ),
    c(
        "symlink-write-through-chain-unsorted",
        e(LINK(b"a", b"b"), LINK(b"b", b"../canary"), FILE(b"a/planted", b"evil")),
        REFUSED,
        ("a/planted",),
        kwargs=ALLOW,
    ),
    c(
        "symlink-then-dir-same-name",
        e(LINK(b"dlink", b"../canary"), DIR(b"dlink"), FILE(b"dlink/planted", b"evil")),
        REFUSED,
        ("dlink",),
        kwargs=ALLOW,
    ),
    c(
        "symlink-internal-write-through",
        e(LINK(b"in", b"sub"), FILE(b"in/planted", b"x"), DIR(b"sub")),
        REFUSED,
        ("in/planted",),
    ),
    c("symlink-empty-target", e(LINK(b"empty-link", b"")), REFUSED, ("empty-link",)),
    c(
        "symlink-nul-target",
        e(LINK(b"nul-link", b"x", pax=[(b"linkpath", b"inside\0/../../x")])),
        REFUSED,
        ("nul-link",),
    ),
    c(
        "symlink-target-too-long",
        e(LINK(b"long-link", b"a/" * 2100)),
        (LimitExceededError, UnsafeArchiveError, CorruptArchiveError),
        ("long-link",),
    ),
    c(
        "external-symlink-absolute",
        e(LINK(b"esc", b"/etc/passwd")),
        UNSAFE,
        ("esc", "/etc/passwd"),
        verify_fails=False,
    ),
    c(
        "external-symlink-relative",
        e(LINK(b"esc", b"../canary")),
        UNSAFE,
        ("esc", "../canary"),
        verify_fails=False,
    ),
    c(
        "external-symlink-nested",
        e(DIR(b"sub"), LINK(b"sub/esc", b"../../x")),
        UNSAFE,
        ("sub/esc", "../../x"),
        verify_fails=False,
    ),
    c(
        "external-symlink-to-parent",
        e(LINK(b"esc", b"..")),
        UNSAFE,
        ("esc", ".."),
        verify_fails=False,
    ),
    c(
        "external-symlink-via-archive-symlink",
        e(DIR(b"sub"), LINK(b"sub/s", b".."), LINK(b"sub/t", b"s/../x")),
        UNSAFE,
        ("sub/t", "s/../x"),
        verify_fails=False,
    ),
    c(
        "external-symlink-via-later-symlink",
        e(LINK(b"a", b"b/../../x"), DIR(b"b")),
        UNSAFE,
        ("a", "b/../../x"),
        verify_fails=False,
    ),
    c(
        "external-symlink-via-dir-symlink",
        e(LINK(b"a-esc", b"sub/up/.."), DIR(b"sub"), LINK(b"sub/up", b"..")),
        UNSAFE,
        ("a-esc", "sub/up/.."),
        verify_fails=False,
    ),
]

HARDLINK_CASES = [
    Case(
        "hardlink-absolute",
        lambda sb: arc(
            [
                FILE(b"a-file", b"x"),
                HARD(b"evil-hard", b"a-file", linkpath=sandbox_abs(sb, "canary/secret")),
            ]
        ),
        UNSAFE,
        ("evil-hard",),
        names_fn=lambda sb: (str(sb / "canary/secret"),),
    ),
    c(
        "hardlink-dotdot",
        e(FILE(b"a-file", b"x"), HARD(b"evil-hard", b"a-file", linkpath=b"tree/../canary/secret")),
        UNSAFE,
        ("evil-hard", "tree/../canary/secret"),
    ),
    c(
        "hardlink-dotdot-pax",
        e(
            FILE(b"a-file", b"x"),
            HARD(b"evil-hard", b"a-file", pax=[(b"linkpath", b"tree/../canary/secret")]),
        ),
        UNSAFE,
        ("evil-hard", "tree/../canary/secret"),
    ),
    c(
        "hardlink-outside-tree",
        e(FILE(b"a-file", b"x"), HARD(b"evil-hard", b"a-file", linkpath=b"manifest.json")),
        REFUSED,
        ("evil-hard",),
    ),
    c(
        "hardlink-bare-relative",
        e(FILE(b"a-file", b"x"), HARD(b"evil-hard", b"a-file", linkpath=b"a-file")),
        REFUSED,
        ("evil-hard", "a-file"),
    ),
    c(
        "hardlink-missing-target",
        e(FILE(b"a-file", b"x"), HARD(b"evil-hard", b"nothere")),
        REFUSED,
        ("evil-hard",),
    ),
    c(
        "hardlink-to-symlink",
        e(LINK(b"a-link", b"b-file"), FILE(b"b-file", b"x"), HARD(b"evil-hard", b"a-link")),
        REFUSED,
        ("evil-hard",),
    ),
    c(
        "hardlink-to-external-symlink",
        e(LINK(b"a-link", b"../canary/secret"), HARD(b"evil-hard", b"a-link")),
        REFUSED,
        ("evil-hard",),
        kwargs=ALLOW,
    ),
    c("hardlink-to-dir", e(DIR(b"d"), HARD(b"evil-hard", b"d")), REFUSED, ("evil-hard",)),
    c("hardlink-to-root", e(HARD(b"evil-hard", b"", linkpath=b"tree/")), REFUSED, ("evil-hard",)),
    c(
        "hardlink-to-later",
        e(HARD(b"a-hard", b"b-file"), FILE(b"b-file", b"x")),
        REFUSED,
        ("a-hard",),
    ),
    c("hardlink-to-self", e(HARD(b"evil-hard", b"evil-hard")), REFUSED, ("evil-hard",)),
    c(
        "hardlink-to-hardlink",
        e(FILE(b"a-file", b"x"), HARD(b"g", b"a-file"), HARD(b"h-evil", b"g")),
        REFUSED,
        ("h-evil",),
    ),
    c(
        "hardlink-with-data",
        e(FILE(b"a-file", b"x"), HARD(b"evil-hard", b"a-file").but(data=b"hello")),
        REFUSED,
        ("evil-hard",),
    ),
]

TYPE_CASES = [
    c("char-device", e(device_member(b"tree/null", "char")), UNSAFE, ("tree/null",)),
    c("block-device", e(device_member(b"tree/sda", "block", major=8, minor=0)), UNSAFE, ("sda",)),
    c("fifo", e(fifo_member(b"tree/pipe")), UNSAFE, ("tree/pipe",)),
    c(
        # The name is in a pax record (> 100 bytes): the message must name the member by
        # it, not by the truncated ustar name field.
        "device-with-pax-name",
        e(Entry("file", b"d" * 120 + b"-null", typeflag=b"3")),
        UNSAFE,
        ("-null",),
    ),
    c("contiguous-file", e(member(b"tree/contig", b"x", typeflag=b"7")), REFUSED, ("contig",)),
    c("unknown-type", e(member(b"tree/weird", b"x", typeflag=b"Z")), REFUSED, ("weird",)),
    c(
        "gnu-longname",
        e(
            member(b"././@LongLink", b"tree/" + b"L" * 150 + b"\0", typeflag=b"L"),
            FILE(b"short", b"x"),
        ),
        REFUSED,
    ),
    c(
        "gnu-longlink",
        e(member(b"././@LongLink", b"target" * 30 + b"\0", typeflag=b"K"), LINK(b"l", b"x")),
        REFUSED,
    ),
    c("gnu-sparse", e(member(b"tree/sparse", b"x" * 512, typeflag=b"S")), REFUSED, ("sparse",)),
    c(
        "global-pax-header",
        e(pax_header([(b"comment", b"global")], typeflag=b"g"), FILE(b"f", b"x")),
        REFUSED,
    ),
    c(
        "global-pax-header-path",
        e(pax_header([(b"path", b"tree/../escaped")], typeflag=b"g"), FILE(b"f", b"x")),
        REFUSED,
    ),
    c("pax-gnu-sparse-key", e(FILE(b"f", b"data", pax=[(b"GNU.sparse.size", b"4")])), REFUSED),
    c("pax-unknown-key", e(FILE(b"f", b"data", pax=[(b"frobnicate", b"1")])), REFUSED),
    c(
        "pax-malformed-length",
        e(pax_header(b"99 path=tree/f\n"), FILE(b"f", b"data")),
        CORRUPT,
    ),
    c("pax-no-equals", e(pax_header(b"12 pathtree\n"), FILE(b"f", b"data")), CORRUPT),
    c(
        "pax-oversized",
        e(FILE(b"f", b"data", pax=[(b"comment", b"c" * 70_000)])),
        (LimitExceededError, CorruptArchiveError),
    ),
    c(
        "pax-dangling-before-end",
        e(FILE(b"f", b"x"), after_index=[pax_header([(b"path", b"tree/ghost")])]),
        CORRUPT,
    ),
    c(
        "pax-bad-mtime",
        e(FILE(b"f", b"x", pax=[(b"mtime", b"yesterday")])),
        CORRUPT,
    ),
    c(
        "pax-bad-size",
        e(FILE(b"f", b"x", pax=[(b"size", b"-1")])),
        CORRUPT,
    ),
    c(
        "symlink-with-data",
        e(LINK(b"l", b"x").but(data=b"0123456789")),
        REFUSED,
        ("l",),
    ),
    c("dir-with-data", e(DIR(b"d").but(data=b"x" * 512)), REFUSED, ("d",)),
]

ORDER_CASES = [
    c("duplicate-file", e(FILE(b"dup", b"1"), FILE(b"dup", b"2")), REFUSED, ("dup",)),
    c("duplicate-dir", e(DIR(b"dupdir"), DIR(b"dupdir")), REFUSED, ("dupdir",)),
    c("duplicate-file-then-dir", e(FILE(b"dup", b"1"), DIR(b"dup")), REFUSED, ("dup",)),
    c("duplicate-root", e(DIR(b"", name=b"tree/")), REFUSED, ("tree",)),
    c("out-of-order", e(FILE(b"zz-late", b"1"), FILE(b"aa-early", b"2")), REFUSED, ("aa-early",)),
    c(
        # Byte order says "a.txt" < "a/b"; component order says ("a", "b") < ("a.txt",).
        "out-of-order-component-sort",
        e(DIR(b"a"), FILE(b"a.txt", b"1"), FILE(b"a/b-file", b"2")),
        REFUSED,
        ("a/b-file",),
    ),
    c("missing-parent", e(FILE(b"nodir/orphan", b"x")), REFUSED, ("nodir/orphan",)),
    c("parent-is-file", e(FILE(b"pf", b"x"), FILE(b"pf/child", b"y")), REFUSED, ("pf/child",)),
    c(
        "parent-closed",
        e(DIR(b"a"), DIR(b"b"), FILE(b"a/late", b"x")),
        REFUSED,
        ("a/late",),
    ),
    c(
        "no-root",
        e(FILE(b"f", b"x"), root=None, manifest=manifest_for([FILE(b"f", b"x")])),
        REFUSED,
    ),
    c("root-not-dir", e(root=Entry("file", b"", name=b"tree/", data=b"x")), REFUSED),
    c(
        "index-before-tree-end",
        # A complete, correct index for the tree so far, then one more tree member.
        e(
            FILE(b"f", b"x"),
            before_index=[
                member(b"index.jsonl", index_bytes([FILE(b"f", b"x")])),
                FILE(b"g", b"y").to_member(),
            ],
        ),
        (CorruptArchiveError, IntegrityError, UnsafeArchiveError),
    ),
    c(
        "second-manifest-in-tree",
        e(FILE(b"f", b"x"), before_index=[member(b"manifest.json", manifest_bytes())]),
        (ManifestError, CorruptArchiveError, UnsafeArchiveError),
    ),
]


def _cut_at(which: str) -> Callable[[bytes], bytes]:
    def fn(data: bytes) -> bytes:
        f1, f2, f3 = frames(data)
        where = {
            "in-frame1": f1.end - 5,
            "after-frame1": f1.end,
            "in-reserve": f2.start + 20,
            "after-reserve": f2.end,
            "in-frame3-magic": f3.start + 2,
            "in-frame3-header": f3.header_end - 1,
            "after-frame3-header": f3.header_end,
            "in-block-header": f3.blocks[0][0] + 2,
            "between-blocks": f3.blocks[1][0],
            "mid-frame3": (f3.start + f3.end) // 2,
            "before-checksum": f3.end - 4,
            "in-checksum": f3.end - 2,
            "last-byte": f3.end - 1,
        }[which]
        return data[:where]

    return fn


def _flip_frame(which: str) -> Callable[[bytes], bytes]:
    def fn(data: bytes) -> bytes:
        f1, _, f3 = frames(data)
        where = {
            "frame1-block": f1.header_end + 5,
            "frame3-block": f3.blocks[0][0] + 200,
            "frame3-late-block": f3.blocks[-1][0] + 10,
            "frame3-checksum": f3.end - 1,
            "frame1-checksum": f1.end - 1,
        }[which]
        return flip(data, where)

    return fn


def _fhd_reserved(data: bytes) -> bytes:
    f3 = frames(data)[2]
    return flip(data, f3.start + 4, 0x08)


def _window(first: bool, log: int, mantissa: int = 0) -> Callable[[Path], bytes]:
    """The base archive with frame 1 or frame 3 declaring a ``2**log`` (+ 1/8ths) window."""

    def make(data: bytes) -> bytes:
        return frame_declaring_window(data, log, mantissa=mantissa)

    def build(_: Path) -> bytes:
        tar = build_tar(base_entries())
        return oxbak_file(tar, first=make) if first else oxbak_file(tar, rest=make)

    return build


WINDOW = (LimitExceededError, CorruptArchiveError)

ZSTD_CASES = [
    c("window-2GiB-frame3", _window(False, 31), WINDOW),
    c("window-2GiB-frame1", _window(True, 31), WINDOW),
    c("window-64MiB-frame3", _window(False, 26), WINDOW),  # libzstd's default would allow it
    c("window-36MiB-frame3", _window(False, 25, 1), WINDOW),  # 32 MiB + 1/8
    c("window-max-descriptor", _window(False, 41, 7), WINDOW),
    c(
        "single-segment-huge-content-size",
        lambda _: oxbak_file(
            build_tar(base_entries()), rest=lambda d: frame_declaring_content_size(d, 1 << 40)
        ),
        WINDOW,
    ),
    *[
        c(f"truncated-{w}", zstd_mutation(_cut_at(w)), CORRUPT)
        for w in (
            "in-frame1",
            "after-frame1",
            "in-reserve",
            "after-reserve",
            "in-frame3-magic",
            "in-frame3-header",
            "after-frame3-header",
            "in-block-header",
            "between-blocks",
            "mid-frame3",
            "before-checksum",
            "in-checksum",
            "last-byte",
        )
    ],
    c("trailing-garbage", zstd_mutation(lambda d: d + b"garbage!"), CORRUPT),
    c("trailing-zero-bytes", zstd_mutation(lambda d: d + bytes(4)), CORRUPT),
    c("trailing-partial-magic", zstd_mutation(lambda d: d + ZSTD_MAGIC[:3]), CORRUPT),
    c("trailing-partial-frame", zstd_mutation(lambda d: d + frame(b"more")[:-3]), CORRUPT),
    c("trailing-frame-with-data", zstd_mutation(lambda d: d + frame(bytes(RECORD))), CORRUPT),
    c(
        "trailing-frame-with-member",
        zstd_mutation(lambda d: d + frame(member(b"tree/x", b"e") + END)),
        CORRUPT,
    ),
    c(
        "flipped-frame3-block",
        zstd_mutation(_flip_frame("frame3-block")),
        (CorruptArchiveError, IntegrityError),
    ),
    c(
        "flipped-frame3-late-block",
        zstd_mutation(_flip_frame("frame3-late-block")),
        (CorruptArchiveError, IntegrityError),
    ),
    c("flipped-frame3-checksum", zstd_mutation(_flip_frame("frame3-checksum")), CORRUPT),
    c(
        "flipped-frame1-block",
        zstd_mutation(_flip_frame("frame1-block")),
        (CorruptArchiveError, ManifestError),
    ),
    c("flipped-frame1-checksum", zstd_mutation(_flip_frame("frame1-checksum")), CORRUPT),
    c("frame-header-reserved-bit", zstd_mutation(_fhd_reserved), CORRUPT),
    c("not-zstd-text", lambda _: b"this is not an archive, just text\n" * 10, NOT_ARCHIVE),
    c("not-zstd-bare-tar", lambda _: build_tar(base_entries()), NOT_ARCHIVE),
    c("not-zstd-gzip", lambda _: b"\x1f\x8b\x08\x00" + bytes(100), NOT_ARCHIVE),
    c("empty-file", lambda _: b"", NOT_ARCHIVE),
    c("only-reserve-frame", lambda _: skippable(), (CorruptArchiveError, ManifestError)),
    c("empty-zstd-frame", lambda _: frame(b""), (CorruptArchiveError, ManifestError)),
]


def _tar_cut(where: str) -> Callable[[Path], bytes]:
    def build(_: Path) -> bytes:
        tar = build_tar(base_entries())
        at = tar.index(BIG[:64])
        cut_at = {"in-data": at + 1000, "in-header": at - 512 + 100}[where]
        return oxbak_file(tar[:cut_at])

    return build


TAR_CASES = [
    c("missing-end-marker", e(FILE(b"f", b"x"), end=b"", pad_record=False), CORRUPT),
    c("half-end-marker", e(FILE(b"f", b"x"), end=bytes(512), pad_record=False), CORRUPT),
    c("junk-after-end-marker", e(FILE(b"f", b"x"), end=END + b"junk"), CORRUPT),
    c(
        "member-after-end-marker",
        e(FILE(b"f", b"x"), end=END + FILE(b"hidden", b"x").to_member()),
        CORRUPT,
    ),
    c("zeros-beyond-record", e(FILE(b"f", b"x"), tail=bytes(RECORD)), CORRUPT),
    c("tar-cut-in-data", _tar_cut("in-data"), CORRUPT),
    c("tar-cut-in-header", _tar_cut("in-header"), CORRUPT),
    c(
        "bad-checksum-later-member",
        e(FILE(b"a", b"x"), FILE(b"later.txt", b"y", checksum=12345)),
        CORRUPT,
        ("later.txt",),
    ),
    c("bad-checksum-root", e(root=Entry("dir", b"", checksum=1)), CORRUPT),
    c(
        "bad-checksum-manifest",
        e(manifest_member=member(b"manifest.json", manifest_for([]), checksum=1)),
        (CorruptArchiveError, ManifestError),
    ),
    c(
        "bad-checksum-index",
        e(index_member=member(b"index.jsonl", index_bytes([]), checksum=1)),
        CORRUPT,
    ),
    c(
        "bad-checksum-pax",
        e(pax_header([(b"comment", b"x")], checksum=7), FILE(b"f", b"x")),
        CORRUPT,
    ),
    c("old-gnu-magic", e(member(b"tree/gnu", b"x", magic=b"ustar  \0")), CORRUPT, ("gnu",)),
    c("v7-no-magic", e(member(b"tree/v7", b"x", magic=bytes(8))), CORRUPT, ("v7",)),
    c("non-octal-size", e(member(b"tree/f", b"x", size=b"0000000001x")), CORRUPT, ("tree/f",)),
    c(
        "base256-size",
        e(member(b"tree/f", b"x", size=b"\x80" + bytes(10) + b"\x01")),
        CORRUPT,
        ("tree/f",),
    ),
    c("non-octal-mode", e(member(b"tree/f", b"x", mode=b"rwxr-xr")), CORRUPT, ("tree/f",)),
]

GOOD = manifest_for([])
MANIFEST_CASES = [
    c("no-manifest", e(manifest_member=b""), MANIFEST),
    c(
        "first-member-other",
        e(manifest_member=b"", before_manifest=[member(b"README", b"hello")]),
        MANIFEST,
        ("README",),
    ),
    c(
        "manifest-not-first",
        e(before_manifest=[member(b"README", b"hello")]),
        MANIFEST,
        ("README",),
    ),
    c(
        "manifest-after-root",
        e(manifest_member=dir_member(b"tree/"), root=member(b"manifest.json", GOOD)),
        MANIFEST,
    ),
    c(
        "manifest-is-dir",
        e(manifest_member=dir_member(b"manifest.json/")),
        MANIFEST,
    ),
    c(
        "manifest-is-symlink",
        e(manifest_member=symlink_member(b"manifest.json", b"tree/x")),
        MANIFEST,
    ),
    c(
        "manifest-with-prefix-dir",
        e(manifest_member=member(b"./manifest.json", GOOD)),
        MANIFEST,
    ),
    # Version 3 is an incremental archive (FORMAT.md §11): 4 is the first unknown one.
    c(
        "version-4",
        e(manifest=manifest_bytes(version=4)),
        (UnsupportedVersionError,),
        ("4", "3", "upgrade"),
    ),
    c(
        "version-4-otherwise-unreadable",
        e(manifest=b'{"format":"oxbak","version":4,"future":{"x":[1,2]}}'),
        (UnsupportedVersionError,),
        ("4", "3", "upgrade"),
    ),
    c(
        "version-4-hostile-tree",
        e(FILE(b"../escaped", b"evil"), manifest=manifest_bytes(version=4)),
        (UnsupportedVersionError,),
        ("4", "upgrade"),
    ),
    c(
        "version-huge",
        e(manifest=manifest_bytes(version=2**63 - 1)),
        (UnsupportedVersionError,),
        ("upgrade",),
    ),
    c(
        "not-json",
        e(manifest=b"{this is not json"),
        MANIFEST,
        (),
        not_raises=(UnsupportedVersionError,),
    ),
    c("not-object", e(manifest=b"[1, 2, 3]"), MANIFEST, (), not_raises=(UnsupportedVersionError,)),
    c("empty-manifest", e(manifest=b""), MANIFEST, (), not_raises=(UnsupportedVersionError,)),
    c("only-spaces", e(manifest=b" " * 100), MANIFEST, (), not_raises=(UnsupportedVersionError,)),
    c(
        "nul-padded",
        e(manifest=GOOD + bytes(64)),
        MANIFEST,
        (),
        not_raises=(UnsupportedVersionError,),
    ),
    c(
        "trailing-junk",
        e(manifest=GOOD + b" x"),
        MANIFEST,
        (),
        not_raises=(UnsupportedVersionError,),
    ),
    *[
        c(
            f"version-{label}",
            e(manifest=raw_manifest({"version": raw})),
            MANIFEST,
            (),
            not_raises=(UnsupportedVersionError,),
        )
        for label, raw in (
            ("true", b"true"),
            ("string", b'"1"'),
            ("zero", b"0"),
            ("negative", b"-1"),
            ("float", b"1.0"),
            ("null", b"null"),
            ("nan", b"NaN"),
        )
    ],
    c("version-2**64", e(manifest=raw_manifest({"version": b"18446744073709551616"})), MANIFEST),
    *[
        c(
            f"missing-{name}",
            e(manifest=manifest_bytes(**dict[str, Any]({name: DROP}))),
            MANIFEST,
            not_raises=(UnsupportedVersionError,),
        )
        for name in ("format", "version", "created_at", "oxbak_version")
    ],
    c("format-zip", e(manifest=manifest_bytes(format="zip")), MANIFEST, ("zip",)),
    c("format-null", e(manifest=manifest_bytes(format=None)), MANIFEST),
    c("totals-list", e(manifest=manifest_bytes(totals=[1, 2])), MANIFEST),
    c(
        "totals-string-count",
        e(manifest=manifest_bytes(totals={"files": "3", "directories": 1})),
        MANIFEST,
    ),
    c(
        "totals-bool-count",
        e(manifest=manifest_bytes(totals={"bytes": True, "directories": 1})),
        MANIFEST,
    ),
    c(
        "totals-negative",
        e(manifest=manifest_bytes(totals={"files": -1, "directories": 1})),
        MANIFEST,
    ),
    c(
        "totals-nan",
        e(
            manifest=raw_manifest(
                {"totals": b'{"files":0,"hardlinks":0,"directories":1,"symlinks":0,"bytes":NaN}'}
            )
        ),
        MANIFEST,
    ),
    c(
        "totals-infinity",
        e(
            manifest=raw_manifest(
                {"totals": b'{"files":0,"hardlinks":0,"directories":1,"symlinks":0,"bytes":1e999}'}
            )
        ),
        MANIFEST,
    ),
    c("partial-string", e(manifest=manifest_bytes(partial="no")), MANIFEST),
    c("labels-not-strings", e(manifest=manifest_bytes(labels={"a": 1})), MANIFEST),
    c("sections-wrong-shape", e(manifest=manifest_bytes(sections=[{"name": 1}])), MANIFEST),
    c(
        "manifest-too-big",
        e(manifest=GOOD.ljust(16 * 1024 * 1024 + 1, b" ")),
        (LimitExceededError, ManifestError),
    ),
    c(
        "manifest-size-claim-huge",
        e(manifest_member=member(b"manifest.json", GOOD, size=8**11 - 1)),
        (LimitExceededError, ManifestError, CorruptArchiveError),
    ),
]

VICTIM = b"victim-content-0123456789"
INDEX_CASES = [
    c(
        "index-digest-mismatch",
        e(FILE(b"victim.txt", VICTIM, index={"digest": blake(b"something else")})),
        INTEGRITY,
        ("victim.txt",),
    ),
    c("flipped-file-content", flip_in_tar(b"# readme"), INTEGRITY, ("docs/readme.md",)),
    c("flipped-big-file-content", flip_in_tar(BIG[1000:1064]), INTEGRITY, ("big.bin",)),
    c(
        "index-symlink-digest-mismatch",
        e(
            LINK(b"lnk", b"target"),
            FILE(b"target", b"x"),
            LINK(b"z", b"target", index={"digest": blake(b"other")}),
        ),
        INTEGRITY,
        ("z",),
    ),
    c(
        "index-size-mismatch",
        e(FILE(b"victim.txt", VICTIM, index={"size": 3})),
        INTEGRITY,
        ("victim.txt",),
    ),
    c(
        "index-type-mismatch",
        e(FILE(b"victim.txt", VICTIM, index={"type": "symlink"})),
        INTEGRITY,
        ("victim.txt",),
    ),
    c(
        "index-path-mismatch",
        e(FILE(b"victim.txt", VICTIM, index={"path": "other.txt"})),
        INTEGRITY,
        ("victim.txt",),
    ),
    c(
        "index-missing-record",
        e(FILE(b"a", b"x"), FILE(b"victim.txt", VICTIM, in_index=False)),
        (IntegrityError, CorruptArchiveError),
        ("victim.txt",),
    ),
    c(
        "index-extra-record",
        e(FILE(b"a", b"x"), index=index_bytes([FILE(b"a", b"x"), FILE(b"ghost", b"g")])),
        # More records than the manifest's totals allow is also a declared bound exceeded.
        (IntegrityError, CorruptArchiveError, LimitExceededError),
    ),
    c(
        "index-entries-count",
        e(FILE(b"a", b"x"), index=index_bytes([FILE(b"a", b"x")], entries=7)),
        (IntegrityError, CorruptArchiveError),
    ),
    c(
        "index-totals-lie",
        e(
            FILE(b"a", b"x"),
            index=index_bytes([FILE(b"a", b"x")], totals={"files": 9, "directories": 1}),
        ),
        (IntegrityError, CorruptArchiveError),
    ),
    c(
        "index-missing",
        e(FILE(b"a", b"x"), index_member=b""),
        (CorruptArchiveError, IntegrityError),
    ),
    c(
        "index-not-json",
        e(FILE(b"a", b"x"), index=b"not json\n"),
        (CorruptArchiveError, IntegrityError),
    ),
    c("index-empty", e(FILE(b"a", b"x"), index=b""), (CorruptArchiveError, IntegrityError)),
    c(
        "index-wrong-format",
        e(FILE(b"a", b"x"), index=index_bytes([FILE(b"a", b"x")], format="zip-index")),
        (CorruptArchiveError, IntegrityError),
    ),
    c(
        "index-no-final-newline",
        e(FILE(b"a", b"x"), index=index_bytes([FILE(b"a", b"x")])[:-1]),
        (CorruptArchiveError, IntegrityError),
    ),
    c(
        "index-line-too-long",
        e(FILE(b"a", b"x", index={"padding": "p" * 70_000})),
        (LimitExceededError, CorruptArchiveError),
    ),
    c(
        "index-is-symlink",
        e(FILE(b"a", b"x"), index_member=symlink_member(b"index.jsonl", b"tree/a")),
        (CorruptArchiveError, IntegrityError),
    ),
    c(
        "manifest-totals-above-stream",
        lambda _: with_totals([FILE(b"a", b"x")], files=5),
        (IntegrityError, CorruptArchiveError),
    ),
]

THREE = [FILE(b"f1", b"one"), FILE(b"f2", b"two"), FILE(b"f3", b"three")]
LIMIT_CASES = [
    c("more-files-than-declared", lambda _: with_totals(THREE, files=1), LIMIT),
    c(
        "more-bytes-than-declared",
        lambda _: with_totals([FILE(b"f", b"x" * 100)], bytes=10),
        LIMIT,
        ("f",),
    ),
    c(
        "more-dirs-than-declared",
        lambda _: with_totals([DIR(b"d1"), DIR(b"d2"), DIR(b"d3")], directories=2),
        LIMIT,
    ),
    c(
        "more-symlinks-than-declared",
        lambda _: with_totals(
            [LINK(b"l1", b"x"), LINK(b"l2", b"x"), LINK(b"l3", b"x")], symlinks=1
        ),
        LIMIT,
    ),
    c(
        "more-hardlinks-than-declared",
        lambda _: with_totals(
            [FILE(b"f", b"x"), HARD(b"h1", b"f"), HARD(b"h2", b"f"), HARD(b"h3", b"f")], hardlinks=1
        ),
        LIMIT,
    ),
    c(
        "zero-declared-but-files",
        lambda _: with_totals(THREE, files=0, bytes=0, directories=1),
        LIMIT,
    ),
]


def _huge(size_field: str) -> Callable[[Path], bytes]:
    """A file member claiming a huge size, followed by little data."""

    def build(_: Path) -> bytes:
        if size_field == "ustar":
            victim = FILE(b"huge", b"tiny", size=8**11 - 1)
            declared = 10
        elif size_field == "pax":
            victim = FILE(b"huge", b"tiny", pax=[(b"size", b"%d" % 2**50)])
            declared = 10
        else:  # declared in the manifest too, so no limit stops it: only truncation does
            victim = FILE(b"huge", b"tiny", size=HUGE_DECLARED)
            declared = HUGE_DECLARED
        entries = [victim]
        return arc(
            entries,
            manifest=manifest_for(entries, totals={**totals_for(entries), "bytes": declared}),
        )

    return build


HUGE_DECLARED = 3 * 1024**3  # under the disk's free space, over the memory limit below

HUGE_CASES = [
    c("huge-size-ustar", _huge("ustar"), (CorruptArchiveError, LimitExceededError), ("huge",)),
    c("huge-size-pax", _huge("pax"), (CorruptArchiveError, LimitExceededError), ("huge",)),
    c("huge-size-declared", _huge("declared"), CORRUPT),
    c(
        "huge-pax-header",
        e(pax_header([(b"comment", b"x")], size=8**11 - 1), FILE(b"f", b"x")),
        (LimitExceededError, CorruptArchiveError),
    ),
    c(
        "huge-index-size",
        e(
            FILE(b"a", b"x"),
            index_member=member(b"index.jsonl", index_bytes([FILE(b"a", b"x")]), size=8**11 - 1),
        ),
        (CorruptArchiveError, LimitExceededError),
    ),
]

DEEP = 1000  # nested directories: at Python's recursion limit, within MAX_PATH_BYTES


def deep_dirs(depth: int = DEEP) -> list[Entry]:
    """``a``, ``a/a``, … *depth* levels of directories (path ``2 * depth - 1`` bytes)."""
    return [Entry.dir(b"/".join([b"a"] * n)) for n in range(1, depth + 1)]


DEEP_PATH = b"/".join([b"a"] * DEEP)
DEEP_CASES = [
    # Everything is staged 1000 directories deep, then the archive turns out bad: the
    # staging directory must still go, and the error must still be an OxbakError.
    c(
        "deep-tree-then-device",
        e(*deep_dirs(), FILE(DEEP_PATH + b"/null", typeflag=b"3")),
        UNSAFE,
        (),  # a 2 KB name may fairly be shortened in the message
    ),
    c(
        "deep-tree-then-digest-mismatch",
        e(*deep_dirs(), FILE(DEEP_PATH + b"/victim.txt", VICTIM, index={"digest": blake(b"x")})),
        INTEGRITY,
        ("victim.txt",),
    ),
]

CASES = (
    PATH_CASES
    + SYMLINK_CASES
    + HARDLINK_CASES
    + TYPE_CASES
    + ORDER_CASES
    + ZSTD_CASES
    + TAR_CASES
    + MANIFEST_CASES
    + INDEX_CASES
    + LIMIT_CASES
    + HUGE_CASES
    + DEEP_CASES
)
assert len({case.id for case in CASES}) == len(CASES), "duplicate case ids"


# ============================================================================ sandbox


@dataclass
class Sandbox:
    """``tmp/sandbox/{dest,canary}``: DEST and, beside it, a directory that must not change."""

    top: Path  # tmp_path: everything the test may see, the archive file included

    @property
    def root(self) -> Path:
        return self.top / "sandbox"

    @property
    def dest(self) -> Path:
        return self.root / "dest"

    @property
    def canary(self) -> Path:
        return self.root / "canary"

    @property
    def archive(self) -> Path:
        return self.top / "archive.oxbak"


def make_sandbox(top: Path, *, existing_dest: bool) -> Sandbox:
    """Create the sandbox; with *existing_dest*, DEST holds files, a dir and a symlink."""
    sb = Sandbox(top)
    sb.canary.mkdir(parents=True)
    (sb.canary / "secret").write_bytes(b"canary\n")
    os.chmod(sb.canary / "secret", 0o600)
    if existing_dest:
        sb.dest.mkdir()
        (sb.dest / "keep.txt").write_bytes(b"original content\n")
        (sb.dest / "docs").mkdir()
        (sb.dest / "docs" / "inner.txt").write_bytes(b"inner\n")
        os.symlink("keep.txt", sb.dest / "link")
    return sb


Snapshot = dict[str, tuple[object, ...]]


def walk(top: Path) -> list[tuple[str, str, os.stat_result]]:
    """``(path, path relative to top, lstat)`` of everything under *top*, without recursion
    (3.11's ``os.walk`` and ``shutil.rmtree`` recurse, and trees here may be 1000+ deep)."""
    out: list[tuple[str, str, os.stat_result]] = []
    stack = [str(top)]
    skip = len(str(top)) + 1
    while stack:
        directory = stack.pop()
        for entry in sorted(os.scandir(directory), key=lambda x: x.name):
            st = entry.stat(follow_symlinks=False)
            out.append((entry.path, entry.path[skip:], st))
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    return out


def rm_tree(top: str | Path) -> None:
    """Remove *top* however deep it is (no recursion)."""
    if not os.path.lexists(top):
        return
    if not stat.S_ISDIR(os.lstat(top).st_mode):
        os.unlink(top)
        return
    dirs = [str(top)]
    for path, _, st in walk(Path(top)):
        if stat.S_ISDIR(st.st_mode):
            os.chmod(path, 0o700)
            dirs.append(path)
        else:
            os.unlink(path)
    for path in reversed(dirs):
        os.rmdir(path)


def snapshot(top: Path) -> Snapshot:
    """Every path under *top* (symlinks not followed): type, mode, inode, links, mtime,
    content."""
    out: Snapshot = {}
    for path, rel, st in walk(top):
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            # DEST's parent legitimately changes (staging comes and goes); any other
            # directory's mtime betrays an entry created and removed again.
            mtime = None if rel == "sandbox" else st.st_mtime_ns
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_ino, mtime)
        elif stat.S_ISREG(st.st_mode):
            content = Path(path).read_bytes()
            out[rel] = (
                "file",
                stat.S_IMODE(st.st_mode),
                st.st_ino,
                st.st_nlink,
                st.st_mtime_ns,
                content,
            )
        else:
            out[rel] = ("other", st.st_mode)
    return out


# variant -> (DEST exists beforehand, mode, how the archive is handed over)
VARIANTS: dict[str, tuple[bool, Mode, str]] = {
    "new": (False, "new", "path"),
    "new-stream": (False, "new", "stream"),
    "replace": (True, "replace", "path"),
    "merge": (True, "merge", "file"),
}


def open_source(kind: str, sb: Sandbox) -> tuple[Any, Callable[[], None]]:
    """The archive as unpack receives it: a path, an open file, or an unseekable stream."""
    if kind == "path":
        return sb.archive, lambda: None
    if kind == "file":
        fh: BinaryIO = open(sb.archive, "rb")  # noqa: SIM115
        return fh, fh.close
    stream = io.BufferedReader(Unseekable(sb.archive.read_bytes()))
    return stream, stream.close


def assert_one_line_naming(exc: BaseException, names: Sequence[str]) -> str:
    """The message is one non-empty line and mentions every one of *names*."""
    message = str(exc)
    assert message.strip(), f"{type(exc).__name__} with an empty message"
    assert "\n" not in message and "\r" not in message, f"multi-line message: {message!r}"
    for name in names:
        assert name in message, f"message does not name {name!r}: {message!r}"
    return message


@pytest.fixture(autouse=True)
def _remove_deep_trees(tmp_path: Path) -> Iterator[None]:
    """Remove each test's sandbox without recursion: a tree 1000+ levels deep left by a
    failing engine would otherwise break pytest's own clean-up of old temporary dirs."""
    yield
    rm_tree(tmp_path / "sandbox")


# ============================================================================ refusals


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_unpack_refuses(case: Case, variant: str, tmp_path: Path) -> None:
    existing, mode, source = VARIANTS[variant]
    sb = make_sandbox(tmp_path, existing_dest=existing)
    sb.archive.write_bytes(case.build(sb.root))
    before = snapshot(tmp_path)
    archive, close = open_source(source, sb)
    try:
        with pytest.raises(case.raises) as info:
            oxbak.unpack(archive, sb.dest, mode=mode, **case.kwargs)
    finally:
        close()
    assert list(sb.root.glob(".oxbak-*")) == [], "staging directory left behind"
    if case.not_raises:
        assert not isinstance(info.value, case.not_raises), (
            f"{type(info.value).__name__}: {info.value}"
        )
    names = case.names + (case.names_fn(sb.root) if case.names_fn else ())
    assert_one_line_naming(info.value, names)
    after = snapshot(tmp_path)
    assert after == before, "the filesystem around (or in) DEST changed"
    if not existing:
        assert not os.path.lexists(sb.dest)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_verify_and_readers_report(case: Case, tmp_path: Path) -> None:
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.archive.write_bytes(case.build(sb.root))
    before = snapshot(tmp_path)
    result = oxbak.verify(sb.archive)
    assert snapshot(tmp_path) == before, "verify wrote something"
    if case.verify_fails:
        assert result.ok is False
        assert result.problems, "not ok but no problem listed"
        for problem in result.problems:
            assert isinstance(problem, str) and problem.strip() and "\n" not in problem
    else:
        # Intact archives refused only by unpack's symlink policy: verify must not raise.
        assert isinstance(result.ok, bool)
    # read_manifest and list_entries: a result or a one-line OxbakError, nothing else.
    for read in (oxbak.read_manifest, lambda a: list(oxbak.list_entries(a))):
        try:
            read(sb.archive)
        except OxbakError as exc:
            assert_one_line_naming(exc, ())
    assert snapshot(tmp_path) == before, "a reader wrote something"


def test_verify_refused_stream(tmp_path: Path) -> None:
    """verify takes an unseekable stream too, and still reports (not raises)."""
    data = _cut_at("mid-frame3")(base_archive())
    result = oxbak.verify(io.BufferedReader(Unseekable(data)))
    assert result.ok is False and result.problems


def test_version_4_refused_before_anything_is_written(tmp_path: Path) -> None:
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.archive.write_bytes(arc([FILE(b"f", b"x")], manifest=manifest_bytes(version=4)))
    with pytest.raises(UnsupportedVersionError) as info:
        oxbak.read_manifest(sb.archive)
    assert_one_line_naming(info.value, ("4", "3", "upgrade"))
    with pytest.raises(UnsupportedVersionError):
        oxbak.unpack(sb.archive, sb.dest)
    assert sorted(p.name for p in sb.root.iterdir()) == ["canary"]


def test_read_manifest_refuses_malformed(tmp_path: Path) -> None:
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.archive.write_bytes(arc([], manifest=raw_manifest({"version": b"true"})))
    with pytest.raises(ManifestError) as info:
        oxbak.read_manifest(sb.archive)
    assert not isinstance(info.value, UnsupportedVersionError)


def test_verify_unreadable_path_raises(tmp_path: Path) -> None:
    with pytest.raises(OxbakError):
        oxbak.verify(tmp_path / "does-not-exist.oxbak")


# ---------------------------------------------------------------- huge claims, bounded memory

_FAST_FAIL_SCRIPT = textwrap.dedent(
    """
    import resource, sys, time
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import oxbak
    start = time.monotonic()
    try:
        oxbak.unpack(sys.argv[1], sys.argv[2])
    except oxbak.OxbakError as exc:
        print(type(exc).__name__, round(time.monotonic() - start, 3))
    else:
        print("NO-ERROR")
    """
)


@pytest.mark.parametrize("case", HUGE_CASES, ids=[case.id for case in HUGE_CASES])
def test_huge_claims_fail_fast_in_bounded_memory(case: Case, tmp_path: Path) -> None:
    """A header claiming gigabytes over a few bytes of data: refused quickly, no big buffer.

    The unpack runs in a child whose address space is capped at 1 GiB, well under what
    the archives claim (8 GiB, 1 PiB, 3 GiB declared by the manifest too), so allocating
    the claimed size fails the test with a MemoryError instead of an OxbakError.
    """
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.archive.write_bytes(case.build(sb.root))
    env = dict(os.environ)
    src = str(Path(oxbak.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _FAST_FAIL_SCRIPT, str(sb.archive), str(sb.dest), str(1 << 30)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    name = proc.stdout.split()[0]
    assert name in {cls.__name__ for cls in case.raises}, proc.stdout
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert not os.path.lexists(sb.dest)
    assert list(sb.root.glob(".oxbak-*")) == []


_FLOOD_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import oxbak
    try:
        oxbak.unpack(sys.argv[1], sys.argv[1] + ".dest")
    except oxbak.OxbakError as exc:
        print(type(exc).__name__)
    else:
        print("NO-ERROR")
    result = oxbak.verify(sys.argv[1])
    print(result.ok, len(result.problems))
    """
)

FLOOD_LINES = {
    "extra-records": b'{"path":"ghost","type":"dir"}\n',
    "missing-records": b'{"path":"ghost","type":"file","size":0,"missing":true}\n',
}


@pytest.mark.parametrize("kind", list(FLOOD_LINES))
def test_index_flood_bounded_memory(kind: str, tmp_path: Path) -> None:
    """3 million index records past the header's ``entries`` (a 10 KB archive): refused
    without memory growing with them — the child is capped at 256 MiB of address space,
    which a list of one problem (or flagged record) per extra line overflows."""
    entries = [FILE(b"a", b"x")]
    data = arc(entries, index=index_bytes(entries, extra_lines=[FLOOD_LINES[kind] * 3_000_000]))
    assert len(data) < 64 * 1024
    path = tmp_path / "flood.oxbak"
    path.write_bytes(data)
    env = dict(os.environ)
    src = str(Path(oxbak.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _FLOOD_SCRIPT, str(path), str(256 << 20)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    first, second = proc.stdout.splitlines()
    assert first in {"IntegrityError", "CorruptArchiveError", "LimitExceededError"}
    ok, count = second.split()
    assert ok == "False" and 1 <= int(count) <= 10_000


@pytest.mark.parametrize("mode", ["new", "replace", "merge"])
def test_deep_valid_tree_every_mode(mode: Mode, tmp_path: Path) -> None:
    """1000 nested directories (2 KB paths, well within the format's 4096): restored in
    every mode, with no RecursionError and nothing left beside DEST (the old tree that
    replace swaps out, the staging tree that merge empties)."""
    entries = [*deep_dirs(), FILE(DEEP_PATH + b"/bottom.txt", b"deep\n")]
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.archive.write_bytes(arc(entries))
    if mode != "new":
        oxbak.unpack(sb.archive, sb.dest)
    oxbak.unpack(sb.archive, sb.dest, mode=mode)
    assert (sb.dest / os.fsdecode(DEEP_PATH) / "bottom.txt").read_bytes() == b"deep\n"
    assert sorted(p.name for p in sb.root.iterdir()) == ["canary", "dest"]


# ============================================================================ destinations


def test_new_mode_refuses_non_empty_dest(tmp_path: Path) -> None:
    sb = make_sandbox(tmp_path, existing_dest=True)
    sb.archive.write_bytes(base_archive())
    before = snapshot(tmp_path)
    with pytest.raises(DestinationError) as info:
        oxbak.unpack(sb.archive, sb.dest, mode="new")
    assert_one_line_naming(info.value, ())
    assert snapshot(tmp_path) == before


def test_merge_does_not_write_through_a_symlink_in_dest(tmp_path: Path) -> None:
    """DEST already holds ``docs -> ../canary``; the archive has a directory ``docs``."""
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.dest.mkdir()
    os.symlink("../canary", sb.dest / "docs")
    sb.archive.write_bytes(base_archive())
    canary_before = snapshot(sb.canary)
    try:
        oxbak.unpack(sb.archive, sb.dest, mode="merge")
    except OxbakError as exc:
        assert_one_line_naming(exc, ())
        assert os.readlink(sb.dest / "docs") == "../canary"
    else:
        assert (sb.dest / "docs").is_dir() and not (sb.dest / "docs").is_symlink()
        assert (sb.dest / "docs" / "readme.md").read_bytes() == b"# readme\n" * 50
    assert snapshot(sb.canary) == canary_before
    assert list(sb.root.glob(".oxbak-*")) == []


def test_merge_archive_symlink_checked_against_dest_symlinks(tmp_path: Path) -> None:
    """DEST holds ``up -> ..``; the archive's ``z -> up/x`` would land outside through it."""
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.dest.mkdir()
    os.symlink("..", sb.dest / "up")
    sb.archive.write_bytes(arc([LINK(b"z", b"up/canary")]))
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError) as info:
        oxbak.unpack(sb.archive, sb.dest, mode="merge")
    assert_one_line_naming(info.value, ("z", "up/canary"))
    assert snapshot(tmp_path) == before


def test_replace_when_dest_is_a_symlink(tmp_path: Path) -> None:
    """DEST is a symlink to the canary: replace must never empty or fill the canary."""
    sb = make_sandbox(tmp_path, existing_dest=False)
    os.symlink("canary", sb.dest)
    sb.archive.write_bytes(base_archive())
    canary_before = snapshot(sb.canary)
    try:
        oxbak.unpack(sb.archive, sb.dest, mode="replace")
    except OxbakError as exc:
        assert_one_line_naming(exc, ())
        assert os.readlink(sb.dest) == "canary"
    else:
        assert sb.dest.is_dir() and not sb.dest.is_symlink()
        assert (sb.dest / "a.txt").read_bytes() == b"alpha\n"
    assert snapshot(sb.canary) == canary_before
    assert list(sb.root.glob(".oxbak-*")) == [], "staging or old tree left behind"


def test_new_into_dangling_symlink_dest(tmp_path: Path) -> None:
    """DEST is a dangling symlink pointing outside: nothing may be created at its target."""
    sb = make_sandbox(tmp_path, existing_dest=False)
    os.symlink("elsewhere", sb.dest)
    sb.archive.write_bytes(base_archive())
    try:
        oxbak.unpack(sb.archive, sb.dest, mode="new")
    except OxbakError as exc:
        assert_one_line_naming(exc, ())
        assert os.readlink(sb.dest) == "elsewhere"
    else:
        assert sb.dest.is_dir() and not sb.dest.is_symlink()
    assert not os.path.lexists(sb.root / "elsewhere")
    assert list(sb.root.glob(".oxbak-*")) == []


# ============================================================================ accepted


def restored(dest: Path) -> Snapshot:
    """What a restore produced, comparable with :func:`expected_tree`."""
    out: Snapshot = {}
    for path, rel, st in walk(dest):
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), Path(path).read_bytes())
    return out


def expected_tree(entries: Sequence[Entry]) -> Snapshot:
    """The restore :func:`restored` should see for *entries* (setuid/setgid dropped)."""
    data = {e.path: e.data for e in entries if e.kind == "file"}
    out: Snapshot = {}
    for e in entries:
        rel = os.fsdecode(e.path)
        if e.kind == "dir":
            out[rel] = ("dir", e.effective_mode & 0o1777)
        elif e.kind == "symlink":
            out[rel] = ("symlink", os.fsdecode(e.target))
        elif e.kind == "file":
            out[rel] = ("file", e.effective_mode & 0o1777, e.data)
        else:
            target = next(t for t in entries if t.path == e.target)
            out[rel] = ("file", target.effective_mode & 0o1777, data[e.target])
    return out


RICH = tree_order(
    [
        *base_entries(),
        Entry.file(b"empty", b""),
        Entry.file("ünïcödé.txt".encode(), b"utf-8 name\n"),
        Entry.file(b"raw-\xff\xfe-name", b"not utf-8\n"),
        Entry.symlink(b"raw-link", b"raw-\xff\xfe-name"),
        Entry.file(b"back\\slash", b"backslash\n"),
        Entry.dir(b"deep"),
        Entry.dir(b"deep/" + b"d" * 120),
        Entry.file(b"deep/" + b"d" * 120 + b"/" + b"f" * 200, b"long name\n"),
        Entry.symlink(b"deep/a-up", b"../docs/readme.md"),
        Entry.symlink(b"deep/a-self", b"."),
        Entry.file(b"exec.sh", b"#!/bin/sh\n", mode=0o755),
        Entry.file(b"private", b"secret\n", mode=0o600),
        Entry.dir(b"sticky", mode=0o1777),
        Entry.file(b"nanotime", b"t").but(mtime_ns=1_700_000_000_123_456_789),
    ]
)


@pytest.mark.parametrize("source", ["path", "file", "stream"])
def test_valid_archive_restores(source: str, tmp_path: Path) -> None:
    """Control: the builders' valid archive is accepted, so each refusal above is real."""
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.archive.write_bytes(arc(RICH))
    archive, close = open_source(source, sb)
    try:
        oxbak.unpack(archive, sb.dest)
    finally:
        close()
    assert restored(sb.dest) == expected_tree(RICH)
    assert (sb.dest / "docs" / "zz-hard").stat().st_ino == (sb.dest / "a.txt").stat().st_ino
    assert (sb.dest / "nanotime").stat().st_mtime_ns == 1_700_000_000_123_456_789
    assert (sb.dest / "a.txt").stat().st_mtime_ns == 1_700_000_000 * 10**9
    assert list(sb.root.glob(".oxbak-*")) == []


@pytest.mark.parametrize("mode", ["replace", "merge"])
def test_valid_archive_into_existing_dest(mode: Mode, tmp_path: Path) -> None:
    sb = make_sandbox(tmp_path, existing_dest=True)
    sb.archive.write_bytes(base_archive())
    oxbak.unpack(sb.archive, sb.dest, mode=mode)
    got = restored(sb.dest)
    for rel, value in expected_tree(base_entries()).items():
        assert got[rel] == value
    assert ("keep.txt" in got) == (mode == "merge")
    assert list(sb.root.glob(".oxbak-*")) == []


def test_valid_archive_verifies(tmp_path: Path) -> None:
    path = tmp_path / "ok.oxbak"
    path.write_bytes(arc(RICH))
    result = oxbak.verify(path)
    assert result.ok is True, result.problems
    assert result.problems == []


def test_read_manifest_and_list_entries(tmp_path: Path) -> None:
    path = tmp_path / "ok.oxbak"
    path.write_bytes(arc(RICH, manifest=manifest_for(RICH, labels={"host": "ci"})))
    manifest = oxbak.read_manifest(path)
    assert manifest.version == 1 and manifest.format == "oxbak"
    assert manifest.labels == {"host": "ci"}
    listed = list(oxbak.list_entries(path))
    assert len(listed) in (len(RICH), len(RICH) + 1)  # with or without the root


def test_sections_in_directory_entry_order(tmp_path: Path) -> None:
    """FORMAT.md §3: sections are "sorted by the entry order" — of the directories.

    The root (".") is the first entry, so its section comes first even though the root's
    files come after subdirectory ``a``'s file in the stream.
    """
    entries = [Entry.dir(b"a"), Entry.file(b"a/f", b"1"), Entry.file(b"z", b"2")]
    data = manifest_for(entries)
    assert b'"sections":[{"entry_count":1,"name":"."},{"entry_count":1,"name":"a"}]' in data
    path = tmp_path / "ok.oxbak"
    path.write_bytes(arc(entries))
    result = oxbak.verify(path)
    assert result.ok is True, result.problems


def test_setuid_setgid_dropped_sticky_kept(tmp_path: Path) -> None:
    entries = tree_order(
        [
            Entry.file(b"setgid", b"g", mode=0o2755),
            Entry.file(b"setuid", b"u", mode=0o4755),
            Entry.file(b"setuid-all", b"a", mode=0o6777),
            Entry.dir(b"setgid-dir", mode=0o2775),
            Entry.dir(b"sticky-dir", mode=0o1777),
        ]
    )
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.archive.write_bytes(arc(entries))
    oxbak.unpack(sb.archive, sb.dest)
    modes = {name: stat.S_IMODE(os.lstat(sb.dest / name).st_mode) for name in os.listdir(sb.dest)}
    assert modes == {
        "setgid": 0o755,
        "setuid": 0o755,
        "setuid-all": 0o777,
        "setgid-dir": 0o775,
        "sticky-dir": 0o1777,
    }
    assert oxbak.verify(sb.archive).ok


@pytest.mark.parametrize("same_owner", [False, True], ids=["default", "same-owner"])
def test_setuid_setgid_dropped_with_owner(same_owner: bool, tmp_path: Path) -> None:
    """Restoring the owner (root only) must not bring setuid/setgid back."""
    entries = [
        Entry.dir(b"setgid-dir", mode=0o2775).but(uid=1000, gid=1000),
        Entry.file(b"setuid", b"u", mode=0o4755).but(uid=1000, gid=1000),
    ]
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.archive.write_bytes(arc(entries))
    oxbak.unpack(sb.archive, sb.dest, same_owner=same_owner)
    assert stat.S_IMODE(os.lstat(sb.dest / "setuid").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(sb.dest / "setgid-dir").st_mode) == 0o775


EXTREME = {
    "mtime-1e19-seconds": (Entry.file(b"f", b"x").but(mtime_ns=10**19 * 10**9), False),
    "mtime-20-digits": (Entry.file(b"f", b"x", pax=[(b"mtime", b"99999999999999999999.5")]), False),
    "mtime-max-time_t": (Entry.file(b"f", b"x", pax=[(b"mtime", b"%d" % (2**63 - 1))]), False),
    "mtime-below-min-time_t": (
        Entry.file(b"f", b"x", pax=[(b"mtime", b"%d" % (-(2**63) - 1))]),
        False,
    ),
    "mtime-very-negative": (
        Entry.file(b"f", b"x", pax=[(b"mtime", b"-99999999999999999999")]),
        False,
    ),
    "dir-mtime-1e19": (Entry.dir(b"d").but(mtime_ns=10**19 * 10**9), False),
    "symlink-mtime-1e19": (Entry.symlink(b"l", b"x").but(mtime_ns=10**19 * 10**9), False),
    "uid-2**40": (Entry.file(b"f", b"x").but(uid=2**40), True),
    "uid-20-digits": (Entry.file(b"f", b"x", pax=[(b"uid", b"99999999999999999999")]), True),
    "gid-2**32": (Entry.file(b"f", b"x").but(gid=2**32), True),
    "dir-uid-2**40": (Entry.dir(b"d").but(uid=2**40), True),
}


@pytest.mark.parametrize("name", list(EXTREME))
def test_out_of_range_metadata_is_an_oxbak_error(name: str, tmp_path: Path) -> None:
    """Times and owners the platform cannot represent: an OxbakError (or a restore), never
    a raw OverflowError/ValueError escaping ``unpack``; all or nothing either way."""
    entry, same_owner = EXTREME[name]
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.archive.write_bytes(arc([entry]))
    try:
        oxbak.unpack(sb.archive, sb.dest, same_owner=same_owner)
    except OxbakError as exc:
        assert_one_line_naming(exc, ())
        assert not os.path.lexists(sb.dest)
    except Exception as exc:  # noqa: BLE001 - the point of the test
        pytest.fail(f"unpack leaked {type(exc).__name__}: {exc}")
    else:
        assert os.path.lexists(sb.dest / os.fsdecode(entry.path))
    assert list(sb.root.glob(".oxbak-*")) == []
    assert isinstance(oxbak.verify(sb.archive).ok, bool)


def test_negative_fractional_mtime_restored(tmp_path: Path) -> None:
    """FORMAT.md §2's own example: pax mtime ``-1.25``."""
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.archive.write_bytes(arc([Entry.file(b"f", b"x", pax=[(b"mtime", b"-1.25")])]))
    oxbak.unpack(sb.archive, sb.dest)
    assert (sb.dest / "f").stat().st_mtime_ns == -1_250_000_000


def test_external_symlinks_allowed_restored_verbatim(tmp_path: Path) -> None:
    entries = [
        Entry.symlink(b"abs", b"/etc/passwd"),
        Entry.symlink(b"esc", b"../canary"),
        Entry.dir(b"sub"),
        Entry.symlink(b"sub/s", b".."),
        Entry.symlink(b"sub/t", b"s/../x"),
        Entry.symlink(b"sub/up", b"../../x"),
    ]
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.archive.write_bytes(arc(entries))
    canary_before = snapshot(sb.canary)
    oxbak.unpack(sb.archive, sb.dest, allow_external_symlinks=True)
    assert os.readlink(sb.dest / "abs") == "/etc/passwd"
    assert os.readlink(sb.dest / "esc") == "../canary"
    assert os.readlink(sb.dest / "sub" / "s") == ".."
    assert os.readlink(sb.dest / "sub" / "t") == "s/../x"
    assert os.readlink(sb.dest / "sub" / "up") == "../../x"
    assert snapshot(sb.canary) == canary_before
    assert not os.path.lexists(sb.root / "x")
    assert sorted(p.name for p in sb.root.iterdir()) == ["canary", "dest"]


def test_internal_symlinks_accepted(tmp_path: Path) -> None:
    """Links that look odd but stay inside: to the root, through other links, dangling."""
    entries = [
        Entry.file(b"f", b"x"),
        Entry.symlink(b"root", b"."),
        Entry.dir(b"sub"),
        Entry.symlink(b"sub/s", b".."),
        Entry.symlink(b"sub/t", b"s/f"),
        Entry.symlink(b"sub/u", b"s/sub/s/sub/t"),
        Entry.symlink(b"sub/v", b"../sub/../f"),
        Entry.symlink(b"zdangling", b"nothere/at/all"),
    ]
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.archive.write_bytes(arc(entries))
    oxbak.unpack(sb.archive, sb.dest)
    assert restored(sb.dest) == expected_tree(entries)


def test_hdrcharset_binary_accepted_and_ignored(tmp_path: Path) -> None:
    """FORMAT.md §2: readers accept POSIX's ``hdrcharset=BINARY`` and ignore it."""
    entries = [
        Entry.symlink(b"raw-link", b"raw-\xff-name", hdrcharset=True),
        Entry.file(b"raw-\xff-name", b"x", hdrcharset=True),
    ]
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.archive.write_bytes(arc(entries))
    oxbak.unpack(sb.archive, sb.dest)
    assert sorted(os.listdir(os.fsencode(sb.dest))) == [b"raw-link", b"raw-\xff-name"]
    assert os.readlink(os.fsencode(sb.dest / "raw-link")) == b"raw-\xff-name"


def test_accepted_pax_keys(tmp_path: Path) -> None:
    """FORMAT.md lets atime, ctime, comment, SCHILY.* and LIBARCHIVE.* through."""
    entries = [
        Entry.file(
            b"f",
            b"data",
            pax=[
                (b"atime", b"1700000000.5"),
                (b"ctime", b"1700000001"),
                (b"comment", b"hello"),
                (b"SCHILY.xattr.user.test", b"v"),
                (b"LIBARCHIVE.creationtime", b"1700000000"),
            ],
        )
    ]
    sb = make_sandbox(tmp_path, existing_dest=False)
    sb.archive.write_bytes(arc(entries))
    oxbak.unpack(sb.archive, sb.dest)
    assert (sb.dest / "f").read_bytes() == b"data"


def test_window_at_the_limit_accepted(tmp_path: Path) -> None:
    """A frame declaring exactly MAX_WINDOW_SIZE (32 MiB) is fine."""
    path = tmp_path / "ok.oxbak"
    path.write_bytes(
        oxbak_file(build_tar(base_entries()), rest=lambda d: frame_declaring_window(d, 25))
    )
    assert oxbak.verify(path).ok


def test_manifest_unknown_fields_and_padding_accepted(tmp_path: Path) -> None:
    entries = base_entries()
    data = manifest_for(entries, pad_to=4096, future_field={"nested": [1, 2]}, another="x")
    path = tmp_path / "ok.oxbak"
    path.write_bytes(arc(entries, manifest=data))
    result = oxbak.verify(path)
    assert result.ok, result.problems
    sb = make_sandbox(tmp_path, existing_dest=False)
    oxbak.unpack(path, sb.dest)


def test_streamed_manifest_partial_null_accepted(tmp_path: Path) -> None:
    entries = base_entries()
    path = tmp_path / "ok.oxbak"
    path.write_bytes(arc(entries, manifest=manifest_for(entries, partial=None)))
    assert oxbak.verify(path).ok


def test_no_reserve_frame_accepted(tmp_path: Path) -> None:
    """zstd skips skippable frames: an archive without the reserve is still readable."""
    path = tmp_path / "ok.oxbak"
    path.write_bytes(oxbak_file(build_tar(base_entries()), reserve=None))
    assert oxbak.verify(path).ok


# ============================================================================ builders


def test_builders_archive_is_read_by_tarfile() -> None:
    """The valid archive is plain pax: Python's tarfile reads it without a warning."""
    tar = decompress_all(arc(RICH))
    assert tar == build_tar(RICH)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:", errorlevel=2) as tf:
            members = tf.getmembers()
            names = [m.name for m in members]
            assert names[:2] == ["manifest.json", "tree"]
            assert names[-1] == "index.jsonl"
            by_name = {m.name: m for m in members}
            for entry in RICH:
                m = by_name["tree/" + os.fsdecode(entry.path)]
                if entry.kind == "file":
                    assert m.isreg()
                    got = tf.extractfile(m)
                    assert got is not None and got.read() == entry.data
                elif entry.kind == "dir":
                    assert m.isdir()
                elif entry.kind == "symlink":
                    assert m.issym() and m.linkname == os.fsdecode(entry.target)
                else:
                    assert m.islnk() and m.linkname == "tree/" + os.fsdecode(entry.target)


@pytest.mark.tools("tar", "zstd")  # tar --zstd runs the zstd program
def test_builders_archive_is_read_by_gnu_tar(tmp_path: Path) -> None:
    """GNU tar lists and extracts the valid archive, raw non-UTF-8 names included, with
    no warning, and ``zstd -dc`` (which skips the reserve frame) yields the tar stream."""
    tree = RICH
    path = tmp_path / "ok.oxbak"
    path.write_bytes(arc(tree))
    listing = subprocess.run(["tar", "--zstd", "-tvf", str(path)], capture_output=True, text=True)
    assert listing.returncode == 0 and listing.stderr == "", listing.stderr
    out = tmp_path / "out"
    out.mkdir()
    extract = subprocess.run(
        ["tar", "--zstd", "-xf", str(path), "-C", str(out)], capture_output=True, text=True
    )
    assert extract.returncode == 0 and extract.stderr == "", extract.stderr
    assert restored(out / "tree") == expected_tree(tree)
    assert (out / "manifest.json").read_bytes() == manifest_for(tree)
    zstd = shutil.which("zstd")
    if zstd:
        piped = subprocess.run([zstd, "-dc", str(path)], capture_output=True)
        assert piped.returncode == 0 and piped.stdout == build_tar(tree)


def test_builders_frame_layout() -> None:
    """frame 1 = the manifest member, then the reserve, then frame 3 = the rest."""
    tar = build_tar(base_entries())
    data = oxbak_file(tar)
    f1, f2, f3 = frames(data)
    assert f2.skippable and not f1.skippable and not f3.skippable and f3.end == len(data)
    assert decompress_all(data[: f1.end]).startswith(
        member(b"manifest.json", manifest_for(base_entries()))[:512]
    )
    assert decompress_all(data) == tar
    assert len(f3.blocks) >= 2
    declared = frame_declaring_window(b"x" * 100, 31)
    assert declared[4] & 0x20 == 0 and declared[5] == (31 - 10) << 3
    huge = frame_declaring_content_size(b"y" * 100_000, 1 << 40)
    assert huge[4] >> 6 == 3 and int.from_bytes(huge[5:13], "little") == 1 << 40
