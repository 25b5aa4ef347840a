"""Build the hostile-archive corpus: one crafted ``.oxbak`` file per case, plus expected.json.

Every archive is made by hand with ``tests/builders.py`` (never with oxbak's writer); many
cases are the ``CASES`` of ``tests/test_hostile.py``, imported by id, and the rest are
built here. ``expected.json`` maps each file name to what the real command line must do
with it::

    {"traversal-dotdot.oxbak": {
        "about": "...",
        "args": [],                                   # extra flags for `oxbak unpack`
        "unpack": {"exit": 1, "error": "../escaped"},  # substring of the one error line
        "verify": {"exit": 1, "error": "../escaped"},
        "restored": null}}                            # or the tree a successful unpack makes

``restored`` (only for exit 0) maps each path relative to DEST to ``["file", mode,
sha256]``, ``["dir", mode]`` or ``["symlink", target]``.

The archives are deterministic for a given *sandbox*: the directory that will hold DEST
(``<sandbox>/dest``) and the canary (``<sandbox>/canary``) when the corpus is run. Cases
with absolute names point into it, so that an escape lands where the test looks.

Usage: ``python tests/corpus/build.py OUTDIR [--sandbox DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TESTS = Path(__file__).resolve().parent.parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

import zstandard  # noqa: E402

import test_hostile as hostile  # noqa: E402
from builders import (  # noqa: E402
    END,
    RECORD,
    Entry,
    blake,
    build_tar,
    first_member_end,
    frame,
    index_bytes,
    manifest_bytes,
    manifest_for,
    member,
    oxbak_file,
    skippable,
    totals_for,
    tree_order,
)

__all__ = ["CASES", "CorpusCase", "build", "expected_for", "main"]

Text = str | Callable[[Path], str]
Tree = dict[str, list[Any]]

DIR = Entry.dir
FILE = Entry.file
LINK = Entry.symlink
HARD = Entry.hardlink
ALLOW = ("--allow-external-symlinks",)

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40


@dataclass(frozen=True)
class CorpusCase:
    """One corpus file and what ``oxbak unpack`` / ``oxbak verify`` must do with it."""

    name: str
    build: Callable[[Path], bytes]  # sandbox directory -> archive bytes
    about: str
    unpack_exit: int = 1
    unpack_error: Text | None = None  # a substring of the one `oxbak: error:` line
    verify_exit: int = 1
    verify_error: Text | None = None  # default: unpack_error
    args: tuple[str, ...] = ()
    restored: Callable[[], Tree] | None = None  # the tree a successful unpack must make
    big: bool = False  # slow to build (a large tar stream): skipped by the quick rebuild check

    @property
    def file_name(self) -> str:
        return f"{self.name}.oxbak"


# ============================================================================ helpers


def arc(entries: Sequence[Entry | bytes] = (), **kw: Any) -> bytes:
    """The whole .oxbak file of *entries* (``build_tar`` keywords pass through)."""
    return oxbak_file(build_tar(list(entries), **kw))


def of(*entries: Entry | bytes, **kw: Any) -> Callable[[Path], bytes]:
    """A builder for the archive of *entries*, in the order given."""
    return lambda _: arc(entries, **kw)


def declared_bytes(entries: Sequence[Entry | bytes], nbytes: int, **kw: Any) -> bytes:
    """The archive of *entries* whose manifest declares *nbytes* bytes of files."""
    totals = {**totals_for(entries), "bytes": nbytes}
    return arc(entries, manifest=manifest_for(entries, totals=totals), **kw)


def tree_of(entries: Iterable[Entry]) -> Tree:
    """What a restore of *entries* must produce (setuid/setgid dropped), in JSON form."""
    entries = list(entries)
    data = {e.path: e.data for e in entries if e.kind == "file"}
    out: Tree = {}
    for e in entries:
        rel = e.path.decode()
        if e.kind == "dir":
            out[rel] = ["dir", e.effective_mode & 0o1777]
        elif e.kind == "symlink":
            out[rel] = ["symlink", e.target.decode()]
        else:
            source = e if e.kind == "file" else next(t for t in entries if t.path == e.target)
            content = data[source.path]
            out[rel] = ["file", source.effective_mode & 0o1777, hashlib.sha256(content).hexdigest()]
    return out


def zeros_frame(size: int, *, prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    """One checksummed zstd frame of *prefix*, *size* zero bytes, *suffix*: streamed, so
    1 GiB of zeros costs 32 KiB of output and no 1 GiB buffer (zstd's densest encoding is
    an RLE block, 4 bytes per 128 KiB: the format caps the ratio near 32,768:1)."""
    cobj = zstandard.ZstdCompressor(
        level=3, write_checksum=True, write_content_size=False
    ).compressobj()
    out = [cobj.compress(prefix)]
    chunk = bytes(MiB)
    left = size
    while left:
        n = min(left, len(chunk))
        out.append(cobj.compress(chunk[:n]))
        left -= n
    out.append(cobj.compress(suffix))
    out.append(cobj.flush())
    return b"".join(out)


def head_and_reserve(tar: bytes) -> bytes:
    """Frame 1 (the manifest member) and the writer's reserve frame."""
    return frame(tar[: first_member_end(tar)]) + skippable()


# ============================================================================ new cases


def _manifest_100mb(real: bool) -> Callable[[Path], bytes]:
    """A 100 MiB manifest.json: claimed by the header over a small JSON, or really there
    (JSON padded with 100 MiB of spaces, which compress to a few KB)."""

    def build(_: Path) -> bytes:
        entries = [FILE(b"f", b"x")]
        good = manifest_for(entries)
        size = 100 * MiB
        if not real:
            head = member(b"manifest.json", good, size=size)
            return arc(entries, manifest_member=head)
        tar = build_tar(entries, manifest=good.ljust(size, b" "))
        return oxbak_file(tar)

    return build


def _nesting(depth: int) -> Callable[[Path], bytes]:
    """*depth* nested directories ``a/a/…`` and a file at the bottom: the path passes
    MAX_PATH_BYTES (4096) at level 2049. The tar stream is ~100 MB of pax names, all
    declared in the manifest and listed in a correct index."""

    def build(_: Path) -> bytes:
        entries: list[Entry] = hostile.deep_dirs(depth)
        entries.append(FILE(b"/".join([b"a"] * depth) + b"/bottom", b"deep\n"))
        return arc(entries)

    return build


def _name_1mb_pax(_: Path) -> bytes:
    name = b"tree/" + b"n" * MiB
    return arc([FILE(b"n", b"x", pax=[(b"path", name)])])


def _name_1mb_gnu(_: Path) -> bytes:
    longname = member(b"././@LongLink", b"tree/" + b"L" * MiB + b"\0", typeflag=b"L")
    return arc([longname, FILE(b"short", b"x")])


def _zeros_archive(entries: Sequence[Entry], manifest: bytes, index: bytes) -> bytes:
    """*manifest*, the root, *entries*, then a member ``tree/zeros`` holding 1 GiB of zeros,
    then *index* and the end marker: 1 GiB of tar in ~32 KiB of zstd."""
    head = build_tar(entries, manifest=manifest, index_member=b"", end=b"", pad_record=False)
    zero_head = Entry("file", b"zeros", size=GiB).to_member()  # the header alone
    tail = member(b"index.jsonl", index) + END
    tail += bytes(-(len(head) + len(zero_head) + GiB + len(tail)) % RECORD)
    cut = first_member_end(head)
    return head_and_reserve(head) + zeros_frame(GiB, prefix=head[cut:] + zero_head, suffix=tail)


def _bomb_member(_: Path) -> bytes:
    """A member holding 1 GiB of zeros; the manifest declares its 2 files but 10 bytes."""
    entries = [FILE(b"a", b"0123456789")]
    both = [*entries, FILE(b"zeros")]
    manifest = manifest_for(both, totals={**totals_for(both), "bytes": 10})
    return _zeros_archive(entries, manifest, index_bytes(both))


def _bomb_declared(_: Path) -> bytes:
    """1 GiB of zeros that the manifest and index declare honestly, but with a wrong
    digest: the whole expansion is streamed to staging, then refused and removed."""
    victim = FILE(b"zeros", index={"size": GiB, "digest": blake(b"not the zeros")})
    totals = {**totals_for([victim]), "bytes": GiB}
    manifest = manifest_for([victim], totals=totals)
    return _zeros_archive([], manifest, index_bytes([victim], totals=totals))


def _bomb_after_end(_: Path) -> bytes:
    """A valid small archive whose tar stream goes on with 1 GiB of zeros after the end
    marker (FORMAT.md allows zeros only up to the next 10240-byte record)."""
    tar = build_tar([FILE(b"a", b"x")], pad_record=False)
    return head_and_reserve(tar) + zeros_frame(GiB, prefix=tar[first_member_end(tar) :])


def _huge_1tb(how: str) -> Callable[[Path], bytes]:
    """A member claiming 1 TiB over 4 bytes of data: in a pax ``size`` record, in the
    ustar header (GNU base-256), or also declared by the manifest."""

    def build(_: Path) -> bytes:
        if how == "pax":
            return declared_bytes([FILE(b"huge", b"tiny", pax=[(b"size", b"%d" % TiB)])], 10)
        if how == "base256":
            field = b"\x80" + TiB.to_bytes(11, "big")
            return declared_bytes([member(b"tree/huge", b"tiny", size=field)], 10)
        if how == "pax-1e30":
            return declared_bytes([FILE(b"huge", b"tiny", pax=[(b"size", b"1" + b"0" * 30)])], 10)
        victim = FILE(b"huge", b"tiny", pax=[(b"size", b"%d" % TiB)])
        return declared_bytes([victim], TiB)

    return build


def _frames_with_garbage(_: Path) -> bytes:
    """The tree split over two data frames with 8 bytes of garbage between them."""
    tar = build_tar(hostile.base_entries())
    cut = first_member_end(tar)
    mid = cut + (len(tar) - cut) // 2
    rest = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=False)
    return (
        frame(tar[:cut])
        + skippable()
        + rest.compress(tar[cut:mid])
        + b"GARBAGE!"
        + rest.compress(tar[mid:])
    )


def _skippable_claims_4gib(_: Path) -> bytes:
    """The reserve frame's size field says 4 GiB - 1: everything after it is 'skipped'
    and the file ends inside the skippable frame."""
    tar = build_tar(hostile.base_entries())
    cut = first_member_end(tar)
    reserve = bytearray(skippable())
    reserve[4:8] = (0xFFFFFFFF).to_bytes(4, "little")
    return frame(tar[:cut]) + bytes(reserve) + frame(tar[cut:], content_size=False)


MODES = tree_order(
    [
        FILE(b"setuid", b"u\n", mode=0o4755),
        FILE(b"setgid", b"g\n", mode=0o2755),
        FILE(b"setuid-setgid-all", b"a\n", mode=0o6777),
        FILE(b"world-writable", b"w\n", mode=0o666),
        FILE(b"private", b"p\n", mode=0o600),
        DIR(b"setgid-dir", mode=0o2775),
        FILE(b"setgid-dir/inside", b"i\n", mode=0o4711),
        DIR(b"sticky-dir", mode=0o1777),
        DIR(b"world-writable-dir", mode=0o777),
        DIR(b"sticky-setgid-dir", mode=0o3777),
    ]
)

MANIFEST_IN_TREE = tree_order(
    [
        FILE(b"manifest.json", b'{"format":"oxbak","version":99,"totals":"lies"}\n'),
        FILE(b"index.jsonl", b'{"format":"oxbak-index","version":99}\n'),
        DIR(b"sub"),
        FILE(b"sub/manifest.json", manifest_bytes(version=2)),
        DIR(b"tree"),
        FILE(b"tree/manifest.json", b"[]"),
    ]
)

LINK_4095 = b"d/" * 2047 + b"d"  # 4095 bytes: the longest target Linux can store
LINK_4096 = b"d/" * 2047 + b"dd"  # 4096 bytes: PATH_MAX, one more than symlink(2) takes
assert len(LINK_4095) == 4095 and len(LINK_4096) == 4096

INTERNAL_LINKS = [LINK(b"self", b"."), FILE(b"target", b"t\n"), LINK(b"to-target", b"./target")]
ALLOWED_EXTERNAL = [LINK(b"esc", b"../canary"), LINK(b"etc", b"/etc")]
SKIP_TREE = hostile.base_entries()

NEW_CASES = [
    # ------------------------------------------------------------- symlinks, write-through
    CorpusCase(
        "symlink-dot-write-through",
        of(LINK(b"self", b"."), FILE(b"self/planted", b"evil")),
        "a symlink to '.' then a file under it",
        unpack_error="self/planted",
    ),
    CorpusCase(
        "symlink-dotdot-write-through",
        of(LINK(b"up", b".."), FILE(b"up/planted", b"evil")),
        "a symlink to '..' then a file under it (external links allowed)",
        unpack_error="up/planted",
        args=ALLOW,
    ),
    CorpusCase(
        "symlink-dotdot-nested-write-through",
        of(DIR(b"d"), LINK(b"d/up", b"../.."), FILE(b"d/up/canary/planted", b"evil")),
        "d/up -> ../.. (DEST's parent) then d/up/canary/planted (external links allowed)",
        unpack_error="d/up/canary/planted",
        args=ALLOW,
    ),
    CorpusCase(
        "symlink-target-4096",
        of(LINK(b"long-link", LINK_4096)),
        "a symlink whose target is exactly 4096 bytes (PATH_MAX): no Linux symlink holds it",
        unpack_error="long-link",
    ),
    CorpusCase(
        "symlink-target-4095",
        of(LINK(b"long-link", LINK_4095)),
        "control: a 4095-byte target (the longest Linux stores) restores",
        unpack_exit=0,
        verify_exit=0,
        restored=lambda: tree_of([LINK(b"long-link", LINK_4095)]),
    ),
    CorpusCase(
        "symlink-to-dot-ok",
        of(*INTERNAL_LINKS),
        "control: links to '.' and inside DEST restore",
        unpack_exit=0,
        verify_exit=0,
        restored=lambda: tree_of(INTERNAL_LINKS),
    ),
    CorpusCase(
        "external-symlink-allowed",
        of(*ALLOWED_EXTERNAL),
        "control: links leading outside restore verbatim with --allow-external-symlinks",
        unpack_exit=0,
        verify_exit=0,
        args=ALLOW,
        restored=lambda: tree_of(ALLOWED_EXTERNAL),
    ),
    # ------------------------------------------------------------- replacing entries
    CorpusCase(
        "dir-then-file-same-name",
        of(DIR(b"dup"), FILE(b"dup", b"evil")),
        "a directory, then a file of the same name",
        unpack_error="dup",
    ),
    CorpusCase(
        "dir-with-child-then-file-same-name",
        of(DIR(b"d"), FILE(b"d/x", b"1"), FILE(b"d", b"evil")),
        "a directory with a file in it, then a file replacing the directory",
        unpack_error="tree/d",
    ),
    # ------------------------------------------------------------- accepted oddities
    CorpusCase(
        "modes-setuid-setgid-sticky-world-writable",
        of(*MODES),
        "setuid/setgid/sticky/world-writable modes: restored with setuid and setgid dropped",
        unpack_exit=0,
        verify_exit=0,
        restored=lambda: tree_of(MODES),
    ),
    CorpusCase(
        "manifest-json-in-tree",
        of(*MANIFEST_IN_TREE),
        "files named manifest.json / index.jsonl and a directory named tree inside the tree",
        unpack_exit=0,
        verify_exit=0,
        restored=lambda: tree_of(MANIFEST_IN_TREE),
    ),
    # ------------------------------------------------------------- sizes and depths
    CorpusCase(
        "nesting-10000",
        _nesting(10_000),
        "10,000 nested directories: refused, naming the member, where the path no longer "
        "fits (level 2049 by the format's 4096 bytes, earlier with the staging directory)",
        unpack_error="a/a/a/a/a/a/a/a/a/a/a/a",
        verify_error="limit 4096",
        big=True,
    ),
    CorpusCase(
        "name-1MB-pax",
        _name_1mb_pax,
        "a 1 MiB member name in a pax path record",
        unpack_error="limit 65536",
    ),
    CorpusCase(
        "name-1MB-gnu-longname",
        _name_1mb_gnu,
        "a 1 MiB member name in a GNU long-name member",
        unpack_error="GNU long name",
    ),
    CorpusCase(
        "manifest-100MB-claimed",
        _manifest_100mb(real=False),
        "manifest.json's header claims 100 MiB over a small JSON",
        unpack_error="limit 16777216",
    ),
    CorpusCase(
        "manifest-100MB-real",
        _manifest_100mb(real=True),
        "manifest.json really is 100 MiB (JSON padded with spaces, ~3 KB compressed)",
        unpack_error="limit 16777216",
        big=True,
    ),
    CorpusCase(
        "zstd-bomb-1GiB-member",
        _bomb_member,
        "a member holding 1 GiB of zeros (32 KiB of zstd), the manifest declaring 10 bytes",
        unpack_error="beyond the 10 bytes",
        big=True,
    ),
    CorpusCase(
        "zstd-bomb-1GiB-after-end",
        _bomb_after_end,
        "1 GiB of zeros after the tar end marker, in the same frame",
        unpack_error="follows the tar end-of-archive marker",
        big=True,
    ),
    CorpusCase(
        "zstd-bomb-1GiB-declared",
        _bomb_declared,
        "1 GiB of zeros the manifest declares, with a wrong digest: streamed, then refused",
        unpack_error="zeros",
        big=True,
    ),
    CorpusCase(
        "huge-size-1TB-pax",
        _huge_1tb("pax"),
        "a pax size record claiming 1 TiB over 4 bytes; the manifest declares 10",
        unpack_error="1099511627776 bytes",
    ),
    CorpusCase(
        "huge-size-1TB-base256",
        _huge_1tb("base256"),
        "a ustar header claiming 1 TiB (GNU base-256 size) over 4 bytes",
        unpack_error="size field is not octal",
    ),
    CorpusCase(
        "huge-size-1TB-declared",
        _huge_1tb("declared"),
        "a 1 TiB member the manifest declares too: refused for room before extracting",
        unpack_error="not enough space",
        verify_error="truncated",
    ),
    CorpusCase(
        "huge-size-pax-1e30",
        _huge_1tb("pax-1e30"),
        "a pax size record of 10**30",
        unpack_error="pax size",
    ),
    # ------------------------------------------------------------- framing
    CorpusCase(
        "frames-garbage-between",
        _frames_with_garbage,
        "the tree in two zstd frames with 8 bytes of garbage between them",
        unpack_error="garbage",
    ),
    CorpusCase(
        "skippable-reserve-64KiB",
        lambda _: oxbak_file(build_tar(SKIP_TREE), reserve=64 * 1024),
        "control: a 64 KiB manifest reserve (writers may grow it, FORMAT.md §1)",
        unpack_exit=0,
        verify_exit=0,
        restored=lambda: tree_of(SKIP_TREE),
    ),
    CorpusCase(
        "skippable-no-reserve",
        lambda _: oxbak_file(build_tar(SKIP_TREE), reserve=None),
        "control: no reserve frame at all (zstd readers skip it anyway)",
        unpack_exit=0,
        verify_exit=0,
        restored=lambda: tree_of(SKIP_TREE),
    ),
    CorpusCase(
        "skippable-claims-4GiB",
        _skippable_claims_4gib,
        "a skippable frame whose size field claims 4 GiB, swallowing the rest of the file",
        unpack_error="truncated",
    ),
]


# ============================================================================ cases of test_hostile

#: test_hostile case id -> corpus file name (when the id does not make a good file name).
_RENAMED = {"version-2**64": "version-2pow64"}

#: test_hostile cases run through the command line, with the substring their error line
#: must hold when the case names no member (``None``: the case's first name).
HOSTILE: dict[str, str | None] = {
    # paths
    "traversal-dotdot": None,
    "traversal-pax-path": None,
    "traversal-pax-path-long": None,
    "traversal-ustar-prefix": None,
    "absolute-name": None,
    "absolute-pax-path": None,
    "nul-in-pax-path": "NUL",
    "empty-name": "empty name",
    "outside-tree": None,
    "path-too-long": "limit 4096",
    # symlinks
    "symlink-write-through-default": None,
    "symlink-write-through": None,
    "symlink-write-through-chain": None,
    "symlink-then-dir-same-name": None,
    "symlink-internal-write-through": None,
    "symlink-nul-target": None,
    "symlink-target-too-long": None,
    "external-symlink-relative": "points outside",
    "external-symlink-via-archive-symlink": "points outside",
    # hardlinks
    "hardlink-absolute": None,
    "hardlink-dotdot": "tree/../canary/secret",
    "hardlink-to-later": None,
    "hardlink-to-symlink": None,
    "hardlink-to-self": None,
    "hardlink-to-dir": None,
    "hardlink-missing-target": None,
    # member types
    "char-device": "device",
    "block-device": "device",
    "fifo": "FIFO",
    "device-with-pax-name": "-null",
    "gnu-longname": "GNU long name",
    "gnu-longlink": "GNU long link",
    "gnu-sparse": "sparse",
    "pax-gnu-sparse-key": "GNU.sparse",
    "global-pax-header-path": "global pax header",
    # order and duplicates
    "duplicate-file": "duplicate",
    "duplicate-dir": "duplicate",
    "duplicate-file-then-dir": "dup",
    "out-of-order": None,
    "missing-parent": None,
    "second-manifest-in-tree": "manifest.json",
    # zstd
    "window-2GiB-frame3": "window",
    "window-2GiB-frame1": "window",
    "single-segment-huge-content-size": "window",
    "truncated-mid-frame3": "truncated",
    "trailing-garbage": "garbage",
    "flipped-frame3-late-block": "checksum",
    "not-zstd-bare-tar": "it is not zstd-compressed",
    "empty-file": "empty",
    # tar
    "junk-after-end-marker": "end-of-archive marker",
    "tar-cut-in-data": "truncated",
    "bad-checksum-later-member": None,
    # manifest
    "not-json": "not valid JSON",
    "not-object": "malformed",
    "version-zero": "version 0",
    "version-negative": "version -1",
    "version-string": "version",
    "version-2**64": "18446744073709551616",
    "version-4": "upgrade",
    "totals-string-count": "totals.files",
    "partial-string": "partial",
    "manifest-size-claim-huge": "limit 16777216",
    # index and limits
    "index-digest-mismatch": None,
    "flipped-big-file-content": None,
    "more-bytes-than-declared": "declares",
    "huge-size-ustar": None,
    "huge-size-pax": None,
    "huge-size-declared": "truncated",
    "huge-pax-header": "limit 65536",
    "deep-tree-then-device": "device",
}


def _from_hostile(case_id: str, error: str | None) -> CorpusCase:
    case = next(c for c in hostile.CASES if c.id == case_id)
    if error is None:
        names_fn = case.names_fn
        error_text: Text = (lambda sb: names_fn(sb)[0]) if names_fn else case.names[0]
    else:
        error_text = error
    return CorpusCase(
        _RENAMED.get(case.id, case.id),
        case.build,
        f"tests/test_hostile.py case {case.id!r}",
        unpack_error=error_text,
        verify_exit=1 if case.verify_fails else 0,
        args=ALLOW if case.kwargs.get("allow_external_symlinks") else (),
    )


CASES: list[CorpusCase] = [_from_hostile(i, err) for i, err in HOSTILE.items()] + NEW_CASES
assert len({c.name for c in CASES}) == len(CASES), "duplicate corpus names"


# ============================================================================ output


def _text(value: Text | None, sandbox: Path) -> str | None:
    return value(sandbox) if callable(value) else value


def expected_for(case: CorpusCase, sandbox: Path) -> dict[str, Any]:
    """The expected.json record of *case*."""
    unpack_error = _text(case.unpack_error, sandbox)
    verify_error = _text(case.verify_error, sandbox) if case.verify_error else unpack_error
    return {
        "about": case.about,
        "args": list(case.args),
        "unpack": {"exit": case.unpack_exit, "error": unpack_error if case.unpack_exit else None},
        "verify": {"exit": case.verify_exit, "error": verify_error if case.verify_exit else None},
        "restored": case.restored() if case.restored else None,
    }


def build(
    outdir: Path, sandbox: Path, names: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Write the corpus (or the cases in *names*) and expected.json into *outdir*."""
    wanted = None if names is None else set(names)
    outdir.mkdir(parents=True, exist_ok=True)
    expected: dict[str, dict[str, Any]] = {}
    for case in CASES:
        if wanted is not None and case.name not in wanted:
            continue
        (outdir / case.file_name).write_bytes(case.build(sandbox))
        expected[case.file_name] = expected_for(case, sandbox)
    text = json.dumps(expected, indent=1, sort_keys=True)
    (outdir / "expected.json").write_text(text + "\n")
    return expected


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument(
        "--sandbox",
        type=Path,
        help="directory that will hold dest/ and canary/ (default: OUTDIR/sandbox)",
    )
    opts = parser.parse_args(argv)
    outdir = opts.outdir.resolve()
    sandbox = (opts.sandbox or outdir / "sandbox").resolve()
    expected = build(outdir, sandbox)
    print(f"{len(expected)} archives in {outdir} (sandbox {sandbox})")


if __name__ == "__main__":
    main()
